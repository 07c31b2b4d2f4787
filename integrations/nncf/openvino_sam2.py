"""SAM2 in OpenVINO: the image encoder, prompt encoder and mask decoder as IRs, in place of the torch modules.

``SAM2ImagePredictor`` (and everything else that calls ``model.image_encoder``, ``model.sam_prompt_encoder`` and
``model.sam_mask_decoder``) then runs the IRs with the calls it makes of the torch modules::

    model = qn.openvino_sam2(model, "sam2_ir/", compress_to_fp16=False)   # or encoder=q.image_encoder (Q-SAM2)
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(image); masks, scores, _ = predictor.predict(box=box, multimask_output=False)

* **Image encoder**: static shapes by default (``1×3×S×S``, the model's image size; ``dynamic_shapes=True``
  frees batch and sides); a Q-SAM2 encoder (NNCF hooks) goes
  through ``export_openvino``, a float one through ``ov.convert_model``. Its nested outputs are flattened for
  OpenVINO and rebuilt with the tree structure recorded at export.
* **Prompt encoder**: inputs ``coords`` ``(B, N, 2)``, ``labels`` ``(B, N)``, ``mask_input`` ``(B, 1, 4e, 4e)``
  and ``has_mask``; the dense embedding is ``has_mask · mask_downscaling(mask) + (1 − has_mask) · no_mask_embed``
  (exact for ``has_mask`` 0 or 1). ``B`` and ``N`` are dynamic (prompts vary; padding them would change SAM2's
  result). Boxes come as corner points with labels 2/3, as ``SAM2ImagePredictor`` sends them.
* **Mask decoder**: ``predict_masks`` with dynamic prompt batch and token count (one image embedding per prompt,
  repeated by the wrapper for ``repeat_image``, as SAM2 does); the choice among the masks
  (``multimask_output``, the stability-based choice of a single mask) is SAM2's own code, run on the IR's
  outputs. Its ``conv_s0`` / ``conv_s1`` (two 1×1 convolutions that ``SAM2Base.forward_image`` applies to the
  encoder's high-resolution features) and the ``no_mem_embed`` addition stay in torch, as does the upsampling of
  masks to the image size.

* **Memory encoder and memory attention** (``openvino_memory``): what ``SAM2VideoPredictor`` adds for video; the
  memory attention's memory length (frames and object pointers in memory) is dynamic.

``SAM2VideoPredictor`` then runs every learned module of SAM2 in OpenVINO except ``conv_s0`` / ``conv_s1`` and the
small object-pointer projections (several objects: one image embedding per object).
"""

from __future__ import annotations

import os
import types
from typing import Any, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from .export import _convert, _run
from .openvino_memory import OpenVINOMemoryAttention, OpenVINOMemoryEncoder


def _compile(ir: Any, config: Optional[dict], core: Any = None):
    import openvino as ov

    return (core or ov.Core()).compile_model(ir, "CPU", config or {})


class OpenVINOImageEncoder(nn.Module):
    """Runs a compiled OpenVINO model and returns the torch encoder's output structure."""

    def __init__(self, compiled: Any, treespec, input_shape: tuple[int, ...]):
        super().__init__()
        self.compiled, self.treespec, self.input_shape = compiled, treespec, tuple(input_shape)
        self.request = compiled.create_infer_request()

    @classmethod
    def compile(cls, ir: Any, encoder: nn.Module, example_input: torch.Tensor, config: Optional[dict] = None,
                core: Any = None) -> "OpenVINOImageEncoder":
        """``ir``: an ``ov.Model`` or an .xml path converted from ``encoder`` with ``example_input``."""
        with torch.no_grad():
            treespec = tree_flatten(encoder(example_input))[1]
        return cls(_compile(ir, config, core), treespec, example_input.shape)

    @classmethod
    def export(cls, encoder: nn.Module, example_input: torch.Tensor, path: str, *, compress_to_fp16: bool,
               config: Optional[dict] = None, dynamic_shapes: bool = False) -> "OpenVINOImageEncoder":
        """Q-SAM2 encoders (with Q-SAM2 hooks) through ``export_openvino``; others through ``ov.convert_model``."""
        from .export import export_openvino, float_ir

        if any(type(m).__name__ in ("QSAM2FakeQuantize", "QSAM2WeightDecompressor") for m in encoder.modules()):
            export_openvino(encoder, example_input, path, compress_to_fp16=compress_to_fp16,
                            dynamic_shapes=dynamic_shapes)
        else:
            float_ir(encoder, example_input, path, compress_to_fp16=compress_to_fp16, dynamic_shapes=dynamic_shapes)
        return cls.compile(path, encoder, example_input, config)

    def forward(self, images: torch.Tensor) -> dict:
        static = self.compiled.input(0).get_partial_shape().is_static
        if static and tuple(images.shape) != self.input_shape:
            raise ValueError(f"this IR takes images of shape {self.input_shape}, got {tuple(images.shape)}")
        return tree_unflatten(_run(self.request, self.compiled, [images.float()], images.device), self.treespec)


