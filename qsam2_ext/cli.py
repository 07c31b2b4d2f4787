"""The ``qsam2`` command: ``qsam2 quantize``, ``qsam2 eval``, ``qsam2 train`` and ``qsam2 recipe list|explain``
(one argparse sub-command each).

A new sub-command is a function adding its parser in ``SUBCOMMANDS``; its parser's ``run`` default does the work.
Under torchrun, launch training as ``torchrun --nproc_per_node=N -m qsam2_ext.cli train ...``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import sys
import warnings
from typing import Optional, Sequence

from .errors import QSAM2Error
from .evaluate import PROMPTS, VIDEO_PROMPTS
from .sam2.data import FORMATS, POLICIES, BadSample, DatasetError, open_dataset

log = logging.getLogger("qsam2_ext.cli")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="SAM2 config: a packaged short name (sam2.1_hiera_t/s/b+/l, qsam2_mini) or a "
                   "config path; default: the one a quantized --checkpoint names, a packaged name matching the "
                   "checkpoint's file name, or qsam2_mini (the embedded model) without --checkpoint")
    g.add_argument("--checkpoint", help="float SAM2 checkpoint ({'model': state_dict}) or a quantized file written by "
                   "qsam2 quantize / qsam2_ext.save_quantized (recognised by itself)")
    g.add_argument("--random-weights", action="store_true",
                   help="use the config's random initialisation when there is no --checkpoint (else an error)")
    g.add_argument("--image-size", type=int, help="square input side (a multiple of 32); default: the config's 1024")
    g.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override of the SAM2 config (repeatable)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--format", required=True, choices=FORMATS, help="dataset layout")
    g.add_argument("--data", required=True, help="dataset root (COCO: the image folder)")
    g.add_argument("--annotations", help="COCO instances JSON")
    g.add_argument("--on-bad-sample", choices=POLICIES, default="skip", help="skip (report and go on) or raise")


def _is_quantized(path: str) -> bool:
    """A file written by ``save_quantized``: safetensors, or a ``.pt`` carrying its metadata entry."""
    from .core.files import check_file, load_torch

    check_file(path)
    if path.endswith(".safetensors"):
        return True
    ckpt = load_torch(path, mmap=True)  # a look at its keys: the tensors are not read
    return isinstance(ckpt, dict) and "qsam2_ext" in ckpt


def _build(args, checkpoint: Optional[str], video: bool, quantized: bool = False):
    """The model the arguments describe (``--model``, ``--checkpoint`` or ``checkpoint``, ``--random-weights``): a
    float checkpoint through build_sam2, or a quantized file's packed weights loaded into a freshly built float
    model. A quantized file names its packaged model; the caller's ``--model`` (trusted) always wins."""
    from .sam2.models import DEFAULT_MODEL, PACKAGED_CONFIGS, build_model, default_checkpoint, packaged_name

    model_name, image_size = args.model, args.image_size
    if model_name in PACKAGED_CONFIGS.values():  # a packaged config by its path: the same as by its name
        model_name = packaged_name(model_name)
    quantized = checkpoint is not None and (quantized or _is_quantized(checkpoint))
    if quantized:
        from . import read_metadata
        from .sam2.artifact import artifact_info

        meta = read_metadata(checkpoint)
        info = artifact_info(meta, checkpoint) if meta else None  # validated even where --model decides
        model_name = model_name or (info.model if info is not None else None)
        if model_name is None:
            raise ValueError(f"--model is needed for {checkpoint}: the file does not name a packaged model")
        image_size = image_size or (info.image_size if info is not None else None)
    elif checkpoint is not None and model_name is None:
        stem = os.path.splitext(os.path.basename(checkpoint))[0]
        if stem not in PACKAGED_CONFIGS:
            raise ValueError(f"--model is needed for {checkpoint} (a float checkpoint whose file name is not one of "
                             f"{sorted(PACKAGED_CONFIGS)})")
        model_name = stem
    elif checkpoint is None:
        model_name = model_name or DEFAULT_MODEL
        if args.random_weights:
            pass
        elif model_name == DEFAULT_MODEL:
            checkpoint = default_checkpoint()
        else:
            raise ValueError(f"no --checkpoint for {model_name}: pass one (e.g. {model_name}.pt), or "
                             "--random-weights to use an untrained model on purpose")
    model = build_model(model_name, None if quantized else checkpoint, video=video, image_size=image_size,
                        overrides=args.override)
    if quantized:
        from . import load_quantized

        load_quantized(model, checkpoint)
    return model


