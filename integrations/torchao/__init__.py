"""torchao adapter: importing it registers Q-SAM2's configs with ``torchao.quantization.quantize_``.

>>> from torchao.quantization import quantize_
>>> from qsam2_ext import qsam2_config, vrc_config
>>> quantize_(model, vrc_config(step="prepare")); calibrate(model); quantize_(model, vrc_config(step="convert"))
>>> quantize_(model, qsam2_config(bits=2, act_bits=8, step="prepare")); train(model)
>>> quantize_(model, qsam2_config(bits=2, act_bits=8, step="convert"))
"""

from torchao.core.config import ALLOWED_AO_MODULES
from torchao.quantization.qat.fake_quantizer import FakeQuantizerBase

from qsam2_ext.core import fast_int8_cpu
from qsam2_ext.train.optim import register_quantizer_type

from . import qat, vrc  # noqa: F401  (registers the handlers)
from .configs import QSAM2Config, VRCConfig, qsam2_config, vrc_config
from .packed_tensor import QSAM2PackedTensor, integer_matmul
from .session import check_ready
from .serialization import load_quantized, read_metadata, read_quantized, save_quantized, storage_report
from .vrc import vrc_reports

# let torchao.core.config.config_from_dict resolve our configs (it only searches an allow-list of modules)
ALLOWED_AO_MODULES.add(__name__)
# torchao's range-learning QAT scales train in the shared loop's quantizer parameter group
register_quantizer_type(FakeQuantizerBase)

__all__ = [
    "QSAM2Config", "QSAM2PackedTensor", "VRCConfig", "check_ready", "fast_int8_cpu", "integer_matmul", "load_quantized",
    "qsam2_config", "read_metadata", "read_quantized", "save_quantized", "storage_report", "vrc_config", "vrc_reports",
]
