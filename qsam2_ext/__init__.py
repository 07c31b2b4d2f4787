"""qsam2_ext: Q-SAM2 (Variance-Reduced Calibration + Learnable Statistical Clipping) for SAM2.

``import qsam2_ext`` is cheap: it loads the framework-free core only. The SAM2 glue (``qsam2_ext.sam2``) and the
framework adapters (``qsam2_ext.integrations``) import their host frameworks when first used.
"""

__version__ = "0.1.0"

from . import core  # noqa: E402,F401
