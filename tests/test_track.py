"""``qsam2 track``: masks against the streaming predictor run directly, resume, and bad inputs (one-line errors,
exit 2, masks written before an error still valid)."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from qsam2_ext.cli import main

FRAMES = 6


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from qsam2_ext.sam2.synthetic import write_video_split

    root = str(tmp_path_factory.mktemp("track"))
    write_video_split(root, 1, seed=1000, frames=FRAMES)
    return os.path.join(root, "JPEGImages", "clip_00000"), os.path.join(root, "Annotations", "clip_00000", "00000.png")


def _masks(out):
    return {int(n[:-4]): np.array(Image.open(os.path.join(out, n))) for n in sorted(os.listdir(out))
            if n.endswith(".png")}


def _reference(folder, mask_png, start=0):
    """Id maps of the streaming int8 predictor run directly, every object of the mask prompted on ``start``."""
    from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, default_checkpoint
    from qsam2_ext.sam2.video import build_video_predictor

    predictor = build_video_predictor(DEFAULT_MODEL_CONFIG, default_checkpoint(), memory_bits=8)
    ids = np.array(Image.open(mask_png))
    out = {}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.filterwarnings("ignore", message=".*cannot import name '_C'")
        state = predictor.init_state(folder, streaming=True)
        for i in np.unique(ids[ids > 0]):
            predictor.add_new_mask(state, start, int(i), ids == i)
        for f, object_ids, logits in predictor.propagate_in_video(state):
            scores = logits[:, 0]
            best = np.asarray(object_ids)[scores.argmax(0).numpy()]
            out[f] = np.where(scores.amax(0).numpy() > 0, best, 0)
    return out


def test_track_writes_masks_and_resumes(clip, tmp_path, capsys):
    folder, mask = clip
    out = str(tmp_path / "out")
    assert main(["track", folder, "--out", out, "--mask", mask, "--no-progress"]) == 0
    assert f"wrote {FRAMES} masks" in capsys.readouterr().out
    written = _masks(out)
    reference = _reference(folder, mask)
    assert sorted(written) == list(range(FRAMES))
    for f in written:
        np.testing.assert_array_equal(written[f], reference[f])
    settings = json.load(open(os.path.join(out, "track.json")))
    assert settings["done"] and settings["settings"]["memory_bits"] == 8

    # interrupted after frame 3: the run resumes there and writes only the missing frames
    for f in (4, 5):
        os.unlink(os.path.join(out, f"{f:05d}.png"))
    before = {f: os.stat(os.path.join(out, f"{f:05d}.png")).st_mtime_ns for f in range(4)}
    assert main(["track", folder, "--out", out, "--mask", mask, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 masks" in printed and "resumed after frame 3" in printed
    assert sorted(_masks(out)) == list(range(FRAMES))
    assert {f: os.stat(os.path.join(out, f"{f:05d}.png")).st_mtime_ns for f in range(4)} == before
    assert main(["track", folder, "--out", out, "--mask", mask, "--no-progress"]) == 0
    assert "already" in capsys.readouterr().out

    # other settings in the same folder: refused, unless --restart
    assert main(["track", folder, "--out", out, "--mask", mask, "--memory", "int4", "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["track", folder, "--out", out, "--point", "10,10", "--restart", "--no-progress",
                 "--max-frames", "2"]) == 0
    assert sorted(_masks(out)) == [0, 1]


def _run(args):
    try:
        return main(args)
    except SystemExit as e:  # argparse's own errors
        return e.code


@pytest.mark.parametrize("args, message", [
    (["--point", "999,5"], "outside the"),
    (["--box", "5,5,2,2"], "x0 <= x1"),
    (["--frame", "6", "--point", "5,5"], "past the end"),
    (["--max-frames", "0", "--point", "5,5"], "at least 1"),
    ([], "no prompt"),
    (["--point", "5"], "expected 2 comma-separated numbers"),
    (["--memory", "int2", "--point", "5,5"], "invalid choice"),
])
def test_track_bad_prompts(clip, tmp_path, capsys, args, message):
    folder, _ = clip
    assert _run(["track", folder, "--out", str(tmp_path / "o"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert message in err


def test_track_bad_mask_and_folders(clip, tmp_path, capsys):
    folder, mask = clip
    small = tmp_path / "small.png"
    Image.fromarray(np.ones((8, 8), np.uint8), mode="L").save(small)
    empty_mask = tmp_path / "empty.png"
    Image.fromarray(np.zeros((256, 256), np.uint8), mode="L").save(empty_mask)
    os.makedirs(tmp_path / "empty")
    cases = [([folder, "--mask", str(small)], "the mask is 8x8"),
             ([folder, "--mask", str(empty_mask)], "no object"),
             ([folder, "--mask", mask, "--point", "3,3"], "not both"),
             ([str(tmp_path / "empty"), "--point", "3,3"], "no frames"),
             ([str(tmp_path / "nothing"), "--point", "3,3"], "no such")]
    for args, message in cases:
        assert _run(["track", *args, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    foreign = tmp_path / "foreign"
    os.makedirs(foreign)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(foreign / "00000.png")
    for extra in ([], ["--restart"]):  # a folder of other PNGs is neither mixed with ours nor deleted
        assert _run(["track", folder, "--mask", mask, "--out", str(foreign), "--no-progress", *extra]) == 2
        assert "not written by qsam2 track" in capsys.readouterr().err
    assert os.listdir(foreign) == ["00000.png"]


@pytest.mark.parametrize("fault, message", [("size", "frame 3 is 200x256"), ("bytes", "unreadable frame 3")])
def test_track_stops_at_a_bad_frame_keeping_earlier_masks(clip, tmp_path, capsys, fault, message):
    folder, mask = clip
    video = str(tmp_path / "v")
    shutil.copytree(folder, video)
    bad = os.path.join(video, "00003.jpg")
    if fault == "size":
        Image.open(bad).crop((0, 0, 200, 256)).save(bad)
    else:
        with open(bad, "wb") as f:
            f.write(b"\xff\xd8 truncated")
    out = str(tmp_path / "out")
    assert main(["track", video, "--out", out, "--mask", mask, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    written = _masks(out)
    assert sorted(written) == [0, 1, 2]
    reference = _reference(folder, mask)
    for f in written:  # complete, valid masks: the uninterrupted run's
        np.testing.assert_array_equal(written[f], reference[f])
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_memory_settings_sources(tmp_path):
    from qsam2_ext.track import TrackJob, _memory_settings

    job = TrackJob(video="v", out="o")
    assert _memory_settings(job, {}) == (8, "token")  # the command's default
    assert _memory_settings(job, {"memory": {"bits": 4, "granularity": "channel"}}) == (4, "channel")
    assert _memory_settings(job, {"recipe": "../../elsewhere/evil"}) == (8, "token")  # only shipped names are read
    with pytest.raises(ValueError, match="q.safetensors: its metadata's memory section is not valid"):
        _memory_settings(job, {"memory": {"bits": 5}}, "q.safetensors")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("extends: qsam2_mini_w4a8\nmemory: {bits: 4}\n")
    job = TrackJob(video="v", out="o", recipe=str(recipe))
    assert _memory_settings(job, {"memory": {"bits": 8}}) == (4, "token")  # --recipe before the file's metadata
    job.memory, job.memory_granularity = "fp", "channel"
    assert _memory_settings(job, {}) == (None, "channel")  # the command line first
