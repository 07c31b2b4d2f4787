"""SAM2 image encoder IRs on OpenVINO's CPU plugin: float, NNCF's own compression, and Q-SAM2, in one run.

    python benchmarks/openvino_ir.py                                   # embedded model: size, latency, memory, mIoU
    python benchmarks/openvino_ir.py --model sam2.1_hiera_t --size 1024 --eval-images 0   # size + latency only

Rows: fp32 IR, fp16 IR (``compress_to_fp16``), NNCF ``compress_weights`` INT8 (INT8_ASYM) and INT4 (INT4_SYM,
group 32, NNCF's default backup INT8 for the first and last layers), NNCF int8 PTQ (``nncf.quantize`` on the fp32
IR, ``model_type=TRANSFORMER``), and Q-SAM2 W8A8 / W4A8 / W2A8 / W4A4 through NNCF (``prepare_nncf_qat``: VRC
then LSC on every Linear and 1x1 Conv2d of the encoder, activation statistics from the calibration images; no QAT
steps here) lowered by ``export_openvino`` (``offset="fold"``; the ``exact offset`` rows: ``offset="exact"``; the
``bias correction`` rows: the fold with each folded layer's bias corrected by the fold's weight change times the
mean quantized input on the calibration images; all from the same prepared model). NNCF rows and Q-SAM2 rows
calibrate on the same images.

Every IR is timed in two settings: the CPU plugin's defaults (on a CPU with AMX/AVX512-BF16 the float parts then
run in bf16) and ``INFERENCE_PRECISION_HINT=f32`` (what the float parts run in on a CPU without bf16). Latency: per
setting, the median of ``--rounds`` rounds, each running every row once in turn (interleaved, so load from other
processes spreads over all rows). Memory: resident memory added by compiling the IR and one inference
(process RSS before and after; the IR file itself is read into memory first). mIoU: box and point prompts through
``SAM2ImagePredictor`` on the accuracy benchmark's held-out synthetic split (seed 1000), with the IR as the image
encoder and the rest of SAM2 in torch, and each row's difference from the fp32 IR (and the Q-SAM2 rows' from their
NNCF counterparts) with a 95 % paired bootstrap interval over the images. Writes ``<out>/openvino[_<tag>].json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time

import openvino  # noqa: F401  (the extra this benchmark needs: fail here, not halfway)
import torch

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")  # NNCF builds its CPU extension on first use

from qsam2_ext.io import write_json, write_text  # noqa: E402

QSAM2_ROWS = {"Q-SAM2 W8A8": (8, 8, "fold"), "Q-SAM2 W4A8": (4, 8, "fold"), "Q-SAM2 W2A8": (2, 8, "fold"),
              "Q-SAM2 W4A4": (4, 4, "fold"), "Q-SAM2 W4A8 exact offset": (4, 8, "exact"),
              "Q-SAM2 W8A8 exact offset": (8, 8, "exact"), "Q-SAM2 W4A8 fold + bias correction": (4, 8, "corrected"),
              "Q-SAM2 W8A8 fold + bias correction": (8, 8, "corrected")}
ROWS = ("fp32 IR", "fp16 IR", "NNCF INT8 (compress_weights)", "NNCF INT4 (compress_weights)",
        "NNCF int8 PTQ (nncf.quantize)") + tuple(QSAM2_ROWS)
HINTS = {"default": {}, "f32": {"INFERENCE_PRECISION_HINT": "f32"}}
# mIoU differences reported with a paired 95 % interval: every row against the fp32 IR, and the targets
PAIRS = tuple((row, "fp32 IR") for row in ROWS[1:]) + (
    ("Q-SAM2 W4A8", "NNCF INT4 (compress_weights)"), ("Q-SAM2 W8A8", "NNCF int8 PTQ (nncf.quantize)"),
    ("Q-SAM2 W2A8", "NNCF INT4 (compress_weights)"))


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def recipe_lam_rel(args, bits: int, act_bits: int) -> float:
    """VRC's λ_rel: ``--lam-rel``, else the shipped SAM2.1 recipe's for the bit setting (1e-4 at W4A8 / W8A8, 1e-2
    at 2-3 bits), else the method's default (W4A4: no recipe)."""
    from qsam2_ext.core import DEFAULT_LAM_REL
    from qsam2_ext.recipes import list_recipes, load_recipe

    if args.lam_rel is not None:
        return args.lam_rel
    name = f"sam2.1_hiera_t_w{bits}a{act_bits}"
    return load_recipe(name).spec.calibration.lam_rel if name in list_recipes() else DEFAULT_LAM_REL


