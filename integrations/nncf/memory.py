"""Q-SAM2 on SAM2's video memory modules (memory attention, memory encoder) through NNCF.

NNCF traces a module's ``forward`` with an example input; its torch backend calls the model with a tuple item as
positional arguments (``nncf.Dataset`` items and ``example_input`` alike), so the memory modules' several inputs
go through NNCF's own pipeline. What NNCF quantizes is ``memory_io``'s ``MemoryAttentionIO`` /
``MemoryEncoderIO``: the computation the OpenVINO IRs hold, so the graph NNCF traces, the hooks and the exported IR
are one. ``QSAM2MemoryAttention`` / ``QSAM2MemoryEncoder`` put them in the model with SAM2's calls (the torch video
predictor runs the fake-quantized or baked modules; ``openvino_sam2`` exports them through ``export_openvino``).

Calibration data is what SAM2's video predictor gives the memory modules while it tracks clips
(``record_memory_inputs``): real memory lengths, object pointers and masks. The layer plan is the recipe's (its
``memory_attention.*`` / ``memory_encoder.*`` layers, their bits and grids, no VRC: the recipes calibrate VRC on
image forwards). The shipped recipes quantize the memory path weight-only (``act_bits: null``) because image-mode
QAT never runs it; here the calibration runs it, so ``act_bits`` can give every quantized memory layer static input
ranges from the recorded calls as well (LSC's initial clips, ``FakeQuantize`` in the IR).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Callable, Optional, Union

import torch
from torch import nn

from .memory_io import MemoryAttentionIO, MemoryEncoderIO, split_pointers
from .pipeline import _set_submodule
from .recipe import quantize_layers

MEMORY_MODULES = ("memory_attention", "memory_encoder")
_IO_PREFIX = {"memory_attention": "attention.", "memory_encoder": "encoder."}


def record_memory_inputs(model: nn.Module, run: Callable[[], object], limit: Optional[int] = None) -> dict:
    """The calls ``run()`` (e.g. SAM2's video predictor tracking a few clips) makes of ``model.memory_attention``
    and ``model.memory_encoder``, as ``MemoryAttentionIO`` / ``MemoryEncoderIO`` inputs: ``{module name: [tuple of
    tensors]}`` (at most ``limit`` per module), ready as ``quantize_memory``'s calibration data."""
    found = {name: [] for name in MEMORY_MODULES}

    def attention_call(module, args, kwargs):
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
        found["memory_attention"].append(split_pointers(**bound))

    def encoder_call(module, args, kwargs):
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
        masks = bound["masks"] if bound.get("skip_mask_sigmoid") else torch.sigmoid(bound["masks"])
        found["memory_encoder"].append((bound["pix_feat"], masks))

    handles = [model.memory_attention.register_forward_pre_hook(attention_call, with_kwargs=True),
               model.memory_encoder.register_forward_pre_hook(encoder_call, with_kwargs=True)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    # plain tensors (the calls may run under inference_mode), float32 as the IRs take them
    return {name: [tuple(t.detach().float().clone() for t in item) for item in calls[:limit]]
            for name, calls in found.items()}


class QSAM2MemoryAttention(nn.Module):
    """SAM2's call of the memory attention (``forward(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)``)
    on an NNCF-quantized ``MemoryAttentionIO`` (``self.io``)."""

    def __init__(self, io: nn.Module):
        super().__init__()
        self.io = io
        self.d_model = io.attention.d_model

    def forward(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens: int = 0) -> torch.Tensor:
        return self.io(*split_pointers(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens))


class QSAM2MemoryEncoder(nn.Module):
    """SAM2's call of the memory encoder (``forward(pix_feat, masks, skip_mask_sigmoid)``) on an NNCF-quantized
    ``MemoryEncoderIO`` (``self.io``, traced with ``skip_mask_sigmoid=True``)."""

    def __init__(self, io: nn.Module):
        super().__init__()
        self.io = io

    def forward(self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False) -> dict:
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        features, pos = self.io(pix_feat, masks)
        return {"vision_features": features, "vision_pos_enc": [pos]}


def quantize_memory(model: nn.Module, recipe, calibration: dict, *, act_bits: Union[int, None, str] = "recipe",
                    keep_nncf: bool = False, **nncf_options) -> nn.Module:
    """A copy of SAM2 ``model`` whose memory attention and memory encoder are NNCF-quantized with Q-SAM2 hooks per
    ``recipe`` (a ``Recipe``, a shipped name or a YAML path); ``model`` itself is not modified (its image encoder,
    float or quantized, is copied as it is).

    ``calibration``: ``{"memory_attention": [...], "memory_encoder": [...]}`` (``record_memory_inputs``).
    ``act_bits``: ``"recipe"`` (the recipe's setting: weight-only in the shipped recipes), or an int (static input
    quantizers at that width on every quantized memory layer), or None (weight-only). ``keep_nncf`` and
    ``nncf_options``: as for ``quantize_with_recipe``. Bake with ``bake(model.memory_attention.io)`` (and the
    encoder's) like an image encoder; ``openvino_sam2`` exports them as Q-SAM2 IRs."""
    from qsam2_ext.recipes import Recipe, load_recipe

    if act_bits != "recipe" and act_bits is not None and (isinstance(act_bits, bool) or not isinstance(act_bits, int)):
        raise ValueError(f"act_bits must be 'recipe', None or an int, got {act_bits!r}")
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    plans = [p for p in recipe.resolve(model, qat=False) if not p.skip]
    io = {"memory_attention": MemoryAttentionIO(model.memory_attention, (model.image_size // 16) ** 2),
          "memory_encoder": MemoryEncoderIO(copy.deepcopy(model.memory_encoder).eval())}
    quantized = {}
    for name in MEMORY_MODULES:
        inside = {_IO_PREFIX[name] + p.fqn[len(name) + 1:]: p for p in plans if p.fqn.startswith(name + ".")}
        if not inside:
            raise ValueError(f"recipe {recipe.name} quantizes no layer of {name}")
        if act_bits != "recipe":
            inside = {fqn: dataclasses.replace(p, act_bits=act_bits) for fqn, p in inside.items()}
        items = calibration.get(name) or []
        if not items:
            raise ValueError(f"no calibration inputs for {name} (record_memory_inputs while tracking a clip)")
        quantized[name] = quantize_layers(io[name], inside, items, recipe.spec.calibration, keep_nncf=keep_nncf,
                                          **nncf_options)
    result = copy.deepcopy(model)
    _set_submodule(result, "memory_attention", QSAM2MemoryAttention(quantized["memory_attention"]))
    _set_submodule(result, "memory_encoder", QSAM2MemoryEncoder(quantized["memory_encoder"]))
    return result.eval()
