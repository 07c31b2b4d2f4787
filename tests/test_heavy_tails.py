"""The function-preserving heavy-tail transform (qsam2_ext.sam2.heavy_tails): the float model computes exactly what
it computed before (encoder features and predictor mask logits, bit for bit: power-of-two factors), the targeted
layers' statistics move as the rescale says (per-channel closed form, and kurtosis measured with
qsam2_ext.core.stats), and bad arguments are refused before any parameter changes."""

import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from qsam2_ext.core.stats import tail_stats
from qsam2_ext.sam2.heavy_tails import PRESETS, HeavyTails, apply_heavy_tails, find_sites
from qsam2_ext.sam2.images import load_photo, photo_batch
from qsam2_ext.sam2.models import DEFAULT_MODEL, build_model, default_checkpoint, image_predictor


def _embedded():
    return build_model(DEFAULT_MODEL, default_checkpoint()).eval()


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def images():
    return photo_batch(["astronaut", "coffee"], 256)


def _layer_inputs(model, images, layers):
    """The input rows (tokens x channels) of each named layer over one encoder forward."""
    seen, handles = {}, []
    modules = dict(model.named_modules())
    def hook(name):
        def record(module, args):
            seen[name] = args[0].detach().reshape(-1, args[0].shape[-1])
        return record

    for name in layers:
        handles.append(modules[name].register_forward_pre_hook(hook(name)))
    with torch.no_grad():
        model.image_encoder(images)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_float_function_is_bit_identical(preset, images):
    plain, moved = _embedded(), _embedded()
    scales = apply_heavy_tails(moved, preset)
    assert any((s != 1).any() for s in scales.values())
    assert not _unchanged(moved, _snapshot(plain))  # the parameters did change
    with torch.no_grad():
        a, b = plain.image_encoder(images), moved.image_encoder(images)
    assert torch.equal(a["vision_features"], b["vision_features"])
    assert all(torch.equal(x, y) for x, y in zip(a["backbone_fpn"], b["backbone_fpn"]))
    # the whole model through SAM2's own predictor: mask logits for a box and a point prompt
    photo = load_photo("astronaut")
    outs = []
    for model in (plain, moved):
        predictor = image_predictor(model)
        predictor.set_image(photo)
        box = predictor.predict(box=np.array([100, 20, 400, 300]), multimask_output=False, return_logits=True)
        point = predictor.predict(point_coords=np.array([[250, 150]]), point_labels=np.array([1]),
                                  return_logits=True)
        outs.append((box, point))
    for x, y in zip(outs[0], outs[1]):
        for u, v in zip(x, y):
            assert np.array_equal(u, v)


def test_real_sam2_architecture_sites_and_function():
    """sam2.1_hiera_t (random init, 256²): every block found (stage transitions included), outputs identical."""
    torch.manual_seed(0)
    plain = build_model("sam2.1_hiera_t", image_size=256).eval()
    moved = build_model("sam2.1_hiera_t", image_size=256).eval()
    moved.load_state_dict(plain.state_dict())
    blocks = len(plain.image_encoder.trunk.blocks)
    sites = find_sites(moved)
    assert len(sites) == 3 * blocks
    shortcuts = [s for s in sites if s.name.endswith("norm1") and len(s.consumers) == 2]
    assert len(shortcuts) == 3  # the three stage transitions: norm1 feeds qkv and the shortcut proj
    apply_heavy_tails(moved, "both")
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(plain.image_encoder(x)["vision_features"], moved.image_encoder(x)["vision_features"])


