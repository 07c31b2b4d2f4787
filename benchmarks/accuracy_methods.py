"""The quantization methods the accuracy benchmark compares, applied to a SAM2 model's image encoder.

Targeted layers: every ``nn.Linear`` and 1x1 ``nn.Conv2d`` under ``image_encoder`` (Hiera trunk: qkv, proj, mlp,
stage-transition proj; FPN neck convs). The patch embedding, prompt encoder, mask decoder and memory modules stay
float: the paper quantizes the image encoder, and the memory path is shared by every row, so J&F measures what a
quantized encoder does to tracking. ``bits``/``act_bits`` are the weights / inputs of the targeted layers.

Every method is built from the package's public pieces (``vrc_config``, ``qsam2_config``, torchao's ``QATConfig``)
and ends in the same packed inference model, so all rows are evaluated the same way. Calibration (VRC Grams,
activation statistics, first-batch initialisation of LSQ/PACT) uses the same images for every method; QAT
methods get the same ``train`` callable (same data, steps, learning rates and losses).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Optional

import torch
from torch import nn

PTQ = ("minmax_ptq", "vrc_minmax_ptq")
QAT = ("ste_minmax_qat", "lsq_qat", "pact_qat", "torchao_qat", "lsc_qat", "qsam2")
NNCF = ("nncf_qat", "qsam2_nncf")  # NNCF's own QAT, and Q-SAM2 through NNCF (extra: nncf)
# fp_trained: the float model given the QAT methods' training (the control)
METHODS = ("fp", "fp_trained") + PTQ + QAT + NNCF
# Q-SAM2 ablations (options of qsam2_config, or VRC's lam_rel) around the defaults
ABLATIONS = {
    "alpha=1.0": {"alpha_init": 1.0}, "alpha=2.5": {"alpha_init": 2.5},
    "momentum=0.5": {"momentum": 0.5}, "momentum=0.99": {"momentum": 0.99},
    "lam_rel=1e-3": {"lam_rel": 1e-3}, "lam_rel=1e-1": {"lam_rel": 1e-1},
    # the activation clip's initial width in running standard deviations (default 3.0 at A4)
    "act_alpha=1.0": {"act_alpha_init": 1.0}, "act_alpha=1.5": {"act_alpha_init": 1.5},
    # the activation clip's gradient: LSQ's (in-range rounding residuals too) instead of PACT's (clipped values only)
    "act_ste=round": {"act_ste": "round"},
    # the activation clip's centre: 0 (as LSQ's grid) instead of the running mean, same half-width alpha * sigma
    "act_center=0": {"act_center": 0},
    # the weight grid shifted (by under half a step) so that one level is exactly 0, as LSQ's mid-tread grid has
    "w_zero_level": {"w_zero_level": True},
    # the weight clips' gradient: LSQ's straight-through rule (in-range rounding residuals too), alone and with the
    # zero level
    "w_ste=round": {"w_ste": "round"}, "w_zero_level+w_ste=round": {"w_zero_level": True, "w_ste": "round"},
    # the same zero level for the input grids (a small input channel next to an outlier channel rounds to 0, not to
    # half a step), alone and with the weights'
    "a_zero_level": {"a_zero_level": True}, "w_zero_level+a_zero_level": {"w_zero_level": True, "a_zero_level": True},
    # VRC's ridge relative to the median input energy per channel (diag G) instead of the mean, which outlier
    # channels dominate: per layer, lam_rel times median / mean of diag(G)
    "lam=median": {"lam_median": True},
    # LSC's quantizers replaced by LSQ's (learned steps, first-batch initialisation) after the same VRC: which of
    # Q-SAM2's two parts carries its result against the LSQ row
    "vrc+lsq": {"core": "lsq"},
}
# method -> (core quantizer, VRC first, trained)
_PLAN = {
    "minmax_ptq": ("minmax", False, False),
    "vrc_minmax_ptq": ("minmax", True, False),
    "ste_minmax_qat": ("minmax", False, True),
    "lsq_qat": ("lsq", False, True),
    "pact_qat": ("pact", False, True),
    "lsc_qat": ("lsc", False, True),  # ablation: Q-SAM2 without VRC
    "qsam2": ("lsc", True, True),
}


@functools.cache  # one class for every layer's twin
def _zero_centred_lsc():
    from qsam2_ext.core import LSCQuantizer

    class ZeroCentredLSC(LSCQuantizer):
        """Ablation ``act_center=0``: LSC's clip ``±alpha sigma`` about 0 instead of about the running mean."""

        def clip_range(self, view, update):
            lo, hi = super().clip_range(view, update)
            half = (hi - lo) / 2
            return -half, half

    return ZeroCentredLSC


