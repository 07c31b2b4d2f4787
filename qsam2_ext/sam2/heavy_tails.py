"""Function-preserving heavy tails: give a float Hiera encoder outlier channels without changing what it computes.

A channel ``j`` that one module produces and only Linear layers consume can be rescaled exactly: multiply the
producer's output channel ``j`` by ``s`` and the consumers' input column ``j`` by ``1/s``. The float function is
unchanged, but the statistics a quantizer sees move:

* ``s > 1`` makes channel ``j`` of the consumers' *input* an outlier channel (LLM.int8-style outlier features, the
  inter-channel variation PTQ work on SAM reports: some channels' ranges over 100x others'), which per-tensor and
  per-token activation grids suffer from, and shrinks column ``j`` of the weights;
* ``s < 1`` makes column ``j`` of the consumers' *weights* an outlier in every row (what per-channel 2-bit weight
  grids suffer from), and shrinks the input channel.

Exact sites in a Hiera ``MultiScaleBlock`` (sam2's ``hieradet``):

* ``norm1`` (LayerNorm gamma and beta) -> ``attn.qkv``, and at a stage transition also the shortcut ``proj``
  (``norm1``'s output feeds both); window padding adds zero rows after ``norm1``, which stay zero;
* ``norm2`` -> ``mlp.layers.0`` (fc1);
* the value rows of ``attn.qkv`` -> ``attn.proj``: attention mixes value rows with weights that do not depend on
  them (``q``/``k`` untouched; only ``q`` is pooled), so scaling value channel ``j`` scales the attention output's
  channel ``j`` (heads are contiguous slices, in the same order on both sides).

Not exact, so not touched: fc1 -> GELU -> fc2 (GELU is not homogeneous), the residual stream (every LayerNorm
normalises across channels), the trunk -> FPN neck convs (their inputs are residual streams).

Factors are powers of two, so every rescaled product is bit-identical to the original one (``(2^k x)(2^-k w) =
xw`` exactly in floating point, and sums and LayerNorm's affine step commute with an exact power-of-two scale):
the transformed model returns exactly the same outputs, on any device and in any precision, as long as nothing
under- or overflows. Channels and exponents are drawn from a seeded generator: the same preset and seed always
give the same model. No sam2 import: blocks are recognised by their structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HeavyTails:
    """How many channels of each site to rescale, and by how much (powers of two, exponents drawn uniformly).

    ``activation_share`` of each site's channels (at least one) get ``s = 2^k``, ``k`` in ``activation_exponents``:
    activation outlier channels. ``weight_share`` (disjoint channels) get ``s = 2^-k``, ``k`` in
    ``weight_exponents``: weight outlier columns. ``sites``: any of ``norm1``, ``norm2``, ``value``.
    """

    activation_share: float = 0.0
    activation_exponents: tuple[int, int] = (0, 0)
    weight_share: float = 0.0
    weight_exponents: tuple[int, int] = (0, 0)
    sites: tuple[str, ...] = ("norm1", "norm2", "value")
    seed: int = 0

    def __post_init__(self):
        for name in ("activation", "weight"):
            share, (lo, hi) = getattr(self, f"{name}_share"), getattr(self, f"{name}_exponents")
            if not (isinstance(share, (int, float)) and not isinstance(share, bool) and 0.0 <= share <= 0.5):
                raise ValueError(f"{name}_share must be a number in [0, 0.5], got {share!r}")
            if not all(isinstance(k, int) and not isinstance(k, bool) for k in (lo, hi)) or not 0 <= lo <= hi <= 12:
                raise ValueError(f"{name}_exponents must be integers 0 <= lo <= hi <= 12, got {(lo, hi)!r}")
        if self.activation_share + self.weight_share > 0.5:
            raise ValueError("activation_share + weight_share must be at most 0.5")
        if not self.sites or not set(self.sites) <= set(SITES):
            raise ValueError(f"sites must be a non-empty subset of {SITES}, got {self.sites!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")


SITES = ("norm1", "norm2", "value")

# Targets (docs/accuracy.md): activations, a few outlier channels per layer input at 8-64x the channel's scale
# (PTQ work on SAM reports some channels' ranges over 100x others'; LLM.int8 outlier features reach ~20x);
# weights, a few columns at 4-16x (the paper describes "a few very large" weight outliers, no numbers).
PRESETS = {
    "activations": HeavyTails(activation_share=1 / 32, activation_exponents=(3, 6)),
    "weights": HeavyTails(weight_share=1 / 32, weight_exponents=(2, 4)),
    "both": HeavyTails(activation_share=1 / 32, activation_exponents=(3, 6),
                       weight_share=1 / 32, weight_exponents=(2, 4)),
}


@dataclass(frozen=True)
class Site:
    """One exactly rescalable channel set: ``producer`` tensors hold output channel ``c`` at index ``offset + c`` of
    dim 0; ``consumers`` are the Linear layers whose input column ``c`` it is."""

    name: str
    producer: tuple[torch.Tensor, ...]
    offset: int
    channels: int
    consumers: tuple[nn.Linear, ...]


def _is_block(module: nn.Module) -> bool:
    attn, mlp = getattr(module, "attn", None), getattr(module, "mlp", None)
    return (isinstance(getattr(module, "norm1", None), nn.LayerNorm)
            and isinstance(getattr(module, "norm2", None), nn.LayerNorm)
            and isinstance(getattr(attn, "qkv", None), nn.Linear) and isinstance(getattr(attn, "proj", None), nn.Linear)
            and isinstance(getattr(mlp, "layers", None), nn.ModuleList) and isinstance(mlp.layers[0], nn.Linear))


def _layer_norm(norm: nn.LayerNorm, fqn: str) -> tuple[torch.Tensor, ...]:
    if not norm.elementwise_affine or len(norm.normalized_shape) != 1:
        raise ValueError(f"{fqn}: a LayerNorm with a per-channel affine over the last dim is needed")
    return tuple(t for t in (norm.weight, norm.bias) if t is not None)


def find_sites(model: nn.Module, sites: tuple[str, ...] = SITES) -> list[Site]:
    """The exactly rescalable sites of every Hiera block under ``model`` (checked: shapes agree)."""
    found = []
    for fqn, block in model.named_modules():
        if not _is_block(block):
            continue
        qkv, proj, fc1 = block.attn.qkv, block.attn.proj, block.mlp.layers[0]
        dim, dim_out = block.norm1.normalized_shape[0], block.norm2.normalized_shape[0]
        shortcut = getattr(block, "proj", None)
        first = (qkv,) + ((shortcut,) if isinstance(shortcut, nn.Linear) else ())
        checks = [(first, dim), ((fc1,), dim_out), ((proj,), dim_out)]
        if (dim != dim_out) != isinstance(shortcut, nn.Linear) or qkv.out_features != 3 * dim_out or any(
                layer.in_features != width for layers, width in checks for layer in layers):
            raise ValueError(f"{fqn}: not a Hiera block this transform knows (shapes do not match)")
        if "norm1" in sites:
            found.append(Site(f"{fqn}.norm1", _layer_norm(block.norm1, f"{fqn}.norm1"), 0, dim, first))
        if "norm2" in sites:
            found.append(Site(f"{fqn}.norm2", _layer_norm(block.norm2, f"{fqn}.norm2"), 0, dim_out, (fc1,)))
        if "value" in sites:
            producer = tuple(t for t in (qkv.weight, qkv.bias) if t is not None)
            found.append(Site(f"{fqn}.attn.qkv.value", producer, 2 * dim_out, dim_out, (proj,)))
    return found


def draw_scales(spec: HeavyTails, channels: int, generator: torch.Generator) -> torch.Tensor:
    """Per-channel exponents of two (float64 scales): activation channels up, weight channels down, the rest 1."""
    n_act = max(1, round(spec.activation_share * channels)) if spec.activation_share > 0 else 0
    n_w = max(1, round(spec.weight_share * channels)) if spec.weight_share > 0 else 0
    order = torch.randperm(channels, generator=generator)
    exponent = torch.zeros(channels, dtype=torch.float64)

    def draw(n, bounds):
        return torch.randint(bounds[0], bounds[1] + 1, (n,), generator=generator).to(torch.float64)

    exponent[order[:n_act]] = draw(n_act, spec.activation_exponents)
    exponent[order[n_act:n_act + n_w]] = -draw(n_w, spec.weight_exponents)
    return torch.exp2(exponent)


@torch.no_grad()
def apply_heavy_tails(model: nn.Module, spec: HeavyTails | str) -> dict[str, torch.Tensor]:
    """Rescale ``model``'s Hiera blocks in place per ``spec`` (a ``HeavyTails`` or a ``PRESETS`` name); returns the
    scale of every channel by site name. Everything is checked before the first parameter changes."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown heavy-tail preset {spec!r}; choose one of {sorted(PRESETS)}")
        spec = PRESETS[spec]
    if not isinstance(spec, HeavyTails):
        raise TypeError(f"spec must be a HeavyTails or a preset name, got {type(spec).__name__}")
    sites = find_sites(model, spec.sites)
    if not sites:
        raise ValueError("no Hiera block found: nothing to rescale")
    for site in sites:
        for t in site.producer + tuple(layer.weight for layer in site.consumers):
            if not t.is_floating_point():
                raise ValueError(f"{site.name}: floating-point parameters are needed, got {t.dtype}")
    generator = torch.Generator().manual_seed(spec.seed)
    scales = {site.name: draw_scales(spec, site.channels, generator) for site in sites}
    for site in sites:
        s = scales[site.name]
        for t in site.producer:
            rows = t[site.offset:site.offset + site.channels]
            rows.mul_(s.to(t.device, t.dtype).reshape(-1, *[1] * (t.dim() - 1)))
        for layer in site.consumers:
            layer.weight.mul_((1.0 / s).to(layer.weight.device, layer.weight.dtype))
    return scales