def prepare_qsam2(args, model_config, checkpoint, calibration, example, bits, act_bits):
    """The model with its image encoder prepared by Q-SAM2 through NNCF (hooks in eval mode, not baked)."""
    import nncf

    from qsam2_ext.core import observing
    from qsam2_ext.integrations.nncf import finish_nncf_qat, prepare_nncf_qat
    from qsam2_ext.sam2.models import build_model

    model = build_model(model_config, checkpoint, image_size=args.size)
    if args.no_vrc:  # size / latency only: the same hooks and IR structure, without the VRC solve
        from qsam2_ext.integrations.nncf import attach_qsam2, image_encoder_layers, nncf_ptq
        from qsam2_ext.integrations.torchao.configs import QSAM2Config

        q = nncf_ptq(model.image_encoder, nncf.Dataset(calibration), subset_size=len(calibration))
        cfg = QSAM2Config(bits=bits, act_bits=act_bits, method="lsc", step="prepare")
        attach_qsam2(q, example, {n: cfg for n, m in q.named_modules()
                                  if image_encoder_layers(m, "image_encoder." + n)}, keep_nncf=False)
        with observing(q), torch.no_grad():
            q(example)
        model.image_encoder = q
    else:
        teacher = copy.deepcopy(model).eval() if args.qat_steps and args.qat_losses != "labels" else None
        prepare_nncf_qat(model, calibration, bits, act_bits, method="qsam2",
                         lam_rel=recipe_lam_rel(args, bits, act_bits))
        if args.qat_steps:  # LSC's clips and the weights trained on labeled scenes, as recipes do
            import tempfile

            from qsam2_ext.sam2.data import open_dataset
            from qsam2_ext.train import TrainConfig, train

            labels = {} if args.qat_losses != "distill" else {"focal": 0.0, "dice": 0.0, "iou": 0.0, "object": 0.0}
            config = TrainConfig(steps=args.qat_steps, batch_size=4, lr=1e-5, quantizer_lr=1e-3, num_workers=0,
                                 checkpoint_every=args.qat_steps, seed=0,
                                 distill_mask=1.0 if teacher is not None else 0.0, **labels)
            with tempfile.TemporaryDirectory() as run_dir:
                train(model, open_dataset("sa1b", args.qat_data), config, run_dir, teacher=teacher, device="cpu",
                      progress=False)
            model.eval()
    finish_nncf_qat(model)
    return model


