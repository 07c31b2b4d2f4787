"""The report of ``qsam2 quantize``: float vs quantized accuracy, sizes and times (markdown + JSON), and an image
of the masks both models predict for the same prompts."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from .evaluate import evaluate, predict_masks
from .io import atomic_path, write_json, write_text
from .sam2.models import image_predictor
from .sam2.prompts import grid_points, tight_box

COLORS = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240]])
MASK_IMAGES = 3  # rows of the mask figure
REPORT_FILES = ("report.json", "report.md", "masks.png")  # what write_report may write (besides the model file)
_CPU_PATHS = {"cached": "with the weight dequantized once and kept", "reference": "dequantizing per call",
              "integer": "through the int8 product"}


def _encoder_ms(model, image: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time of ``forward_image`` on one image (the image encoder: most of SAM2's compute)."""
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model.forward_image(image)
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times[1:]))  # the first run warms up


def evaluate_pair(float_model, quantized, dataset, progress: bool) -> dict:
    """mIoU of both models on ``dataset`` (labeled: against its masks; unlabeled: quantized vs float)."""
    from sam2.utils.transforms import SAM2Transforms

    out = {"samples": len(dataset), "seconds": {}}
    start = time.perf_counter()
    reference = None
    if dataset.labeled:
        out["float"] = evaluate(float_model, dataset, progress=progress)
        out["seconds"]["float"] = time.perf_counter() - start
        start = time.perf_counter()
    else:
        reference = float_model
    out["quantized"] = evaluate(quantized, dataset, reference=reference, progress=progress)
    out["seconds"]["quantized"] = time.perf_counter() - start
    out["metric"] = out["quantized"]["metric"]
    device = next(quantized.parameters()).device
    image = SAM2Transforms(quantized.image_size, 0.0)(dataset.load(0).frames[0])[None].to(device)
    out["encoder_ms"] = {"float": _encoder_ms(float_model, image), "quantized": _encoder_ms(quantized, image)}
    if device.type == "cpu":  # which path each packed layer ran (measured per kind of layer on its first call)
        from .kernels.cpu_linear import kinds_taken, paths_taken

        out["cpu_paths"] = paths_taken(quantized)
        out["cpu_path_kinds"] = kinds_taken(quantized)
    for key in ("float", "quantized"):  # keep the summaries; per-instance scores would bloat the report
        if key in out:
            out[key] = {"results": out[key]["results"], "skipped": out[key]["skipped"]}
    return out


