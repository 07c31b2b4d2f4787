"""The training loop every quantization method shares: image or video-clip mode, single process or torchrun DDP.

Each step: the batch of the step (see ``data.py``), a seed derived from ``(seed, step, rank)`` for everything
random inside the model (dropout), the clip forward with its losses (plus the teacher's forward on the same
prompts when distilling), normalisation by the object and image counts of all processes, backward, global
gradient-norm clipping, AdamW with separate weight / quantizer groups, and the schedule. Checkpoints hold
everything the remaining steps depend on, so ``resume=True`` after a kill ends with the same weights as an
uninterrupted run (bitwise on CPU).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..errors import NonFiniteError, OutputFolderError
from ..io import atomic_write
from ..sam2.data import BadSampleLog
from ..sam2.forward import forward_clip
from ..sam2.losses import IMAGE_TERMS, loss_sums
from . import checkpoint, distributed
from .config import TrainConfig, amp_enabled
from .data import loader
from .optim import make_optimizer, make_scheduler

log = logging.getLogger("qsam2_ext.train")
LOG = "log.jsonl"
MODEL = "model.pt"


class TrainStep(nn.Module):
    """The student's clip forward and its loss sums, as one module for DistributedDataParallel to wrap."""

    def __init__(self, model: nn.Module, teacher: Optional[nn.Module], config: TrainConfig):
        super().__init__()
        self.model = model
        self.__dict__["teacher"] = teacher  # outside the module tree: DDP neither syncs nor checkpoints it
        self.corrections = config.corrections
        self.weights = config.loss_weights

    def forward(self, batch) -> dict[str, torch.Tensor]:
        out = forward_clip(self.model, batch, self.corrections)
        taught = None
        if self.teacher is not None and self.weights.distills:
            with torch.no_grad():
                taught = forward_clip(self.teacher, batch, replay=out.clicks)
        return loss_sums(out, batch.masks, self.weights, taught)


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def _trim_log(path: str, last_step: int) -> None:
    """Keep the log lines of steps up to the checkpoint (a killed run may have logged further)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= last_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError):
                continue  # a line cut by the kill

    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(kept)

    atomic_write(path, write)


def _restore(state: dict, config: TrainConfig, model, optimizer, scheduler, bad: BadSampleLog, path: str) -> int:
    saved = TrainConfig.from_dict(state["config"])
    changed = config.differences(saved, ignore=TrainConfig.RESUMABLE)
    if changed:
        raise ValueError(f"cannot resume {path}: it was written with different settings: " +
                         ", ".join(f"{n}={getattr(saved, n)!r} (now {getattr(config, n)!r})" for n in changed))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    bad.load_json(state["bad_samples"])
    return int(state["step"])


def train(
    model: nn.Module,
    dataset,
    config: TrainConfig,
    out_dir: str,
    *,
    teacher: Optional[nn.Module] = None,
    resume: bool = False,
    device: Optional[str] = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` (a SAM2Base, possibly with fake quantizers) on ``dataset`` (a reader) for ``config.steps``.

    Under torchrun every process calls this; rank 0 writes ``out_dir/checkpoint.pt``, ``log.jsonl`` and, at the
    end, ``model.pt`` (``{"model": state_dict}``). Returns a summary (final step, last losses, bad samples).
    """
    ctx = distributed.setup(device)
    try:
        return _train(model, dataset, config, out_dir, teacher, resume, progress, ctx)
    finally:
        distributed.teardown(ctx)


def _train(model, dataset, config, out_dir, teacher, resume, progress, ctx) -> dict:
    config.check_run(dataset, teacher, ctx.world)
    ckpt_path, log_path = checkpoint.checkpoint_path(out_dir), os.path.join(out_dir, LOG)
    state = checkpoint.load(ckpt_path)
    if state is not None and not resume:
        raise FileExistsError(f"{ckpt_path} exists: pass resume to continue that run, or choose another out_dir")
    bad = BadSampleLog(config.on_bad_sample)
    bad.report_all(dataset.problems)

    model.to(ctx.device).train()
    if teacher is not None:
        teacher.to(ctx.device).eval().requires_grad_(False)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    start = 0
    if state is not None:
        start = _restore(state, config, model, optimizer, scheduler, bad, ckpt_path)
        log.info("resuming %s at step %d of %d", ckpt_path, start, config.steps)
    elif resume:
        raise OutputFolderError(f"{out_dir}: no {checkpoint.CHECKPOINT} to resume from (run without resume to start)")
    if ctx.is_main:
        os.makedirs(out_dir, exist_ok=True)
        _trim_log(log_path, start)

    engine = TrainStep(model, teacher, config)
    if ctx.world > 1:
        engine = nn.parallel.DistributedDataParallel(
            engine, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=True,  # image mode leaves the memory modules idle
        )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    batches = loader(dataset, config, model.image_size, start, ctx.rank, ctx.world, ctx.device.type == "cuda")
    use_amp = amp_enabled(config, ctx.device.type)
    weights = config.loss_weights
    bar = _progress(progress and ctx.is_main, start, config.steps)
    record: dict = {}
    for step, (batch, reports) in zip(range(start, config.steps), batches):
        for source, reason in reports:
            bad.report(source, reason)  # raises under the "raise" policy
        if batch is None:
            raise RuntimeError(f"no usable sample for step {step}: every sample of the dataset was rejected")
        batch = batch.to(ctx.device)
        torch.manual_seed(step_seed(config.seed, step, ctx.rank))
        counts = distributed.all_reduce_sum(
            torch.tensor([batch.num_objects, batch.images.shape[0]], dtype=torch.float64, device=ctx.device), ctx)
        objects, images = counts.tolist()
        started = time.perf_counter()
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=use_amp):
            sums = engine(batch)
        terms = {name: getattr(weights, name) * value / (images if name in IMAGE_TERMS else objects)
                 for name, value in sums.items()}
        loss = sum(terms.values())
        reduced = distributed.all_reduce_sum(torch.stack([t.detach() for t in terms.values()]), ctx)
        if not torch.isfinite(reduced).all():
            raise NonFiniteError(f"non-finite loss at step {step}: {dict(zip(terms, reduced.tolist()))}; "
                                 f"the last checkpoint in {out_dir} is intact")
        lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
        optimizer.zero_grad(set_to_none=True)
        (loss * ctx.world).backward()  # DDP averages gradients over processes; the counts already span them all
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip) if config.grad_clip > 0 else None
        optimizer.step()
        scheduler.step()
        record = {"step": step + 1, "loss": float(reduced.sum()), **dict(zip(terms, reduced.tolist())),
                  "lr": lrs,
                  "grad_norm": None if grad_norm is None else float(grad_norm),
                  "objects": int(objects), "seconds": time.perf_counter() - started, "time": time.time()}
        if ctx.is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4g}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            if ctx.is_main:
                checkpoint.save(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, step=step + 1,
                                config=config.to_dict(), bad_samples=bad.to_json())
            distributed.barrier(ctx)
    bar.close()
    model_path = os.path.join(out_dir, MODEL)
    if ctx.is_main:
        atomic_write(model_path, lambda tmp: torch.save({"model": model.state_dict()}, tmp))
    distributed.barrier(ctx)
    return {"steps": config.steps, "last": record, "bad_samples": bad.to_json(), "checkpoint": ckpt_path,
            "model": model_path}


def _progress(enabled: bool, start: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=not enabled)
