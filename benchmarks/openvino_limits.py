"""Minimal IRs for what OpenVINO's CPU plugin does with the patterns Q-SAM2 could export (no torch needed).

    python benchmarks/openvino_limits.py

One MatMul (256 tokens x 128 -> 128) behind an input FakeQuantize per case; prints the layer types and executed
precisions from the compiled model's runtime graph. ``FullyConnected u8`` means OpenVINO's low-precision
transformations (LPT) turned the layer into a u8 x i8 kernel; ``FullyConnected i8`` is the compressed-weight kernel
with float activations; an ``Eltwise`` or ``MatMul`` left on the weight side means the weight ops were not
constant-folded and run on every inference.
"""

import numpy as np
import openvino as ov
import openvino.opset13 as ops

T, D = 256, 128


def _i4(codes: np.ndarray) -> ov.Node:
    tensor = ov.Tensor(ov.Type.i4, list(codes.shape))
    flat = (codes.reshape(-1, 2).astype(np.int16) & 15).astype(np.uint8)
    tensor.data.view(np.uint8).reshape(-1)[:] = flat[:, 0] | (flat[:, 1] << 4)
    return ops.constant(tensor, shared_memory=False)


def weights(kind: str, rng) -> ov.Node:
    if kind == "fq16":  # a 16-level FakeQuantize on float weights
        return ops.fake_quantize(ops.constant(rng.standard_normal((D, D)).astype(np.float32)),
                                 np.float32(-1), np.float32(1), np.float32(-1), np.float32(1), 16)
    grouped = kind == "grouped"
    codes = rng.integers(-8, 8, size=(D, 4, D // 4) if grouped else (D, D)).astype(np.int8)
    scale = ops.constant(np.full((D, 4, 1) if grouped else (D, 1), 0.01, np.float32))
    per_channel = lambda dtype, lo, hi: ops.constant(rng.integers(lo, hi, (D, 1)).astype(dtype))  # noqa: E731
    if kind in ("channel", "grouped"):
        w = ops.convert(ops.constant(codes), ov.Type.f32)
    elif kind == "zero point f32":  # the grid's fractional offset as a float zero point
        w = ops.subtract(ops.convert(ops.constant(codes), ov.Type.f32),
                         ops.constant(rng.uniform(-1, 1, (D, 1)).astype(np.float32)))
    elif kind == "zero point i8":  # an integer zero point per channel
        w = ops.subtract(ops.convert(ops.constant(codes), ov.Type.f32),
                         ops.convert(per_channel(np.int8, -3, 3), ov.Type.f32))
    elif kind == "i4 * m + k in i8":  # integer re-scaling of the codes in i8 arithmetic
        w = ops.convert(ops.add(ops.multiply(ops.convert(_i4(codes), ov.Type.i8), per_channel(np.int8, 5, 8)),
                                per_channel(np.int8, -3, 3)), ov.Type.f32)
    elif kind == "fold: round(r (i4 + h)) in f32":  # what export_openvino(offset="fold") emits
        h = ops.constant(rng.uniform(-1, 1, (D, 1)).astype(np.float32))
        r = ops.constant(np.full((D, 1), 13.7, np.float32))
        w = ops.convert(ops.convert(ops.round(ops.multiply(ops.add(ops.convert(_i4(codes), ov.Type.f32), h), r),
                                              "half_to_even"), ov.Type.i8), ov.Type.f32)
    else:
        raise ValueError(kind)
    w = ops.multiply(w, scale)
    return ops.reshape(w, [D, D], False) if grouped else w


def case(levels: int, kind: str) -> ov.Model:
    rng = np.random.default_rng(0)
    x = ops.parameter([1, T, D], ov.Type.f32)
    r = np.float32(4)
    inp = ops.fake_quantize(x, -r, r, -r, r, levels)
    return ov.Model([ops.matmul(inp, weights(kind, rng), False, True)], [x])


def main() -> None:
    cases = {"A8 FakeQuantize(256), i8 weights per channel": case(256, "channel"),
             "A4 FakeQuantize(16), i8 weights per channel": case(16, "channel"),
             "A8 FakeQuantize(256), i8 weights in 4 groups": case(256, "grouped"),
             "A8 FakeQuantize(256), FakeQuantize(16) on f32 weights": case(256, "fq16"),
             "A8, i8 weights with a float zero point": case(256, "zero point f32"),
             "A8, i8 weights with an integer zero point": case(256, "zero point i8"),
             "A8, i4 codes * m + k in i8 arithmetic": case(256, "i4 * m + k in i8"),
             "A8, i4 codes folded: round(r (c + h)) in f32": case(256, "fold: round(r (i4 + h)) in f32")}
    print(f"OpenVINO {ov.__version__}")
    skip = ("Input", "Output", "Const", "Reorder")
    for name, model in cases.items():
        compiled = ov.Core().compile_model(model, "CPU")
        layers = [f"{op.get_rt_info()['layerType'].astype(str)} {op.get_rt_info()['runtimePrecision'].astype(str)}"
                  for op in compiled.get_runtime_model().get_ops()
                  if op.get_rt_info()["layerType"].astype(str) not in skip]
        print(f"{name:52s} -> {', '.join(layers)}")


if __name__ == "__main__":
    main()