def test_statistics_move_as_the_rescale_says(images):
    """Closed form: every consumer's input channel c scales by s_c and its weight column c by 1/s_c; measured:
    the input kurtosis of every activation-targeted layer and the weight kurtosis of every weight-targeted layer
    rise (qsam2_ext.core.stats, the statistics benchmarks/outlier_stats.py reports)."""
    plain = _embedded()
    before_w = _snapshot(plain)
    for preset, kind in (("activations", "input"), ("weights", "weight")):
        moved = _embedded()
        scales = apply_heavy_tails(moved, preset)
        names = {m: n for n, m in moved.named_modules()}
        sites = find_sites(moved)
        layers = sorted({names[c] for s in sites for c in s.consumers})
        x0, x1 = _layer_inputs(plain, images, layers), _layer_inputs(moved, images, layers)
        for site in sites:
            s = scales[site.name].to(torch.float32)
            for consumer in site.consumers:
                name = names[consumer]
                rows = 2 * consumer.out_features // 3 if name.endswith("qkv") else None  # value rows: a producer
                assert torch.equal((consumer.weight * s)[:rows], before_w[name + ".weight"][:rows])  # powers of two
                ratio = x1[name].std(0) / x0[name].std(0)
                live = x0[name].std(0) > 0
                torch.testing.assert_close(ratio[live], s[live], rtol=1e-5, atol=0)
                if kind == "input":
                    assert tail_stats(x1[name]).kurtosis > tail_stats(x0[name]).kurtosis + 1, name
                else:
                    assert tail_stats(consumer.weight).kurtosis > tail_stats(before_w[name + ".weight"]).kurtosis + 1
        moved_inputs = torch.tensor([float(tail_stats(x1[n]).kurtosis) for n in layers])
        assert (moved_inputs.median() > 20) == (kind == "input")  # the weights preset leaves inputs light-tailed


def test_seeded_and_deterministic():
    a, b = apply_heavy_tails(_embedded(), "both"), apply_heavy_tails(_embedded(), "both")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = apply_heavy_tails(_embedded(), HeavyTails(**{**PRESETS["both"].__dict__, "seed": 1}))
    assert any(not torch.equal(a[k], other[k]) for k in a)
    for s in a.values():  # disjoint channels: one up set, one down set, at least one of each per site
        assert (s > 1).sum() >= 1 and (s < 1).sum() >= 1
        assert torch.equal(torch.exp2(torch.log2(s).round()), s)  # powers of two


@pytest.mark.parametrize("kwargs", [
    {"activation_share": 0.9}, {"activation_share": -0.1}, {"activation_share": True},
    {"weight_share": 0.3, "activation_share": 0.3}, {"activation_exponents": (3, 2)},
    {"activation_exponents": (0, 13)}, {"weight_exponents": (1.5, 2)}, {"sites": ()}, {"sites": ("norm3",)},
    {"seed": -1},
])
def test_bad_specs_refused(kwargs):
    with pytest.raises(ValueError):
        HeavyTails(**kwargs)


def test_bad_arguments_refused_before_the_model_is_touched():
    model = _embedded()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="unknown heavy-tail preset"):
        apply_heavy_tails(model, "heavy")
    with pytest.raises(TypeError):
        apply_heavy_tails(model, {"activation_share": 0.1})
    assert _unchanged(model, before)
    with pytest.raises(ValueError, match="no Hiera block"):
        apply_heavy_tails(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)), "both")
    # a problem in the *last* block only: refused, and the earlier blocks were not rescaled either
    blocks = model.image_encoder.trunk.blocks
    last, first = blocks[len(blocks) - 1], blocks[0]
    for attr, broken, match in (
            ("mlp", nn.Linear(last.mlp.layers[0].in_features + 1, last.mlp.layers[0].out_features),
             "shapes do not match"),
            ("norm2", nn.LayerNorm(last.norm2.normalized_shape, elementwise_affine=False), "affine"),
            ("proj", nn.Parameter(torch.zeros_like(last.attn.proj.weight, dtype=torch.int8), requires_grad=False),
             "floating-point")):
        model = _embedded()
        last = model.image_encoder.trunk.blocks[len(blocks) - 1]
        if attr == "mlp":
            last.mlp.layers[0] = broken
        elif attr == "norm2":
            last.norm2 = broken
        else:
            last.attn.proj.weight = broken
        kept = _snapshot(model)
        with pytest.raises(ValueError, match=match):
            apply_heavy_tails(model, "both")
        assert _unchanged(model, kept)
        assert torch.equal(model.image_encoder.trunk.blocks[0].norm1.weight, first.norm1.weight)


def test_benchmark_checks_the_float_invariant():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from accuracy import METRICS, check_float_invariant

    row = {m: 0.5 for m in METRICS} | {"J&F": float("nan"), "method": "fp"}
    check_float_invariant([row | {"untransformed": True}, row | {"untransformed": False}, row | {"method": "lsq_qat"}])
    with pytest.raises(RuntimeError, match="changed the float model"):
        check_float_invariant([row | {"untransformed": True}, row | {"untransformed": False, "box_mIoU": 0.5001}])
    with pytest.raises(RuntimeError, match="exactly one"):
        check_float_invariant([row | {"untransformed": False}])
