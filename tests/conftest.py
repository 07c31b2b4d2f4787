import os

import numpy as np
import pytest
import torch

# CI machines have 2 cores and often neighbours: one intra-op thread avoids oversubscription, which made the
# suite several times slower under load (tests measure numerics, never speed).
torch.set_num_threads(1)
# GPU kernel tests check numerics: autotune over two tile shapes (a large and a small one), not all of them
os.environ.setdefault("QSAM2_KERNEL_TUNING", "quick")
# NNCF builds its CPU extension on first use and gives up after 60 s: a loaded 2-core machine can take longer (a
# suite running beside another process that was building it failed so)
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def np_qdq(x, center, half_range, bits):
    """Independent NumPy reference of the mid-rise grid: nearest of 2**b levels, clipped to center ± half_range."""
    x, center, half_range = (np.asarray(a, dtype=np.float64) for a in (x, center, half_range))
    n = 2**bits
    step = 2 * half_range / (n - 1)
    levels = center[..., None] + (np.arange(n) - n / 2 + 0.5) * step[..., None] if np.ndim(center) else None
    k = np.clip(np.floor((x - center) / step), -(n // 2), n // 2 - 1)
    return (k + 0.5) * step + center, k, levels
