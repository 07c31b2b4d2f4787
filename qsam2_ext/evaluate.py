"""Evaluate a float or quantized SAM2 through SAM2's own predictors, on any supported dataset format.

* Labeled images (SA-1B, COCO): mIoU per instance, one prompt per instance and kind: ``point`` is the mask's
  innermost pixel with multimask output, the mask with the highest predicted IoU kept (as SAM evaluates single
  clicks); ``box`` is the tight box with single-mask output.
* Video folders (DAVIS / SA-V): semi-supervised J&F (see ``sam2.metrics``); each object is prompted on the first
  frame it appears in, with its ground-truth mask (default), its innermost point or its tight box, then tracked
  forward by ``SAM2VideoPredictor``.
* Unlabeled folders: agreement with a ``reference`` model (usually the float one): a grid of point prompts, the
  reference's masks as targets, and boxes around those masks; reported as mIoU against the reference.

Bad samples follow the data policy (``sam2.data.policy``): skipped ones are listed in the results.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from .io import write_json
from .sam2.data import BadSample, BadSampleLog
from .sam2.metrics import dataset_jf, mask_iou, sequence_jf
from .sam2.models import image_predictor
from .sam2.prompts import center_point, grid_points, tight_box

PROMPTS = ("point", "box")
VIDEO_PROMPTS = ("mask", "point", "box")
CHUNK = 16  # prompts per predictor call: bounds the (chunk, 3, H, W) float masks held at full resolution


def predict_masks(predictor, kind: str, prompts: np.ndarray) -> np.ndarray:
    """``(K, H, W)`` bool masks for ``K`` points ``(K, 2)`` or boxes ``(K, 4)`` on the predictor's current image."""
    height, width = predictor._orig_hw[-1]
    out = []
    for start in range(0, len(prompts), CHUNK):
        chunk = prompts[start:start + CHUNK]
        if kind == "point":
            masks, ious, _ = predictor.predict(point_coords=chunk[:, None], point_labels=np.ones((len(chunk), 1)),
                                               multimask_output=True)
            masks, ious = masks.reshape(len(chunk), -1, height, width), ious.reshape(len(chunk), -1)
            out.append(masks[np.arange(len(chunk)), ious.argmax(1)] > 0)
        else:
            masks, _, _ = predictor.predict(box=chunk, multimask_output=False)
            out.append(masks.reshape(len(chunk), height, width) > 0)
    return np.concatenate(out)


def _instance_prompts(kind: str, masks: np.ndarray) -> np.ndarray:
    return np.stack([center_point(m) if kind == "point" else tight_box(m) for m in masks])


def _summary(records: list[dict], prompts: Sequence[str]) -> dict:
    out = {}
    for kind in prompts:
        ious = [r["iou"] for r in records if r["prompt"] == kind]
        out[kind] = {"mIoU": float(np.mean(ious)) if ious else None, "instances": len(ious)}
    return out


def _samples(dataset, indices, bad: BadSampleLog, progress: bool):
    """The usable samples among ``indices``, with a progress bar; bad ones and dropped instances are reported."""
    from tqdm.auto import tqdm

    for index in tqdm(indices, desc="eval", unit="sample", disable=not progress):
        try:
            sample = dataset.load(index)
        except BadSample as e:
            bad.report(e.source, e.reason)
            continue
        for issue in sample.issues:
            bad.report(sample.source, issue)
        yield index, sample


def _evaluate_images(model, dataset, prompts, samples, bad, progress) -> dict:
    predictor = image_predictor(model)
    records = []
    for _, sample in _samples(dataset, samples, bad, progress):
        gt = sample.masks[0]
        predictor.set_image(sample.frames[0])
        for kind in prompts:
            pred = predict_masks(predictor, kind, _instance_prompts(kind, gt))
            records += [{"source": sample.source, "instance": i, "prompt": kind, "iou": mask_iou(p, g)}
                        for i, p, g in zip(sample.object_ids, pred, gt)]
    return {"metric": "mIoU", "results": _summary(records, prompts), "instances": records}


