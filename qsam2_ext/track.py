"""``qsam2 track``: track objects through a video (folder of frames or video file) with SAM2, in flat memory.

The objects are prompted on one frame (``--frame``, default 0): positive / negative points and a box for one
object, or a mask PNG whose non-zero ids are the objects. Tracking runs forward from there with
``QSAM2VideoPredictor`` in streaming mode (frames read one at a time, the memory bank bounded and, by default, int8)
and writes one mask PNG per frame as it goes: ``<out>/<frame>.png``, a palette PNG whose pixel values are the
object ids (0: background), each written atomically. ``<out>/track.json`` records the run's settings.

Interrupted and run again with the same settings, it resumes after the last mask written: the objects are
prompted again with that mask (a conditioning frame, as a user correction would be) and tracking goes on from
there. The masks after a resume can differ a little from an uninterrupted run's (the memory before that frame is
not kept). ``--restart`` deletes the masks of an earlier run first.

Bad inputs (an unreadable or differently sized frame, an empty folder, a prompt outside the frame, a frame index
past the end) stop the run with a one-line error; masks written before stay valid.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .io import atomic_path, write_json

SETTINGS_FILE = "track.json"
MEMORY_CHOICES = {"fp": None, "int8": 8, "int4": 4}
_MASK_NAME = re.compile(r"^(\d+)\.png$")


@dataclass
class TrackJob:
    video: str  # a folder of frames or a video file
    out: str
    points: Sequence[Sequence[float]] = ()  # positive (x, y) clicks of object 1
    negative_points: Sequence[Sequence[float]] = ()
    box: Optional[Sequence[float]] = None  # (x0, y0, x1, y1) of object 1
    mask: Optional[str] = None  # PNG of object ids (indexed or grayscale), the frame's size
    frame: int = 0  # the prompted frame
    model: Optional[str] = None  # SAM2 config; default: the embedded model (or the quantized file's)
    checkpoint: Optional[str] = None  # float checkpoint, or with quantized=True a `qsam2 quantize` file
    quantized: bool = False
    image_size: Optional[int] = None
    memory: Optional[str] = None  # fp / int8 / int4; default: the recipe's or the file's memory section, else int8
    memory_granularity: Optional[str] = None  # token / channel
    recipe: Optional[str] = None  # read its `memory` section
    device: Optional[str] = None
    restart: bool = False
    progress: bool = True
    max_frames: Optional[int] = None  # track at most this many frames, from the prompted one


# --- prompts ---------------------------------------------------------------------------------------------------


def _check_inside(what: str, x: float, y: float, width: int, height: int) -> None:
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"{what} ({x:g}, {y:g}) is outside the {width}x{height} frame")


def _prompts(job: TrackJob, width: int, height: int) -> dict:
    """``{object_id: {"mask": bool array} | {"points", "labels", "box"}}`` checked against the frame size."""
    if job.mask is not None:
        if job.points or job.negative_points or job.box is not None:
            raise ValueError("give a mask, or points and/or a box, not both")
        from .sam2.data import BadSample
        from .sam2.data.files import read_id_map

        try:
            ids = read_id_map(job.mask)
        except BadSample as e:
            raise ValueError(f"{e.source}: {e.reason}") from None
        if ids.shape != (height, width):
            raise ValueError(f"{job.mask}: the mask is {ids.shape[1]}x{ids.shape[0]}, the frames are {width}x{height}")
        objects = [int(i) for i in np.unique(ids) if i != 0]
        if not objects:
            raise ValueError(f"{job.mask}: the mask has no object (all pixels are 0)")
        if max(objects) > 255:
            raise ValueError(f"{job.mask}: object ids must be at most 255 (one byte per pixel in the masks written)")
        return {i: {"mask": ids == i} for i in objects}
    if not job.points and job.box is None:
        raise ValueError("no prompt: give --point (and --negative-point), --box or --mask")
    coords, labels = [], []
    for kind, label, pts in (("point", 1, job.points), ("negative point", 0, job.negative_points)):
        for p in pts:
            _check_inside(kind, *p, width, height)
            coords.append(p)
            labels.append(label)
    if job.box is not None:
        x0, y0, x1, y1 = job.box
        _check_inside("box corner", x0, y0, width, height)
        _check_inside("box corner", x1, y1, width, height)
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) must be x0,y0,x1,y1 with x0 <= x1 and y0 <= y1")
    prompt = {"box": None if job.box is None else np.asarray(job.box, np.float32)}
    if coords:
        prompt.update(points=np.asarray(coords, np.float32), labels=np.asarray(labels, np.int32))
    return {1: prompt}


def _add(predictor, state, frame: int, object_id: int, prompt: dict) -> None:
    if "mask" in prompt:
        predictor.add_new_mask(state, frame, object_id, prompt["mask"])
    else:
        predictor.add_new_points_or_box(state, frame, object_id, points=prompt.get("points"),
                                        labels=prompt.get("labels"), box=prompt["box"])


# --- model -----------------------------------------------------------------------------------------------------


def _memory_settings(job: TrackJob, metadata: dict, source: str = "") -> tuple[Optional[int], str]:
    """``--memory`` / ``--memory-granularity``, else the recipe's ``memory`` section, else the quantized file's
    (its metadata, or the shipped recipe it names), else int8 per token."""
    from .recipes import list_recipes, load_recipe
    from .recipes.schema import Memory

    section = None
    if job.recipe is not None:
        section = load_recipe(job.recipe).spec.memory
    elif "memory" in metadata:
        try:
            section = Memory.model_validate(metadata["memory"])
        except ValueError as e:  # pydantic's ValidationError
            first = str(e).splitlines()
            raise ValueError(f"{source}: its metadata's memory section is not valid ({' '.join(first[1:3])})") \
                from None
    elif metadata.get("recipe") in list_recipes():  # a shipped name only: file content never becomes a path
        section = load_recipe(metadata["recipe"]).spec.memory
    if job.memory is not None:
        if job.memory not in MEMORY_CHOICES:
            raise ValueError(f"memory must be one of {sorted(MEMORY_CHOICES)}, got {job.memory!r}")
        bits = MEMORY_CHOICES[job.memory]
    else:
        bits = section.bits if section is not None else 8
    granularity = job.memory_granularity or (section.granularity if section is not None else "token")
    return bits, granularity


def build_predictor(job: TrackJob):
    """The streaming video predictor of the job's model, checkpoint and memory settings; and the settings used."""
    from .sam2.models import DEFAULT_MODEL_CONFIG, config_path, default_checkpoint
    from .sam2.video import build_video_predictor

    metadata: dict = {}
    model, checkpoint, image_size = job.model, job.checkpoint, job.image_size
    if job.quantized:
        if checkpoint is None:
            raise ValueError("--quantized needs the quantized --checkpoint (written by qsam2 quantize)")
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"no checkpoint at {checkpoint}")
        from . import read_metadata
        from .sam2.artifact import artifact_info

        info = artifact_info(read_metadata(checkpoint), checkpoint)  # validated: a packaged model, never a path
        metadata = info.model_dump(exclude_none=True)
        model = model or info.model
        image_size = image_size or info.image_size
        if model is None:
            raise ValueError(f"{checkpoint} does not name its SAM2 config: give --model")
    else:
        model = model or DEFAULT_MODEL_CONFIG
        if checkpoint is None:
            if config_path(model) != DEFAULT_MODEL_CONFIG:
                raise ValueError(f"--checkpoint is required for {model} (only the embedded default model has one "
                                 "built in)")
            checkpoint = default_checkpoint()
    bits, granularity = _memory_settings(job, metadata, checkpoint or "")
    device = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = build_video_predictor(model, None if job.quantized else checkpoint, memory_bits=bits,
                                      memory_granularity=granularity, image_size=image_size)
    if job.quantized:
        from . import load_quantized

        load_quantized(predictor, checkpoint)
    settings = {"model": config_path(model), "checkpoint": os.path.abspath(checkpoint), "quantized": job.quantized,
                "image_size": predictor.image_size, "memory_bits": bits, "memory_granularity": granularity}
    return predictor.to(device).eval(), settings