class _PromptEncoderIO(nn.Module):
    """What the prompt encoder IR computes (traced for export)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, coords, labels, mask_input, has_mask):
        sparse, no_mask = self.encoder(points=(coords, labels), boxes=None, masks=None)
        dense = has_mask * self.encoder._embed_masks(mask_input) + (1 - has_mask) * no_mask
        return sparse, dense


class OpenVINOPromptEncoder(nn.Module):
    """``PromptEncoder``'s calls (``forward(points, boxes=None, masks)``, ``get_dense_pe()``) on an IR."""

    def __init__(self, compiled: Any, encoder: nn.Module):
        super().__init__()
        self.compiled, self.request = compiled, compiled.create_infer_request()
        self.embed_dim, self.image_embedding_size = encoder.embed_dim, encoder.image_embedding_size
        self.input_image_size, self.mask_input_size = encoder.input_image_size, encoder.mask_input_size
        self.register_buffer("dense_pe", encoder.get_dense_pe().detach().clone())

    @staticmethod
    def export(encoder: nn.Module, path: str, *, compress_to_fp16: bool) -> None:
        import openvino as ov

        h, w = encoder.mask_input_size
        example = (torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.int32), torch.zeros(1, 1, h, w),
                   torch.zeros(1))
        shapes = [[-1, -1, 2], [-1, -1], [-1, 1, h, w], [1]]
        types = (ov.Type.f32, ov.Type.i32, ov.Type.f32, ov.Type.f32)
        _convert(_PromptEncoderIO(encoder.eval()), example, list(zip(shapes, types)), path, compress_to_fp16)

    def get_dense_pe(self) -> torch.Tensor:
        return self.dense_pe

    def forward(self, points, boxes, masks):
        if points is None or boxes is not None:
            raise NotImplementedError("the OpenVINO prompt encoder takes points (boxes as corner points with labels "
                                      "2 and 3, as SAM2ImagePredictor sends them) and an optional mask")
        coords, labels = points
        has_mask = torch.ones(1) if masks is not None else torch.zeros(1)
        if masks is None:
            masks = torch.zeros(coords.shape[0], 1, *self.mask_input_size)
        sparse, dense = _run(self.request, self.compiled, [coords.float(), labels.to(torch.int32), masks.float(),
                                                           has_mask], coords.device)
        return sparse, dense


