"""Evaluation on every dataset format, through SAM2's predictors, and the qsam2 command line."""

import copy
import json

import numpy as np
import pytest
import torch
from helpers import TINY, save_id_png, tiny_model, write_coco, write_folder, write_sa1b, write_video

from qsam2_ext import cli
from qsam2_ext.evaluate import evaluate, format_table, paired_difference, predict_masks, track
from qsam2_ext.sam2 import image_predictor
from qsam2_ext.sam2.data import BadSample, open_dataset
from qsam2_ext.sam2.metrics import mask_iou

MODEL_ARGS = ["--model", "sam2.1_hiera_t", "--random-weights", "--image-size", "64",
              *[f"--override={o}" for o in TINY]]


@pytest.fixture(scope="module")
def model():
    return tiny_model(64).eval()


def test_image_miou_per_instance(model, tmp_path):
    write_sa1b(tmp_path, n=3, objects=2)
    (tmp_path / "sa_2.jpg").write_bytes(b"broken")
    dataset = open_dataset("sa1b", str(tmp_path))
    results = evaluate(model, dataset, progress=False, out=str(tmp_path / "out" / "results.json"))
    assert results["results"]["point"]["instances"] == results["results"]["box"]["instances"] == 4
    assert [s["source"] for s in results["skipped"]] == [str(tmp_path / "sa_2.jpg")]
    # the summary is the mean of the per-instance IoUs, each recomputed here from the predictor's masks
    sample = dataset.load(0)
    predictor = image_predictor(model)
    predictor.set_image(sample.frames[0])
    boxes = np.stack([[xs.min(), ys.min(), xs.max(), ys.max()] for ys, xs in (np.nonzero(m) for m in sample.masks[0])])
    masks, _, _ = predictor.predict(box=boxes.astype(np.float32), multimask_output=False)
    own = [r["iou"] for r in results["instances"] if r["prompt"] == "box" and r["source"] == sample.source]
    assert own == pytest.approx([mask_iou(p[0] > 0, g) for p, g in zip(masks, sample.masks[0])])
    ious = [r["iou"] for r in results["instances"] if r["prompt"] == "point"]
    assert results["results"]["point"]["mIoU"] == pytest.approx(np.mean(ious))
    assert json.loads((tmp_path / "out" / "results.json").read_text())["results"] == results["results"]
    with pytest.raises(BadSample):
        evaluate(model, dataset, progress=False, on_bad_sample="raise")


def test_coco_and_prompt_choice(model, tmp_path):
    write_coco(tmp_path, n=2)
    dataset = open_dataset("coco", str(tmp_path / "images"), annotations=str(tmp_path / "instances.json"))
    results = evaluate(model, dataset, prompts=["box"], limit=1, progress=False)
    assert list(results["results"]) == ["box"] and results["results"]["box"]["instances"] == 2
    assert results["samples"] == 1 and "mIoU (box)" in format_table(results)


def test_agreement_with_a_reference_on_unlabeled_images(model, tmp_path):
    write_folder(tmp_path, n=2)
    dataset = open_dataset("folder", str(tmp_path))
    same = evaluate(model, dataset, reference=copy.deepcopy(model), grid=3, progress=False)
    for kind in ("point", "box"):
        assert same["results"][kind]["mIoU"] == pytest.approx(1.0)  # a model agrees with itself
        assert same["results"][kind]["instances"] + same["empty_reference_masks"] == 2 * 9
        assert same["results"][kind]["instances"] > 0
    other = tiny_model(64, seed=1).eval()
    differs = evaluate(other, dataset, reference=model, grid=3, progress=False)
    assert differs["results"]["point"]["mIoU"] < 0.99
    blind = copy.deepcopy(model)
    with torch.no_grad():  # zero hypernetwork outputs: every mask logit is 0, so every mask is empty
        for mlp in blind.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.zero_()
    nothing = evaluate(model, dataset, reference=blind, grid=2, progress=False)
    assert nothing["empty_reference_masks"] == 2 * 4 and nothing["results"]["box"] == {"mIoU": None, "instances": 0}
    with pytest.raises(ValueError, match="reference"):
        evaluate(model, dataset, progress=False)


