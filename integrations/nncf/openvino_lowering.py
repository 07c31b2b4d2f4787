"""Q-SAM2 layers lowered into an ``openvino.Model`` in the patterns OpenVINO's CPU plugin runs on integers.

Works on the IR of the float-weight model (``export.py`` converts it), like NNCF's own OpenVINO weight-compression
backend, which rewrites weight constants of an ``ov.Model`` in place. Per quantized layer (``LayerSpec``), with the
mid-rise grid ``w = (c + h)·step`` (``h = 1/2 + center/step``, per output channel and group):

* **Weights in the file**: the codes ``c`` as the narrowest integer constant that holds them and that the CPU
  plugin decompresses: ``i8`` (8 bits), ``i4`` (3/4 bits), ``u2`` with the integer zero point 2 (2 bits).
* **Weight-only layers**: NNCF ``compress_weights``' decompression pattern ``Constant -> Convert -> [Subtract(zero
  point)] -> Multiply(step) -> [Reshape]``, which the CPU plugin fuses into its compressed FullyConnected kernels.
  The grid's fractional part is not a zero point there (a float zero point turns off the plugin's int8 paths): it
  is added back exactly as the rank-1 term ``offset · sum(x)`` after the MatMul / Convolution
  (``offset = h·step``).
* **Layers with an input quantizer** get ``FakeQuantize(levels=2**bits)`` on their input (the mid-rise grid's
  outermost levels are its input/output range). Their weights, ``offset="fold"`` (the default of ``export``):
  ``Constant -> Convert -> Add(h) -> Multiply(r) -> Round -> Convert(i8) -> Convert -> Multiply(step/r)``, which
  the plugin folds at compile time into plain symmetric per-channel ``i8`` weights ``n = round(r·(c + h))``
  (``fold_ratio``): what OpenVINO's low-precision transformations (LPT) pair with the ``u8`` activations, with no
  offset term. The executed weights are the grid re-rounded onto an int8 grid (at most ``step/(2r)`` off;
  ``r`` ~15 at 4 bits, ~50 at 2 bits, ~1 at 8 bits); the file keeps the exact codes. ``offset="exact"``: weights
  ``Constant -> Convert(i8) -> [Subtract(i8)] -> Convert -> Multiply(step)`` (also folded to ``i8``) plus the
  rank-1 offset term, exact but slower: the plugin fuses neither the ``ReduceSum`` nor the add
  (``docs/openvino.md``). Grouped weights (``group_size``) always take the exact path; LPT does not take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

try:
    import openvino as ov
    import openvino.opset13 as ops
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("OpenVINO export needs the openvino extra: pip install 'qsam2_ext[openvino]'") from e

_LINEAR_OPS = ("MatMul", "Convolution")


@dataclass
class LayerSpec:
    """One quantized layer: signed codes ``(out, groups, group)`` (int8 array), grid ``center``/``step``
    ``(out, groups)`` and, for a quantized input, the input grid's outermost levels ``act_lo``/``act_hi``
    (scalars, or per channel)."""

    name: str
    bits: int
    codes: np.ndarray
    center: np.ndarray
    step: np.ndarray
    act_bits: Optional[int] = None
    act_lo: Optional[np.ndarray] = None
    act_hi: Optional[np.ndarray] = None
    act_mean: Optional[np.ndarray] = None  # mean of the quantized input per input channel (fold bias correction)

    @property
    def groups(self) -> int:
        return self.codes.shape[1]


def storage_type(bits: int) -> tuple[ov.Type, int]:
    """The element type of ``bits``-bit signed codes and the zero point added to store them."""
    if bits == 8:
        return ov.Type.i8, 0
    if bits in (3, 4):
        return ov.Type.i4, 0
    if bits == 2:
        return ov.Type.u2, 2
    raise ValueError(f"no OpenVINO storage for {bits}-bit codes")


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Little-endian sub-byte packing (OpenVINO's u2/i4 layout: the first element in the lowest bits)."""
    per = 8 // bits
    flat = (values.reshape(-1).astype(np.int16) & ((1 << bits) - 1)).astype(np.uint8)
    flat = np.concatenate([flat, np.zeros((-len(flat)) % per, np.uint8)]).reshape(-1, per)
    out = np.zeros(len(flat), np.uint8)
    for k in range(per):
        out |= flat[:, k] << (k * bits)
    return out


