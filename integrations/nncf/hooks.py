"""NNCF hook modules around qsam2_ext.core: a fake quantizer for QAT and a frozen decompressor for inference.

Both are ``StatefulModuleInterface`` modules, so ``nncf.torch.get_config`` / ``load_from_config`` save and restore
their placement (tensors travel in the state dict).

The fake quantizer keeps NNCF's graph whole: what NNCF's tracer sees of it is one ``clone`` of its input (an op of
NNCF's no-op metatype, which NNCF's graph utilities walk through), and the quantizer's arithmetic fills that clone
with NNCF's tracer disabled. The weight and input edges of a hooked layer therefore stay in the graph, and NNCF's
own steps (``get_const_node``, SmoothQuant, MinMax, strip, weight compression) still find the parameter feeding
the layer. (A body hidden without that traced op leaves the layer's port without an edge; a body traced op by op
leaves a chain of arithmetic NNCF does not walk through.)
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from qsam2_ext.core import (
    QUANTIZERS,
    ActivationGranularity,
    FakeQuantizer,
    WeightGranularity,
    code_range,
    dequantize,
    make_quantizer,
)

from ._nncf import StatefulModuleInterface, disable_function_hook_mode, pack_int4, unpack_int4

_METHOD_OF = {cls: name for name, cls in QUANTIZERS.items()}


def _granularity_config(g) -> dict:
    kind = "weight" if isinstance(g, WeightGranularity) else "activation"
    return {"kind": kind, **dataclasses.asdict(g)}


def _granularity(config: dict):
    config = dict(config)
    kind = config.pop("kind")
    return (WeightGranularity if kind == "weight" else ActivationGranularity)(**config)


class QSAM2FakeQuantize(nn.Module, StatefulModuleInterface):
    """A core fake quantizer (LSC, or a baseline: MinMax, PACT, LSQ) as an NNCF hook.

    Weights: a post-hook on the parameter (``register_post_function_hook(model, "blocks.0.fc1.weight", 0, h)``).
    Activations: a pre-hook on the input port of the consuming op. The quantizer is ``self.quantizer`` (a
    ``qsam2_ext.core.FakeQuantizer``), so the training loop's quantizer parameter group finds its ``alpha``.
    """

    def __init__(self, quantizer: FakeQuantizer):
        super().__init__()
        if type(quantizer) not in _METHOD_OF:
            raise TypeError(f"expected one of the core quantizers {sorted(QUANTIZERS)}, got {type(quantizer).__name__}")
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()  # traced: NNCF's graph sees input -> clone -> consumer (see the module docstring)
        with disable_function_hook_mode():
            out.copy_(self.quantizer(x))  # gradients reach x and the quantizer through the copied values only
        return out

    @property
    def is_weight(self) -> bool:
        return not self.quantizer.tracks_statistics

    def get_config(self) -> dict:
        q = self.quantizer
        config = {"method": _METHOD_OF[type(q)], "bits": q.bits, "granularity": _granularity_config(q.granularity)}
        if hasattr(q, "momentum"):
            config["options"] = {"momentum": q.momentum}
        return config

    @classmethod
    def from_config(cls, state: dict) -> "QSAM2FakeQuantize":
        quantizer = make_quantizer(state["method"], state["bits"], _granularity(state["granularity"]),
                                   **state.get("options", {}))
        return cls(quantizer)

    def extra_repr(self) -> str:
        return "weight" if self.is_weight else "activation"


class QSAM2WeightDecompressor(nn.Module, StatefulModuleInterface):
    """Baked inference weight: the hooked parameter holds the integer codes, this hook returns their grid values
    ``(code + 1/2) * step + center`` (the core's ``dequantize``, so baked and fake-quantized weights agree bit for
    bit with float32 grids).

    Codes of 2/3/4-bit grids are stored two per byte with NNCF's int4 packing (NNCF 3.4 has no 2/3-bit storage on
    torch); 8-bit codes as int8. ``export_openvino`` lowers them to ``u2``/``i4``/``i8`` OpenVINO constants.
    """

    def __init__(self, bits: int, weight_shape: list, grid_shape: list, dtype: str = "float32"):
        super().__init__()
        code_range(bits)  # validates bits
        self.bits, self.weight_shape, self.grid_shape = bits, [int(d) for d in weight_shape], [int(d) for d in grid_shape]
        self.dtype = dtype
        # two codes per byte when they fit in 4 bits and pair up (NNCF's packing needs an even count)
        self.packed = bits <= 4 and torch.Size(self.weight_shape).numel() % 2 == 0
        self.register_buffer("center", torch.zeros(self.grid_shape))
        self.register_buffer("step", torch.ones(self.grid_shape))

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        """Storage of int8 ``codes`` shaped like the weight (what the hooked parameter holds after baking)."""
        return pack_int4(codes.reshape(-1)) if self.packed else codes.to(torch.int8)

    def codes(self, stored: torch.Tensor) -> torch.Tensor:
        """The signed int8 codes held by ``stored`` (what the hooked parameter holds)."""
        return unpack_int4(stored) if self.packed else stored

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        codes = self.codes(stored)
        out, groups = self.grid_shape
        codes = codes.reshape(out, groups, -1)
        w = dequantize(codes, self.center.unsqueeze(-1), self.step.unsqueeze(-1))
        return w.reshape(self.weight_shape).to(getattr(torch, self.dtype))

    def get_config(self) -> dict:
        return {"bits": self.bits, "weight_shape": self.weight_shape, "grid_shape": self.grid_shape, "dtype": self.dtype}

    @classmethod
    def from_config(cls, state: dict) -> "QSAM2WeightDecompressor":
        return cls(**state)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, weight_shape={tuple(self.weight_shape)}, groups={self.grid_shape[1]}"


def decompressor_for(hook: QSAM2FakeQuantize, weight: torch.Tensor) -> tuple[QSAM2WeightDecompressor, torch.Tensor]:
    """The decompressor and stored codes that reproduce ``hook``'s fake-quantized ``weight`` (its current grid)."""
    if not hook.is_weight:
        raise TypeError("only weight quantizers can be baked")
    codes, center, step = hook.quantizer.encode(weight.detach())
    dec = QSAM2WeightDecompressor(hook.quantizer.bits, list(weight.shape), list(center.shape),
                                  str(weight.dtype).removeprefix("torch."))
    dec.center.copy_(center)
    dec.step.copy_(step)
    return dec.to(weight.device), dec.pack(codes)