def test_video_j_and_f(tmp_path):
    write_video(tmp_path, videos=2, frames=4, objects=2)
    video = tiny_model(64, video=True)
    dataset = open_dataset("video", str(tmp_path))
    results = evaluate(video, dataset, progress=False)
    assert results["results"]["objects"] == 4 and set(results["sequences"]) == {"video0", "video1"}
    jf = [s["J&F"] for s in results["sequences"].values()]
    objects_mean = np.mean([v for s in results["sequences"].values() for v in s["J"] + s["F"]])
    assert results["results"]["J&F"] == pytest.approx(objects_mean) and all(0 <= v <= 1 for v in jf)
    with pytest.raises(TypeError, match="SAM2VideoPredictor"):
        evaluate(tiny_model(64), dataset, progress=False)
    with pytest.raises(ValueError, match="whole sequences"):
        evaluate(video, open_dataset("video", str(tmp_path), clip_length=3), progress=False)


def test_tracking_a_perfect_mask_prompt_through_the_predictor(tmp_path):
    """Each object is prompted where it first appears; frames before that stay empty."""
    truth = write_video(tmp_path, videos=1, frames=4, objects=2)
    truth["video0"][:2][truth["video0"][:2] == 2] = 0  # object 2 appears on frame 2 only
    for t in range(4):
        save_id_png(str(tmp_path / "Annotations" / "video0" / f"{t:05d}.png"), truth["video0"][t])
    sample = open_dataset("video", str(tmp_path)).load(0)
    pred = track(tiny_model(64, video=True).eval(), sample, "mask")
    assert pred.shape == sample.masks.shape and not pred[:2, 1].any()
    # a mask prompt is output as it is, up to the predictor's round trip through 1/4-resolution logits
    assert mask_iou(pred[2, 1], sample.masks[2, 1]) > 0.9 and mask_iou(pred[0, 0], sample.masks[0, 0]) > 0.9


def test_evaluate_validates_its_arguments(model, tmp_path):
    write_sa1b(tmp_path)
    dataset = open_dataset("sa1b", str(tmp_path))
    for kwargs, message in [({"prompts": ["scribble"]}, "prompts"), ({"video_prompt": "text"}, "video_prompt"),
                            ({"grid": 0}, "grid"), ({"limit": 0}, "limit"), ({"reference": model}, "reference")]:
        with pytest.raises(ValueError, match=message):
            evaluate(model, dataset, progress=False, **kwargs)


def test_predict_masks_handles_single_and_chunked_prompts(model, tmp_path):
    write_sa1b(tmp_path, n=1)
    predictor = image_predictor(model)
    predictor.set_image(open_dataset("sa1b", str(tmp_path)).load(0).frames[0])
    points = np.array([[10, 10]] * 20, np.float32)
    many = predict_masks(predictor, "point", points)
    one = predict_masks(predictor, "point", points[:1])
    assert many.shape == (20, 48, 64) and one.shape == (1, 48, 64) and (many == one[0]).all()


def test_cli_eval_prints_a_table_and_writes_json(tmp_path, capsys):
    write_video(tmp_path / "video", videos=1, frames=3)
    out = tmp_path / "results.json"
    code = cli.main(["eval", "--format", "video", "--data", str(tmp_path / "video"), "--out", str(out),
                     "--no-progress", *MODEL_ARGS])
    printed = capsys.readouterr().out
    assert code == 0 and "J&F" in printed and "video0" in printed
    assert json.loads(out.read_text())["results"]["sequences"] == 1


