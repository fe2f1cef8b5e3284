"""`superres eval`: the benchmark protocol (evaluation.protocol) as a command, with its reports
(markdown table, JSON, CSV) and the side-by-side comparison sheets.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..data.datasets import held_out_images
from ..data.degrade import DEGRADATIONS
from ..data.resize import imresize
from ..evaluation import metrics as M
from ..inference import runtime
from ..evaluation.protocol import (
    _FORMATS,
    HR_REFERENCE,
    METRICS,
    Pair,
    Upscaler,
    _check_metrics,
    bicubic_upscaler,
    dataset_name,
    evaluate_pairs,
    generator_upscaler,
    load_lr_only,
    load_pairs,
    save_image,
)
from ..io.fs import atomic_write, atomic_write_with
from .upscale import hparam

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# reports

def _fmt(value: float, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    return format(value, _FORMATS.get(metric, ".4f"))


def markdown_table(results: list[dict[str, Any]], metrics: tuple[str, ...]) -> str:
    """Rows: models; columns: dataset x metric, then seconds per image over all datasets."""
    models = list(dict.fromkeys(r["model"] for r in results))
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    header = ["model"] + [f"{d} {m.upper().replace('_RGB', ' (RGB)')}" for d in datasets for m in metrics] + ["s/img"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for model in models:
        cells, secs, count = [model], 0.0, 0
        for d in datasets:
            r = next((x for x in results if x["model"] == model and x["dataset"] == d), None)
            cells += [_fmt(r[m], m) if r else "-" for m in metrics]
            if r:
                secs += r["seconds_per_image"] * len(r["per_image"])
                count += len(r["per_image"])
        cells.append(f"{secs / max(count, 1):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _finite(v):
    # Strict JSON has no Infinity/NaN (identical images give an infinite PSNR): write null.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def write_json(path: str | os.PathLike, results: list[dict[str, Any]]) -> None:
    atomic_write(path, (json.dumps({"results": _finite(results)}, indent=2) + "\n").encode())


def write_csv(path: str | os.PathLike, results: list[dict[str, Any]], metrics: tuple[str, ...]) -> None:
    atomic_write_with(path, lambda tmp: _write_csv(tmp, results, metrics))


def _write_csv(path: str, results: list[dict[str, Any]], metrics: tuple[str, ...]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "dataset", "scale", "image", *metrics, "seconds"])
        for r in results:
            for row in r["per_image"]:
                w.writerow([r["model"], r["dataset"], r["scale"], row["name"],
                            *[repr(row[m]) for m in metrics], f"{row['seconds']:.6f}"])


def _window_energy(img: np.ndarray, size: int, step: int) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Gradient energy and mean brightness of every size x size window (on a grid of `step`)."""
    y = M.rgb_to_gray(img)
    energy = np.zeros_like(y)
    energy[:-1, :-1] = np.abs(np.diff(y, axis=0))[:, :-1] + np.abs(np.diff(y, axis=1))[:-1, :]
    h, w = y.shape
    tops, lefts = list(range(0, h - size + 1, step)), list(range(0, w - size + 1, step))

    def window_sums(a: np.ndarray) -> np.ndarray:
        ii = np.pad(a.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        t, l = np.array(tops)[:, None], np.array(lefts)[None, :]
        return ii[t + size, l + size] - ii[t, l + size] - ii[t + size, l] + ii[t, l]

    return window_sums(energy), window_sums(y) / (size * size), tops, lefts


def _detail_box(ref: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left of the size x size window with the most gradient energy: where models differ."""
    h, w = ref.shape[:2]
    if h < size or w < size:
        return 0, 0
    energy, _, tops, lefts = _window_energy(ref, size, max(1, size // 4))
    i, j = np.unravel_index(int(np.argmax(energy)), energy.shape)
    return tops[i], lefts[j]


def _smooth_box(ref: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left of the calmest window that is neither black nor blown out: sky, skin, a wall, where
    a model that mistakes noise or JPEG blocks for detail draws worms and grids. Measured on a 4x
    smaller copy so the input's own noise does not decide it."""
    h, w = ref.shape[:2]
    small_size = size // 4
    if h < size or w < size or small_size < 4:
        return 0, 0
    small = imresize(ref, 0.25)
    energy, mean, tops, lefts = _window_energy(small, small_size, max(1, small_size // 4))
    energy = np.where((mean > 24) & (mean < 232), energy, np.inf)
    if not np.isfinite(energy).any():
        energy = np.where(np.isfinite(energy), energy, 0.0)
    i, j = np.unravel_index(int(np.argmin(energy)), energy.shape)
    return min(tops[i] * 4, h - size), min(lefts[j] * 4, w - size)


def compare_image(panels: list[tuple[str, np.ndarray]], box: tuple[int, int, int], zoom: int) -> Image.Image:
    """Same crop (top, left, size) of each image side by side, nearest-upscaled, labelled on top."""
    return compare_sheet(panels, [box], zoom)


def compare_sheet(panels: list[tuple[str, np.ndarray]], boxes: list[tuple[int, int, int]],
                  zoom: int = 1) -> Image.Image:
    """One row per crop (top, left, size) and one column per labelled image, every crop the same
    window of every image, nearest-upscaled by `zoom` (1 = output pixels 1:1), labels on top."""
    label_h, gap = 14, 4
    tiles = [size * zoom for _, _, size in boxes]
    width = max(tiles)
    canvas = Image.new("RGB", (len(panels) * (width + gap) - gap, label_h + sum(tiles) + gap * (len(boxes) - 1)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, _) in enumerate(panels):
        draw.text((i * (width + gap) + 2, 1), label, fill="black")
    y = label_h
    for (top, left, size), tile in zip(boxes, tiles):
        for i, (_, img) in enumerate(panels):
            crop = img[top:top + size, left:left + size]
            im = Image.fromarray(np.ascontiguousarray(crop)).convert("RGB")
            canvas.paste(im.resize((tile, tile), Image.NEAREST), (i * (width + gap), y))
        y += tile + gap
    return canvas


def sheet_boxes(ref: np.ndarray, size: int) -> list[tuple[int, int, int]]:
    """The two crops of a compare sheet: the most detailed window and the calmest one."""
    size = min(size, *ref.shape[:2])
    return [(*_detail_box(ref, size), size), (*_smooth_box(ref, size), size)]


def _write_png_atomic(path: str | os.PathLike, im: Image.Image) -> None:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# CLI

def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, metavar="NAME|PATH|default|bicubic|hr",
                   help="model to evaluate (repeatable): a shipped name, a weights file, default (the "
                        "pipeline `superres upscale` runs without --model: photo-x4 with --strength "
                        "auto), bicubic, or hr (the HR image itself: a reference row for NIQE; its PSNR "
                        "is inf)")
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="dataset folder with HR images or an HR/ subfolder (repeatable); with "
                        "--no-reference, a folder of LR photos")
    p.add_argument("--scale", type=int, default=4, help="upscaling factor (default 4)")
    p.add_argument("--hparams", type=hparam, action="append", default=None, metavar="KEY=VALUE",
                   help="a hyperparameter foreign weights files cannot reveal from their keys (repeatable; "
                        "applies to every --model file), e.g. --hparams act_type=leakyrelu")
    p.add_argument("--metrics", default=None,
                   help=f"comma-separated, from {','.join(METRICS)} (default psnr,ssim; niqe with "
                        "--no-reference)")
    p.add_argument("--degrade", default="bicubic", choices=DEGRADATIONS,
                   help="how the LR is made from each HR: bicubic (MATLAB imresize, the published "
                        "protocol; default), realistic (Real-ESRGAN's second-order pipeline) or camera "
                        "(slight blur, sensor noise, JPEG 50-90, one pass); scored against the clean HR")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of --degrade realistic/camera: an image's LR depends only on (seed, file "
                        "name), so every run and machine gets the same LR (default 0)")
    p.add_argument("--save-lr", default=None, metavar="DIR",
                   help="write the LR images evaluated to DIR/dataset/name.png")
    p.add_argument("--no-reference", action="store_true",
                   help="--data folders hold real LR photos with no ground truth (e.g. RealSRSet): "
                        "NIQE and --compare sheets only")
    p.add_argument("--lr-dir", action="append", default=None, metavar="DIR",
                   help="LR images for the HR images of the matching --data (one per --data); "
                        "default: MATLAB bicubic of the HR images")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images of each dataset")
    p.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="only the images a training run with data.holdout = N held out of each --data "
                        "folder (every N-th by name), reported as FOLDER-holdout")
    p.add_argument("--save-dir", default=None, help="write SR images to DIR/model/dataset/name.png")
    p.add_argument("--json", default=None, metavar="FILE", help="write results with per-image values "
                   "(infinite PSNR is written as null)")
    p.add_argument("--csv", default=None, metavar="FILE", help="write one row per model, dataset and image")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compare", default=None, metavar="FILE.png|DIR",
                   help="compare sheets: the same two crops (the most detailed and the calmest window) "
                        "from the input, bicubic, every model and HR, labelled. FILE.png: one sheet of "
                        "--compare-image; DIR: one sheet per image of the first dataset")
    p.add_argument("--compare-image", default=None, metavar="NAME",
                   help="image of the first dataset to crop for --compare FILE.png (default: its first image)")
    p.add_argument("--compare-size", type=int, default=128, help="crop side in output pixels (default 128)")
    p.add_argument("--compare-zoom", type=int, default=1,
                   help="nearest-neighbour zoom of the crops (default 1: output pixels 1:1)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "int8"),
                   help="how generators run: fp32 (default: the published numbers), bf16 autocast, or int8 "
                        "(CPU, ONNX Runtime; the shipped int8 file, or quantized now from "
                        "--int8-calibration); int8 rows are labelled NAME-int8")
    p.add_argument("--int8-calibration", action="append", default=None, metavar="DIR",
                   help="with --precision int8 for a model without a shipped int8 file: image folder(s) to "
                        "calibrate on (training or validation images, never the test set)")
    p.add_argument("--bf16", action="store_true", help="the same as --precision bf16 (kept for old scripts)")
    p.add_argument("--niqe-params", default=None, metavar="PATH",
                   help=f"NIQE pristine model niqe_pris_params.npz (default ${M.NIQE_PARAMS_ENV} or "
                        f"{M.DEFAULT_NIQE_PARAMS})")
    p.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"), help="LPIPS backbone")
    p.add_argument("--lpips-backbone", default=None, metavar="PATH", help="torchvision backbone weights for LPIPS")
    p.add_argument("--lpips-lin", default=None, metavar="PATH", help="LPIPS linear-head weights")


