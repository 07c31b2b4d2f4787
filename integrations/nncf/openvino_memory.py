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

OpenVINO's PyTorch frontend does not convert SAM2's complex-valued RoPE on CPU (``aten::flatten`` of the complex
frequencies repeated over the memory frames fails with "The operation doesn't allow complex type"), so the traced
copy's ``RoPEAttention`` modules compute the same rotation with real cosines and sines (``_rotary_forward``; the
projections and frequencies are the module's own). The torch model itself is not changed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .export import _convert, _run


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` (..., n, d) read as d/2 complex pairs, times ``cos + i·sin`` (n, d/2): SAM2's ``apply_rotary_enc``."""
    x = x.unflatten(-1, (-1, 2))
    a, b = x[..., 0], x[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def _rotary_forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0):
    """``RoPEAttention.forward`` (eval) in real arithmetic: the same projections, rotation and attention."""
    q, k, v = (self._separate_heads(proj(t), self.num_heads)
               for proj, t in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))
    n = q.shape[-2]
    freqs = self.freqs_cis.cpu()
    if freqs.shape[0] != n:
        freqs = self.compute_cis(end_x=n ** 0.5, end_y=n ** 0.5)
    cos, sin = freqs.real.to(q.dtype), freqs.imag.to(q.dtype)
    q = _rotate(q, cos, sin)
    rope = k.shape[-2] - num_k_exclude_rope
    k_rope, k_rest = k[:, :, :rope], k[:, :, rope:]
    if self.rope_k_repeat:  # memory frames one after another, each rotated like the current frame
        k_rope = _rotate(k_rope.unflatten(2, (-1, n)), cos, sin).flatten(2, 3)
    else:
        k_rope = _rotate(k_rope, cos, sin)
    out = F.scaled_dot_product_attention(q, torch.cat([k_rope, k_rest], dim=2), v)
    return self.out_proj(self._recombine_heads(out))


def _real_rope_copy(attention: nn.Module) -> nn.Module:
    """A copy of ``attention`` whose RoPE attention modules run ``_rotary_forward`` (still instances of their own
    class, so SAM2's ``isinstance(..., RoPEAttention)`` checks hold)."""
    attention = copy.deepcopy(attention).eval()
    for module in list(attention.modules()):
        if hasattr(module, "rope_k_repeat") and hasattr(module, "freqs_cis"):  # sam2's RoPEAttention
            module.__class__ = type(f"Real{type(module).__name__}", (type(module),), {"forward": _rotary_forward})
    return attention


class _MemoryAttentionIO(nn.Module):
    """What the memory attention IR computes (traced for export)."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = _real_rope_copy(attention)

    def forward(self, curr, curr_pos, memory, memory_pos, pointers, pointers_pos):
        return self.attention(curr=curr, curr_pos=curr_pos, memory=torch.cat([memory, pointers]),
                              memory_pos=torch.cat([memory_pos, pointers_pos]), num_obj_ptr_tokens=pointers.shape[0])


class _MemoryEncoderIO(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, pix_feat, masks):
        out = self.encoder(pix_feat, masks, skip_mask_sigmoid=True)
        return out["vision_features"], out["vision_pos_enc"][0]


class OpenVINOMemoryEncoder(nn.Module):
    """``MemoryEncoder``'s call (``forward(pix_feat, masks, skip_mask_sigmoid)``) on an IR."""

    def __init__(self, compiled: Any):
        super().__init__()
        self.compiled, self.request = compiled, compiled.create_infer_request()

    @staticmethod
    def export(encoder: nn.Module, image_size: int, path: str, *, compress_to_fp16: bool) -> None:
        c, e = encoder.pix_feat_proj.in_channels, image_size // 16
        example = (torch.randn(2, c, e, e), torch.randn(2, 1, image_size, image_size))
        _convert(_MemoryEncoderIO(encoder.eval()), example, [[-1, c, e, e], [-1, 1, image_size, image_size]], path,
                 compress_to_fp16)

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
    def export(attention: nn.Module, image_size: int, mem_dim: int, path: str, *, compress_to_fp16: bool) -> None:
        if not getattr(attention, "batch_first", True) or len(attention.layers) == 0:
            raise NotImplementedError("the OpenVINO memory attention expects SAM2's batch-first layers")
        c, n = attention.d_model, (image_size // 16) ** 2
        # tracing example: 2 memory frames and 4 pointer tokens for 2 objects (all token counts dynamic)
        example = (torch.randn(n, 2, c), torch.randn(n, 2, c), torch.randn(2 * n, 2, mem_dim),
                   torch.randn(2 * n, 2, mem_dim), torch.randn(4, 2, mem_dim), torch.randn(4, 2, mem_dim))
        shapes = [[n, -1, c], [n, -1, c]] + [[-1, -1, mem_dim]] * 4
        _convert(_MemoryAttentionIO(attention), example, shapes, path, compress_to_fp16)

    def forward(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens: int = 0) -> torch.Tensor:
        if isinstance(curr, list):
            (curr,), (curr_pos,) = curr, curr_pos
        if curr_pos is None or memory_pos is None:
            raise ValueError("the OpenVINO memory attention expects SAM2's position encodings")
        split = memory.shape[0] - num_obj_ptr_tokens
        inputs = [curr, curr_pos, memory[:split], memory_pos[:split], memory[split:], memory_pos[split:]]
        return _run(self.request, self.compiled, [t.float() for t in inputs], curr.device)[0]