# --- output ----------------------------------------------------------------------------------------------------


def _palette() -> list[int]:
    rng = np.random.default_rng(0)
    return [0, 0, 0] + [int(c) for c in rng.integers(64, 256, size=255 * 3)]


def write_mask(path: str, ids: np.ndarray) -> None:
    """An id map as an indexed PNG, written atomically."""
    from PIL import Image

    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(_palette())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _id_map(object_ids: Sequence[int], logits: torch.Tensor) -> np.ndarray:
    """One id per pixel: the object with the highest positive logit (0 where none is positive)."""
    scores = logits[:, 0].float().cpu()  # (K, H, W)
    best = scores.argmax(0)
    ids = torch.as_tensor(list(object_ids), dtype=torch.int64)[best]
    return torch.where(scores.amax(0) > 0, ids, 0).numpy()


def _written(out: str) -> dict[int, str]:
    found = {}
    for name in os.listdir(out):
        m = _MASK_NAME.match(name)
        if m:
            found[int(m.group(1))] = os.path.join(out, name)
    return found


def _resume_point(out: str, settings: dict, restart: bool) -> Optional[int]:
    """The last frame written by an earlier run of the same settings (None: start afresh)."""
    path = os.path.join(out, SETTINGS_FILE)
    written = _written(out) if os.path.isdir(out) else {}
    if not os.path.isfile(path):
        if written:  # never delete or mix with files qsam2 track did not write
            raise ValueError(f"{out} holds mask PNGs but no {SETTINGS_FILE}: not written by qsam2 track (use another "
                             "--out)")
        return None
    if restart:
        for p in written.values():
            os.unlink(p)
        return None
    import json

    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e}); use --restart") from None
    if not isinstance(previous, dict) or previous.get("settings") != settings:
        raise ValueError(f"{out} holds the masks of a run with other settings (video, prompt, model or memory): use "
                         "another --out, or --restart to replace them")
    last = settings["frame"] - 1
    while last + 1 in written:
        last += 1
    return last if last >= settings["frame"] else None