class _MaskDecoderIO(nn.Module):
    """What the mask decoder IR computes (traced for export): all masks, before SAM2 picks among them."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings, image_pe, sparse, dense, feat_s0, feat_s1):
        return self.decoder.predict_masks(image_embeddings=image_embeddings, image_pe=image_pe,
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          repeat_image=False, high_res_features=[feat_s0, feat_s1])


class OpenVINOMaskDecoder(nn.Module):
    """``MaskDecoder``'s call on an IR; the mask choice is SAM2's own (``MaskDecoder.forward``'s rules)."""

    def __init__(self, compiled: Any, decoder: nn.Module):
        super().__init__()
        self.compiled, self.request = compiled, compiled.create_infer_request()
        self.conv_s0, self.conv_s1 = decoder.conv_s0, decoder.conv_s1  # SAM2Base.forward_image applies them
        for name in ("dynamic_multimask_via_stability", "dynamic_multimask_stability_delta",
                     "dynamic_multimask_stability_thresh", "use_multimask_token_for_obj_ptr"):
            setattr(self, name, getattr(decoder, name))
        cls = type(decoder)
        self._get_stability_scores = types.MethodType(cls._get_stability_scores, self)
        self._dynamic_multimask_via_stability = types.MethodType(cls._dynamic_multimask_via_stability, self)

    @staticmethod
    def export(decoder: nn.Module, image_size: int, path: str, *, compress_to_fp16: bool) -> None:
        if not decoder.use_high_res_features:
            raise NotImplementedError("the OpenVINO mask decoder expects SAM2's high-resolution features")
        c, e = decoder.transformer_dim, image_size // 16
        example = (torch.randn(1, c, e, e), torch.randn(1, c, e, e), torch.randn(1, 3, c), torch.randn(1, c, e, e),
                   torch.randn(1, c // 8, 4 * e, 4 * e), torch.randn(1, c // 4, 2 * e, 2 * e))
        shapes = [[-1, c, e, e], [1, c, e, e], [-1, -1, c], [-1, c, e, e], [-1, c // 8, 4 * e, 4 * e],
                  [-1, c // 4, 2 * e, 2 * e]]  # image batch: one, or one per prompt
        _convert(_MaskDecoderIO(decoder.eval()), example, shapes, path, compress_to_fp16)

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output: bool, repeat_image: bool, high_res_features=None):
        if high_res_features is None:
            raise ValueError("the OpenVINO mask decoder expects SAM2's high-resolution features")
        batch = sparse_prompt_embeddings.shape[0]
        if repeat_image:  # as MaskDecoder.predict_masks does (the high-resolution features broadcast)
            image_embeddings = torch.repeat_interleave(image_embeddings, batch, dim=0)
        elif image_embeddings.shape[0] != batch:
            raise ValueError("one image embedding per prompt batch entry, or repeat_image")
        masks, iou_pred, mask_tokens_out, object_score_logits = _run(
            self.request, self.compiled, [image_embeddings, image_pe, sparse_prompt_embeddings,
                                          dense_prompt_embeddings, *high_res_features], image_embeddings.device)
        if multimask_output:  # MaskDecoder.forward's choice, on the IR's outputs
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability:
            masks, iou_pred = self._dynamic_multimask_via_stability(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]
        tokens = mask_tokens_out[:, 1:] if multimask_output and self.use_multimask_token_for_obj_ptr else \
            mask_tokens_out[:, 0:1]
        return masks, iou_pred, tokens, object_score_logits


def openvino_sam2(model: nn.Module, folder: str, *, compress_to_fp16: bool, example: Optional[torch.Tensor] = None,
                  config: Optional[dict] = None, dynamic_shapes: bool = False) -> nn.Module:
    """Export ``model``'s image encoder (float, or Q-SAM2 through NNCF), prompt encoder, mask decoder, memory
    encoder and memory attention to ``folder`` (``image_encoder.xml``, ``prompt_encoder.xml``, ``mask_decoder.xml``,
    ``memory_encoder.xml``, ``memory_attention.xml``) and put their compiled IRs in
    ``model`` in place of the torch modules (in place; returns ``model``). ``example``: a ``1×3×S×S`` image batch
    for tracing and the export check (default: seeded noise); ``config``: the CPU plugin's compile options;
    ``dynamic_shapes``: an image encoder IR with free batch and sides (SAM2 itself still expects its image size)."""
    import openvino as ov

    os.makedirs(folder, exist_ok=True)
    model.eval()
    size = model.image_size
    if example is None:
        example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    core = ov.Core()
    image_encoder = OpenVINOImageEncoder.export(model.image_encoder.eval(), example,
                                                os.path.join(folder, "image_encoder.xml"),
                                                compress_to_fp16=compress_to_fp16, config=config,
                                                dynamic_shapes=dynamic_shapes)
    paths = {name: os.path.join(folder, f"{name}.xml")
             for name in ("prompt_encoder", "mask_decoder", "memory_encoder", "memory_attention")}
    OpenVINOPromptEncoder.export(model.sam_prompt_encoder, paths["prompt_encoder"], compress_to_fp16=compress_to_fp16)
    OpenVINOMaskDecoder.export(model.sam_mask_decoder, size, paths["mask_decoder"], compress_to_fp16=compress_to_fp16)
    OpenVINOMemoryEncoder.export(model.memory_encoder, size, paths["memory_encoder"], compress_to_fp16=compress_to_fp16)
    OpenVINOMemoryAttention.export(model.memory_attention, size, model.mem_dim, paths["memory_attention"],
                                   compress_to_fp16=compress_to_fp16)
    compiled = {name: _compile(path, config, core) for name, path in paths.items()}
    model.sam_prompt_encoder = OpenVINOPromptEncoder(compiled["prompt_encoder"], model.sam_prompt_encoder)
    model.sam_mask_decoder = OpenVINOMaskDecoder(compiled["mask_decoder"], model.sam_mask_decoder)
    model.memory_encoder = OpenVINOMemoryEncoder(compiled["memory_encoder"])
    model.memory_attention = OpenVINOMemoryAttention(compiled["memory_attention"])
    model.image_encoder = image_encoder
    return model