def _load_upscalers(specs: list[str], scale: int, device: torch.device, precision: str = "fp32",
                    hparams: dict[str, Any] | None = None,
                    int8_calibration: list[str] | None = None) -> list[tuple[str, Upscaler]]:
    from ..inference.models import MODELS, resolve_model_path
    from ..inference.weights import load_generator

    if precision not in ("fp32", "bf16", "int8"):
        raise ValueError(f"precision {precision!r}; allowed values: fp32, bf16, int8")
    if int8_calibration and precision != "int8":
        raise ValueError(f"--int8-calibration is only used with --precision int8 (got {precision})")
    if precision == "int8":
        runtime.check_int8(device)

    out: list[tuple[str, Upscaler]] = []
    for spec in specs:
        if spec == "bicubic":
            label, up = "bicubic", bicubic_upscaler(scale)
        elif spec == "hr":
            label, up = "hr", HR_REFERENCE
        elif spec == "default" or (spec in MODELS and MODELS[spec].heavy):
            label, up = spec, _pipeline_upscaler(spec, scale, device, precision)
        else:
            model, info = load_generator(resolve_model_path(spec), hparams=hparams)
            if info["scale"] != scale:
                raise ValueError(f"model {spec} upscales x{info['scale']} but --scale is {scale}; "
                                 f"pass --scale {info['scale']} or a x{scale} model")
            label = spec if spec in MODELS else Path(spec).stem
            if precision == "int8":
                from ..inference.int8 import int8_generator

                # the shipped int8 file beside the weights, or one quantized now from the folders
                model = int8_generator(model.eval(), info, calibration=int8_calibration or None)
                label += "-int8"   # an int8 row must not pass for the model's published fp32 numbers
                up = generator_upscaler(model, device)
            else:
                up = generator_upscaler(model.to(device).eval(), device,
                                        policy=runtime.inference_policy(precision, device))
        labels = [lab for lab, _ in out]
        if label in labels:
            label = f"{label}#{labels.count(label) + 1}"
        out.append((label, up))
    return out


