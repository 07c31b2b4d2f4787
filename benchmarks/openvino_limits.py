"""Minimal IRs for what OpenVINO's CPU plugin does with the patterns Q-SAM2 could export (no torch needed).

    python benchmarks/openvino_limits.py

One MatMul (256 tokens x 128 -> 128) behind an input FakeQuantize per case; prints the layer type and executed
precision from the compiled model's runtime graph. ``u8`` means OpenVINO's low-precision transformations (LPT)
turned the layer into a u8 x i8 kernel.
"""

import numpy as np
import openvino as ov
import openvino.opset13 as ops

T, D = 256, 128


def case(levels: int, weights: str) -> ov.Model:
    rng = np.random.default_rng(0)
    x = ops.parameter([1, T, D], ov.Type.f32)
    r = np.float32(4)
    inp = ops.fake_quantize(x, -r, r, -r, r, levels)
    if weights == "fq16":  # a 16-level FakeQuantize on float weights
        w = ops.fake_quantize(ops.constant(rng.standard_normal((D, D)).astype(np.float32)),
                              np.float32(-1), np.float32(1), np.float32(-1), np.float32(1), 16)
    else:
        grouped = weights == "grouped"
        codes = rng.integers(-8, 8, size=(D, 4, D // 4) if grouped else (D, D)).astype(np.int8)
        scale = np.full((D, 4, 1) if grouped else (D, 1), 0.01, np.float32)
        w = ops.multiply(ops.convert(ops.constant(codes), ov.Type.f32), ops.constant(scale))
        w = ops.reshape(w, [D, D], False) if grouped else w
    return ov.Model([ops.matmul(inp, w, False, True)], [x])


def main() -> None:
    cases = {"A8 FakeQuantize(256), i8 weights per channel": case(256, "channel"),
             "A4 FakeQuantize(16), i8 weights per channel": case(16, "channel"),
             "A8 FakeQuantize(256), i8 weights in 4 groups": case(256, "grouped"),
             "A8 FakeQuantize(256), FakeQuantize(16) on f32 weights": case(256, "fq16")}
    print(f"OpenVINO {ov.__version__}")
    for name, model in cases.items():
        compiled = ov.Core().compile_model(model, "CPU")
        layers = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
                  for op in compiled.get_runtime_model().get_ops()
                  if "FullyConnected" in op.get_rt_info()["layerType"].astype(str)
                  or op.get_rt_info()["layerType"].astype(str) == "MatMul"]
        print(f"{name:55s} -> {layers}")


if __name__ == "__main__":
    main()