def _overlay(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    for k, m in enumerate(masks):
        out[m] = 0.45 * out[m] + 0.55 * COLORS[k % len(COLORS)]
    return out.astype(np.uint8)


def mask_figure(float_model, quantized, dataset, path: str) -> None:
    """Rows of (image with prompts and reference masks | float masks | quantized masks), box prompts: the first
    ``MASK_IMAGES`` images of ``dataset``, then one real photograph (``sam2.real_photos.coins``, evaluation-only)."""
    from PIL import Image, ImageDraw

    from .sam2.real_photos import coins

    rows = []
    predictors = [image_predictor(float_model), image_predictor(quantized)]
    samples = [dataset.load(i) for i in range(min(MASK_IMAGES, len(dataset)))]
    photo = coins()
    scenes = [(s.frames[0], None if s.masks is None else s.masks[0]) for s in samples] + [(photo.image, photo.masks)]
    with torch.inference_mode():
        for image, reference in scenes:
            for p in predictors:
                p.set_image(image)
            if reference is None:  # unlabeled: the float model's masks for a 2x2 grid of clicks are the reference
                reference = predict_masks(predictors[0], "point", grid_points(*image.shape[:2], 2))
                reference = reference[reference.reshape(len(reference), -1).any(1)]
            if len(reference):
                rows.append(_mask_row(predictors, image, reference))
    w, h = rows[0][0].size
    header = 18
    figure = Image.new("RGB", (3 * w, header + h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    for c, title in enumerate(("prompt boxes + reference", "float", "quantized")):
        draw.text((c * w + 4, 3), title, fill=(0, 0, 0))
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            figure.paste(tile.resize((w, h)), (c * w, header + r * h))
    with atomic_path(path) as tmp:
        figure.save(tmp, format="PNG")


def _mask_row(predictors, image: np.ndarray, reference: np.ndarray) -> list:
    """One figure row: the image with the reference masks, then each predictor's masks (its image set) for their
    tight boxes."""
    from PIL import Image, ImageDraw

    boxes = np.stack([tight_box(m) for m in reference])
    tiles = [_overlay(image, reference)] + [_overlay(image, predict_masks(p, "box", boxes)) for p in predictors]
    tiles = [Image.fromarray(t) for t in tiles]
    for tile in tiles:
        draw = ImageDraw.Draw(tile)
        for x0, y0, x1, y1 in boxes:
            draw.rectangle([x0, y0, x1, y1], outline=(255, 255, 255), width=2)
    return tiles


def _sizes(float_model, quantized, model_path: str) -> dict:
    from . import storage_report

    floats = list(float_model.state_dict().values())
    return {"float_bytes": sum(t.numel() * t.element_size() for t in floats),
            "float_bf16_bytes": sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in floats),
            "quantized_bytes": storage_report(quantized)["model_bytes"], "file_bytes": os.path.getsize(model_path),
            "packed": storage_report(quantized)}


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _markdown(data: dict) -> str:
    lines = [f"# qsam2 quantize: {data['recipe']}", "",
             f"Model `{data['model']}` ({data['image_size']}²) from `{data['checkpoint']}`, "
             f"recipe `{data['recipe_path']}`"
             f", on {data['device']}: {data['quantized_layers']} of {data['layers']} target layers quantized, "
             f"{data['vrc_layers']} calibrated with VRC, {data['qat_steps']} QAT steps. "
             f"Quantized model: `{data['model_path']}` (load it with `qsam2_ext.load_quantized(path)`).", ""]
    ev = data["evaluation"]
    if ev is not None:
        lines += [f"## Accuracy ({ev['metric']}, {ev['samples']} images)", "",
                  "| prompt | float | quantized | change |", "|---|---:|---:|---:|"]
        for kind, q in ev["quantized"]["results"].items():
            f = ev["float"]["results"][kind]["mIoU"] if "float" in ev else 1.0
            q = q["mIoU"]
            fmt = (lambda v: "-" if v is None else f"{100 * v:.2f}")
            change = "-" if None in (f, q) else f"{100 * (q - f):+.2f}"
            lines.append(f"| {kind} | {fmt(f)} | {fmt(q)} | {change} |")
        lines += ["", "![masks: float vs quantized](masks.png)", "",
                  "Box prompts; the last row is a real photograph (scikit-image's coins, evaluation-only).", ""]
    s = data["sizes"]
    packed = s["packed"]
    ratio = "" if packed["packed_ratio_vs_bf16"] is None else (
        f"; the quantized layers take {packed['packed_ratio_vs_bf16']:.3f}× their bf16 size")
    lines += ["## Size", "", "| | size |", "|---|---:|",
              f"| float (as loaded) | {_mb(s['float_bytes'])} |", f"| float in bf16 | {_mb(s['float_bf16_bytes'])} |",
              f"| quantized (in memory) | {_mb(s['quantized_bytes'])} |",
              f"| quantized file | {_mb(s['file_bytes'])} |", "",
              f"The quantized model is {s['float_bytes'] / s['quantized_bytes']:.2f}× smaller than the float one "
              f"as loaded{ratio} (layers the recipe keeps in float stay in the checkpoint's dtype).", ""]
    lines += ["## Time", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in data["times_s"].items()]
    if ev is not None:
        ms = ev["encoder_ms"]
        paths = ev.get("cpu_paths")  # on CPUs: which path the packed layers ran
        how = (" (packed layers ran " + ", ".join(f"{n} {_CPU_PATHS.get(p, p)}" for p, n in paths.items()) + ")"
               if paths else "")
        lines += ["", f"Image encoder, one image: float {ms['float']:.1f} ms, quantized {ms['quantized']:.1f} ms"
                      f"{how}."]
        kinds = ev.get("cpu_path_kinds")
        if kinds:
            lines += _path_table(kinds)
    return "\n".join(lines) + "\n"


def _dims(shape: list) -> str:
    return "×".join(str(d) for d in shape)


def _path_table(kinds: list) -> list:
    """Per kind of packed layer (op, weight, input shape): the CPU path it ran and what each path measured."""
    lines = ["", "CPU path per kind of packed layer (chosen on its first call by timing each path):", "",
             "| layer | weight | input | layers | path | ms per path as measured |", "|---|---|---|---:|---|---|"]
    for k in kinds:
        measured = ", ".join(f"{p} {v:.2f}" for p, v in k["ms"].items()) or "pinned"
        lines.append(f"| {k['op']} | {_dims(k['weight'])} | {_dims(k['input'])} | {k['layers']} | {k['path']} | "
                     f"{measured} |")
    return lines


def write_report(out: str, data: dict, float_model, quantized, evaluation) -> dict:
    data["sizes"] = _sizes(float_model, quantized, data["model_path"])
    if evaluation is not None:
        mask_figure(float_model, quantized, evaluation, os.path.join(out, "masks.png"))
    write_json(os.path.join(out, "report.json"), data)
    write_text(os.path.join(out, "report.md"), _markdown(data))
    return data