def run_eval(args) -> int:
    from .evaluate import evaluate, format_table

    dataset = open_dataset(args.format, args.data, annotations=args.annotations)
    if args.quantized and not args.checkpoint:
        raise ValueError("--quantized needs the quantized --checkpoint")
    device = args.device or _default_device()
    model = _build(args, args.checkpoint, dataset.video, args.quantized).to(device)
    reference = None
    if not dataset.labeled:
        reference = _build(args, args.reference_checkpoint, False).to(device)
    results = evaluate(model, dataset, prompts=args.prompts, video_prompt=args.video_prompt, reference=reference,
                       grid=args.grid, limit=args.limit, on_bad_sample=args.on_bad_sample,
                       progress=not args.no_progress, out=args.out)
    print(format_table(results))
    if args.out:
        print(f"wrote {args.out}")
    if results["samples"] and results["scored"] == 0:
        reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in results["skipped"][:3])
        print(f"qsam2 eval: error: every one of the {results['samples']} samples was skipped, nothing was scored "
              f"({reasons or 'no instance to prompt'})", file=sys.stderr)
        return 2
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a SAM2 model: mIoU (point/box prompts) or J&F (video)")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--quantized", action="store_true",
                   help="the checkpoint holds Q-SAM2 packed weights (recognised without this flag too)")
    p.add_argument("--prompts", nargs="+", default=list(PROMPTS), choices=PROMPTS, help="image prompt kinds")
    p.add_argument("--video-prompt", default="mask", choices=VIDEO_PROMPTS, help="how each video object is prompted")
    p.add_argument("--reference-checkpoint",
                   help="unlabeled data: the reference (float) model's checkpoint, same config (without it: as "
                   "--checkpoint would be read without one: qsam2_mini's embedded weights, or --random-weights)")
    p.add_argument("--grid", type=int, default=4, help="unlabeled data: point prompts per image side")
    p.add_argument("--limit", type=int, help="evaluate the first N samples only")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run_eval)


def _config_args(p: argparse.ArgumentParser, config_cls, skip: Sequence[str]) -> None:
    """One ``--option`` per TrainConfig field (but ``skip``), with its type, default and help."""
    g = p.add_argument_group("training")
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        g.add_argument("--" + f.name.replace("_", "-"), dest=f"cfg_{f.name}", metavar=f.name.upper(),
                       type={"int": int, "float": float}.get(f.type, str), choices=f.metadata.get("choices"),
                       default=f.default, help=f"{f.metadata['help']} (default: {f.default})")


def run_train(args) -> int:
    from .train import TrainConfig, train

    from .outputs import check_output_folder

    check_output_folder(args.out, allow_existing=args.resume)  # a new or empty run folder, unless resuming
    settings = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
    config = TrainConfig(**settings, on_bad_sample=args.on_bad_sample)
    dataset = open_dataset(args.format, args.data, annotations=args.annotations,
                           clip_length=config.clip_length if config.clip_length > 1 else None)
    model = _build(args, args.checkpoint, False)
    teacher = copy.deepcopy(model) if config.loss_weights.distills else None  # the float model, before any change
    summary = train(model, dataset, config, args.out, teacher=teacher, resume=args.resume,
                    progress=not args.no_progress)
    if summary["last"]:
        print(f"step {summary['last']['step']}: loss {summary['last']['loss']:.4g}; model in {summary['model']}")
    return 0


def add_train(sub) -> None:
    from .train import TrainConfig

    p = sub.add_parser("train", help="train or fine-tune SAM2 (the shared QAT loop; torchrun for several processes)")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--out", required=True, help="run folder (new or empty): checkpoint.pt, log.jsonl, model.pt")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint (an error if "
                   "there is none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _config_args(p, TrainConfig, skip=("on_bad_sample",))  # a data option here
    p.set_defaults(run=run_train)


def run_quantize(args) -> int:
    from .quantize import Data, QuantizeJob, run

    def data(prefix):
        path = getattr(args, f"{prefix}_data")
        if path is None:
            return None
        return Data(path, getattr(args, f"{prefix}_format"), getattr(args, f"{prefix}_annotations"))

    job = QuantizeJob(recipe=args.recipe, model=args.model, checkpoint=args.checkpoint, image_size=args.image_size,
                      calibration=data("calib"), training=data("train"), evaluation=data("eval"),
                      evaluate=not args.no_eval, steps=args.steps, out=args.out, force=args.force,
                      calibration_images=args.calib_images, device=args.device, progress=not args.no_progress)
    result = run(job)
    ev = result["evaluation"]
    if ev is not None:
        def pct(value):
            return "-" if value is None else f"{100 * value:.2f}"

        for kind, q in ev["quantized"]["results"].items():
            f = ev["float"]["results"][kind]["mIoU"] if "float" in ev else None
            print(f"{kind:>5} mIoU: float {pct(f)}, quantized {pct(q['mIoU'])}")
    print(f"wrote {result['model_path']} and {os.path.join(args.out, 'report.md')} (mIoU in percent)")
    return 0