def integer_constant(codes: np.ndarray, etype: ov.Type, name: str) -> ov.Node:
    """A Constant of ``etype`` holding integer ``codes`` (already shifted into the type's range)."""
    if etype == ov.Type.i8:
        return ops.constant(codes.astype(np.int8), name=name)
    bits = {ov.Type.i4: 4, ov.Type.u4: 4, ov.Type.u2: 2}[etype]
    tensor = ov.Tensor(etype, list(codes.shape))
    tensor.data.view(np.uint8).reshape(-1)[:] = _pack(codes, bits)
    node = ops.constant(tensor, shared_memory=False)
    node.set_friendly_name(name)
    return node


def _weights(spec: LayerSpec, shape: list[int], integer_path: bool) -> ov.Node:
    """``c · step`` shaped like the layer's weight, as an integer constant plus its decompression ops."""
    etype, zero_point = storage_type(spec.bits)
    out, groups, _ = spec.codes.shape
    grouped = groups > 1
    codes = spec.codes.astype(np.int16) + zero_point
    codes = codes if grouped else codes.reshape(shape)
    const = integer_constant(codes, etype, spec.name)
    scale = spec.step.astype(np.float32).reshape([out, groups, 1] if grouped else [out] + [1] * (len(shape) - 1))
    if integer_path:  # folds to i8 at compile time: what LPT pairs with u8 activations
        value = ops.convert(const, ov.Type.i8)
        if zero_point:
            value = ops.subtract(value, ops.constant(np.int8(zero_point)))
        value = ops.convert(value, ov.Type.f32)
    else:  # NNCF compress_weights' decompression pattern
        value = ops.convert(const, ov.Type.f32)
        if zero_point:
            zp = integer_constant(np.array(zero_point), etype, f"{spec.name}/zero_point")
            value = ops.subtract(value, ops.convert(zp, ov.Type.f32), name=f"{spec.name}/zero_point/subtract")
    value = ops.multiply(value, ops.constant(scale, name=f"{spec.name}/scale"), name=f"{spec.name}/fq_weights_1")
    return ops.reshape(value, shape, special_zero=False) if grouped else value


def fold_ratio(spec: LayerSpec) -> Optional[np.ndarray]:
    """Per output channel the factor ``r`` of the symmetric int8 weights ``n = round(r·(c + h))`` (scale
    ``step / r``, ``h = offset / step``) that stand in for the grid ``(c + h)·step`` without an offset term: the
    largest ``r`` that keeps ``|n| <= 127``. Every weight moves by at most ``step / (2r)``: ``r`` is about 15 at
    4 bits and 50 at 2 bits, below 1 at 8 bits (there the fold re-rounds the grid onto a per-channel int8 grid of
    about the same step). None for grouped grids (LPT takes per-channel weight scales only)."""
    if spec.groups != 1:
        return None
    h = spec.center[:, 0].astype(np.float64) / spec.step[:, 0] + 0.5
    top = np.abs(spec.codes[:, 0, :].astype(np.float64) + h[:, None]).max(1)
    return 126.5 / np.maximum(top, 1e-6)


def _folded_weights(spec: LayerSpec, shape: list[int], r: np.ndarray) -> ov.Node:
    """``round(r·(c + h))·step/r`` shaped like the layer's weight: the narrow code constant and ops that fold at
    compile time into plain symmetric ``i8`` weights with one per-channel scale (what LPT pairs with ``u8``). The
    file keeps the codes in their storage type."""
    etype, zero_point = storage_type(spec.bits)
    per_channel = [len(r)] + [1] * (len(shape) - 1)
    h = spec.center[:, 0].astype(np.float64) / spec.step[:, 0] + 0.5 - zero_point
    value = ops.convert(integer_constant(spec.codes.astype(np.int16).reshape(shape) + zero_point, etype, spec.name),
                        ov.Type.f32)
    value = ops.round(ops.multiply(ops.add(value, ops.constant(h.astype(np.float32).reshape(per_channel))),
                                   ops.constant(r.astype(np.float32).reshape(per_channel))), "half_to_even")
    value = ops.clamp(value, -127.0, 127.0)  # h and r saved as f16 (compress_to_fp16) must not wrap around in i8
    scale = (spec.step[:, 0] / r).astype(np.float32).reshape(per_channel)
    return ops.multiply(ops.convert(ops.convert(value, ov.Type.i8), ov.Type.f32),
                        ops.constant(scale, name=f"{spec.name}/scale"), name=f"{spec.name}/fq_weights_1")


