"""Framework-free Q-SAM2 math in plain PyTorch: the grid, LSC and baseline quantizers, VRC, bit packing.

Nothing here imports torchao, NNCF or sam2; the adapters in ``qsam2_ext.integrations`` and ``qsam2_ext.sam2``
build on it.
"""

from .calibration import VRCCalibration, apply_vrc, input_rows, is_linear_like, weight_matrix
from .granularity import ActivationGranularity, WeightGranularity, effective_group_size
from .grid import SUPPORTED_BITS, center_step, code_range, dequantize, fake_quantize, quantize
from .cpu_int8 import fast_int8_cpu, fast_int8_product, int8_product
from .int_linear import cuda_int8_product_fits, int_linear, quantize_tokens
from .packing import pack_codes, packed_length, packing_group, unpack_codes
from . import row_masks  # noqa: F401  (qsam2_ext.core.row_masks: calibration's padding-mask sources)
from .quantizers import (
    QUANTIZERS,
    FakeQuantizer,
    LSCQuantizer,
    LSQQuantizer,
    MinMaxQuantizer,
    PACTQuantizer,
    make_quantizer,
    observing,
)
from .vrc import DEFAULT_LAM_REL, CalibrationError, GramObserver, VRCReport, vrc_report, vrc_solve

__all__ = [
    "ActivationGranularity", "CalibrationError", "DEFAULT_LAM_REL", "FakeQuantizer", "GramObserver",
    "LSCQuantizer", "LSQQuantizer", "MinMaxQuantizer", "PACTQuantizer", "QUANTIZERS", "SUPPORTED_BITS",
    "VRCCalibration", "VRCReport", "WeightGranularity", "apply_vrc", "code_range", "cuda_int8_product_fits",
    "dequantize", "fake_quantize", "fast_int8_cpu", "fast_int8_product", "input_rows", "int8_product", "int_linear",
    "quantize_tokens", "is_linear_like", "make_quantizer", "observing", "pack_codes", "packed_length", "packing_group",
    "quantize",
    "center_step", "effective_group_size", "unpack_codes", "vrc_report", "vrc_solve", "weight_matrix",
]

from .modules import FakeQuantConv2d, FakeQuantized, FakeQuantLinear, fake_quantized, layer_quantizers  # noqa: E402
from .settings import LayerQuant  # noqa: E402

__all__ += ["FakeQuantConv2d", "FakeQuantLinear", "FakeQuantized", "LayerQuant", "fake_quantized", "layer_quantizers"]
