"""VRC through NNCF. ``algorithm.py`` / ``backend.py`` / ``torch_backend.py``: the algorithm in NNCF's own layout
(``VarianceReducedCalibration``, the files the NNCF upstream patch is built from); ``calibrate.py``: Q-SAM2's
entry points on it (``VRCAlgorithm``, ``calibrate_vrc``)."""

from .algorithm import GramTensorStatistic, VarianceReducedCalibration
from .calibrate import Select, VRCAlgorithm, calibrate_vrc

__all__ = ["GramTensorStatistic", "Select", "VRCAlgorithm", "VarianceReducedCalibration", "calibrate_vrc"]
