"""qsam2_ext: Q-SAM2 (Variance-Reduced Calibration + Learnable Statistical Clipping) for SAM2.

``import qsam2_ext`` is cheap: it loads the framework-free core and registers the packaged SAM2 configs with Hydra
(no model code). The torchao entry points below import torchao (and register Q-SAM2 with ``quantize_``) the first
time one of them is used::

    from torchao.quantization import quantize_
    import qsam2_ext
    quantize_(model, qsam2_ext.qsam2_config(bits=2))
"""

__version__ = "0.1.0"

import importlib
import sys

from . import core  # noqa: E402,F401
from .errors import BadFileError, NonFiniteError, OutputFolderError, QSAM2Error  # noqa: F401

# calibration masks SAM2's Hiera window padding whenever sam2 is loaded (core imports no model code itself)
core.row_masks.register_row_mask_source("qsam2_ext.sam2.hiera", trigger="sam2")

_TORCHAO_API = {
    "LSCFakeQuantizeConfig", "QSAM2Config", "QSAM2PackedTensor", "QSAM2PackingFormat", "QSAM2QATConfig", "VRCConfig",
    "check_ready", "fast_int8_cpu", "integer_matmul",
    "qsam2_config", "read_metadata", "read_quantized", "save_quantized", "storage_report", "vrc_config", "vrc_reports",
}
_SAM2_API = {"load_quantized": "qsam2_ext.sam2.artifact", "default_checkpoint": "qsam2_ext.sam2.models"}
_SUBMODULES = {"integrations", "recipes", "sam2", "train"}


def __getattr__(name):
    if name in _TORCHAO_API:
        from .integrations import torchao as _torchao

        return getattr(_torchao, name)
    if name in _SAM2_API:
        return getattr(importlib.import_module(_SAM2_API[name]), name)
    if name in _SUBMODULES:  # `qsam2_ext.sam2.models...` works after a bare `import qsam2_ext`
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'qsam2_ext' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _TORCHAO_API | set(_SAM2_API) | _SUBMODULES)


def _expose_sam2_configs() -> None:
    """Let sam2's ``build_sam2("configs/qsam2/qsam2_mini.yaml", ...)`` find the packaged config after
    ``import qsam2_ext``, in every kind of install (an editable one hides the Hydra search-path plugin from Hydra's
    scan). Registering the plugin with Hydra imports neither sam2 nor any model code; only if sam2 was imported
    first (its Hydra search path already fixed) is that search path rebuilt."""
    try:
        from hydra.core.plugins import Plugins

        from hydra_plugins.qsam2_ext import QSAM2ConfigSearchPath
    except ImportError:  # Hydra comes with sam2 (a dependency): the SAM2 entry points say so when it is missing
        return
    Plugins.instance().register(QSAM2ConfigSearchPath)
    if "sam2" in sys.modules:
        from .sam2.models import require_sam2

        require_sam2()


_expose_sam2_configs()