@functools.cache
def _zero_level_lsc():
    from qsam2_ext.core import LSCQuantizer

    class ZeroLevelLSC(LSCQuantizer):
        """Ablations ``w_zero_level`` / ``a_zero_level``: LSC's weight / input grid (same step) moved by under half a
        step so that a level is 0: its center becomes the nearest odd multiple of half a step, so a value near zero
        is rounded to zero, not to half a step."""

        def clip_range(self, view, update):
            lo, hi = super().clip_range(view, update)
            half = (hi - lo) / 2
            step = 2 * half / (2 ** self.bits - 1)
            center = (torch.floor((lo + hi) / 2 / step) + 0.5) * step
            return center - half, center + half

    return ZeroLevelLSC


def _replace_lsc(model: nn.Module, attr: str, twin: type) -> None:
    """Each prepared layer's LSC ``attr`` (``input_quantizer`` / ``weight_quantizer``) replaced by an instance of
    ``twin`` (an ``LSCQuantizer`` subclass) with the same settings and state."""
    from qsam2_ext.core import FakeQuantized, LSCQuantizer

    for m in model.modules():
        old = getattr(m, attr, None) if isinstance(m, FakeQuantized) else None
        if isinstance(old, LSCQuantizer):
            new = twin(old.bits, old.granularity, momentum=old.momentum)
            new.load_state_dict(old.state_dict())
            setattr(m, attr, new)


def targeted(module: nn.Module, fqn: str) -> bool:
    from qsam2_ext.core.calibration import is_linear_like

    return fqn.startswith("image_encoder.") and is_linear_like(module)


