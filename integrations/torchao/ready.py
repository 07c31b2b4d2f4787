"""``check_ready``: one check over a whole model before converting what several prepare configs prepared."""

from __future__ import annotations

from torch import nn

from qsam2_ext.core import FakeQuantized

from . import vrc


def check_ready(model: nn.Module) -> None:
    """Raise, naming every layer, if any prepared layer of ``model`` cannot be converted yet.

    Converting checks the layers of each prepare config before touching any; when an ``FqnToConfig`` mixed
    several prepare configs, call this first to get that guarantee for the whole model.
    """
    errors = []
    for name, layer in model.named_modules():
        try:
            if isinstance(layer, FakeQuantized):
                layer.check_ready()
            if hasattr(layer, vrc.STATE):
                vrc.check(layer)
        except (RuntimeError, ValueError) as e:
            errors.append(f"{name}: {e}")
    if errors:
        raise RuntimeError(f"{len(errors)} prepared layer(s) are not ready:\n  " + "\n  ".join(errors))
