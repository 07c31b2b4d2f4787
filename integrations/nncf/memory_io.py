"""What SAM2's memory IRs compute, as torch modules (traced by NNCF for quantization and by OpenVINO for export).

* ``MemoryAttentionIO(attention, tokens)``: SAM2's memory attention on ``(curr, curr_pos, memory, memory_pos,
  pointers, pointers_pos)``, each ``(tokens, B, C)``: the spatial memory and the object-pointer tokens (which SAM2
  does not rotate) are separate inputs, so the number of pointer tokens is a shape, not a constant frozen at
  tracing (``split_pointers`` turns SAM2's call into these inputs).
* ``MemoryEncoderIO(encoder)``: SAM2's memory encoder on ``(pix_feat, masks)`` with ``skip_mask_sigmoid=True``, as
  SAM2's video path calls it; returns ``(features, position encoding)``.

OpenVINO's PyTorch frontend does not convert SAM2's complex-valued RoPE on CPU (``aten::flatten`` of the complex
frequencies repeated over the memory frames fails with "The operation doesn't allow complex type"), and NNCF's
MinMax step deep-copies its traced graph, which fails ("cannot pickle 'getset_descriptor' object") when the forward
reads ``Tensor.real``; so the copy's ``RoPEAttention`` modules compute the same rotation with real cosines and sines
held as buffers (``_rotary_forward``; the projections and frequencies are the module's own). The torch model itself
is not changed.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` (..., n, d) read as d/2 complex pairs, times ``cos + i·sin`` (n, d/2): SAM2's ``apply_rotary_enc``."""
    x = x.unflatten(-1, (-1, 2))
    a, b = x[..., 0], x[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def _rotary_forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0):
    """``RoPEAttention.forward`` (eval) in real arithmetic: the same projections, rotation and attention, with the
    module's frequencies as real cosines and sines (``rope_cos``, ``rope_sin``: buffers, so tracers see constants)."""
    q, k, v = (self._separate_heads(proj(t), self.num_heads)
               for proj, t in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))
    n = q.shape[-2]
    if n != self.rope_cos.shape[0]:
        raise ValueError(f"this copy rotates {self.rope_cos.shape[0]} query tokens, got {n}")
    cos, sin = self.rope_cos.to(q.dtype), self.rope_sin.to(q.dtype)
    q = _rotate(q, cos, sin)
    rope = k.shape[-2] - num_k_exclude_rope
    k_rope, k_rest = k[:, :, :rope], k[:, :, rope:]
    if self.rope_k_repeat:  # memory frames one after another, each rotated like the current frame
        k_rope = _rotate(k_rope.unflatten(2, (-1, n)), cos, sin).flatten(2, 3)
    else:
        k_rope = _rotate(k_rope, cos, sin)
    out = F.scaled_dot_product_attention(q, torch.cat([k_rope, k_rest], dim=2), v)
    return self.out_proj(self._recombine_heads(out))


def _real_rope_copy(attention: nn.Module, tokens: int) -> nn.Module:
    """A copy of ``attention`` whose RoPE attention modules run ``_rotary_forward`` on ``tokens`` query tokens
    (still instances of their own class, so SAM2's ``isinstance(..., RoPEAttention)`` checks hold)."""
    attention = copy.deepcopy(attention).eval()
    for module in list(attention.modules()):
        if hasattr(module, "rope_k_repeat") and hasattr(module, "freqs_cis"):  # sam2's RoPEAttention
            freqs = module.freqs_cis.cpu()
            if freqs.shape[0] != tokens:
                freqs = module.compute_cis(end_x=tokens ** 0.5, end_y=tokens ** 0.5)
            module.register_buffer("rope_cos", freqs.real.float().contiguous(), persistent=False)
            module.register_buffer("rope_sin", freqs.imag.float().contiguous(), persistent=False)
            module.__class__ = type(f"Real{type(module).__name__}", (type(module),), {"forward": _rotary_forward})
    return attention


class MemoryAttentionIO(nn.Module):
    """What the memory attention IR computes (traced for export)."""

    def __init__(self, attention: nn.Module, tokens: int):
        super().__init__()
        self.attention = _real_rope_copy(attention, tokens)

    def forward(self, curr, curr_pos, memory, memory_pos, pointers, pointers_pos):
        return self.attention(curr=curr, curr_pos=curr_pos, memory=torch.cat([memory, pointers]),
                              memory_pos=torch.cat([memory_pos, pointers_pos]), num_obj_ptr_tokens=pointers.shape[0])


class MemoryEncoderIO(nn.Module):
    """What the memory encoder IR computes."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, pix_feat, masks):
        out = self.encoder(pix_feat, masks, skip_mask_sigmoid=True)
        return out["vision_features"], out["vision_pos_enc"][0]


def split_pointers(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens: int = 0) -> tuple:
    """``MemoryAttentionIO``'s inputs from SAM2's call of the memory attention (``SAM2Base`` passes ``curr`` and
    ``curr_pos`` as one-element lists and the object pointers as the last ``num_obj_ptr_tokens`` memory tokens)."""
    if isinstance(curr, list):
        (curr,), (curr_pos,) = curr, curr_pos
    if curr_pos is None or memory_pos is None:
        raise ValueError("the exported memory attention expects SAM2's position encodings")
    split = memory.shape[0] - num_obj_ptr_tokens
    return curr, curr_pos, memory[:split], memory_pos[:split], memory[split:], memory_pos[split:]