def _fold_values(spec: LayerSpec, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(exact, folded)`` weights ``(out, in)`` in float64: the grid ``(c + h)·step`` and what the folded IR
    executes, computed as ``_folded_weights``' ops do in f32 (``r`` puts each row's largest value on a rounding
    tie, which f32 and f64 can break differently)."""
    zero_point = storage_type(spec.bits)[1]
    h = spec.center[:, 0].astype(np.float64) / spec.step[:, 0] + 0.5
    exact = (spec.codes[:, 0, :] + h[:, None]) * spec.step[:, :1].astype(np.float64)
    stored = (spec.codes[:, 0, :].astype(np.int16) + zero_point).astype(np.float32)
    n = np.round((stored + (h - zero_point).astype(np.float32)[:, None]) * r.astype(np.float32)[:, None])
    return exact, np.clip(n, -127, 127).astype(np.float64) * (spec.step[:, 0] / r).astype(np.float32)[:, None]


def fold_bias_correction(spec: LayerSpec, r: np.ndarray) -> np.ndarray:
    """Per output channel ``Σᵢ E[xᵢ]·(w_exact − w_folded)``: the fold's weight change times the mean of the
    layer's quantized input (``spec.act_mean``, per input channel), NNCF's bias correction for the fold. Added to
    the layer's bias, it keeps the layer's mean output that of the exact grid."""
    exact, folded = _fold_values(spec, r)
    delta = (exact - folded).reshape(len(r), len(spec.act_mean), -1).sum(-1)  # 1x1 convs: (out, in)
    return delta @ spec.act_mean.astype(np.float64)


def _add_to_bias(node: ov.Node, correction: np.ndarray, name: str) -> None:
    """Add ``correction`` (per output channel) to the bias ``Add`` after ``node``, or add one."""
    out = len(correction)
    targets = list(node.output(0).get_target_inputs())
    if len(targets) == 1 and targets[0].get_node().get_type_name() == "Add":
        add = targets[0].get_node()
        other = add.input(1 - targets[0].get_index()).get_source_output().get_node()
        if other.get_type_name() == "Constant" and other.get_element_type() == ov.Type.f32 and \
                other.get_output_shape(0) and int(np.prod(other.get_output_shape(0))) == out:
            bias = other.get_data().astype(np.float64)
            value = ops.constant((bias + correction.reshape(bias.shape)).astype(np.float32), name=f"{name}/bias")
            add.input(1 - targets[0].get_index()).replace_source_output(value.output(0))
            return
    shape = [out] if node.get_type_name() == "MatMul" else [1, out, 1, 1]
    total = ops.add(node.output(0), ops.constant(correction.astype(np.float32).reshape(shape)), name=f"{name}/bias")
    for t in targets:
        t.replace_source_output(total.output(0))


def _offset_term(node: ov.Node, x: ov.Output, spec: LayerSpec, shape: list[int]) -> ov.Output:
    """``sum_i offset[o, g(i)] · x_i`` for every output channel ``o``: the rank-1 (rank-groups) correction."""
    offset = (spec.center + spec.step / 2).astype(np.float32)  # (out, groups)
    out, groups = offset.shape
    if node.get_type_name() == "MatMul":
        rank = x.get_partial_shape().rank.get_length()
        if groups == 1:
            return ops.multiply(ops.reduce_sum(x, [-1], True), ops.constant(offset.reshape(out))).output(0)
        split = ops.reshape(x, [0] * (rank - 1) + [groups, -1], special_zero=True)
        return ops.matmul(ops.reduce_sum(split, [-1], False), ops.constant(offset.T.copy()), False, False).output(0)
    kh, kw = shape[2], shape[3]
    attrs = node.get_attributes()
    conv = dict(strides=attrs["strides"], pads_begin=attrs["pads_begin"], pads_end=attrs["pads_end"],
                dilations=attrs["dilations"], auto_pad=attrs["auto_pad"])
    if groups == 1:
        total = ops.reduce_sum(x, [1], True)
        if (kh, kw) != (1, 1) or any(s != 1 for s in conv["strides"]) or any(conv["pads_begin"] + conv["pads_end"]):
            total = ops.convolution(total, ops.constant(np.ones((1, 1, kh, kw), np.float32)), **conv)
        return ops.multiply(total, ops.constant(offset.reshape(1, out, 1, 1))).output(0)
    if (kh, kw) != (1, 1):
        raise NotImplementedError(f"{spec.name}: grouped grids of a {kh}x{kw} convolution")
    n, channels, h, w = x.get_partial_shape().to_shape()  # export uses static shapes
    split = ops.reshape(x, [n, groups, channels // groups, h, w], special_zero=False)
    return ops.convolution(ops.reduce_sum(split, [2], False), ops.constant(offset.reshape(out, groups, 1, 1)),
                           **conv).output(0)


def _fake_quantize(x: ov.Output, spec: LayerSpec, node: ov.Node) -> ov.Output:
    lo, hi = (np.asarray(v, np.float32) for v in (spec.act_lo, spec.act_hi))
    if lo.size > 1:  # per channel: last dim of a MatMul input, dim 1 of a Convolution input
        shape = [lo.size] if node.get_type_name() == "MatMul" else [1, lo.size, 1, 1]
        lo, hi = lo.reshape(shape), hi.reshape(shape)
    lo, hi = ops.constant(lo.reshape(lo.shape or [])), ops.constant(hi.reshape(hi.shape or []))
    return ops.fake_quantize(x, lo, hi, lo, hi, 2 ** spec.act_bits, name=f"{spec.name}/input_quantizer").output(0)


OFFSETS = ("fold", "exact")


def lower_layer(const: ov.Node, spec: LayerSpec, offset: str = "fold") -> int:
    """Replace the float weight Constant ``const`` of one quantized layer by its integer lowering; every MatMul /
    Convolution that reads it gets, with ``spec.act_bits``, the input FakeQuantize, and the offset term unless the
    weights fold it (``offset``: see the module docstring). Returns the number of rewritten ops."""
    if offset not in OFFSETS:
        raise ValueError(f"offset must be one of {OFFSETS}, got {offset!r}")
    shape = list(const.get_output_shape(0))
    consumers = [t.get_node() for t in const.output(0).get_target_inputs()]
    bad = [n.get_type_name() for n in consumers if n.get_type_name() not in _LINEAR_OPS]
    if bad or not consumers:
        raise ValueError(f"{spec.name}: the weight constant feeds {bad or 'nothing'}, expected MatMul/Convolution")
    for n in consumers:
        if n.get_type_name() == "MatMul" and (n.get_attributes()["transpose_a"] or not n.get_attributes()["transpose_b"]):
            raise ValueError(f"{spec.name}: expected MatMul(x, W^T) from a Linear layer")
    folded = fold_ratio(spec) if spec.act_bits is not None and offset == "fold" else None
    weights = (_folded_weights(spec, shape, folded) if folded is not None else
               _weights(spec, shape, integer_path=spec.act_bits is not None))
    for n in consumers:
        x = n.input(0).get_source_output()
        if spec.act_bits is not None:
            x = _fake_quantize(x, spec, n)
            n.input(0).replace_source_output(x)
        n.input(1).replace_source_output(weights.output(0))
        if folded is not None:
            if spec.act_mean is not None:
                _add_to_bias(n, fold_bias_correction(spec, folded), spec.name)
            continue
        targets = list(n.output(0).get_target_inputs())
        total = ops.add(n.output(0), _offset_term(n, x, spec, shape), name=f"{spec.name}/offset")
        for t in targets:
            t.replace_source_output(total.output(0))
    return len(consumers)


def float_constants_by_value(model: ov.Model, shapes: set) -> dict:
    """``{(shape, bytes): Constant}`` of the model's f32 constants whose shape is in ``shapes``."""
    found = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f32:
            shape = tuple(op.get_output_shape(0))
            if shape in shapes:
                found[(shape, op.get_data().tobytes())] = op
    return found