# --- run -------------------------------------------------------------------------------------------------------


def run(job: TrackJob) -> dict:
    """Track and write the masks; returns a summary (frames written, seconds, frames per second)."""
    from tqdm.auto import tqdm

    from .sam2.frames import open_frames

    predictor, model_settings = build_predictor(job)
    frames = open_frames(job.video, predictor.image_size)
    if job.max_frames is not None and job.max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {job.max_frames}")
    if not 0 <= job.frame < len(frames):
        raise ValueError(f"--frame {job.frame} is past the end: {job.video} has {len(frames)} frames "
                         f"(0..{len(frames) - 1})")
    prompts = _prompts(job, frames.video_width, frames.video_height)
    settings = {"video": os.path.abspath(job.video), "frames": len(frames), "frame": job.frame,
                "points": [list(map(float, p)) for p in job.points],
                "negative_points": [list(map(float, p)) for p in job.negative_points],
                "box": None if job.box is None else list(map(float, job.box)),
                "mask": None if job.mask is None else os.path.abspath(job.mask), **model_settings}
    os.makedirs(job.out, exist_ok=True)
    last = _resume_point(job.out, settings, job.restart)
    settings_path = os.path.join(job.out, SETTINGS_FILE)
    write_json(settings_path, {"settings": settings, "done": False})
    end = len(frames) if job.max_frames is None else min(len(frames), job.frame + job.max_frames)
    if last is not None and last + 1 >= end:
        return {"frames": 0, "seconds": 0.0, "fps": None, "resumed_from": last, "out": job.out}

    width = max(5, len(str(len(frames) - 1)))
    start = job.frame if last is None else last
    written, started = 0, time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode():
        # without sam2's optional CUDA extension, hole filling is skipped with one warning per frame
        warnings.filterwarnings("ignore", message=".*cannot import name '_C'")
        state = predictor.init_state(frames, streaming=True)
        if last is None:
            for object_id, prompt in prompts.items():
                _add(predictor, state, start, object_id, prompt)
        else:  # resume: the last mask written prompts every object again
            from .sam2.data.files import read_id_map

            ids = read_id_map(os.path.join(job.out, f"{last:0{width}d}.png"))
            for object_id in prompts:
                predictor.add_new_mask(state, start, object_id, ids == object_id)
        steps = predictor.propagate_in_video(state, start_frame_idx=start, max_frame_num_to_track=end - 1 - start)
        with contextlib.redirect_stderr(io.StringIO()):  # sam2's own bar (made on the first step): ours shows
            first = next(steps, None)
        bar = tqdm(total=end - start, desc="track", unit="frame", position=0, disable=not job.progress)
        for frame_idx, object_ids, logits in _chain(first, steps):
            if last is None or frame_idx > last:
                write_mask(os.path.join(job.out, f"{frame_idx:0{width}d}.png"), _id_map(object_ids, logits))
                written += 1
            bar.update(1)
        bar.close()
    seconds = time.perf_counter() - started
    summary = {"frames": written, "seconds": seconds, "fps": written / seconds if seconds else None,
               "resumed_from": last, "out": job.out}
    write_json(settings_path, {"settings": settings, "done": True, "last_run": summary})
    return summary


