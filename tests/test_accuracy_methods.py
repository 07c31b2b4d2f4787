"""The accuracy benchmark's methods (benchmarks/accuracy_methods.py) on the embedded default model: each one ends in
a packed model of the targeted layers only, loadable into a fresh video build with identical outputs, and an 8-bit
MinMax PTQ stays close to the float encoder."""

import os
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from accuracy_methods import METHODS, NNCF, quantize, targeted  # noqa: E402

import qsam2_ext  # noqa: E402
from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, build_model, default_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def batches():
    from qsam2_ext.sam2.images import PHOTOS, photo_batch

    return [photo_batch(PHOTOS[:2], 256), photo_batch(PHOTOS[2:4], 256)]


def _one_step(model):
    """A real optimisation step through the model's quantizers (what the benchmark's training loop does)."""
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=1e-3)
    model.train()
    images = torch.randn(1, 3, 256, 256)
    loss = model.image_encoder(images)["vision_features"].square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    model.eval()
    assert any(not torch.equal(a, b) for a, b in zip(before, params))


def _packed(model):
    return {name for name, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), qsam2_ext.QSAM2PackedTensor)}


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("fp", "fp_trained") + NNCF])
def test_each_method_packs_exactly_the_targeted_layers(method, batches):
    model = build_model(DEFAULT_MODEL_CONFIG, default_checkpoint()).eval()
    quantize(model, method, 2, 8, batches, _one_step)
    wanted = {name for name, m in model.named_modules() if targeted(m, name)}
    if method == "torchao_qat":  # torchao's QAT swaps Linear layers only
        wanted = {name for name in wanted if isinstance(model.get_submodule(name), nn.Linear)}
    assert _packed(model) == wanted
    x = batches[0][:1]
    with torch.no_grad():
        out = model.image_encoder(x)["vision_features"]
        fresh = build_model(DEFAULT_MODEL_CONFIG, video=True)
        qsam2_ext.load_quantized(fresh, model.state_dict())
        torch.testing.assert_close(fresh.image_encoder(x)["vision_features"], out, rtol=0, atol=0)
    assert torch.isfinite(out).all()


def test_eight_bit_minmax_ptq_stays_close_to_the_float_encoder(batches):
    reference = build_model(DEFAULT_MODEL_CONFIG, default_checkpoint()).eval()
    model = build_model(DEFAULT_MODEL_CONFIG, default_checkpoint()).eval()
    quantize(model, "minmax_ptq", 8, 8, batches, _one_step)
    x = batches[1]
    with torch.no_grad():
        want = reference.image_encoder(x)["vision_features"]
        got = model.image_encoder(x)["vision_features"]
    sqnr = 10 * torch.log10(want.square().sum() / (got - want).square().sum())
    assert sqnr > 25, f"{sqnr:.1f} dB"


@pytest.mark.parametrize("method", NNCF)
def test_nncf_rows_train_and_transplant_into_a_fresh_video_build(method, batches):
    pytest.importorskip("nncf")
    from qsam2_ext.integrations.nncf import transplant

    model = build_model(DEFAULT_MODEL_CONFIG, default_checkpoint()).eval()
    quantize(model, method, 2, 8, batches, _one_step)
    x = batches[0][:1]
    with torch.no_grad():
        out = model.image_encoder(x)["vision_features"]
        fresh = transplant(model, build_model(DEFAULT_MODEL_CONFIG, video=True)).eval()  # restored modules train
        torch.testing.assert_close(fresh.image_encoder(x)["vision_features"], out, rtol=0, atol=0)
        reference = build_model(DEFAULT_MODEL_CONFIG, default_checkpoint()).eval().image_encoder(x)["vision_features"]
    assert torch.isfinite(out).all() and not torch.equal(out, reference)  # quantized, not the float encoder


def _row(method, bits, seed, value, diverged=False):
    from accuracy import METRICS

    nan = float("nan")
    row = {"method": method, "label": method, "bits": bits, "seed": seed, "model_bytes": nan if diverged else 2e6}
    row.update({m: nan if diverged else value for m in METRICS})
    return row | ({"diverged": "non-finite loss at step 1"} if diverged else {})