def _encode(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    with torch.no_grad():
        for images in batches:
            model.image_encoder(images)


def apply_vrc(model: nn.Module, batches, lam_rel: Optional[float] = None, median: bool = False) -> None:
    from torchao.quantization import quantize_

    from qsam2_ext import vrc_config

    kwargs = {} if lam_rel is None else {"lam_rel": lam_rel}
    quantize_(model, vrc_config(step="prepare", **kwargs), filter_fn=targeted)
    _encode(model, batches)
    if not median:
        quantize_(model, vrc_config(step="convert", **kwargs), filter_fn=targeted)
        return
    # ablation lam=median: each layer converted alone, its lam_rel scaled by median / mean of its Gram diagonal
    from qsam2_ext.core import DEFAULT_LAM_REL
    from qsam2_ext.integrations.torchao.vrc import STATE

    for m in list(model.modules()):  # a list: converting walks the modules again
        if hasattr(m, STATE):
            diag = getattr(m, STATE)[0].gram.diagonal()
            rel = (DEFAULT_LAM_REL if lam_rel is None else lam_rel) * float(diag.median() / diag.mean())
            quantize_(model, vrc_config(step="convert", lam_rel=rel), filter_fn=lambda mod, fqn, m=m: mod is m)


def quantize(model: nn.Module, method: str, bits: int, act_bits: Optional[int], batches: list,
             train: Callable[[nn.Module], None], lam_rel: Optional[float] = None, **options) -> None:
    """Quantize ``model`` in place with ``method``; ``options`` go to ``qsam2_config`` (alpha_init, momentum...)."""
    if method == "fp":
        return
    if method == "fp_trained":
        return train(model)
    if method == "torchao_qat":
        return _torchao_qat(model, bits, act_bits, batches, train)
    if method in NNCF:
        return _nncf_qat(model, method, bits, act_bits, batches, train, lam_rel, **options)
    from torchao.quantization import quantize_

    from qsam2_ext import qsam2_config
    from qsam2_ext.core import FakeQuantized, FakeQuantizer, observing

    core, vrc, trained = _PLAN[method]
    core = options.pop("core", core)
    act_ste = options.pop("act_ste", None)
    zero_centred = options.pop("act_center", None) == 0
    zero_level = options.pop("w_zero_level", False)
    input_zero_level = options.pop("a_zero_level", False)
    lam_median = options.pop("lam_median", False)
    w_ste = options.pop("w_ste", None)
    if vrc:
        apply_vrc(model, batches, lam_rel, median=lam_median)
    quantize_(model, qsam2_config(bits, act_bits, method=core, step="prepare", **options), filter_fn=targeted)
    if act_ste is not None:  # ablation: the input quantizers' straight-through mode (core.grid.fake_quantize)
        for m in model.modules():
            if isinstance(m, FakeQuantizer) and m.tracks_statistics:
                m.ste = act_ste
    if zero_centred:  # ablation: LSC input quantizers replaced by zero-centred twins
        _replace_lsc(model, "input_quantizer", _zero_centred_lsc())
    if zero_level:  # ablation: LSC weight quantizers replaced by twins whose grid has a zero level
        _replace_lsc(model, "weight_quantizer", _zero_level_lsc())
    if input_zero_level:  # ablation: the same for LSC input quantizers
        _replace_lsc(model, "input_quantizer", _zero_level_lsc())
    if w_ste is not None:  # ablation: the weight quantizers' straight-through mode
        for m in model.modules():
            if isinstance(m, FakeQuantized):
                m.weight_quantizer.ste = w_ste
    with observing(model):  # activation statistics, LSQ/PACT first-batch initialisation
        _encode(model, batches)
    if trained:
        train(model)
    quantize_(model, qsam2_config(bits, act_bits, method=core, step="convert", **options), filter_fn=targeted)


def _torchao_qat(model, bits, act_bits, batches, train) -> None:
    """torchao's own range-learning QAT (per-channel weight scales learned; inputs fake-quantized per token, as
    torchao does), converted by our handler from the scales torchao learned. torchao's QAT swaps nn.Linear only:
    the neck's 1x1 convs stay float in this row."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig, initialize_fake_quantizers

    from qsam2_ext import QSAM2Config

    dtype = getattr(torch, f"int{bits}")
    weight = IntxFakeQuantizeConfig(dtype, "per_channel", is_dynamic=False, range_learning=True)
    act = None if act_bits is None else IntxFakeQuantizeConfig(getattr(torch, f"int{act_bits}"), "per_token",
                                                                 is_symmetric=False)
    linear = lambda m, fqn: targeted(m, fqn) and isinstance(m, nn.Linear)  # noqa: E731
    quantize_(model, QATConfig(activation_config=act, weight_config=weight, step="prepare"), filter_fn=linear)
    initialize_fake_quantizers(model.image_encoder, (batches[0],))
    train(model)
    quantize_(model, QATConfig(QSAM2Config(bits=bits, act_bits=act_bits), step="convert"), filter_fn=linear)


def _nncf_qat(model, method, bits, act_bits, batches, train, lam_rel, **options) -> None:
    """Through NNCF (``qsam2_ext.integrations.nncf``): ``nncf.quantize`` of the image encoder, then NNCF's own
    quantizers set to the row's bits (``nncf_qat``) or VRC + LSC hooks (``qsam2_nncf``) on the same targets; the
    same training; Q-SAM2 weights baked to integer codes. Only the targeted tensors stay quantized."""
    from qsam2_ext.core import DEFAULT_LAM_REL
    from qsam2_ext.integrations.nncf import finish_nncf_qat, prepare_nncf_qat

    prepare_nncf_qat(model, batches, bits, act_bits, method="nncf" if method == "nncf_qat" else "qsam2",
                     target=targeted, lam_rel=DEFAULT_LAM_REL if lam_rel is None else lam_rel, **options)
    train(model)
    finish_nncf_qat(model)