def build_irs(args, rows, model_config, checkpoint, calibration, example, irs) -> dict:
    """Write every row's IR; returns ``{row: export report or None}``."""
    import nncf
    import openvino as ov

    from qsam2_ext.integrations.nncf import export_openvino
    from qsam2_ext.integrations.nncf.export import float_ir
    from qsam2_ext.sam2.models import build_model

    os.makedirs(irs, exist_ok=True)
    path = lambda row: os.path.join(irs, row.split(" (")[0].replace(" ", "_").replace("-", "") + ".xml")  # noqa: E731
    encoder = build_model(model_config, checkpoint, image_size=args.size).image_encoder.eval()
    fp32 = (ov.Core().read_model(path("fp32 IR")) if args.reuse and os.path.exists(path("fp32 IR")) else
            float_ir(encoder, example, path("fp32 IR"), compress_to_fp16=False))
    reports, paths, prepared = {}, {}, {}
    for row in rows:
        started = time.time()
        paths[row] = path(row)
        if args.reuse and os.path.exists(path(row)):
            if os.path.exists(path(row) + ".json"):
                with open(path(row) + ".json") as f:
                    reports[row] = json.load(f)
            print(f"  reusing {path(row)}", flush=True)
            continue
        if row == "fp32 IR":
            pass
        elif row == "fp16 IR":
            float_ir(encoder, example, path(row), compress_to_fp16=True)
        elif row.startswith("NNCF INT"):
            options = ({"mode": nncf.CompressWeightsMode.INT8_ASYM} if "INT8" in row else
                       {"mode": nncf.CompressWeightsMode.INT4_SYM, "group_size": args.int4_group_size})
            ov.save_model(nncf.compress_weights(fp32.clone(), **options), path(row), compress_to_fp16=True)
        elif row.startswith("NNCF int8 PTQ"):
            dataset = nncf.Dataset([b[:1].numpy() for b in calibration])
            q = nncf.quantize(fp32.clone(), dataset, subset_size=len(calibration), model_type=nncf.ModelType.TRANSFORMER)
            ov.save_model(q, path(row), compress_to_fp16=True)
        else:
            bits, act_bits, offset = QSAM2_ROWS[row]
            if (bits, act_bits) not in prepared:  # the exact-offset rows export the same prepared model
                prepared[(bits, act_bits)] = prepare_qsam2(args, model_config, checkpoint, calibration, example,
                                                           bits, act_bits)
            model = prepared[(bits, act_bits)]
            corrected = offset == "corrected"  # the fold with its bias correction from the calibration images
            _, report = export_openvino(model.image_encoder, example, path(row), compress_to_fp16=True,
                                        offset="fold" if corrected else offset,
                                        calibration=calibration if corrected else None)
            reports[row] = {k: report[k] for k in ("layers", "weights", "quantized_inputs", "constants", "offset",
                                                   "offset_terms", "bias_corrected", "min_sqnr_db_vs_torch",
                                                   "runtime_precisions", "hooks_ran")}
            write_json(path(row) + ".json", reports[row])
            del model
            if not any(QSAM2_ROWS[r][:2] == (bits, act_bits) for r in rows[rows.index(row) + 1:] if r in QSAM2_ROWS):
                del prepared[(bits, act_bits)]
        print(f"  built {row} in {time.time() - started:.0f} s", flush=True)
        gc.collect()
    return paths, reports, encoder


def measure(rows, paths, example, rounds) -> dict:
    """Per setting (``HINTS``): compile every row, then time them interleaved; one setting's compiled models at a
    time (a 1024² encoder holds ~0.6 GB each)."""
    import openvino as ov

    from qsam2_ext.integrations.nncf.export import runtime_precisions

    core, x = ov.Core(), example.numpy()
    results = {row: {"ir_bytes": os.path.getsize(paths[row][:-4] + ".bin")} for row in rows}
    for hint, config in HINTS.items():
        compiled = {}
        for row in rows:
            gc.collect()
            before = _rss()
            c = core.compile_model(core.read_model(paths[row]), "CPU", config)
            request = c.create_infer_request()
            request.infer([x])
            compiled[row] = (c, request)
            if hint == "default":
                results[row]["rss_added_bytes"] = _rss() - before
            results[row][hint] = {"executed": runtime_precisions(c), "latency_ms": [],
                                  "inference_precision": str(c.get_property("INFERENCE_PRECISION_HINT"))}
        for r in range(rounds):
            for row in rows[r % len(rows):] + rows[:r % len(rows)]:
                started = time.perf_counter()
                compiled[row][1].infer([x])
                results[row][hint]["latency_ms"].append(1000 * (time.perf_counter() - started))
        for row in rows:
            results[row][hint]["median_ms"] = statistics.median(results[row][hint]["latency_ms"])
        del compiled, c, request
    return results


def accuracy(rows, paths, model_config, checkpoint, size, example, eval_root, limit) -> dict:
    from qsam2_ext.evaluate import evaluate, paired_difference
    from qsam2_ext.integrations.nncf.openvino_sam2 import OpenVINOImageEncoder
    from qsam2_ext.sam2.data import open_dataset
    from qsam2_ext.sam2.models import build_model

    found, records = {}, {}
    dataset = open_dataset("sa1b", eval_root)
    for row in rows:
        model = build_model(model_config, checkpoint, image_size=size)
        model.image_encoder = OpenVINOImageEncoder.compile(paths[row], model.image_encoder, example)
        run = evaluate(model, dataset, progress=False, limit=limit)
        res, records[row] = run["results"], run["instances"]
        found[row] = {"box_mIoU": res["box"]["mIoU"], "point_mIoU": res["point"]["mIoU"]}
        print(f"  {row}: box {found[row]['box_mIoU']:.4f} point {found[row]['point_mIoU']:.4f}", flush=True)
    for row, other in PAIRS:
        if row in records and other in records:
            found[row].setdefault("paired", {})[other] = {
                prompt: paired_difference(records[row], records[other], prompt) for prompt in ("box", "point")}
    return found