def _evaluate_agreement(model, reference, dataset, prompts, samples, bad, progress, grid) -> dict:
    predictor, teacher = image_predictor(model), image_predictor(reference)
    records, empty = [], 0
    for _, sample in _samples(dataset, samples, bad, progress):
        image = sample.frames[0]
        predictor.set_image(image)
        teacher.set_image(image)
        points = grid_points(*image.shape[:2], grid)
        targets = predict_masks(teacher, "point", points)
        keep = targets.reshape(len(targets), -1).any(1)
        empty += int((~keep).sum())  # a prompt whose reference mask is empty has no box and no target
        if not keep.any():
            continue
        points, targets = points[keep], targets[keep]
        for kind in prompts:
            if kind == "point":
                prompt_targets, pred = targets, predict_masks(predictor, "point", points)
            else:
                boxes = _instance_prompts("box", targets)
                prompt_targets, pred = predict_masks(teacher, "box", boxes), predict_masks(predictor, "box", boxes)
            records += [{"source": sample.source, "instance": i, "prompt": kind, "iou": mask_iou(p, t)}
                        for i, (p, t) in enumerate(zip(pred, prompt_targets))]
    return {"metric": "mIoU vs reference", "results": _summary(records, prompts), "instances": records,
            "empty_reference_masks": empty}


@contextlib.contextmanager
def _numbered_frames(frame_paths: list[str]):
    """A folder SAM2VideoPredictor can read: the frames' own one if their names are numbers, else symlinks."""
    names = [os.path.splitext(os.path.basename(p))[0] for p in frame_paths]
    if all(n.isdigit() for n in names):
        yield os.path.dirname(frame_paths[0])
        return
    with tempfile.TemporaryDirectory() as tmp:
        for t, path in enumerate(frame_paths):
            os.symlink(os.path.abspath(path), os.path.join(tmp, f"{t:05d}.jpg"))
        yield tmp


def track(model, sample, prompt: str) -> np.ndarray:
    """``(T, K, H, W)`` bool predictions of ``SAM2VideoPredictor`` for a sequence.

    Each object is prompted on the first frame it appears in and tracked forward from there (objects appearing on
    the same frame together); it is predicted absent before. Running each group from its own start keeps the
    predictor from conditioning earlier frames on later prompts, which also fails in float32 (sam2 stores memories
    in bfloat16 and expects autocast).
    """
    gt = sample.masks
    first_frames = [int(np.flatnonzero(gt[:, k].reshape(len(gt), -1).any(1))[0]) for k in range(gt.shape[1])]
    pred = np.zeros_like(gt)
    with _numbered_frames(sample.frame_paths) as folder, warnings.catch_warnings():
        # without sam2's optional CUDA extension hole filling is skipped, with one warning per frame
        warnings.filterwarnings("ignore", message=".*cannot import name '_C'")
        state = model.init_state(folder)
        for start in sorted(set(first_frames)):
            model.reset_state(state)
            group = [k for k, f in enumerate(first_frames) if f == start]
            for k in group:
                mask, object_id = gt[start, k], sample.object_ids[k]
                if prompt == "mask":
                    model.add_new_mask(state, start, object_id, mask)
                elif prompt == "point":
                    model.add_new_points_or_box(state, start, object_id, points=center_point(mask)[None],
                                                labels=np.ones(1, np.int32))
                else:
                    model.add_new_points_or_box(state, start, object_id, box=tight_box(mask))
            for frame, object_ids, logits in model.propagate_in_video(state, start_frame_idx=start):
                for object_id, frame_logits in zip(object_ids, logits):
                    pred[frame, sample.object_ids.index(object_id)] = (frame_logits[0] > 0).cpu().numpy()
    return pred


