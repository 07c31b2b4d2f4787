"""NNCF adapter: Q-SAM2 inside NNCF 3.4 pipelines (VRC as an ``Algorithm``, LSC as NNCF hooks, save/restore with
``nncf.torch.get_config`` / ``load_from_config``, recipes, OpenVINO export). Needs the ``nncf`` extra.
"""

from . import _nncf  # noqa: F401  (fails with an install hint when NNCF is missing)
from .bake import ALLOWED_MODULES, bake, restore, save
from .hooks import QSAM2FakeQuantize, QSAM2WeightDecompressor
from .qat import attach_qsam2, retarget_nncf
from .vrc import VRCAlgorithm, calibrate_vrc

__all__ = [
    "ALLOWED_MODULES", "QSAM2FakeQuantize", "QSAM2WeightDecompressor", "VRCAlgorithm", "attach_qsam2", "bake",
    "calibrate_vrc", "restore", "retarget_nncf", "save",
]
