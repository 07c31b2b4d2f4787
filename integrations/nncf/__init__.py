"""NNCF adapter: Q-SAM2 inside NNCF 3.4 pipelines (VRC as an ``Algorithm``, LSC as NNCF hooks, save/restore with
``nncf.torch.get_config`` / ``load_from_config``, recipes, OpenVINO export). Needs the ``nncf`` extra.
"""

from . import _nncf  # noqa: F401  (fails with an install hint when NNCF is missing)
from .bake import ALLOWED_MODULES, bake, restore, save
from .export import check_hook_tensors, export_openvino, runtime_precisions
from .hooks import QSAM2FakeQuantize, QSAM2WeightDecompressor
from .memory import QSAM2MemoryAttention, QSAM2MemoryEncoder, quantize_memory, record_memory_inputs
from .openvino_memory import OpenVINOMemoryAttention, OpenVINOMemoryEncoder
from .openvino_sam2 import OpenVINOImageEncoder, OpenVINOMaskDecoder, OpenVINOPromptEncoder, openvino_sam2
from .pipeline import finish_nncf_qat, image_encoder_layers, nncf_ptq, prepare_nncf_qat, transplant
from .qat import attach_qsam2, retarget_nncf
from .recipe import quantize_with_recipe
from .vrc import GramTensorStatistic, VarianceReducedCalibration, VRCAlgorithm, calibrate_vrc

__all__ = [
    "ALLOWED_MODULES", "GramTensorStatistic", "OpenVINOImageEncoder", "OpenVINOMaskDecoder", "OpenVINOMemoryAttention",
    "OpenVINOMemoryEncoder", "OpenVINOPromptEncoder", "QSAM2FakeQuantize", "QSAM2MemoryAttention", "QSAM2MemoryEncoder",
    "QSAM2WeightDecompressor", "VRCAlgorithm", "VarianceReducedCalibration", "attach_qsam2", "bake", "calibrate_vrc",
    "check_hook_tensors", "export_openvino", "finish_nncf_qat", "image_encoder_layers", "nncf_ptq", "openvino_sam2",
    "prepare_nncf_qat", "quantize_memory", "quantize_with_recipe", "record_memory_inputs", "restore", "retarget_nncf",
    "runtime_precisions", "save", "transplant",
]

# NNCF's learned quantizer ranges train in the loop's quantizer parameter group (no weight decay)
from qsam2_ext.train.optim import register_quantizer_type  # noqa: E402

register_quantizer_type(_nncf.BaseQuantizer)
