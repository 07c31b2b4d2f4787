"""Training batches: a deterministic stream of samples, split over processes, prepared in loader workers.

Sample ``pos`` of the run is ``order[pos % n]`` of epoch ``pos // n`` (a seeded permutation per epoch), and step
``s`` takes stream positions ``s * batch_size ...``; process ``r`` of ``W`` takes the ``r``-th slice. Prompts and
clip starts come from a generator seeded by ``(seed, pos)``, and the prompt kind of a step from ``(seed, step)``.
So a batch depends only on the step, never on how many processes share it or whether the run was resumed.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..sam2.data import BadSample, Sample
from ..sam2.forward import ClipBatch
from ..sam2.prompts import PADDING, POSITIVE, jittered_box, sample_points
from .config import TrainConfig, prompt_kinds


def step_kind(config: TrainConfig, labeled: bool, step: int) -> str:
    kinds = prompt_kinds(config, labeled)
    rng = np.random.default_rng([config.seed, step, 1])
    return str(rng.choice(list(kinds), p=list(kinds.values())))


class StepSampler:
    """Batch sampler yielding, for each step from ``start``, this process's ``(pos, prompt kind)`` keys."""

    def __init__(self, config: TrainConfig, labeled: bool, start: int, rank: int = 0, world: int = 1):
        self.config, self.labeled, self.start, self.rank, self.world = config, labeled, start, rank, world

    def __len__(self) -> int:
        return self.config.steps - self.start

    def __iter__(self):
        local = self.config.batch_size // self.world
        for step in range(self.start, self.config.steps):
            kind = step_kind(self.config, self.labeled, step)
            first = step * self.config.batch_size + self.rank * local
            yield [(pos, kind) for pos in range(first, first + local)]


def _prompt(mask: np.ndarray, kind: str, config: TrainConfig, rng: np.random.Generator):
    if kind == "box":
        return jittered_box(mask, rng, config.box_noise, config.box_noise_bound)
    if kind == "point":
        return sample_points(mask, config.points, config.negative_points, rng)
    return np.zeros((1, 2), np.float32), np.full(1, PADDING, np.int32)  # mask prompt: points unused


def prepare(sample: Sample, kind: str, config: TrainConfig, image_size: int, transform,
            rng: np.random.Generator) -> dict:
    """Resize and normalise frames as SAM2's predictors do, resize masks, and sample frame-0 prompts."""
    frames = torch.stack([transform(f) for f in sample.frames])
    item = {"frames": frames, "kind": kind, "source": sample.source, "issues": list(sample.issues)}
    if not sample.labeled:  # random positive points, each prompting whatever lies there
        coords = rng.integers(0, image_size, (config.max_objects, 1, 2)).astype(np.float32)
        item.update(masks=None, coords=coords, labels=np.full((config.max_objects, 1), POSITIVE, np.int32))
    else:
        masks = torch.from_numpy(sample.masks).float()
        masks = F.interpolate(masks, size=(image_size, image_size), mode="nearest") > 0.5
        visible = masks[0].flatten(1).any(1)
        for object_id, keep in zip(sample.object_ids, visible.tolist()):
            if not keep:
                item["issues"].append(f"instance {object_id}: vanishes at {image_size}x{image_size}, dropped")
        if not visible.any():
            raise BadSample(sample.source, f"every instance vanishes when resized to {image_size}x{image_size}")
        masks = masks[:, visible]
        prompts = [_prompt(m, kind, config, rng) for m in masks[0].numpy()]
        item.update(masks=masks, coords=[c for c, _ in prompts], labels=[lab for _, lab in prompts])
    item["click_seeds"] = rng.integers(0, 2**63, len(item["coords"])).tolist()
    return item


def collate(items: list[dict]) -> ClipBatch:
    """One batch from prepared items: frames frame-major, objects flattened, prompts padded to one length."""
    num_frames = items[0]["frames"].shape[0]
    images = torch.stack([it["frames"] for it in items], dim=1).flatten(0, 1)  # (T * B, 3, S, S), frame-major
    counts = [len(it["coords"]) for it in items]
    points = max(len(c) for it in items for c in it["coords"])
    coords = torch.zeros(sum(counts), points, 2)
    labels = torch.full((sum(counts), points), PADDING, dtype=torch.int32)
    row = 0
    for it in items:
        for c, lab in zip(it["coords"], it["labels"]):
            coords[row, : len(c)], labels[row, : len(lab)] = torch.from_numpy(c), torch.from_numpy(lab)
            row += 1
    masks = None if items[0]["masks"] is None else torch.cat([it["masks"] for it in items], dim=1)
    return ClipBatch(
        images=images,
        object_sample=torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)),
        point_coords=coords,
        point_labels=labels,
        masks=masks,
        mask_prompt=items[0]["kind"] == "mask",
        click_seeds=[s for it in items for s in it["click_seeds"]],
        num_frames=num_frames,
        sources=[it["source"] for it in items],
    )


class TrainingSet(torch.utils.data.Dataset):
    """Map from ``(pos, kind)`` keys to ``(prepared item or None, reports)``; never raises ``BadSample``.

    A bad sample is reported and, under the ``skip`` policy, replaced by the next one of the shuffled order;
    under ``raise`` the item is None and the main process stops on the report.
    """

    def __init__(self, reader, config: TrainConfig, image_size: int):
        self.reader, self.config, self.image_size = reader, config, image_size
        self._order: dict[int, np.ndarray] = {}
        self._transform = None

    def index(self, pos: int) -> int:
        epoch, offset = divmod(pos, len(self.reader))
        if epoch not in self._order:
            self._order = {epoch: np.random.default_rng([self.config.seed, epoch, 0]).permutation(len(self.reader))}
        return int(self._order[epoch][offset])

    def transform(self):
        if self._transform is None:  # built lazily: it holds a TorchScript module, built once per worker
            from sam2.utils.transforms import SAM2Transforms

            self._transform = SAM2Transforms(resolution=self.image_size, mask_threshold=0.0)
        return self._transform

    def __getitem__(self, key: tuple[int, str]) -> tuple[Optional[dict], list[tuple[str, str]]]:
        pos, kind = key
        reports = []
        for attempt in range(len(self.reader)):
            rng = np.random.default_rng([self.config.seed, pos, attempt])
            try:
                sample = self.reader.load(self.index(pos + attempt), rng, self.config.max_objects)
                item = prepare(sample, kind, self.config, self.image_size, self.transform(), rng)
            except BadSample as e:
                reports.append((e.source, e.reason))
                if self.config.on_bad_sample == "raise":
                    return None, reports
                continue
            return item, reports + [(item["source"], issue) for issue in item.pop("issues")]
        return None, reports


def collate_step(results: list[tuple[Optional[dict], list]]) -> tuple[Optional[ClipBatch], list]:
    """DataLoader collate: the batch (None if a sample failed under ``raise``) and every report."""
    reports = [r for _, rs in results for r in rs]
    items = [item for item, _ in results]
    return (None if any(item is None for item in items) else collate(items)), reports


def loader(reader, config: TrainConfig, image_size: int, start: int, rank: int, world: int, pin_memory: bool):
    """Batches of steps ``start ..`` for process ``rank`` of ``world``, as ``(ClipBatch or None, reports)``."""
    return torch.utils.data.DataLoader(
        TrainingSet(reader, config, image_size),
        batch_sampler=StepSampler(config, reader.labeled, start, rank, world),
        num_workers=config.num_workers,
        collate_fn=collate_step,
        pin_memory=pin_memory,
    )
