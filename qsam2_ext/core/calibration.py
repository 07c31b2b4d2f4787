"""Run VRC over a model: observe the inputs of linear layers during ordinary forwards, then update weights.

Linear-equivalent layers are ``nn.Linear`` and 1x1 ``nn.Conv2d`` (stride 1, no padding, one group), whose input
rows are the channel vectors of every pixel. Rows that are padding (SAM2's Hiera window padding) are removed by
an optional ``row_masks`` callable that returns, for a layer, a boolean mask over the rows of its current input
(see ``qsam2_ext.sam2.hiera``).

Updates are transactional: every layer's statistics and new weight are checked and computed before the first
weight is written, so an error leaves the model untouched.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from .vrc import DEFAULT_LAM_REL, CalibrationError, GramObserver, VRCReport, vrc_report, vrc_solve

RowMaskFn = Callable[[nn.Module], Optional[torch.Tensor]]


def is_linear_like(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.groups == 1
        and module.padding in ((0, 0), "valid")
    )


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The ``(out, in)`` matrix of a linear-equivalent layer (a view of its weight)."""
    return module.weight.reshape(module.weight.shape[0], -1)


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input as ``(..., in)`` rows: Linear inputs as they are, NCHW conv inputs channels-last."""
    return x.movedim(1, -1) if isinstance(module, nn.Conv2d) else x


def apply_vrc(
    layers: Iterable[tuple[str, nn.Module, GramObserver]], lam_rel: float = DEFAULT_LAM_REL
) -> dict[str, VRCReport]:
    """Update every layer's weight in place with VRC; nothing is written unless every layer can be updated."""
    planned = []
    for name, module, observer in layers:
        observer.check()
        weight = weight_matrix(module)
        try:
            new_weight, lam = vrc_solve(weight, observer.gram.to(weight.device), lam_rel)
        except ValueError as e:
            raise CalibrationError(f"layer {name!r}: {e}") from e
        if not torch.isfinite(new_weight).all():
            raise CalibrationError(f"layer {name!r}: VRC produced a non-finite weight")
        planned.append((name, module, observer, new_weight, lam))
    reports = {}
    with torch.no_grad():
        for name, module, observer, new_weight, lam in planned:
            reports[name] = vrc_report(name, weight_matrix(module), new_weight, observer.gram, observer.tokens, lam)
            module.weight.copy_(new_weight.reshape(module.weight.shape))
    return reports


class VRCCalibration:
    """Context manager that accumulates input Grams of the given layers during forwards.

    >>> with VRCCalibration.for_model(model.image_encoder) as calib:
    ...     for images in loader:
    ...         model.image_encoder(images)
    >>> reports = calib.apply(lam_rel=1e-2)
    """

    def __init__(self, layers: Mapping[str, nn.Module], row_masks: Optional[RowMaskFn] = None):
        for name, module in layers.items():
            if not is_linear_like(module):
                raise TypeError(f"layer {name!r} ({type(module).__name__}) is not a Linear or 1x1 Conv2d")
        self.layers = dict(layers)
        self.row_masks = row_masks
        self.observers = {name: GramObserver(weight_matrix(m).shape[1], name) for name, m in self.layers.items()}
        self._handles: list = []

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
        row_masks: Optional[RowMaskFn] = None,
    ) -> "VRCCalibration":
        """All linear-equivalent layers of ``model`` (or those ``filter_fn(module, name)`` accepts)."""
        layers = {
            name: m
            for name, m in model.named_modules()
            if is_linear_like(m) and (filter_fn is None or filter_fn(m, name))
        }
        if not layers:
            raise ValueError("no Linear or 1x1 Conv2d layer selected for VRC")
        return cls(layers, row_masks)

    def _hook(self, name: str):
        observer = self.observers[name]

        def hook(module, args):
            mask = self.row_masks(module) if self.row_masks is not None else None
            observer.update(input_rows(module, args[0]), mask)

        return hook

    def __enter__(self) -> "VRCCalibration":
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def apply(self, lam_rel: float = DEFAULT_LAM_REL) -> dict[str, VRCReport]:
        return apply_vrc(((n, m, self.observers[n]) for n, m in self.layers.items()), lam_rel)
