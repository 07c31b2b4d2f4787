"""The rows of the GPU speed benchmark (``speed.py``): what each quantizes and how, and the models they run on."""

from __future__ import annotations

import contextlib

import torch


ROWS = {  # name: (quantization, compiled)
    "bf16 eager": (None, False),
    "bf16 compiled": (None, True),
    "torchao int8 dynamic": ("torchao_int8", True),
    "torchao int4 weight-only": ("torchao_int4", True),
    "torchao int8 dynamic eager": ("torchao_int8", False),
    "torchao int4 weight-only eager": ("torchao_int4", False),
    "ours W2A16": ((2, None), True),
    "ours W4A16": ((4, None), True),
    "ours W8A8": ((8, 8), True),
    "ours W2A8": ((2, 8), True),
    "ours W2A16 eager": ((2, None), False),
    "ours W8A8 eager": ((8, 8), False),
    "torchao float8 rowwise": ("torchao_fp8", True),
    "ours W2A4 (FP8)": ((2, 4), True),
    "ours W4A4 (FP8)": ((4, 4), True),
    "ours W8A8 (int8 GEMM)": ((8, 8), True),
    "ours W2A8 (int8 GEMM)": ((2, 8), True),
}
BASELINE = "bf16 compiled"
# rows traced inside ``qsam2_ext.integer_matmul()``: the code product on tensor cores (A4: FP8, exact, path measured
# per shape by ``qsam2_ext.kernels.fp8_linear``; A8: ``torch._int_mm``) instead of the dequantize expression
INTEGER_ROWS = ("ours W2A4 (FP8)", "ours W4A4 (FP8)", "ours W8A8 (int8 GEMM)", "ours W2A8 (int8 GEMM)")


def row_context(row: str, integer_matmul: bool = False):
    """The context a row's model is traced and called in: ``integer_matmul()`` for ``INTEGER_ROWS`` (and for every
    row with ``--integer-matmul``; force: only layers on CPUs read it, ours are on CUDA)."""
    import qsam2_ext

    if row in INTEGER_ROWS or integer_matmul:
        return qsam2_ext.integer_matmul(force=True)
    return contextlib.nullcontext()


def is_linear(module, fqn="") -> bool:
    return isinstance(module, torch.nn.Linear)


def quantize_encoder(encoder: torch.nn.Module, quantization) -> None:
    from torchao.quantization import quantize_

    if quantization is None:
        return
    # torchao's configs by default set its recommended inductor options process-wide, coordinate-descent tuning among
    # them: hiera_t's encoder then had not finished compiling after 115-170 s on an H200 (23-60 s without), and every
    # later row in the process would compile tuned too. Off, every compiled row compiles with the same options
    # (``--inductor`` sets them for all).
    if quantization == "torchao_int8":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        quantize_(encoder, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False), filter_fn=is_linear)
    elif quantization == "torchao_fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        # per-row scales, the FP8 GEMM torch._scaled_mm (cuBLASLt / CUTLASS rowwise), activations quantized by
        # inductor-generated kernels; its default kernel preference
        quantize_(encoder, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False),
                  filter_fn=is_linear)
    elif quantization == "torchao_int4":
        from torchao.quantization import Int4WeightOnlyConfig

        # tinygemm (torch's own _weight_int4pack_mm); torchao 0.18's default "plain" format needs the mslk package
        quantize_(encoder, Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d",
                                                set_inductor_config=False),
                  filter_fn=lambda m, fqn: is_linear(m) and m.in_features % 128 == 0)
    else:
        import qsam2_ext

        bits, act_bits = quantization
        quantize_(encoder, qsam2_ext.qsam2_config(bits=bits, act_bits=act_bits), filter_fn=is_linear)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds, through tensor subclasses (torchao's and ours)."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    if isinstance(t, torch.nn.Parameter) and type(t.data) is not torch.Tensor:
        return tensor_bytes(t.data)
    return t.numel() * t.element_size()


def weight_bytes(encoder: torch.nn.Module) -> tuple[int, int]:
    """(bytes of the Linear weights, bytes of all parameters and buffers) of the encoder."""
    linear = sum(tensor_bytes(m.weight) for m in encoder.modules() if is_linear(m))
    total = sum(tensor_bytes(t) for t in encoder.state_dict().values())
    return linear, total


class Bf16Encoder(torch.nn.Module):
    """The image encoder in pure bf16 inside SAM2's float32 + autocast pipeline: inputs cast on entry, autocast
    off inside (it would run LayerNorm in float32 and hand Linear layers float32 inputs)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor):
        with torch.autocast("cuda", enabled=False):
            return self.encoder(images.to(torch.bfloat16))


def build(config: str, checkpoint, video: bool):
    from qsam2_ext.sam2.models import build_model

    model = build_model(config, checkpoint, device="cuda", video=video).eval()
    model.image_encoder = Bf16Encoder(model.image_encoder.to(torch.bfloat16))
    return model
