"""torchao adapter: importing it registers Q-SAM2's configs with ``torchao.quantization.quantize_``.

It imports torchao and the framework-free core (``qsam2_ext.core``) only: no sam2, Hydra or training code.

>>> from torchao.quantization import quantize_
>>> from qsam2_ext import qsam2_config, vrc_config
>>> quantize_(model, vrc_config(step="prepare")); calibrate(model); quantize_(model, vrc_config(step="convert"))
>>> quantize_(model, qsam2_config(bits=2, act_bits=8, step="prepare")); train(model)
>>> quantize_(model, qsam2_config(bits=2, act_bits=8, step="convert"))
>>> quantize_(model, QSAM2QATConfig(qsam2_config(bits=2), step="prepare"))  # torchao's QATConfig call shape
"""

from torchao.core.config import ALLOWED_AO_MODULES

from qsam2_ext.core import fast_int8_cpu

from . import packed_ops, qat, vrc  # noqa: F401  (register the packed tensor's layout ops and the handlers)
from .configs import QSAM2Config, QSAM2PackingFormat, VRCConfig, qsam2_config, vrc_config
from .fake_quantize import LSCFakeQuantizeConfig, LSCFakeQuantizer
from .qat_config import QSAM2QATConfig
from .packed_tensor import QSAM2PackedTensor, integer_matmul
from .ready import check_ready
from .serialization import load_quantized, read_metadata, read_quantized, save_quantized, storage_report
from .vrc import vrc_reports

# let torchao.core.config.config_from_dict resolve our configs (it only searches this set of module names)
ALLOWED_AO_MODULES.add(__name__)

__all__ = [
    "LSCFakeQuantizeConfig", "LSCFakeQuantizer", "QSAM2Config", "QSAM2PackedTensor", "QSAM2PackingFormat",
    "QSAM2QATConfig", "VRCConfig", "check_ready", "fast_int8_cpu",
    "integer_matmul", "load_quantized", "qsam2_config", "read_metadata", "read_quantized", "save_quantized",
    "storage_report", "vrc_config", "vrc_reports",
]
