"""The training loop: parameter groups, schedule, the data stream, bad samples, checkpoints, resume after SIGKILL,
and data-parallel training over two torchrun processes against one process."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import WeightFakeQuantLinear, quantize_some, tiny_model, write_folder, write_sa1b, write_video

from qsam2_ext.io import atomic_write
from qsam2_ext.sam2.data import BadSample, open_dataset
from qsam2_ext.train import TrainConfig, parameter_groups, train
from qsam2_ext.train.data import StepSampler, TrainingSet, collate
from qsam2_ext.train.optim import lr_factor, make_optimizer

WORKER = os.path.join(os.path.dirname(__file__), "train_worker.py")
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_quantizer_parameters_get_their_own_group():
    model = quantize_some(tiny_model())
    model.sam_prompt_encoder.requires_grad_(False)
    weights, quantizer = parameter_groups(model)
    alphas = [m.quantizer.alpha for m in model.modules() if isinstance(m, WeightFakeQuantLinear)]
    assert len(alphas) == 2 and {id(p) for p in quantizer} == {id(a) for a in alphas}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(weights) + len(quantizer) == len(trainable)
    assert not any(p is q for p in model.sam_prompt_encoder.parameters() for q in weights)
    config = TrainConfig(lr=1e-4, quantizer_lr=1e-2, weight_decay=0.05)
    groups = {g["name"]: g for g in make_optimizer(model, config).param_groups}
    assert (groups["weights"]["lr"], groups["weights"]["weight_decay"]) == (1e-4, 0.05)
    assert (groups["quantizer"]["lr"], groups["quantizer"]["weight_decay"]) == (1e-2, 0.0)


def test_decay_exempt_weights_get_their_own_group_without_decay():
    model = quantize_some(tiny_model())
    config = TrainConfig(lr=1e-4, weight_decay=0.05, decay_exempt=r"norm|\.bias$")
    groups = {g["name"]: g for g in make_optimizer(model, config).param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in groups["weights_no_decay"]["params"]}
    decayed = {names[id(p)] for p in groups["weights"]["params"]}
    weights, _ = parameter_groups(model)
    expected = {names[id(p)] for p in weights if "norm" in names[id(p)] or names[id(p)].endswith(".bias")}
    assert exempt == expected and expected and not exempt & decayed
    assert exempt | decayed == {names[id(p)] for p in weights}
    assert (groups["weights_no_decay"]["lr"], groups["weights_no_decay"]["weight_decay"]) == (1e-4, 0.0)
    assert groups["weights"]["weight_decay"] == 0.05
    # AdamW leaves an exempt weight with zero gradient where it is, and shrinks a decayed one
    optimizer = make_optimizer(model, config)
    exempt_p, decayed_p = groups["weights_no_decay"]["params"][0], groups["weights"]["params"][0]
    before = exempt_p.detach().clone(), decayed_p.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.equal(exempt_p, before[0])
    assert torch.allclose(decayed_p, before[1] * (1 - 1e-4 * 0.05))
    # no pattern: every weight is decayed, and the exempt group is left out
    assert "weights_no_decay" not in {g["name"] for g in make_optimizer(model, TrainConfig()).param_groups}


def test_schedule_warms_up_then_follows_a_cosine():
    config = TrainConfig(steps=10, warmup_steps=2, min_lr_ratio=0.1)
    factors = [lr_factor(config, s) for s in range(10)]
    assert factors[:3] == pytest.approx([0.5, 1.0, 1.0])
    mid = 2 + 4  # half-way through the 8 decay steps
    assert factors[mid] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
    assert lr_factor(TrainConfig(steps=10, schedule="constant"), 7) == 1.0


def test_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="must be an integer"):
        TrainConfig(steps=2.5)
    with pytest.raises(ValueError, match="box_prob"):
        TrainConfig(box_prob=1.5)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="decay_exempt is not a regular expression"):
        TrainConfig(decay_exempt="norm(")
    with pytest.raises(ValueError, match="decay_exempt must be at most"):
        TrainConfig(decay_exempt="a" * 201)
    with pytest.raises(ValueError, match="dice"):
        TrainConfig(dice=-1.0)
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig.from_dict({"stepz": 3})


def test_run_checks_happen_before_any_work(tmp_path):
    write_folder(tmp_path / "folder")
    write_sa1b(tmp_path / "sa1b")
    folder, sa1b = open_dataset("folder", str(tmp_path / "folder")), open_dataset("sa1b", str(tmp_path / "sa1b"))
    model = tiny_model()
    cases = [
        (folder, TrainConfig(), None, "no labels"),
        (folder, TrainConfig(distill_mask=1.0), None, "need a teacher"),
        (sa1b, TrainConfig(clip_length=3), None, "video dataset"),
        (sa1b, TrainConfig(batch_size=3), None, "divisible"),
        (sa1b, TrainConfig(focal=0, dice=0, iou=0, object=0), None, "every loss weight is zero"),
        (folder, TrainConfig(distill_mask=1.0, corrections=2), model, "correction clicks"),
    ]
    for dataset, config, teacher, message in cases:
        with pytest.raises(ValueError, match=message):
            config.check_run(dataset, teacher, world_size=2)
    assert not (tmp_path / "run").exists()


def test_batches_depend_on_the_step_only():
    """The union of the per-process slices is the single-process batch, whatever the start step."""
    config = TrainConfig(steps=5, batch_size=4, seed=3)
    single = list(StepSampler(config, True, 0))
    ranks = [list(StepSampler(config, True, 0, rank=r, world=2)) for r in range(2)]
    for step in range(5):
        assert ranks[0][step] + ranks[1][step] == single[step]
        assert len({kind for _, kind in single[step]}) == 1  # one prompt kind per step
    assert list(StepSampler(config, True, 3)) == single[3:]
    kinds = {kind for batch in StepSampler(TrainConfig(steps=200, mask_prob=0.2), True, 0) for _, kind in batch}
    assert kinds == {"mask", "box", "point"}
    assert {k for b in StepSampler(TrainConfig(steps=50), False, 0) for _, k in b} == {"point"}


def test_training_set_is_deterministic_and_covers_each_epoch(tmp_path):
    write_sa1b(tmp_path, n=5, objects=3)
    data = TrainingSet(open_dataset("sa1b", str(tmp_path)), TrainConfig(max_objects=2, seed=1), 64)
    first = [data[(pos, "box")][0] for pos in range(10)]
    again = data[(7, "box")][0]
    assert torch.equal(first[7]["frames"], again["frames"]) and all(
        np.array_equal(a, b) for a, b in zip(first[7]["coords"], again["coords"]))
    epoch = [os.path.basename(item["source"]) for item in first[:5]]
    assert sorted(epoch) == [f"sa_{i}.json" for i in range(5)]  # a permutation per epoch
    batch = collate(first[:2])
    assert batch.images.shape == (2, 3, 64, 64) and batch.masks.shape == (1, 4, 64, 64)
    assert batch.point_coords.shape == (4, 2, 2) and batch.point_labels.tolist() == [[2, 3]] * 4
    assert batch.object_sample.tolist() == [0, 0, 1, 1]
    x, y = batch.point_coords[:, :, 0], batch.point_coords[:, :, 1]
    assert (x[:, 0] <= x[:, 1]).all() and (y[:, 0] <= y[:, 1]).all()


def test_bad_samples_are_replaced_and_reported(tmp_path):
    write_sa1b(tmp_path, n=4)
    (tmp_path / "sa_2.jpg").write_bytes(b"not a jpeg")
    reader = open_dataset("sa1b", str(tmp_path))
    skip = TrainingSet(reader, TrainConfig(), 64)
    seen = [skip[(pos, "point")] for pos in range(4)]
    assert all(item is not None for item, _ in seen)
    reports = [r for _, rs in seen for r in rs]
    assert reports == [(str(tmp_path / "sa_2.jpg"), reports[0][1])] and "unreadable image" in reports[0][1]
    strict = TrainingSet(reader, TrainConfig(on_bad_sample="raise"), 64)
    results = [strict[(pos, "point")] for pos in range(4)]
    assert sum(item is None for item, _ in results) == 1


def test_raise_policy_stops_training_with_the_path(tmp_path):
    write_sa1b(tmp_path / "data", n=2)
    (tmp_path / "data" / "sa_1.jpg").write_bytes(b"broken")
    config = TrainConfig(steps=2, batch_size=2, num_workers=1, on_bad_sample="raise")
    with pytest.raises(BadSample, match="sa_1.jpg"):
        train(tiny_model(), open_dataset("sa1b", str(tmp_path / "data")), config, str(tmp_path / "run"), progress=False)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_training_lowers_the_loss_and_writes_its_outputs(tmp_path):
    write_sa1b(tmp_path / "data", n=2, objects=2)
    config = TrainConfig(steps=12, batch_size=2, lr=3e-4, quantizer_lr=3e-3, box_prob=0.0, num_workers=0,
                         checkpoint_every=5, max_objects=2)
    model = quantize_some(tiny_model())
    start = copy.deepcopy(model.state_dict())
    summary = train(model, open_dataset("sa1b", str(tmp_path / "data")), config, str(tmp_path / "run"), progress=False)
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["step"] for r in log] == list(range(1, 13)) and summary["last"] == log[-1]
    assert np.mean([r["loss"] for r in log[-3:]]) < np.mean([r["loss"] for r in log[:3]])
    assert log[0]["lr"] == {"weights": 3e-4, "quantizer": 3e-3}
    saved = _state(tmp_path / "run" / "model.pt")
    assert any(not torch.equal(saved[k], start[k]) for k in start if k.endswith("quantizer.alpha"))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 12 and TrainConfig.from_dict(ckpt["config"]) == config
    with pytest.raises(FileExistsError, match="resume"):
        train(model, open_dataset("sa1b", str(tmp_path / "data")), config, str(tmp_path / "run"), progress=False)


def test_distillation_trains_on_unlabeled_images(tmp_path):
    write_folder(tmp_path / "data", n=2)
    teacher = tiny_model()
    student = quantize_some(copy.deepcopy(teacher), bits=2)
    config = TrainConfig(steps=6, batch_size=2, lr=1e-4, quantizer_lr=1e-2, distill_mask=1.0, distill_features=10.0,
                         max_objects=4, num_workers=0)
    train(student, open_dataset("folder", str(tmp_path / "data")), config, str(tmp_path / "run"), teacher=teacher,
          progress=False)
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert set(log[0]) >= {"distill_mask", "distill_features"} and "focal" not in log[0]
    assert log[-1]["distill_features"] < log[0]["distill_features"]
    assert all(r["objects"] == 8 for r in log)  # 4 random point prompts per image


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1}, path)

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), crash)
    assert torch.load(path, weights_only=True) == {"step": 1} and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_resume_refuses_other_settings(tmp_path):
    write_sa1b(tmp_path / "data", n=2)
    data = open_dataset("sa1b", str(tmp_path / "data"))
    config = TrainConfig(steps=1, batch_size=2, num_workers=0)
    train(tiny_model(), data, config, str(tmp_path / "run"), progress=False)
    with pytest.raises(ValueError, match="lr=1e-05 \\(now 0.001\\)"):
        train(tiny_model(), data, TrainConfig(steps=1, batch_size=2, lr=1e-3), str(tmp_path / "run"), resume=True)
    summary = train(tiny_model(), data, TrainConfig(steps=1, batch_size=2, num_workers=1), str(tmp_path / "run"),
                    resume=True, progress=False)  # workers do not change the result: allowed
    assert summary["last"] == {}


def _run_worker(out, data, *extra, torchrun=False):
    torchrun_args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    launcher = [sys.executable] + (torchrun_args if torchrun else [])
    return subprocess.Popen(launcher + [WORKER, "--data", str(data), "--out", str(out), *extra], env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=240):
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output


def test_sigkill_mid_step_then_resume_gives_the_same_weights(tmp_path):
    """Video clips (memory attention dropout), correction clicks, fake quantizers and a loader worker: a run killed
    with SIGKILL during step 4 and resumed from its step-2 checkpoint ends bitwise equal to an uninterrupted one."""
    write_video(tmp_path / "data", videos=3, frames=5)
    args = ("--format", "video", "--steps", "6", "--clip-length", "3", "--corrections", "1",
            "--checkpoint-every", "2", "--num-workers", "1")
    _finish(_run_worker(tmp_path / "full", tmp_path / "data", *args))

    victim = _run_worker(tmp_path / "killed", tmp_path / "data", *args)
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and victim.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:  # step 3 done: checkpoint 2 on disk, in step 4
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model.pt").exists()
    assert torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"] in (2, 4)

    _finish(_run_worker(tmp_path / "killed", tmp_path / "data", *args, "--resume"))
    full, resumed = _state(tmp_path / "full" / "model.pt"), _state(tmp_path / "killed" / "model.pt")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "killed" / "log.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]  # the killed run's step-3 line was replaced, not duplicated


def test_two_process_ddp_equals_one_process(tmp_path):
    """torchrun with 2 gloo processes, each on half of every batch, against 1 process on whole batches. Images hold
    1 to 3 objects, so ranks see different object counts: normalising by the global count is what makes them equal."""
    write_sa1b(tmp_path / "data", n=6, objects=3)
    for i, objects in enumerate([1, 3, 2, 1, 3, 1]):
        record = json.loads((tmp_path / "data" / f"sa_{i}.json").read_text())
        record["annotations"] = record["annotations"][:objects]
        (tmp_path / "data" / f"sa_{i}.json").write_text(json.dumps(record))
    args = ("--format", "sa1b", "--steps", "3", "--batch-size", "4", "--lr", "1e-3")
    stream = TrainingSet(open_dataset("sa1b", str(tmp_path / "data")), TrainConfig(max_objects=3), 64)
    per_rank = [[len(stream[(4 * step + 2 * rank + i, "point")][0]["coords"]) for rank in (0, 1) for i in (0, 1)]
                for step in range(3)]
    assert any(c[0] + c[1] != c[2] + c[3] for c in per_rank)  # the two ranks see different numbers of objects
    _finish(_run_worker(tmp_path / "single", tmp_path / "data", *args))
    _finish(_run_worker(tmp_path / "ddp", tmp_path / "data", *args, torchrun=True))
    single, ddp = _state(tmp_path / "single" / "model.pt"), _state(tmp_path / "ddp" / "model.pt")
    start = quantize_some(tiny_model(64, seed=0)).state_dict()
    moved = max(float((single[k] - start[k]).abs().max()) for k in single)
    diff = max(float((single[k] - ddp[k]).abs().max()) for k in single)
    assert moved > 1e-3  # three AdamW steps at lr 1e-3 moved the weights
    assert diff < 1e-5, f"DDP differs from single-process training by {diff} (weights moved by {moved})"
    logs = [[json.loads(line) for line in open(tmp_path / run / "log.jsonl")] for run in ("single", "ddp")]
    assert [r["objects"] for r in logs[0]] == [r["objects"] for r in logs[1]] == [sum(c) for c in per_rank]
    assert [r["loss"] for r in logs[0]] == pytest.approx([r["loss"] for r in logs[1]], rel=1e-5)