def _chain(first, rest):
    if first is not None:
        yield first
        yield from rest


# --- command line ----------------------------------------------------------------------------------------------


def _numbers(count: int):
    def parse(text: str) -> tuple[float, ...]:
        import argparse

        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count or not all(np.isfinite(values)):
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
        return values

    return parse


def run_track(args) -> int:
    job = TrackJob(video=args.video, out=args.out, points=args.point, negative_points=args.negative_point,
                   box=args.box, mask=args.mask, frame=args.frame, model=args.model, checkpoint=args.checkpoint,
                   quantized=args.quantized, image_size=args.image_size, memory=args.memory,
                   memory_granularity=args.memory_granularity, recipe=args.recipe, device=args.device,
                   restart=args.restart, progress=not args.no_progress, max_frames=args.max_frames)
    try:
        summary = run(job)
    except ImportError as e:  # an optional reader (PyAV for video files) is missing
        raise ValueError(str(e)) from None
    if summary["resumed_from"] is not None and summary["frames"] == 0:
        print(f"all masks were already in {summary['out']} (up to frame {summary['resumed_from']})")
    else:
        resumed = "" if summary["resumed_from"] is None else f", resumed after frame {summary['resumed_from']}"
        print(f"wrote {summary['frames']} masks to {summary['out']} in {summary['seconds']:.1f} s "
              f"({summary['fps']:.2f} frames/s{resumed})")
    return 0


def add_track(sub) -> None:
    p = sub.add_parser("track", help="track objects through a video (frames folder or video file): one mask PNG "
                       "per frame, bounded memory, resumable",
                       description="Track forward from the prompted frame with SAM2 in streaming mode (frames read "
                       "one at a time, bounded memory bank); one indexed PNG of object ids per frame in --out.")
    p.add_argument("video", help="a folder of frames (images, in the natural order of their names) or a video file")
    p.add_argument("--out", required=True, help="folder of the masks (<frame>.png) and track.json")
    g = p.add_argument_group("prompt (on --frame)")
    g.add_argument("--point", action="append", default=[], type=_numbers(2), metavar="X,Y",
                   help="a positive click on the object, in frame pixels (repeatable)")
    g.add_argument("--negative-point", action="append", default=[], type=_numbers(2), metavar="X,Y",
                   help="a negative click (repeatable)")
    g.add_argument("--box", type=_numbers(4), metavar="X0,Y0,X1,Y1", help="the object's box")
    g.add_argument("--mask", help="a PNG of object ids (indexed or grayscale; 0: background) of the frame's size")
    g.add_argument("--frame", type=int, default=0, help="the prompted frame (default 0); tracking starts there")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="SAM2 config (short name or path); default: the embedded model, or with "
                   "--quantized the config stored in the file")
    g.add_argument("--checkpoint", help="float checkpoint; default: the embedded model's")
    g.add_argument("--quantized", action="store_true", help="--checkpoint is a file written by qsam2 quantize")
    g.add_argument("--image-size", type=int, help="square input side; default: the config's (or the file's)")
    g = p.add_argument_group("memory bank")
    g.add_argument("--memory", choices=sorted(MEMORY_CHOICES), help="how memories are kept; default: the recipe's "
                   "or the quantized file's memory section, else int8")
    g.add_argument("--memory-granularity", choices=("token", "channel"), help="one grid per token (default) or "
                   "per channel")
    g.add_argument("--recipe", help="take the memory settings from this recipe's memory section")
    p.add_argument("--max-frames", type=int, help="track at most this many frames, from the prompted one")
    p.add_argument("--restart", action="store_true", help="delete the masks of an earlier run in --out first")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_track)
