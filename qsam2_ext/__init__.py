"""qsam2_ext: Q-SAM2 (Variance-Reduced Calibration + Learnable Statistical Clipping) for SAM2.

``import qsam2_ext`` is cheap: it loads the framework-free core only. The torchao entry points below import
torchao (and register Q-SAM2 with ``quantize_``) the first time one of them is used::

    from torchao.quantization import quantize_
    import qsam2_ext
    quantize_(model, qsam2_ext.qsam2_config(bits=2))
"""

__version__ = "0.1.0"

from . import core  # noqa: E402,F401

# calibration masks SAM2's Hiera window padding whenever sam2 is loaded (core imports no model code itself)
core.row_masks.register_row_mask_source("qsam2_ext.sam2.hiera", trigger="sam2")

_TORCHAO_API = {
    "LSCFakeQuantizeConfig", "QSAM2Config", "QSAM2PackedTensor", "QSAM2PackingFormat", "QSAM2QATConfig", "VRCConfig",
    "check_ready", "fast_int8_cpu", "integer_matmul", "load_quantized",
    "qsam2_config", "read_metadata", "read_quantized", "save_quantized", "storage_report", "vrc_config", "vrc_reports",
}


def __getattr__(name):
    if name in _TORCHAO_API:
        from .integrations import torchao as _torchao

        return getattr(_torchao, name)
    raise AttributeError(f"module 'qsam2_ext' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _TORCHAO_API)