def add_quantize(sub) -> None:
    from .recipes import DEFAULT_RECIPE

    p = sub.add_parser("quantize", help="calibrate (VRC), optionally QAT, convert and save a quantized SAM2 + report",
                       description="With no arguments: the embedded default model, its recipe and bundled images.")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="shipped recipe name or YAML path (qsam2 recipe list)")
    p.add_argument("--model", help="SAM2 config (short name or path); default: the recipe's")
    p.add_argument("--checkpoint", help="official-format checkpoint; default: the embedded model's (default config)")
    p.add_argument("--image-size", type=int, help="square input side; default: the recipe's, else the config's")
    for prefix, what in (("calib", "calibration images"), ("train", "QAT data (default: the calibration data)"),
                         ("eval", "evaluation data")):
        g = p.add_argument_group(what)
        g.add_argument(f"--{prefix}-data", help=f"{what}: dataset root; default: bundled generated images"
                       if prefix != "train" else "dataset root")
        g.add_argument(f"--{prefix}-format", choices=FORMATS, default="sa1b", help="dataset layout")
        g.add_argument(f"--{prefix}-annotations", help="COCO instances JSON")
    p.add_argument("--calib-images", type=int, metavar="N",
                   help="calibrate on N images; default: the recipe's calibration.images")
    p.add_argument("--steps", type=int, help="QAT steps (0: post-training quantization); default: the recipe's")
    p.add_argument("--no-eval", action="store_true", help="skip the float vs quantized evaluation")
    p.add_argument("--out", default="out/quantize", help="output folder (model, report.md, report.json, masks.png): "
                   "new or empty, unless --force")
    p.add_argument("--force", action="store_true", help="replace the files an earlier qsam2 run wrote in --out (and "
                   "only those)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run_quantize)


def run_recipe(args) -> int:
    from .recipes import explain, list_recipes, load_recipe

    if args.action == "list":
        for name in list_recipes():
            print(f"{name:<24} {load_recipe(name).spec.description}")
        return 0
    if not args.name:
        raise ValueError("recipe explain needs a recipe NAME or PATH")
    recipe = load_recipe(args.name)
    from .sam2.models import build_model

    model = build_model(args.model or recipe.spec.model, image_size=recipe.spec.image_size)
    print(explain(recipe, recipe.resolve(model)))
    return 0


def add_recipe(sub) -> None:
    p = sub.add_parser("recipe", help="list the shipped recipes, or explain one layer by layer")
    p.add_argument("action", choices=("list", "explain"))
    p.add_argument("name", nargs="?", help="explain: shipped recipe name or YAML path")
    p.add_argument("--model", help="explain against this SAM2 config instead of the recipe's model")
    p.set_defaults(run=run_recipe)


from .track import add_track  # noqa: E402  (qsam2 track: its own module)

SUBCOMMANDS = (add_quantize, add_eval, add_train, add_recipe, add_track)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qsam2", description="Q-SAM2 quantization tools for SAM2")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    for command in sub.choices.values():  # options every sub-command takes
        g = command.add_argument_group("output")
        g.add_argument("--quiet", action="store_true", help="print results and errors only (no progress bars, "
                       "no log lines, no warnings from the libraries)")
        g.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _quiet(args) -> None:
    """``--quiet``: no warnings, log lines or progress bars; ``--no-progress`` (or quiet) reaches sam2's bars too."""
    if args.quiet:
        warnings.simplefilter("ignore")
        for name in ("", "qsam2_ext", "torch", "torchao", "nncf"):  # torch's loggers do not propagate to the root
            logging.getLogger(name).setLevel(logging.ERROR)
        if hasattr(args, "no_progress"):
            args.no_progress = True
    if args.quiet or getattr(args, "no_progress", False):
        os.environ["TQDM_DISABLE"] = "1"  # tqdm's own switch: sam2's bars (frame loading, propagation) obey it


ERRORS = (QSAM2Error, DatasetError, BadSample, ValueError, OSError)


def _drop_enum_constant_notice(record: logging.LogRecord) -> bool:
    """torch >= 2.12 logs a warning when torchao, at import, registers its Enum configs as pytree constants (now
    native in torch.compile): noise on the command line, where a bad file must give one line."""
    return "is an Enum subclass and is now natively supported" not in record.getMessage()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("qsam2_ext").setLevel(logging.INFO)  # sam2 logs every image embedding at INFO on the root
    _quiet(args)
    pytree_log = logging.getLogger("torch.utils._pytree")
    if _drop_enum_constant_notice not in pytree_log.filters:
        pytree_log.addFilter(_drop_enum_constant_notice)
    try:
        return args.run(args)
    except ERRORS as e:
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"qsam2 {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
