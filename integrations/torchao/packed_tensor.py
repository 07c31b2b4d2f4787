"""``QSAM2PackedTensor``: a torchao tensor subclass holding truly packed 2/3/4/8-bit weights.

Storage per weight row: ``ceil(K * bits / 8)`` bytes of codes (``qsam2_ext.core.packing`` layout) plus one
``(center, step)`` pair per row or per group, in ``scale dtype``. The value of code ``q`` is
``(q + 1/2) * step + center``: the same grid, and the same floating-point expression, as the fake quantizer that
learned it, so converted and fake-quantized layers agree exactly when the grid is stored in float32.

An optional activation grid rides along: static (``act_center``/``act_step``: the clip learned in QAT, per tensor
or per input channel) or dynamic per token (``act_bits`` alone). ``F.linear`` / ``F.conv2d`` on this weight
quantize-dequantize the input accordingly, then run the float op on the dequantized weight (the reference path).
Inside ``integer_matmul()``, on CPUs, a Linear with quantized inputs (per token or per tensor) and per-channel
weight grids instead multiplies the integer codes (``qsam2_ext.core.int_linear``: one int8 GEMM, equal to the
reference up to float rounding). On CUDA in eager mode, half-precision Linear inputs go to ``qsam2_ext.kernels``
(Triton: 2/4/8-bit weights unpacked in registers, W8A8 and W2A8 as int8 GEMMs, or dequantize-then-cuBLAS, whichever
measures faster per shape); ``kernels.cuda_kernels(False)`` keeps the reference. Compiled models keep the reference
expression: inductor generates the unpacking (merged with neighbouring kernels) feeding cuBLAS; inside
``integer_matmul()`` those on CUDA trace the integer product instead (one ``torch._int_mm``; A4 layers: the exact
code product on FP8 tensor cores, ``qsam2_ext.kernels.fp8_linear``), its operands from one-pass Triton ops (per-token
input codes, unpacked weight codes: ``qsam2_ext.kernels.code_ops``) and its epilogue left to inductor to fuse.
Eager on CPUs, outside ``integer_matmul()``, the weight is dequantized once and kept, or per call, whichever measures
faster per kind of layer (``kernels.cpu_linear``; inside ``integer_matmul()`` the integer product is one of the timed
paths).
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from typing import Iterator, Optional

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.nn import functional as F
from torchao.utils import TorchAOBaseTensor, fill_defaults

from qsam2_ext import kernels
from qsam2_ext.kernels import cpu_linear, fp8_linear
from qsam2_ext.core import (
    cpu_int8, cuda_int8_product_fits, dequantize, int_linear, pack_codes, quantize, quantize_tokens, unpack_codes,
)
from qsam2_ext.core.grid import carry_nonfinite, fake_quantize_per_token, quantize_dequantize
from qsam2_ext.core.int_linear import weight_columns

aten = torch.ops.aten


class QSAM2PackedTensor(TorchAOBaseTensor):
    tensor_data_names = ["packed", "center", "step"]
    tensor_attribute_names = ["bits", "weight_shape", "dtype"]
    optional_tensor_data_names = ["act_center", "act_step"]
    optional_tensor_attribute_names = ["act_bits"]

    def __new__(cls, packed, center, step, bits, weight_shape, dtype, act_center=None, act_step=None, act_bits=None):
        return torch.Tensor._make_wrapper_subclass(
            cls, tuple(weight_shape), dtype=dtype, device=packed.device, requires_grad=False
        )

    def __init__(self, packed, center, step, bits, weight_shape, dtype, act_center=None, act_step=None, act_bits=None):
        super().__init__()
        self.packed, self.center, self.step = packed, center, step
        self.bits = int(bits)
        self.weight_shape = tuple(int(d) for d in weight_shape)
        self.act_center, self.act_step = act_center, act_step
        self.act_bits = None if act_bits is None else int(act_bits)
        mode = _trace_mode()
        if self.act_bits is not None and mode != _DEFAULT_TRACE_MODE:
            # torch 2.11 keys its AOT autograd cache on the attributes of the weights a trace sees (rebuilt then)
            self.trace_mode = mode

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        center: torch.Tensor,
        step: torch.Tensor,
        bits: int,
        dtype: torch.dtype,
        scale_dtype: torch.dtype,
        act_bits: Optional[int] = None,
        act_grid: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> "QSAM2PackedTensor":
        """Pack signed codes shaped like the weight, with a grid of shape ``(out, groups)``."""
        rows = codes.reshape(codes.shape[0], -1)
        act_center, act_step = (None, None) if act_grid is None else (g.to(scale_dtype) for g in act_grid)
        return cls(
            pack_codes(rows, bits), center.to(scale_dtype), step.to(scale_dtype), bits, codes.shape, dtype,
            act_center, act_step, act_bits,
        )

    @classmethod
    def from_hp(
        cls,
        hp_tensor: torch.Tensor,
        weight_dtype: torch.dtype = torch.int2,
        granularity=None,
        method: str = "lsc",
        scale_dtype: Optional[torch.dtype] = None,
    ) -> "QSAM2PackedTensor":
        """torchao's constructor convention: quantize a high-precision weight (2-D, or a 4-D conv weight) one-shot
        onto ``method``'s initial grid kept within each row's (group's) range, as ``quantize_`` does with
        ``QSAM2Config(weight_dtype, granularity, method)``; ``granularity`` is ``PerAxis(0)`` (default) or
        ``PerGroup(n)``."""
        from torchao.quantization.granularity import PerAxis, PerGroup

        from qsam2_ext.core import WeightGranularity, make_quantizer

        bits = {getattr(torch, f"int{b}"): b for b in (2, 3, 4, 8)}.get(weight_dtype)
        if bits is None:
            raise ValueError(f"weight_dtype must be torch.int2, int3, int4 or int8, got {weight_dtype!r}")
        granularity = PerAxis(0) if granularity is None else granularity
        if isinstance(granularity, PerGroup):
            group_size = granularity.group_size
        elif isinstance(granularity, PerAxis) and granularity.axis == 0:
            group_size = None
        else:
            raise ValueError(f"granularity must be PerAxis(0) or PerGroup(n), got {granularity!r}")
        if hp_tensor.ndim not in (2, 4):
            raise ValueError(f"a packed weight is 2-D (Linear) or 4-D (Conv2d), got shape {tuple(hp_tensor.shape)}")
        weight = hp_tensor.detach()
        quantizer = make_quantizer(method, bits, WeightGranularity.for_weight(weight, group_size)).to(weight.device)
        codes, center, step = quantizer.encode(weight, within_range=True)
        return cls.from_codes(codes, center, step, bits, weight.dtype, scale_dtype or weight.dtype)

    def codes(self) -> torch.Tensor:
        """The signed int8 codes, shaped like the weight."""
        return unpack_codes(self.packed, self.bits, self.row_length()).reshape(self.weight_shape)

    def dequantize(self, output_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        dtype = output_dtype or self.dtype
        if torch.compiler.is_exporting():  # one op in the exported graph, for backends to match and lower
            return torch.ops.qsam2.dequantize_packed(self.packed, self.center, self.step, self.bits,
                                                     list(self.weight_shape), dtype)
        return _dequantize_packed(self.packed, self.center, self.step, self.bits, self.weight_shape, dtype)

    def quantize_input(self, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """Quantize-dequantize a layer input with the static learned grid, per token, or not at all."""
        if self.act_bits is None:
            return x
        if self.act_center is None:
            # the grid in float32, as the static path and the GPU kernels compute it
            return fake_quantize_per_token(x.float(), self.act_bits, dim=channel_dim).to(x.dtype)
        center, step = self.act_center.to(torch.float32), self.act_step.to(torch.float32)
        if center.ndim:  # per channel: broadcast along the channel dim
            shape = [1] * x.ndim
            shape[channel_dim] = -1
            center, step = center.reshape(shape), step.reshape(shape)
        xf = x.float()
        return carry_nonfinite(quantize_dequantize(xf, center, step, self.act_bits), xf).to(x.dtype)

    def __tensor_flatten__(self):
        # what TorchAOBaseTensor's generic version returns, without its scans over the name lists: dynamo's guards
        # call this for every packed weight on every call of a compiled model (benchmarks/compile_overhead.py)
        names = ["packed", "center", "step"]
        if self.act_center is not None:
            names.append("act_center")
        if self.act_step is not None:
            names.append("act_step")
        ctx = {"bits": self.bits, "weight_shape": self.weight_shape, "dtype": self.dtype, "act_bits": self.act_bits}
        if self.act_bits is not None:  # the expression a compiled layer traces depends on it: see _trace_mode
            ctx["trace_mode"] = _trace_mode()
        return names, ctx

    def grids_factor(self) -> bool:
        """Whether a product of codes can stand in for this layer: quantized inputs on a per-token or per-tensor
        grid and per-channel weight grids factor out of the sum (per-channel inputs or grouped weights do not)."""
        return (self.act_bits is not None and self.center.shape[1] == 1
                and (self.act_center is None or self.act_center.ndim == 0))

    def describe(self) -> str:
        groups = self.center.shape[1]
        granularity = "per-channel" if groups == 1 else f"group_size={self.row_length() // groups}"
        acts = "none" if self.act_bits is None else f"{self.act_bits}-bit {'dynamic per-token' if self.act_center is None else 'static'}"
        return f"QSAM2Packed(bits={self.bits}, {granularity}, inputs={acts})"

    def row_length(self) -> int:
        k = 1
        for d in self.weight_shape[1:]:
            k *= d
        return k

    def storage_bytes(self) -> int:
        """Bytes actually held: packed codes plus grids (and the activation grid, if any)."""
        tensors = [self.packed, self.center, self.step, self.act_center, self.act_step]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _stable_hash_for_caching(self) -> str:
        h = hashlib.sha256()
        for t in (self.packed, self.center, self.step, self.act_center, self.act_step):
            if t is not None:
                h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        mode = _trace_mode() if self.act_bits is not None else None
        h.update(repr((self.bits, self.weight_shape, self.dtype, self.act_bits, mode)).encode())
        return h.hexdigest()


def _dequantize_packed(packed, center, step, bits, weight_shape, dtype) -> torch.Tensor:
    out, groups = center.shape
    k = 1
    for d in weight_shape[1:]:
        k *= d
    codes = unpack_codes(packed, bits, k).reshape(out, groups, -1)
    # in float32 whatever the grid's dtype, rounded once at the end: what inductor computes for half-precision
    # grids too (eager bf16 arithmetic rounded twice and differed from compiled models by one ulp), and what the
    # fake quantizer computes
    center, step = center.float().unsqueeze(-1), step.float().unsqueeze(-1)
    return dequantize(codes, center, step).reshape(weight_shape).to(dtype)


@torch.library.custom_op("qsam2::dequantize_packed", mutates_args=())
def _dequantize_packed_op(packed: torch.Tensor, center: torch.Tensor, step: torch.Tensor, bits: int,
                          weight_shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """The float weight of packed Q-SAM2 codes: what ``torch.export`` records (as torchao's tensors record
    ``torchao.dequantize_affine``), with the reference expression as its implementation."""
    return _dequantize_packed(packed, center, step, bits, tuple(weight_shape), dtype)


@_dequantize_packed_op.register_fake
def _(packed, center, step, bits, weight_shape, dtype):
    return packed.new_empty(weight_shape, dtype=dtype)


implements = QSAM2PackedTensor.implements
implements_torch_function = QSAM2PackedTensor.implements_torch_function


_INTEGER_MATMUL = False
_FORCE_INTEGER = False


@contextlib.contextmanager
def integer_matmul(enabled: bool = True, force: bool = False) -> Iterator[None]:
    """Multiply integer codes inside this context (``with integer_matmul(): model(x)``): on CPUs, and in models
    compiled on CUDA (``torch._int_mm``; eager CUDA calls take ``qsam2_ext.kernels``' op, which has its own int8 GEMM).

    Off by default: each layer then equals the reference up to float rounding only, and a rounding difference
    can move a later layer's input across a grid boundary, so whole models differ from their fake-quantized
    twins by occasional single grid steps instead of agreeing exactly. On CUDA it is also slower where measured:
    on an H200 (torch 2.11) ``torch._int_mm`` runs Ampere CUTLASS kernels, slower than cuBLAS's bf16 GEMMs
    (``benchmarks/results/speed.md``). On CPUs, layers may take the integer product where this CPU has a fast exact
    kernel for their weight width (``qsam2_ext.core.fast_int8_product``: AVX512-VNNI / AMX for any width, oneDNN's
    u8 x s8 matmul on AVX2 for 2/3/4-bit weights): compiled, they do; eager, each kind of layer times it against the
    exact paths and keeps the fastest (``qsam2_ext.kernels.cpu_linear``). The others keep the float product, with a
    warning on entry, unless ``force`` (the integer product on every layer that has it, on any CPU)."""
    global _INTEGER_MATMUL, _FORCE_INTEGER
    if enabled and not force and not cpu_int8.fast_int8_cpu():
        some = ("layers with 2-4-bit weights multiply codes through oneDNN's u8 x s8 matmul, and layers with 8-bit "
                "weights") if cpu_int8.u8s8_cpu() else "packed layers"
        warnings.warn(f"integer_matmul(): this CPU has neither AVX512-VNNI nor AMX, so torch's int8 GEMM is a plain "
                      f"loop, tens of times slower than the float one; {some} keep the float product "
                      "(integer_matmul(force=True) runs the integer product anyway)", stacklevel=3)
    previous = _INTEGER_MATMUL, _FORCE_INTEGER
    _INTEGER_MATMUL, _FORCE_INTEGER = enabled, force
    try:
        yield
    finally:
        _INTEGER_MATMUL, _FORCE_INTEGER = previous


def _trace_mode() -> tuple:
    """The switches that pick the expression a layer with quantized inputs traces (integer product or reference, and
    the A4 layers' pinned FP8 path). Part of such weights' flatten context and cache hash, so that dynamo recompiles
    when they change and compile caches keep one entry per mode: keyed on the graph alone, torch 2.11's AOT autograd
    cache returned the integer graph to a later process that compiled the same model outside ``integer_matmul()``
    (and, on an H100, the FP8 graph to a later compile pinned to the bf16 path)."""
    return _INTEGER_MATMUL, _FORCE_INTEGER, kernels.enabled(), fp8_linear.forced_path()


_DEFAULT_TRACE_MODE = _trace_mode()  # outside every context


# Below this many inputs per output the CPU integer product loses to the float one: its int32 output and epilogue
# passes cost more than the int8 GEMM saves (hiera_t's 96-input layers at 1024², compiled on 2 cores: 44-60 ms
# against 37-47 ms; from 192 inputs on it wins or ties, from 384 on by 4-6x).
INTEGER_MIN_INPUTS = 128


def _integer_path(x: torch.Tensor, weight: QSAM2PackedTensor) -> bool:
    """Inside ``integer_matmul()``, for inference on layers whose grids factor out of the sum: on CPUs where this CPU
    has a fast exact int8 kernel for the weight's width and the layer enough inputs; on CUDA in compiled models
    (eager calls take ``qsam2_ext.kernels``' op) where cuBLASLt's int8 GEMM takes the shape."""
    if not (_INTEGER_MATMUL and weight.grids_factor()) or (torch.is_grad_enabled() and x.requires_grad):
        return False
    if x.is_cuda:
        k = x.shape[-1]
        if not (_traced(x) and kernels.enabled()):
            return False
        if _fp8_path(x, weight) is not None:
            return _fp8_path(x, weight) != "bf16"
        return cuda_int8_product_fits(x.numel() // k, k, weight.weight_shape[0])
    return (x.device.type == "cpu" and x.shape[-1] >= INTEGER_MIN_INPUTS
            and (_FORCE_INTEGER or cpu_int8.fast_int8_product(weight.bits)))


def _fp8_path(x: torch.Tensor, weight: QSAM2PackedTensor) -> Optional[str]:
    """For an A4 layer (inputs and weights of at most 4 bits) on CUDA: its path measured per shape (``"fp8"``,
    ``"fp8 rowwise"``: the exact code product on FP8 tensor cores, ``qsam2_ext.kernels.fp8_linear``; ``"bf16"``: the
    reference); ``None`` for every other layer."""
    k, n = x.shape[-1], weight.weight_shape[0]
    if not fp8_linear.fits(x.numel() // k, k, n, weight.bits, weight.act_bits):
        return None
    return fp8_linear.choose(x.numel() // k, k, n, x.device)


def _traced(x: torch.Tensor) -> bool:
    """Inside a torch.compile / export trace: dynamo's, or any dispatch on fake tensors (AOT autograd, export),
    where ``torch.compiler.is_compiling()`` can be False. A plain ``torch.Tensor`` is never fake: checked first, as
    ``is_fake`` took about 7 us a call, a third of an eager CPU layer's cost over its float twin."""
    return torch.compiler.is_compiling() or (type(x) is not torch.Tensor and is_fake(x))


@implements(aten.linear.default)
@implements_torch_function(F.linear)
def _linear(func, types, args, kwargs):
    x, weight, bias = args[0], args[1], args[2] if len(args) > 2 else None
    if torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
        # this handler runs before autocast would cast the input (a float32 LayerNorm output, say): cast it here
        x = x.to(torch.get_autocast_dtype(x.device.type))
    if kernels.supports(x, weight) and not _traced(x):
        # eager only: traced for torch.compile, the expressions below are left to inductor, which unpacks the
        # weight in generated kernels feeding cuBLAS with no Python in between, while our op costs tens of
        # microseconds of Python per call (benchmarks/results/speed.md)
        return kernels.packed_linear(x, weight.packed, weight.center.contiguous(), weight.step.contiguous(), bias,
                                     weight.act_center, weight.act_step, weight.bits, weight.act_bits or 0)
    if _cpu_eager(x):
        def compute(path: str) -> torch.Tensor:
            if path == "integer":
                return _integer_linear(x, weight, bias, *cpu_linear.integer_weight(weight, bias))
            w = cpu_linear.dense(weight, x.dtype) if path == "cached" else weight.dequantize(x.dtype)
            return F.linear(weight.quantize_input(x, -1), w, bias)

        return cpu_linear.run(weight, _cpu_key(x, weight, "linear"), compute, _cpu_integer(x, weight))
    if not _integer_path(x, weight):
        return F.linear(weight.quantize_input(x, -1), weight.dequantize(x.dtype), bias)
    return _integer_linear(x, weight, bias)


def _cpu_eager(x: torch.Tensor) -> bool:
    """An eager inference call on a CPU (outside ``integer_matmul(force=True)``): the path measured fastest per kind
    of layer (``qsam2_ext.kernels.cpu_linear``: the weight dequantized once and kept, or at every call, and inside
    ``integer_matmul()`` the integer product)."""
    return (x.device.type == "cpu" and not _FORCE_INTEGER and not (torch.is_grad_enabled() and x.requires_grad)
            and not _traced(x))


def _cpu_integer(x: torch.Tensor, weight: QSAM2PackedTensor) -> bool:
    """Whether an eager CPU Linear may take the integer product: inside ``integer_matmul()`` (it equals the reference
    up to float rounding only, so never by default), a layer of its integer path on a CPU with a fast exact kernel for
    its weights."""
    return (_INTEGER_MATMUL and weight.grids_factor() and x.shape[-1] >= INTEGER_MIN_INPUTS
            and cpu_int8.fast_int8_product(weight.bits))


def _cpu_key(x: torch.Tensor, weight: QSAM2PackedTensor, op: str) -> tuple:
    act_grid = None if weight.act_center is None else tuple(weight.act_center.shape)
    return (op, tuple(x.shape), weight.weight_shape, weight.bits, weight.act_bits, act_grid, weight.center.shape[1],
            x.dtype)


def _integer_linear(x: torch.Tensor, weight: QSAM2PackedTensor, bias, weight_codes: Optional[torch.Tensor] = None,
                    columns: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The integer product of ``x`` and the weight (its int8 codes and rank-term columns: given, else computed). On
    CUDA the per-token input codes and the weight's codes come from one-pass Triton ops (``kernels.code_ops``: opaque
    to inductor, which fused them into its producers' reductions), in float8 e4m3 for the FP8 product."""
    k = x.shape[-1]
    fp8 = _fp8_path(x, weight) if x.is_cuda else None
    one_pass = kernels.code_ops_fit(x)
    sums = None
    if weight.act_center is None and one_pass:
        codes, center, step, sums = kernels.quantize_tokens(x.reshape(-1, k), weight.act_bits, fp8 is not None)
    else:
        rows = x.reshape(-1, k).float()  # every activation grid in float32, as the reference computes it
        if weight.act_center is None:
            codes, center, step = quantize_tokens(rows, weight.act_bits)
        else:  # the static grid learned in QAT, computed in float32 as quantize_input does
            center, step = weight.act_center.float(), weight.act_step.float()
            codes = quantize(rows, center, step, weight.act_bits)
            center = center + (rows * 0).sum(dim=-1, keepdim=True)  # a NaN or infinite input makes its row NaN
    if weight_codes is None and one_pass and weight.bits in kernels.KERNEL_BITS:
        weight_codes, weight_sums = kernels.unpack_codes(weight.packed, weight.bits, k, fp8 is not None)
        columns = weight_columns(weight_codes, weight.center, weight.step, bias, code_sums=weight_sums)
    elif weight_codes is None:
        weight_codes = weight.codes().reshape(weight.weight_shape[0], -1)
    out = int_linear(codes, center, step, weight_codes, weight.center, weight.step, bias, weight.bits,
                     product=fp8 and fp8_linear.scaled_product(fp8), columns=columns, code_sums=sums)
    return out.reshape(*x.shape[:-1], -1).to(x.dtype)


@implements(aten.conv2d.default)
@implements_torch_function(F.conv2d)
def _conv2d(func, types, args, kwargs):
    x, weight, bias, stride, padding, dilation, groups = fill_defaults(args, 7, [None, [1, 1], [0, 0], [1, 1], 1])
    if _cpu_eager(x):
        def compute(path: str) -> torch.Tensor:
            w = cpu_linear.dense(weight, x.dtype) if path == "cached" else weight.dequantize(x.dtype)
            return F.conv2d(weight.quantize_input(x, 1), w, bias, stride, padding, dilation, groups)

        return cpu_linear.run(weight, _cpu_key(x, weight, "conv2d"), compute, False)
    return F.conv2d(weight.quantize_input(x, 1), weight.dequantize(x.dtype), bias, stride, padding, dilation, groups)


torch.serialization.add_safe_globals([QSAM2PackedTensor])
