"""A SAM2 image encoder that runs an OpenVINO IR, in place of ``model.image_encoder``.

``SAM2ImagePredictor`` (and everything else that calls ``model.image_encoder(images)``) then runs the IR for the
image embedding and torch for the prompt encoder and mask decoder::

    ov_encoder = OpenVINOImageEncoder.export(model.image_encoder, example, "encoder.xml", compress_to_fp16=False)
    model.image_encoder = ov_encoder
    predictor = SAM2ImagePredictor(model)

The IR has static shapes (the example's); the encoder's nested outputs (``vision_features``, ``vision_pos_enc``,
``backbone_fpn``) are flattened for OpenVINO and rebuilt with the tree structure recorded at export.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten


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
        import openvino as ov

        core = core or ov.Core()
        with torch.no_grad():
            treespec = tree_flatten(encoder(example_input))[1]
        return cls(core.compile_model(ir, "CPU", config or {}), treespec, example_input.shape)

    @classmethod
    def export(cls, encoder: nn.Module, example_input: torch.Tensor, path: str, *, compress_to_fp16: bool,
               config: Optional[dict] = None) -> "OpenVINOImageEncoder":
        """Q-SAM2 encoders (with Q-SAM2 hooks) through ``export_openvino``; others through ``ov.convert_model``."""
        from .export import export_openvino, float_ir

        if any(type(m).__name__ in ("QSAM2FakeQuantize", "QSAM2WeightDecompressor") for m in encoder.modules()):
            export_openvino(encoder, example_input, path, compress_to_fp16=compress_to_fp16)
        else:
            float_ir(encoder, example_input, path, compress_to_fp16=compress_to_fp16)
        return cls.compile(path, encoder, example_input, config)

    def forward(self, images: torch.Tensor) -> dict:
        if tuple(images.shape) != self.input_shape:
            raise ValueError(f"this IR takes images of shape {self.input_shape}, got {tuple(images.shape)}")
        self.request.infer([images.detach().cpu().float().numpy()])
        outputs = [torch.from_numpy(self.request.get_output_tensor(i).data.copy()).to(images.device)
                   for i in range(len(self.compiled.outputs))]
        return tree_unflatten(outputs, self.treespec)
