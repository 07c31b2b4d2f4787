"""``qsam2 quantize``: a SAM2 config + official checkpoint + recipe -> VRC -> optional QAT -> packed model + report.

Everything that can be checked is checked before the model is touched: files, the checkpoint against the config,
the recipe against the model, datasets, training settings, and that the output folder is writable. The model
file and the report are written atomically.

With no arguments it quantizes the embedded default model (qsam2_mini) with its recipe on bundled images:
generated on demand by ``qsam2_ext.sam2.synthetic`` from seed 1000 (held out from the default model's training
seed 0), calibration (and QAT) scenes ``0..N-1`` and evaluation scenes from ``EVAL_START`` on, so they never meet.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import torch

from .errors import BadFileError, OutputFolderError
from .outputs import check_output_folder, claim_output_folder
from .recipes import DEFAULT_RECIPE, load_recipe
from .sam2.models import (DEFAULT_MODEL_CONFIG, PACKAGED_CONFIGS, build_model, config_path, default_checkpoint,
                          load_checkpoint, packaged_name)

BUNDLED_SEED = 1000
EVAL_START, EVAL_COUNT = 5000, 32


@dataclass
class Data:
    """A dataset on disk (``format`` as in ``qsam2_ext.sam2.data.FORMATS``); None fields: the bundled images."""

    path: Optional[str] = None
    format: str = "sa1b"
    annotations: Optional[str] = None

    def open(self, bundled_root: str, start: int, count: int, image_size: int):
        from .sam2.data import open_dataset
        from .sam2.synthetic import write_image_split

        path = self.path
        if path is None:
            path = write_image_split(os.path.join(bundled_root, f"scenes_{start}"), count, BUNDLED_SEED,
                                     size=image_size, start=start)
        return open_dataset(self.format, path, annotations=self.annotations)


@dataclass
class QuantizeJob:
    recipe: str = DEFAULT_RECIPE
    model: Optional[str] = None  # SAM2 config; default: the recipe's
    checkpoint: Optional[str] = None  # official format; default: the embedded model's, for the default config only
    image_size: Optional[int] = None  # default: the recipe's, else the config's
    calibration: Optional[Data] = None  # default: bundled images
    training: Optional[Data] = None  # default: the calibration data
    evaluation: Optional[Data] = None  # default: bundled images
    evaluate: bool = True
    steps: Optional[int] = None  # QAT steps; default: the recipe's (0: post-training quantization)
    out: str = "out/quantize"
    force: bool = False  # replace an earlier qsam2 run's files in ``out`` (else ``out`` must be empty or new)
    calibration_images: Optional[int] = None  # default: the recipe's calibration.images
    device: Optional[str] = None
    progress: bool = True

    def __post_init__(self):
        self.calibration = self.calibration or Data()
        self.evaluation = self.evaluation or Data()


def _checkpoint(job: QuantizeJob, config: str) -> str:
    if job.checkpoint is not None:
        if not os.path.isfile(job.checkpoint):
            raise BadFileError(job.checkpoint, "no such file (--checkpoint)")
        return job.checkpoint
    if config_path(config) != DEFAULT_MODEL_CONFIG:
        raise ValueError(f"--checkpoint is required for {config} (only the embedded default model has one built in)")
    path = default_checkpoint()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the embedded default model's checkpoint is missing: {path} (pass --checkpoint, "
                                "e.g. one trained by scripts/train_default_model.py)")
    return path


def _check_writable(folder: str) -> None:
    """The folder (or, if it does not exist yet, its nearest existing parent) accepts new files; creates nothing."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFolderError(f"{folder}: cannot write there ({existing} is not a writable folder)")


def _calibration_batches(dataset, count: int, batch_size: int, image_size: int, progress: bool):
    """Images of the first ``count`` samples, normalised as SAM2's predictors do, in batches."""
    from sam2.utils.transforms import SAM2Transforms
    from tqdm.auto import tqdm

    transforms = SAM2Transforms(resolution=image_size, mask_threshold=0.0)
    for start in tqdm(range(0, count, batch_size), desc="calibrate", unit="batch", disable=not progress):
        indices = range(start, min(start + batch_size, count))
        yield torch.stack([transforms(dataset.load(i).frames[0]) for i in indices])


def _timed(times: dict, name: str):
    @contextlib.contextmanager
    def timer():
        start = time.perf_counter()
        yield
        times[name] = time.perf_counter() - start

    return timer()