def _pipeline_upscaler(spec: str, scale: int, device: torch.device, precision: str) -> Upscaler:
    """`superres upscale`'s own pipeline (default tiles, --strength auto of a blend family) for an
    LR array: `default` is the model upscale runs without --model."""
    from ..inference.models import default_model_name
    from ..inference.upscaler import Upscaler as ImageUpscaler

    name = default_model_name() if spec == "default" else spec
    if precision == "int8":
        raise ValueError(f"--model {spec} ({name}) picks a blend per image, which int8 cannot run; "
                         "evaluate its ends by name with --precision int8 instead")
    from .upscale import default_engine

    up = ImageUpscaler.from_pretrained(name, device=str(device), precision=precision, engine=default_engine())
    if up.scale != scale:
        raise ValueError(f"model {spec} ({name}) upscales x{up.scale} but --scale is {scale}; "
                         f"pass --scale {up.scale}")
    return up.upscale_pixels


def run_eval(args: argparse.Namespace) -> int:
    from ..inference import runtime
    from ..inference.models import ModelNotFound
    from ..inference.weights import WeightsError

    try:
        default = "niqe" if args.no_reference else "psnr,ssim"
        metrics = _check_metrics((args.metrics or default).split(","))
        if args.lr_dir and len(args.lr_dir) != len(args.data):
            raise ValueError(f"{len(args.lr_dir)} --lr-dir for {len(args.data)} --data; give one per dataset")
        if args.no_reference:
            refs = [m for m in metrics if m != "niqe"]
            if refs:
                raise ValueError(f"--metrics {','.join(refs)} need ground truth, which --no-reference "
                                 "folders do not have; use --metrics niqe")
            for flag, given in (("--lr-dir", args.lr_dir), ("--holdout", args.holdout),
                                ("--degrade", args.degrade != "bicubic"), ("--model hr", "hr" in args.model)):
                if given:
                    raise ValueError(f"{flag} does not apply to --no-reference folders (they are the LR)")
        if args.compare_size < 8 or args.compare_zoom < 1:
            raise ValueError(f"--compare-size {args.compare_size} / --compare-zoom {args.compare_zoom}: "
                             "give a size >= 8 output pixels and a zoom >= 1")
        device = runtime.pick_device(args.device)
        niqe_params = M.load_niqe_params(args.niqe_params) if "niqe" in metrics else None
        lpips_model = (M.load_lpips(args.lpips_backbone, args.lpips_lin, args.lpips_net).to(device)
                       if "lpips" in metrics else None)
        if args.bf16 and args.precision not in ("fp32", "bf16"):
            raise ValueError(f"--bf16 and --precision {args.precision} contradict each other; give one")
        precision = "bf16" if args.bf16 else args.precision
        upscalers = _load_upscalers(args.model, args.scale, device, precision, dict(args.hparams or []) or None,
                                    args.int8_calibration)
        if args.holdout < 0 or args.holdout == 1:
            raise ValueError(f"--holdout {args.holdout}: give N >= 2 (the training run's data.holdout)")
        datasets = []
        for i, d in enumerate(args.data):
            if args.no_reference:
                datasets.append((dataset_name(d), load_lr_only(d, max_images=args.max_images)))
                continue
            held = held_out_images(d, args.holdout) if args.holdout else None
            name = dataset_name(d) + ("-holdout" if held is not None else "")
            if args.degrade != "bicubic":
                name += f"-{args.degrade}"
            datasets.append((name, load_pairs(d, args.scale, lr_dir=args.lr_dir[i] if args.lr_dir else None,
                                              max_images=args.max_images, files=held,
                                              degrade=args.degrade, seed=args.seed)))
    except (ValueError, FileNotFoundError, ModelNotFound, WeightsError) as e:   # incl. RuntimeChoiceError
        log.error("%s", e)
        return 2

    sheet_pairs: list[Pair] = []
    if args.compare:
        first = datasets[0][1]
        if args.compare.lower().endswith(".png"):
            sheet_pairs = [p for p in first if args.compare_image in (None, p.name, Path(p.name).stem)][:1]
            if not sheet_pairs:
                log.error("--compare-image %s is not in %s", args.compare_image, args.data[0])
                return 2
        else:
            sheet_pairs = list(first)
    outputs: dict[str, dict[str, np.ndarray]] = {p.name: {} for p in sheet_pairs}   # image -> label -> SR

    if args.save_lr:
        for dname, pairs in datasets:
            for pair in pairs:
                save_image(Path(args.save_lr) / dname / (Path(pair.name).stem + ".png"), pair.lr)
        log.info("wrote the LR images to %s", args.save_lr)

    results = []
    bar = tqdm(total=len(upscalers) * sum(len(p) for _, p in datasets), desc="eval", unit="img",
               disable=args.no_progress)
    try:
        for label, up in upscalers:
            for dname, pairs in datasets:
                bar.set_postfix_str(f"{label} on {dname}")

                def on_output(pair: Pair, sr: np.ndarray, label=label, up=up,
                              first=dname == datasets[0][0]):
                    if args.save_dir:
                        save_image(Path(args.save_dir) / label / dname / (Path(pair.name).stem + ".png"), sr)
                    if first and pair.name in outputs and up is not HR_REFERENCE:   # HR is its own column
                        outputs[pair.name][label] = sr

                res = evaluate_pairs(up, pairs, args.scale, metrics, niqe_params=niqe_params,
                                     lpips_model=lpips_model, device=device, on_output=on_output, progress=bar)
                results.append({"model": label, "dataset": dname, "scale": args.scale,
                                "degrade": "none (real LR)" if args.no_reference else args.degrade,
                                "seed": args.seed if args.degrade != "bicubic" else None, **res})
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    finally:
        bar.close()

    print(markdown_table(results, metrics))
    if args.json:
        write_json(args.json, results)
        log.info("wrote %s", args.json)
    if args.csv:
        write_csv(args.csv, results, metrics)
        log.info("wrote %s", args.csv)
    for pair in sheet_pairs:
        sheet = _sheet_for(pair, outputs[pair.name], args.scale, args.compare_size, args.compare_zoom)
        dest = (Path(args.compare) if args.compare.lower().endswith(".png")
                else Path(args.compare) / f"{Path(pair.name).stem}.png")
        _write_png_atomic(dest, sheet)
        log.info("wrote %s (%s)", dest, pair.name)
    return 0


def _sheet_for(pair: Pair, outputs: dict[str, np.ndarray], scale: int, size: int, zoom: int) -> Image.Image:
    """Columns: the input (nearest, at output size), bicubic, each model, HR when there is one."""
    lr = pair.lr
    nearest = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
    bicubic = outputs.get("bicubic")
    if bicubic is None:
        bicubic = bicubic_upscaler(scale)(lr)
    # Crops are chosen on the truth when there is one, else on the smooth bicubic view of the input.
    ref = pair.hr if pair.hr is not None else bicubic
    panels = [("input (nearest)", nearest), ("bicubic", bicubic)]
    panels += [(label, sr) for label, sr in outputs.items() if label != "bicubic"]
    if pair.hr is not None:
        panels.append(("HR", pair.hr))
    return compare_sheet(panels, sheet_boxes(ref, size), zoom)