def markdown(results: dict, meta: dict) -> str:
    fp32 = {hint: results["fp32 IR"][hint]["median_ms"] for hint in HINTS}
    acc = any("box_mIoU" in r for r in results.values())
    lines = [f"OpenVINO {meta['openvino']} CPU plugin, {meta['model']} image encoder at {meta['size']}², batch 1, "
             f"{meta['cpu']} ({meta['cores']} cores, shared with other jobs: latencies are noisy; medians of "
             f"{meta['rounds']} interleaved rounds). Default setting: float parts execute in "
             f"{meta['float_precision']}; f32 hint: INFERENCE_PRECISION_HINT=f32 for every row."
             + (f" mIoU: {meta['eval_images']} held-out synthetic images." if acc else "")
             + (f" Q-SAM2 rows: VRC, then {meta['qat_steps']} QAT steps of 4 labeled images"
                f" (losses: {meta.get('qat_losses') or 'labels'})."
                + (" VRC λ_rel: " + ", ".join(f"{row.removeprefix('Q-SAM2 ')} {lam:g}"
                                               for row, lam in meta["lam_rel"].items()) + "."
                   if isinstance(meta.get("lam_rel"), dict) and meta["lam_rel"] else "")
                if meta.get("qat_steps") else " Q-SAM2 rows: VRC and LSC's initial clips, no QAT."), "",
             "| row | IR MB | ms | × fp32 IR | ms (f32 hint) | × fp32 IR (f32 hint) | RSS added MB | "
             "executed MatMul/Conv precisions |" + (" box mIoU | point mIoU |" if acc else ""),
             "|---|---:|---:|---:|---:|---:|---:|---|" + ("---:|---:|" if acc else "")]
    for row, r in results.items():
        d, f = r["default"], r["f32"]
        executed = ", ".join(f"{k} {'/'.join(f'{p}:{n}' for p, n in v.items())}" for k, v in d["executed"].items())
        line = (f"| {row} | {r['ir_bytes'] / 1e6:.2f} | {d['median_ms']:.1f} | {d['median_ms'] / fp32['default']:.2f} "
                f"| {f['median_ms']:.1f} | {f['median_ms'] / fp32['f32']:.2f} | {r['rss_added_bytes'] / 1e6:.0f} | "
                f"{executed} |")
        if acc:
            line += f" {100 * r.get('box_mIoU', float('nan')):.1f} | {100 * r.get('point_mIoU', float('nan')):.1f} |"
        lines.append(line)
    paired = [(row, other, d) for row, r in results.items() for other, d in r.get("paired", {}).items()]
    if paired:
        lines += ["", (f"mIoU differences, row minus reference, over the same {meta['eval_images']} images and "
                       "instances, with 95 % paired bootstrap intervals (2000 resamples of whole images):"), "",
                  "| row | minus | box Δ | box 95 % interval | point Δ | point 95 % interval |",
                  "|---|---|---:|---|---:|---|"]
        for row, other, d in paired:
            cells = [f"{100 * d[k]['mean']:+.2f} | [{100 * d[k]['ci95'][0]:+.2f}, {100 * d[k]['ci95'][1]:+.2f}]"
                     for k in ("box", "point")]
            lines.append(f"| {row} | {other} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import openvino as ov

    from qsam2_ext.sam2.models import DEFAULT_MODEL_CONFIG, default_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL_CONFIG)
    p.add_argument("--checkpoint", default=None, help="default: the embedded model's; none for sam2.1_* configs")
    p.add_argument("--size", type=int, default=None, help="image size (default: the model's)")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calibration-images", type=int, default=8)
    p.add_argument("--int4-group-size", type=int, default=32,
                   help="NNCF INT4 group size (NNCF's default 128 does not divide qsam2_mini's 64-wide layers)")
    p.add_argument("--eval-images", type=int, default=16, help="0: no accuracy columns")
    p.add_argument("--data", default="out/accuracy_data")
    p.add_argument("--work", default="out/openvino_irs")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--reuse", action="store_true", help="reuse IRs already in --work (built by an earlier run)")
    p.add_argument("--build-only", action="store_true", help="build the IRs, measure nothing")
    p.add_argument("--qat-steps", type=int, default=0,
                   help="QAT steps of 4 labeled synthetic images for the Q-SAM2 rows (the qsam2_mini recipes: 100)")
    p.add_argument("--qat-losses", choices=("labels", "distill", "both"), default="labels",
                   help="QAT losses: SAM2's on the labels, the float model's masks as teacher (distill_mask 1, "
                        "as the recipes), or both (the recipes' choice)")
    p.add_argument("--lam-rel", type=float, default=None,
                   help="VRC's ridge λ relative to the mean of diag(G) (default: the shipped sam2.1_hiera_t recipe's "
                        "for the row's bits: 1e-4 at W4A8 / W8A8, 1e-2 at 2-3 bits)")
    p.add_argument("--no-vrc", action="store_true",
                   help="Q-SAM2 rows without the VRC solve (size / latency runs: the IR is built the same way)")
    p.add_argument("--tag", default="", help="suffix of the result files (openvino_<tag>.json)")
    args = p.parse_args()
    embedded = args.model == DEFAULT_MODEL_CONFIG
    checkpoint = args.checkpoint or (default_checkpoint() if embedded else None)
    torch.manual_seed(0)

    from accuracy import HELD_OUT_SEED, TRAIN_SEED, _calibration_batches

    from qsam2_ext.sam2.data import open_dataset
    from qsam2_ext.sam2.models import build_model
    from qsam2_ext.sam2.synthetic import write_split

    probe = build_model(args.model, checkpoint, image_size=args.size)
    size = args.size or probe.image_size
    del probe
    train = write_split("images", os.path.join(args.data, "train_64"), 64, TRAIN_SEED)
    args.qat_data = (write_split("images", os.path.join(args.data, "train_400"), 400, TRAIN_SEED)
                     if args.qat_steps else None)
    batches = _calibration_batches(open_dataset("sa1b", train), args.calibration_images, size, "cpu")
    calibration = [b[i:i + 1] for b in batches for i in range(len(b))]
    example = calibration[0]
    started = time.time()
    print(f"building {len(args.rows)} IRs", flush=True)
    paths, reports, _ = build_irs(args, args.rows, args.model, checkpoint, calibration, example, args.work)
    if args.build_only:
        return
    print("timing", flush=True)
    results = measure(list(args.rows), paths, example, args.rounds)
    if args.eval_images:
        root = write_split("images", os.path.join(args.data, f"eval_{args.eval_images}"), args.eval_images,
                           HELD_OUT_SEED)
        for row, acc in accuracy(args.rows, paths, args.model, checkpoint, size, example, root, None).items():
            results[row].update(acc)
    for row, report in reports.items():
        results[row]["export"] = report
    for r in results.values():
        for hint in HINTS:
            r[hint]["ratio_to_fp32_ir"] = r[hint]["median_ms"] / results["fp32 IR"][hint]["median_ms"]
    meta = {"model": os.path.basename(args.model).removesuffix(".yaml"), "size": size,
            "checkpoint": checkpoint and os.path.basename(checkpoint), "openvino": ov.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "rounds": args.rounds,
            "float_precision": results["fp32 IR"]["default"]["inference_precision"], "eval_images": args.eval_images,
            "calibration_images": len(calibration), "qat_steps": args.qat_steps,
            "qat_losses": args.qat_losses if args.qat_steps else None,
            "lam_rel": {row: recipe_lam_rel(args, *QSAM2_ROWS[row][:2]) for row in args.rows if row in QSAM2_ROWS},
            "seconds": round(time.time() - started),
            "command": shlex.join(["python", "benchmarks/openvino_ir.py"] + sys.argv[1:])}
    try:
        meta["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    name = "openvino" + (f"_{args.tag}" if args.tag else "")
    write_json(os.path.join(args.out, name + ".json"), {"meta": meta, "rows": results})
    text = markdown(results, meta)
    write_text(os.path.join(args.out, name + ".md"), text)
    print(text)


if __name__ == "__main__":
    main()