def run(job: QuantizeJob) -> dict:
    """Run the whole job; returns the report's data (also written to ``<out>/report.json``)."""
    from torchao.quantization import quantize_

    from . import check_ready, load_quantized, save_quantized, vrc_reports
    from .report import REPORT_FILES, evaluate_pair, write_report

    times: dict = {}
    recipe = load_recipe(job.recipe)
    spec = recipe.spec
    config = job.model or spec.model
    checkpoint = _checkpoint(job, config)
    image_size = job.image_size or spec.image_size
    steps = spec.training.steps if job.steps is None else job.steps
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    calibration_images = spec.calibration.images if job.calibration_images is None else job.calibration_images
    if calibration_images < 1:
        raise ValueError(f"calibration images must be >= 1, got {calibration_images}")
    check_output_folder(job.out, force=job.force)  # a refused job creates nothing
    _check_writable(job.out)
    device = job.device or ("cuda" if torch.cuda.is_available() else "cpu")

    with _timed(times, "load"):
        model = build_model(config, image_size=image_size)
        load_checkpoint(model, checkpoint)
    plans = recipe.resolve(model, qat=steps > 0)  # raises before anything changes
    image_size = model.image_size
    # one checkpoint (in a temporary folder); no loader processes unless the recipe asks (small jobs, 2 cores)
    train_config = spec.training.train_config(steps=max(steps, 1), checkpoint_every=max(steps, 1),
                                              num_workers=spec.training.options.get("num_workers", 0))
    with tempfile.TemporaryDirectory(prefix="qsam2-data-") as bundled:
        calibration_count = max(calibration_images, train_config.batch_size)  # bundled: enough for QAT too
        calibration = job.calibration.open(bundled, 0, calibration_count, image_size)
        train_data = calibration if job.training is None else job.training.open(bundled, 0, calibration_count,
                                                                                image_size)
        evaluation = job.evaluation.open(bundled, EVAL_START, EVAL_COUNT, image_size) if job.evaluate else None
        if len(calibration) < calibration_images:
            raise ValueError(f"calibration needs {calibration_images} images (recipe calibration.images; "
                             f"--calib-images N to use fewer); the calibration data has {len(calibration)}")
        float_model = copy.deepcopy(model)  # reference for the report, teacher for distillation
        teacher = float_model if train_config.loss_weights.distills else None
        if steps > 0:
            train_config.check_run(train_data, teacher, 1)
        model.to(device)

        if spec.calibration.vrc and any(p.vrc for p in plans):
            with _timed(times, "vrc"), torch.no_grad():
                quantize_(model, recipe.vrc_to_torchao(model, "prepare", plans), filter_fn=None)
                for images in _calibration_batches(calibration, calibration_images,
                                                   spec.calibration.batch_size, image_size, job.progress):
                    model.forward_image(images.to(device))
                check_ready(model)
                quantize_(model, recipe.vrc_to_torchao(model, "convert", plans), filter_fn=None)
        reports = vrc_reports(model)

        qat_log = None
        if steps > 0:
            from .train import train

            with _timed(times, "qat"):
                quantize_(model, recipe.to_torchao(model, "prepare", plans), filter_fn=None)
                with tempfile.TemporaryDirectory(prefix="qsam2-qat-") as run_dir:
                    summary = train(model, train_data, train_config, run_dir, teacher=teacher, device=device,
                                    progress=job.progress)
                    qat_log = summary["last"]
                model.eval()
                check_ready(model)
                quantize_(model, recipe.to_torchao(model, "convert", plans), filter_fn=None)
        else:
            with _timed(times, "convert"):
                quantize_(model, recipe.to_torchao(model, None, plans), filter_fn=None)

        model_name = f"{recipe.name}.{spec.output.format}"
        model_path = os.path.join(job.out, model_name)
        # the file names its model only if it is a packaged one (a custom config is the caller's to build)
        packaged = config_path(config) in PACKAGED_CONFIGS.values()
        metadata = {"image_size": image_size, "recipe": recipe.name, "qat_steps": steps}
        if spec.memory is not None:  # the video memory bank the recipe asks for (qsam2 track reads it)
            metadata["memory"] = spec.memory.model_dump()
        if packaged:
            metadata["model"] = packaged_name(config_path(config))
        claim_output_folder(job.out, [model_name, *REPORT_FILES], force=job.force)
        with _timed(times, "save"):
            save_quantized(model.cpu(), model_path, metadata=metadata)
        # evaluate what was written, as users will load it
        if packaged:
            quantized = load_quantized(model_path)
        else:
            quantized = load_quantized(build_model(config, image_size=image_size), model_path)
        quantized = quantized.to(device)

        results = None
        if evaluation is not None:
            with _timed(times, "evaluate"):
                results = evaluate_pair(float_model.to(device), quantized, evaluation, job.progress)
        data = {"recipe": recipe.name, "recipe_path": recipe.path, "model": config_path(config),
                "checkpoint": checkpoint, "image_size": image_size, "device": device, "qat_steps": steps,
                "qat_last": qat_log, "model_path": model_path, "layers": len(plans),
                "quantized_layers": sum(not p.skip for p in plans), "vrc_layers": len(reports),
                "times_s": times, "evaluation": results}
        return write_report(job.out, data, float_model, quantized, evaluation)