def _evaluate_video(model, dataset, prompt, samples, bad, progress) -> dict:
    if not hasattr(model, "propagate_in_video"):
        raise TypeError("video evaluation needs a SAM2VideoPredictor: build it with build_model(..., video=True)")
    sequences = {}
    for index, sample in _samples(dataset, samples, bad, progress):
        if sample.num_frames < 3:
            bad.report(sample.source, f"{sample.num_frames} frames: J&F needs 3 or more")
            continue
        scores = sequence_jf(track(model, sample, prompt), sample.masks)
        sequences[dataset.name(index)] = {**scores, "object_ids": sample.object_ids}
    empty = {"J": None, "F": None, "J&F": None, "objects": 0, "sequences": 0}
    return {"metric": "J&F", "results": dataset_jf(sequences) if sequences else empty, "sequences": sequences}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset,
    *,
    prompts: Sequence[str] = PROMPTS,
    video_prompt: str = "mask",
    reference: Optional[nn.Module] = None,
    grid: int = 4,
    limit: Optional[int] = None,
    on_bad_sample: str = "skip",
    progress: bool = True,
    out: Optional[str] = None,
) -> dict:
    """Evaluate ``model`` on a dataset reader (``sam2.data.open_dataset``); returns, and writes to ``out`` as JSON,
    the summary metrics, per-instance (or per-sequence) scores and the skipped samples.

    ``reference`` is needed for, and only for, unlabeled data; ``limit`` evaluates the first samples only.
    """
    bad_prompts = sorted(set(prompts) - set(PROMPTS))
    if bad_prompts or not prompts:
        raise ValueError(f"prompts must be a non-empty subset of {PROMPTS}, got {list(prompts)}")
    if video_prompt not in VIDEO_PROMPTS:
        raise ValueError(f"video_prompt must be one of {VIDEO_PROMPTS}, got {video_prompt!r}")
    if (reference is not None) == dataset.labeled:
        raise ValueError("a reference model is needed for, and only for, unlabeled data")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if getattr(dataset, "clip_length", None) is not None:
        raise ValueError("J&F scores whole sequences: open the video dataset without clip_length")
    if out is not None:  # fail now, not after the evaluation
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    bad = BadSampleLog(on_bad_sample)
    bad.report_all(dataset.problems)
    samples = range(len(dataset) if limit is None else min(limit, len(dataset)))
    for m in (model, reference):
        if m is not None:
            m.eval()
    if dataset.video:
        body = _evaluate_video(model, dataset, video_prompt, samples, bad, progress)
    elif dataset.labeled:
        body = _evaluate_images(model, dataset, list(prompts), samples, bad, progress)
    else:
        body = _evaluate_agreement(model, reference, dataset, list(prompts), samples, bad, progress, grid)
    scored = len(body["sequences"]) if dataset.video else len(body["instances"])  # instances or sequences
    results = {"format": dataset.format, "samples": len(samples), "image_size": model.image_size, **body,
               "scored": scored, "skipped": bad.to_json()}
    if out is not None:
        write_json(out, results)
    return results


def paired_difference(a: list[dict], b: list[dict], prompt: str, *, resamples: int = 2000, seed: int = 0) -> dict:
    """Mean IoU of ``a`` minus that of ``b`` over the instances both scored with ``prompt`` (``evaluate``'s
    ``instances`` records of two models on the same images), with a 95 % paired bootstrap interval that resamples
    whole images (the instances of one image share its errors). Raises if the two did not score the same instances."""
    def scores(records):
        return {(r["source"], r["instance"]): r["iou"] for r in records if r["prompt"] == prompt}

    sa, sb = scores(a), scores(b)
    if set(sa) != set(sb) or not sa:
        raise ValueError(f"paired_difference needs the same {prompt}-prompted instances in both runs: "
                         f"{len(sa)} and {len(sb)}, {len(set(sa) ^ set(sb))} not in both")
    images = sorted({source for source, _ in sa})
    index = {source: i for i, source in enumerate(images)}
    diff_sum, count = np.zeros(len(images)), np.zeros(len(images))
    for key, iou in sa.items():
        diff_sum[index[key[0]]] += iou - sb[key]
        count[index[key[0]]] += 1
    draws = np.random.default_rng(seed).integers(0, len(images), size=(resamples, len(images)))
    boot = diff_sum[draws].sum(1) / count[draws].sum(1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"mean": float(diff_sum.sum() / count.sum()), "ci95": [float(lo), float(hi)], "images": len(images),
            "instances": int(count.sum())}


def format_table(results: dict) -> str:
    """The summary as a small text table."""
    rows = [("metric", "value")]
    summary = results["results"]
    if results["metric"] == "J&F":
        rows += [(k, "-" if summary[k] is None else f"{100 * summary[k]:.2f}") for k in ("J&F", "J", "F")]
        rows += [("objects", str(summary["objects"])), ("sequences", str(summary["sequences"]))]
        rows += [(f"  {name}", f"{100 * s['J&F']:.2f}") for name, s in results["sequences"].items()]
    else:
        for kind, s in summary.items():
            value = "-" if s["mIoU"] is None else f"{100 * s['mIoU']:.2f}"
            rows.append((f"{results['metric']} ({kind})", f"{value}  [{s['instances']} instances]"))
    rows.append(("skipped samples", str(len(results["skipped"]))))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)
