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


_GLOBAL_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_pre_hooks",
                 "_global_backward_hooks", "_global_module_registration_hooks", "_global_parameter_registration_hooks",
                 "_global_buffer_registration_hooks")


@pytest.fixture(autouse=True)
def _no_leaked_global_state():
    """Tests must not depend on their order (CI runs them shuffled): a test that leaves a process-wide module hook
    behind fails here, and the hook is removed so that later tests run as they would alone."""
    import sys

    from torch.nn.modules import module

    yield
    leaked = {name: dict(getattr(module, name)) for name in _GLOBAL_HOOKS if getattr(module, name, None)}
    if leaked:  # reset their owners too (reference counts), so that later tests start clean
        for owner in ("qsam2_ext.core.row_masks", "qsam2_ext.sam2.hiera"):
            if owner in sys.modules:
                while sys.modules[owner]._users:
                    sys.modules[owner].release()
        for name in _GLOBAL_HOOKS:
            getattr(module, name, {}).clear()
    assert not leaked, f"the test left process-wide torch module hooks installed: {leaked}"


def np_qdq(x, center, half_range, bits):
    """Independent NumPy reference of the mid-rise grid: nearest of 2**b levels, clipped to center ± half_range."""
    x, center, half_range = (np.asarray(a, dtype=np.float64) for a in (x, center, half_range))
    n = 2**bits
    step = 2 * half_range / (n - 1)
    levels = center[..., None] + (np.arange(n) - n / 2 + 0.5) * step[..., None] if np.ndim(center) else None
    k = np.clip(np.floor((x - center) / step), -(n // 2), n // 2 - 1)
    return (k + 0.5) * step + center, k, levels