def test_summary_counts_diverged_seeds_apart_and_rows_read_back(tmp_path):
    """Diverged seeds leave the mean and std of the others (closed form) and are counted in the table; a run's
    rows.jsonl reads back as the same rows; a malformed one is refused in one line naming the file."""
    import json
    import statistics

    from accuracy import markdown, read_rows, summarize

    from qsam2_ext.errors import BadFileError

    rows = [_row("fp", "FP", 0, 0.8), _row("qsam2", "W2A4", 0, 0.6), _row("qsam2", "W2A4", 1, 0.7),
            _row("qsam2", "W2A4", 2, 0.0, diverged=True), _row("pact_qat", "W2A4", 0, 0.0, diverged=True)]
    table = {e["method"]: e for e in summarize(rows)}
    assert table["qsam2"]["seeds"] == 2 and table["qsam2"]["diverged"] == 1
    assert table["qsam2"]["box_mIoU"] == pytest.approx(0.65)
    assert table["qsam2"]["box_mIoU_std"] == pytest.approx(statistics.stdev([0.6, 0.7]))
    assert table["qsam2"]["box_mIoU_of_fp"] == pytest.approx(0.65 / 0.8)
    assert table["pact_qat"]["seeds"] == 0 and table["pact_qat"]["diverged"] == 1
    text = markdown(summarize(rows), {"model": "m", "eval_images": 1, "eval_clips": 1, "device": "d", "steps": 1,
                                      "batch_size": 1})
    assert "| 2 (1 diverged) | 65.0 ± 7.1 |" in text and "| 0 (1 diverged) | nan |" in text

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    back = read_rows(str(path))
    assert [r["method"] for r in back] == [r["method"] for r in rows] and back[1]["box_mIoU"] == 0.6
    for bad in ('{"method": "fp"}\n', "not json\n", json.dumps(rows[1] | {"method": "os.system"}) + "\n",
                json.dumps(rows[1]) + "\n"):  # the last: no float row
        path.write_text(bad)
        with pytest.raises(BadFileError, match="rows.jsonl") as e:
            read_rows(str(path))
        assert "\n" not in str(e.value)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))


def test_zero_level_ablations_put_a_grid_level_on_zero():
    """The ``w_zero_level`` / ``a_zero_level`` ablations end in packed layers whose weight / input grids have a level
    at exactly zero (mid-rise levels ``c + s (k + 1/2)``: ``-c/s - 1/2`` is an integer), while the default Q-SAM2
    grids of the same layers do not have one in general."""
    torch.manual_seed(0)

    def off(c, s):  # distance of -c/s - 1/2 to the nearest integer
        return (torch.remainder(-c.double() / s.double(), 1.0) - 0.5).abs()

    def offsets(model):
        weights = [m.weight for m in model.image_encoder if getattr(getattr(m, "weight", None), "act_center", None)
                   is not None]
        return [(off(w.center, w.step).max().item(), off(w.act_center, w.act_step).item()) for w in weights]

    batches = [torch.randn(8, 64) * 3 + 1 for _ in range(2)]
    plain, ablated = _Toy(), _Toy()
    ablated.load_state_dict(plain.state_dict())
    quantize(plain, "qsam2", 2, 4, batches, lambda m: None)
    quantize(ablated, "qsam2", 2, 4, batches, lambda m: None, w_zero_level=True, a_zero_level=True)
    ablated_offsets = offsets(ablated)
    assert len(ablated_offsets) == 2
    for w_off, a_off in ablated_offsets:
        assert w_off < 1e-4 and a_off < 1e-4
    assert max(max(o) for o in offsets(plain)) > 1e-2


def test_vrc_lsq_ablation_is_lsq_on_the_vrc_corrected_weights():
    """``vrc+lsq`` swaps Q-SAM2's LSC quantizers for LSQ's and keeps its VRC: the same packed model as VRC applied
    first, then the ``lsq_qat`` row; and not the plain ``lsq_qat`` row (VRC changed the weights)."""
    from accuracy_methods import ABLATIONS, apply_vrc

    torch.manual_seed(0)
    batches = [torch.randn(8, 64) * 3 + 1 for _ in range(2)]
    ablated, composed, plain = _Toy(), _Toy(), _Toy()
    composed.load_state_dict(ablated.state_dict())
    plain.load_state_dict(ablated.state_dict())
    quantize(ablated, "qsam2", 2, 4, batches, lambda m: None, **ABLATIONS["vrc+lsq"])
    apply_vrc(composed, batches)
    quantize(composed, "lsq_qat", 2, 4, batches, lambda m: None)
    quantize(plain, "lsq_qat", 2, 4, batches, lambda m: None)
    x = torch.randn(16, 64)
    with torch.no_grad():
        out = ablated.image_encoder(x)
        torch.testing.assert_close(composed.image_encoder(x), out, rtol=0, atol=0)
        assert not torch.equal(plain.image_encoder(x), out)
    assert _packed(ablated) == {"image_encoder.0", "image_encoder.2"}