def test_cli_train_then_resume(tmp_path, capsys):
    write_sa1b(tmp_path / "data", n=2)
    args = ["train", "--format", "sa1b", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
            "--batch-size", "2", "--num-workers", "0", "--no-progress", *MODEL_ARGS]
    assert cli.main(args + ["--steps", "1"]) == 0
    assert cli.main(args + ["--steps", "1"]) == 2  # an existing run is never overwritten
    assert "not empty" in capsys.readouterr().err
    assert cli.main(args + ["--steps", "2"]) == 2  # nor resumed with other settings
    assert cli.main(args + ["--steps", "1", "--resume"]) == 0
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["model"]
    from qsam2_ext.sam2 import build_model

    rebuilt = build_model("sam2.1_hiera_t", str(tmp_path / "run" / "model.pt"), image_size=64, overrides=TINY)
    assert all(torch.equal(v, state[k]) for k, v in rebuilt.state_dict().items())  # loads with build_sam2


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    assert cli.main(["eval", "--format", "sa1b", "--data", str(tmp_path / "nothing"), *MODEL_ARGS]) == 2
    assert "SA-1B folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["eval", "--format", "pascal", "--data", str(tmp_path)])


def test_cli_trains_and_evaluates_the_project_model_on_video(tmp_path, capsys):
    """qsam2_mini (hidden width 128, not SAM2.1's 256) on the project's generated clips: video-clip training with
    distillation from the float model, then J&F of the trained checkpoint through the video predictor."""
    from qsam2_ext.sam2.synthetic import write_video_split

    write_video_split(str(tmp_path / "clips"), 2, seed=0, frames=4, size=64)
    model = ["--model", "configs/qsam2/qsam2_mini.yaml", "--random-weights", "--image-size", "64"]
    data = ["--format", "video", "--data", str(tmp_path / "clips")]
    assert cli.main(["train", *model, *data, "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2",
                     "--clip-length", "3", "--distill-mask", "1", "--distill-features", "1", "--num-workers", "0",
                     "--no-progress"]) == 0
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert len(log) == 2 and log[-1]["distill_mask"] >= 0 and log[-1]["focal"] >= 0
    capsys.readouterr()
    assert cli.main(["eval", *model, *data, "--checkpoint", str(tmp_path / "run" / "model.pt"), "--no-progress",
                     "--out", str(tmp_path / "eval.json")]) == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["results"]["sequences"] == 2 and 0 <= results["results"]["J&F"] <= 1


def _records(ious_by_image: dict, prompt: str = "box") -> list[dict]:
    return [{"source": src, "instance": i, "prompt": prompt, "iou": v} for src, vs in ious_by_image.items()
            for i, v in enumerate(vs)]


def test_paired_difference_is_the_instance_mean_with_an_image_bootstrap_interval():
    a = _records({"x.png": [0.9, 0.8, 0.7], "y.png": [0.5]}) + _records({"x.png": [0.1]}, "point")
    b = _records({"x.png": [0.8, 0.8, 0.6], "y.png": [0.6]}) + _records({"x.png": [0.3]}, "point")
    d = paired_difference(a, b, "box")
    assert d["mean"] == pytest.approx((0.1 + 0.0 + 0.1 - 0.1) / 4)  # over instances, not images
    assert (d["images"], d["instances"]) == (2, 4)
    # two images: a resample is both x, one of each or both y (1/4, 1/2, 1/4), so the 2.5 % and 97.5 % quantiles
    # are the two images' own mean differences
    assert d["ci95"] == pytest.approx([-0.1, 0.2 / 3])
    assert paired_difference(a, b, "point")["ci95"] == pytest.approx([-0.2, -0.2])
    shifted = [dict(r, iou=r["iou"] - 0.25) for r in a]
    shift = paired_difference(a, shifted, "box")
    assert shift["mean"] == pytest.approx(0.25) and shift["ci95"] == pytest.approx([0.25, 0.25])
    with pytest.raises(ValueError, match="same box-prompted instances"):
        paired_difference(a, b[1:], "box")
