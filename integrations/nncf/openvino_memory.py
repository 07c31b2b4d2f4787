"""SAM2's video memory modules in OpenVINO: the memory encoder and the memory attention as IRs, in place of the
torch modules, called by ``SAM2VideoPredictor`` (``SAM2Base._encode_new_memory`` / ``_prepare_memory_conditioned_
features``) as it calls the torch modules.

* **Memory encoder**: inputs ``pix_feat`` ``(B, C, e, e)`` and the scaled mask ``(B, 1, S, S)``; ``B`` (objects)
  dynamic, sides static (the model's image size). The IR is traced with ``skip_mask_sigmoid=True``, as SAM2's video
  path calls it; a call without it gets the sigmoid in torch first.
* **Memory attention**: the memory grows with the frames (and object pointers) it holds, so its token count is
  dynamic. SAM2 rotates (RoPE) the spatial memory tokens but not the last ``num_obj_ptr_tokens`` (object
  pointers): the IR takes the two apart (``memory``, ``memory_pos``, ``pointers``, ``pointers_pos``, each
  ``(tokens, B, C)`` with dynamic tokens and ``B``), so the number of pointer tokens is a shape, not a constant
  frozen at tracing. The current frame's tokens ``(e·e, B, C)`` are static.

The IRs compute ``memory_io``'s ``MemoryAttentionIO`` / ``MemoryEncoderIO`` (SAM2's modules with RoPE in real
arithmetic, which OpenVINO's PyTorch frontend converts). Memory modules quantized through NNCF
(``memory.quantize_memory``: ``QSAM2MemoryAttention`` / ``QSAM2MemoryEncoder``) export through
``export_openvino``: integer weight constants, and ``FakeQuantize`` on the inputs the recipe (or ``act_bits``)
quantizes, as for the image encoder.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .export import _convert, _run, export_openvino
from .hooks import QSAM2FakeQuantize, QSAM2WeightDecompressor
from .memory import QSAM2MemoryAttention, QSAM2MemoryEncoder
from .memory_io import MemoryAttentionIO, MemoryEncoderIO, split_pointers


def _export(io: nn.Module, example: tuple, shapes: list, path: str, compress_to_fp16: bool) -> Optional[dict]:
    """``io`` with Q-SAM2 hooks through ``export_openvino`` (its report), a float one through ``_convert``."""
    if any(isinstance(m, (QSAM2FakeQuantize, QSAM2WeightDecompressor)) for m in io.modules()):
        return export_openvino(io, example, path, compress_to_fp16=compress_to_fp16, input_shapes=shapes)[1]
    _convert(io, example, shapes, path, compress_to_fp16)
    return None


class OpenVINOMemoryEncoder(nn.Module):
    """``MemoryEncoder``'s call (``forward(pix_feat, masks, skip_mask_sigmoid)``) on an IR."""

    def __init__(self, compiled: Any):
        super().__init__()
        self.compiled, self.request = compiled, compiled.create_infer_request()

    @staticmethod
    def export(encoder: nn.Module, image_size: int, path: str, *, compress_to_fp16: bool) -> Optional[dict]:
        """A float IR, or for a ``QSAM2MemoryEncoder`` (``memory.quantize_memory``) a Q-SAM2 IR through
        ``export_openvino`` (returns its report)."""
        io = encoder.io if isinstance(encoder, QSAM2MemoryEncoder) else MemoryEncoderIO(encoder.eval())
        c, e = io.encoder.pix_feat_proj.in_channels, image_size // 16
        g = torch.Generator().manual_seed(0)
        example = (torch.randn(2, c, e, e, generator=g), torch.rand(2, 1, image_size, image_size, generator=g))
        shapes = [[-1, c, e, e], [-1, 1, image_size, image_size]]
        return _export(io, example, shapes, path, compress_to_fp16)

    def forward(self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False) -> dict:
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        features, pos = _run(self.request, self.compiled, [pix_feat.float(), masks.float()], pix_feat.device)
        return {"vision_features": features, "vision_pos_enc": [pos]}


class OpenVINOMemoryAttention(nn.Module):
    """``MemoryAttention``'s call (``forward(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)``, sequence
    first, as ``SAM2Base`` calls it) on an IR with dynamic memory length."""

    def __init__(self, compiled: Any):
        super().__init__()
        self.compiled, self.request = compiled, compiled.create_infer_request()

    @staticmethod
    def export(attention: nn.Module, image_size: int, mem_dim: int, path: str, *,
               compress_to_fp16: bool) -> Optional[dict]:
        """A float IR, or for a ``QSAM2MemoryAttention`` (``memory.quantize_memory``) a Q-SAM2 IR through
        ``export_openvino`` (returns its report)."""
        n = (image_size // 16) ** 2
        io = attention.io if isinstance(attention, QSAM2MemoryAttention) else MemoryAttentionIO(attention, n)
        if not getattr(io.attention, "batch_first", True) or len(io.attention.layers) == 0:
            raise NotImplementedError("the OpenVINO memory attention expects SAM2's batch-first layers")
        c = io.attention.d_model
        # tracing example: 2 memory frames and 4 pointer tokens for 2 objects (all token counts dynamic)
        g = torch.Generator().manual_seed(0)
        example = tuple(torch.randn(*shape, generator=g) for shape in ((n, 2, c), (n, 2, c), (2 * n, 2, mem_dim),
                                                                        (2 * n, 2, mem_dim), (4, 2, mem_dim),
                                                                        (4, 2, mem_dim)))
        shapes = [[n, -1, c], [n, -1, c]] + [[-1, -1, mem_dim]] * 4
        return _export(io, example, shapes, path, compress_to_fp16)

    def forward(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens: int = 0) -> torch.Tensor:
        inputs = split_pointers(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)
        return _run(self.request, self.compiled, [t.float() for t in inputs], memory.device)[0]
