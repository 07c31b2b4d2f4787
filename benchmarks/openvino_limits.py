"""Minimal IRs for what OpenVINO's CPU plugin does with the patterns Q-SAM2 could export (no torch needed).

    python benchmarks/openvino_limits.py            # executed precisions
    python benchmarks/openvino_limits.py --time     # and the median latency at 4096 tokens x 384 -> 1536

One Linear layer (256 tokens x 128 -> 128) per case, behind an input FakeQuantize unless noted; prints the layer
types and executed precisions from the compiled model's runtime graph (CPU plugin defaults), and with ``--time``
the median of 15 runs of the same case at the size of an MLP layer in hiera_t's third stage at 1024² (the machine's
load adds noise). ``FullyConnected u8`` means OpenVINO's low-precision transformations (LPT) turned the layer into
a u8 x i8 kernel; ``FullyConnected i8`` on a weight-compression case is the compressed-weight kernel with float
activations; an ``Eltwise`` or ``MatMul`` left on the weight side means weight ops that were not constant-folded
and run on every inference.
"""

import argparse
import statistics
import time

import numpy as np
import openvino as ov
import openvino.opset13 as ops


def _i4(codes: np.ndarray) -> ov.Node:
    tensor = ov.Tensor(ov.Type.i4, list(codes.shape))
    flat = (codes.reshape(-1, 2).astype(np.int16) & 15).astype(np.uint8)
    tensor.data.view(np.uint8).reshape(-1)[:] = flat[:, 0] | (flat[:, 1] << 4)
    return ops.constant(tensor, shared_memory=False)


def weights(kind: str, rng, d: int, o: int) -> ov.Node:
    if kind == "float":
        return ops.constant((rng.standard_normal((o, d)) * 0.01).astype(np.float32))
    if kind == "fq16":  # a 16-level FakeQuantize on float weights
        return ops.fake_quantize(ops.constant(rng.standard_normal((o, d)).astype(np.float32)),
                                 np.float32(-1), np.float32(1), np.float32(-1), np.float32(1), 16)
    grouped = kind == "grouped"
    codes = rng.integers(-8, 8, size=(o, 4, d // 4) if grouped else (o, d)).astype(np.int8)
    scale = ops.constant(np.full((o, 4, 1) if grouped else (o, 1), 0.01, np.float32))
    per_channel = lambda dtype, lo, hi: ops.constant(rng.integers(lo, hi, (o, 1)).astype(dtype))  # noqa: E731
    if kind in ("channel", "grouped", "offset term", "extra row"):
        w = ops.convert(ops.constant(codes), ov.Type.f32)
    elif kind == "zero point f32":  # the grid's fractional offset as a float zero point
        w = ops.subtract(ops.convert(ops.constant(codes), ov.Type.f32),
                         ops.constant(rng.uniform(-1, 1, (o, 1)).astype(np.float32)))
    elif kind == "zero point i8":  # an integer zero point per channel
        w = ops.subtract(ops.convert(ops.constant(codes), ov.Type.f32),
                         ops.convert(per_channel(np.int8, -3, 3), ov.Type.f32))
    elif kind == "i4 * m + k in i8":  # integer re-scaling of the codes in i8 arithmetic
        w = ops.convert(ops.add(ops.multiply(ops.convert(_i4(codes), ov.Type.i8), per_channel(np.int8, 5, 8)),
                                per_channel(np.int8, -3, 3)), ov.Type.f32)
    elif kind == "fold":  # what export_openvino(offset="fold") emits: round(r (c + h)) in f32
        h = ops.constant(rng.uniform(-1, 1, (o, 1)).astype(np.float32))
        r = ops.constant(np.full((o, 1), 13.7, np.float32))
        w = ops.convert(ops.convert(ops.round(ops.multiply(ops.add(ops.convert(_i4(codes), ov.Type.f32), h), r),
                                              "half_to_even"), ov.Type.i8), ov.Type.f32)
    else:
        raise ValueError(kind)
    w = ops.multiply(w, scale)
    return ops.reshape(w, [o, d], False) if grouped else w


def case(levels, kind: str, t: int, d: int, o: int) -> ov.Model:
    rng = np.random.default_rng(0)
    x = ops.parameter([1, t, d], ov.Type.f32)
    r = np.float32(4)
    inp = x if levels is None else ops.fake_quantize(x, -r, r, -r, r, levels)
    offset = ops.constant(rng.uniform(-0.01, 0.01, o).astype(np.float32))
    if kind == "extra row":  # sum(x) as one more output row of ones, then sliced off and scaled
        w = ops.concat([weights(kind, rng, d, o), ops.constant(np.ones((1, d), np.float32))], 0)
        y = ops.matmul(inp, w, False, True)
        main, total = (ops.slice(y, np.array([a]), np.array([b]), np.array([1]), np.array([2])) for a, b in
                       ((0, o), (o, o + 1)))
        return ov.Model([ops.add(main, ops.multiply(total, offset))], [x])
    y = ops.matmul(inp, weights(kind, rng, d, o), False, True)
    if kind == "offset term":  # what export_openvino(offset="exact") emits
        y = ops.add(y, ops.multiply(ops.reduce_sum(inp, [-1], True), offset))
    return ov.Model([y], [x])


CASES = {"float weights, float input (the fp32 IR)": (None, "float"),
         "A8 FakeQuantize(256), i8 weights per channel": (256, "channel"),
         "A4 FakeQuantize(16), i8 weights per channel": (16, "channel"),
         "A8 FakeQuantize(256), i8 weights in 4 groups": (256, "grouped"),
         "A8 FakeQuantize(256), FakeQuantize(16) on f32 weights": (256, "fq16"),
         "A8, i8 weights with a float zero point": (256, "zero point f32"),
         "A8, i8 weights with an integer zero point": (256, "zero point i8"),
         "A8, i4 codes * m + k in i8 arithmetic": (256, "i4 * m + k in i8"),
         "A8, i4 codes folded: round(r (c + h)) in f32": (256, "fold"),
         "A8, i8 weights + offset term offset * sum(x)": (256, "offset term"),
         "A8, i8 weights + a row of ones for sum(x)": (256, "extra row")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time", action="store_true")
    args = p.parse_args()
    print(f"OpenVINO {ov.__version__}")
    skip = ("Input", "Output", "Const", "Reorder")
    for name, (levels, kind) in CASES.items():
        compiled = ov.Core().compile_model(case(levels, kind, 256, 128, 128), "CPU")
        layers = [f"{op.get_rt_info()['layerType'].astype(str)} {op.get_rt_info()['runtimePrecision'].astype(str)}"
                  for op in compiled.get_runtime_model().get_ops()
                  if op.get_rt_info()["layerType"].astype(str) not in skip]
        line = f"{name:52s} -> {', '.join(layers)}"
        if args.time:
            request = ov.Core().compile_model(case(levels, kind, 4096, 384, 1536), "CPU").create_infer_request()
            x = np.random.default_rng(1).standard_normal((1, 4096, 384)).astype(np.float32)
            request.infer([x])
            times = []
            for _ in range(15):
                started = time.perf_counter()
                request.infer([x])
                times.append(1000 * (time.perf_counter() - started))
            line += f"   [{statistics.median(times):.2f} ms]"
        print(line, flush=True)


if __name__ == "__main__":
    main()
