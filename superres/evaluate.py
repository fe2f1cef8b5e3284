"""The benchmark protocol of the SR literature, and `superres eval`.

HR folder in -> HR cropped to a multiple of the scale -> LR by MATLAB bicubic -> upscaler ->
output rounded to uint8 -> PSNR/SSIM on Y with `scale` pixels shaved, NIQE on Y (see metrics.py).
Two more tracks: a degraded one (`degrade="realistic"` or `"camera"`: the LR is a seeded draw of
that degradation per image, scored against the clean HR) and a no-reference one (a folder of real
LR photos such as RealSRSet: NIQE only, and compare sheets to look at).
An upscaler is any function from an LR uint8 image to an SR uint8 image: the `bicubic` baseline or
a generator run on the whole image in fp32. The training loop's validation calls
`evaluate_generator`, which shares `evaluate_pairs` with the command line.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from tqdm import tqdm

from . import metrics as M
from .data import held_out_images, hr_folder, hr_key, list_images, lr_index, read_uint8
from .degrade import DEGRADATIONS, degrade_image, image_seed, imresize
from .fs import atomic_write, atomic_write_with
from .upscale import hparam

log = logging.getLogger(__name__)

Upscaler = Callable[[np.ndarray], np.ndarray]   # LR uint8 (HxW or HxWx3) -> SR uint8
METRICS = ("psnr", "ssim", "psnr_rgb", "ssim_rgb", "niqe", "lpips")
_FORMATS = {"psnr": ".2f", "psnr_rgb": ".2f", "ssim": ".4f", "ssim_rgb": ".4f", "niqe": ".2f", "lpips": ".4f"}


# ---------------------------------------------------------------------------------------------
# data: HR folder -> (name, HR, LR) pairs, cached per process

@dataclass(frozen=True)
class Pair:
    name: str                # file name of the HR image (of the LR image on a no-reference track)
    hr: np.ndarray | None    # uint8 HxW (gray) or HxWx3, cropped to a multiple of the scale; None
                             # for a real LR photo that has no ground truth
    lr: np.ndarray           # uint8, hr's size / scale


def dataset_name(path: str | os.PathLike) -> str:
    """`.../Set5` and `.../Set5/HR` are both called "Set5"."""
    p = Path(path).expanduser().resolve()
    return p.parent.name if p.name.lower() == "hr" else p.name


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 HxW for gray files (kept gray: a gray image is its own Y), else HxWx3; 16 bits are
    rounded to 8 (the benchmark protocol is 8-bit)."""
    return read_uint8(path, gray=True)


def save_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write an image (format from the extension) atomically: an interrupted eval leaves no
    half-written file that a later look would take for a result."""
    im = Image.fromarray(np.ascontiguousarray(img))
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    atomic_write(path, buf.getvalue())


_PAIR_CACHE: dict[tuple, list[Pair]] = {}


def load_pairs(hr_dir: str | os.PathLike, scale: int, *, lr_dir: str | os.PathLike | None = None,
               max_images: int | None = None, files: list[Path] | None = None,
               degrade: str = "bicubic", seed: int = 0) -> list[Pair]:
    """(name, HR, LR) for every image of `hr_dir` (or its `HR/` subfolder), sorted by name.

    Without `lr_dir` the LR is `imresize(hr, 1/scale)` (MATLAB bicubic) of the cropped HR, or with
    `degrade` = "realistic" / "camera" a draw of that degradation seeded by (seed, file name); with it,
    LR files are matched to HR files by name stem (suffixes like x4, _x4, _LR are tolerated) and HR
    is cropped to LR size * scale. `files` (HR paths inside `hr_dir`) evaluates those images instead
    of the whole folder (a training folder's held-out images). Results are cached per process (keyed
    by the files' names, sizes and modification times), so repeated validations do not redo the
    resizing.
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if degrade not in DEGRADATIONS:
        raise ValueError(f"degradation {degrade!r}; allowed values: {list(DEGRADATIONS)}")
    if lr_dir and degrade != "bicubic":
        raise ValueError(f"an LR folder ({lr_dir}) and a degradation ({degrade}) both say how to make "
                         "the LR; give one of them")
    folder = hr_folder(hr_dir)
    paths = sorted(Path(f) for f in files) if files is not None else list_images(folder, recursive=False)
    if not paths:
        raise FileNotFoundError(f"no images in {folder} (looked for png/jpg/bmp/tif/webp files)")
    lr_paths = list_images(Path(lr_dir).expanduser(), recursive=False) if lr_dir else []
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths + lr_paths)
    key = (str(folder.resolve()), scale, str(lr_dir), degrade, seed if degrade != "bicubic" else 0, stamp)
    if key not in _PAIR_CACHE:
        _PAIR_CACHE[key] = _make_pairs(paths, scale, lr_paths, lr_dir, degrade, seed)
    pairs = _PAIR_CACHE[key]
    return pairs[:max_images] if max_images else pairs


def _make_pairs(paths: list[Path], scale: int, lr_paths: list[Path], lr_dir, degrade: str = "bicubic",
                seed: int = 0) -> list[Pair]:
    by_key = lr_index(lr_paths, Path(lr_dir).expanduser(), scale) if lr_dir else {}
    pairs = []
    for p in paths:
        hr = read_image(p)
        if lr_dir:
            lp = by_key.get(hr_key(p.stem))
            if lp is None:
                raise FileNotFoundError(f"no LR image for {p.name} in {lr_dir} (looked for {p.stem}.png, "
                                        f"{p.stem}x{scale}.png and similar)")
            lr = read_image(lp)
            h, w = lr.shape[0] * scale, lr.shape[1] * scale
            if hr.shape[0] < h or hr.shape[1] < w:
                raise ValueError(f"{lp} is {lr.shape[1]}x{lr.shape[0]}: x{scale} of it is larger than "
                                 f"{p} ({hr.shape[1]}x{hr.shape[0]})")
            if lr.ndim != hr.ndim:
                lr = lr if hr.ndim == 3 else np.round(M.rgb_to_gray(lr)).astype(np.uint8)
                lr = np.repeat(lr[..., None], 3, axis=2) if lr.ndim == 2 and hr.ndim == 3 else lr
            pairs.append(Pair(p.name, np.ascontiguousarray(hr[:h, :w]), lr))
            continue
        h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
        if h == 0 or w == 0:
            raise ValueError(f"{p} ({hr.shape[1]}x{hr.shape[0]}) is smaller than the scale {scale}")
        hr = np.ascontiguousarray(hr[:h, :w])
        lr = (imresize(hr, 1 / scale) if degrade == "bicubic"
              else degrade_image(hr, degrade, scale, image_seed(seed, p.name)))
        pairs.append(Pair(p.name, hr, lr))
    return pairs


def load_lr_only(lr_dir: str | os.PathLike, *, max_images: int | None = None) -> list[Pair]:
    """Every image of a folder of real LR photos (no ground truth), sorted by name, as pairs with
    `hr=None`: the no-reference track (NIQE and compare sheets only)."""
    folder = Path(lr_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    paths = list_images(folder, recursive=False)
    if not paths:
        raise FileNotFoundError(f"no images in {folder} (looked for png/jpg/bmp/tif/webp files)")
    paths = paths[:max_images] if max_images else paths
    return [Pair(p.name, None, read_image(p)) for p in paths]


# ---------------------------------------------------------------------------------------------
# upscalers

def bicubic_upscaler(scale: int) -> Upscaler:
    """MATLAB bicubic, uint8 in and out; gray stays gray."""
    return lambda lr: imresize(lr, float(scale))


def HR_REFERENCE(lr: np.ndarray) -> np.ndarray:
    """The `hr` pseudo-model: never called on the LR; `evaluate_pairs` substitutes the HR image
    itself, so the ground truth's NIQE can be reported as a reference row (its PSNR is inf)."""
    raise RuntimeError("the hr pseudo-model has no LR -> SR function; evaluate_pairs passes the HR image")


def generator_upscaler(model: nn.Module, device: str | torch.device = "cpu",
                       autocast_bf16: bool = False) -> Upscaler:
    """Run `model` (already on `device`, in eval mode) on the whole LR image, through the inference
    core (`inference.upscale_tensor`: padded to the model's input multiple, so an x2 RRDBNet takes
    odd sizes such as Set14's comic 125x180).

    fp32 unless autocast_bf16 (with the core's fp32 fallback on NaN/Inf). A gray LR is replicated to
    3 channels for RGB models; the output is clamped to [0, 1] and rounded to uint8 like an image file.
    """
    from .inference import tensor_to_uint8, upscale_tensor

    device = torch.device(device)
    in_ch = int(getattr(model, "hparams", {}).get("num_in_ch", 3))
    amp_dtype = torch.bfloat16 if autocast_bf16 else None

    def run(lr: np.ndarray) -> np.ndarray:
        arr = lr
        if arr.ndim == 2 and in_ch == 3:
            arr = np.repeat(arr[..., None], 3, axis=2)
        elif arr.ndim == 3 and in_ch == 1:
            arr = np.round(M.rgb_to_gray(arr)).astype(np.uint8)
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
        x = (x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]).float() / 255.0   # (1, C, H, W)
        y = tensor_to_uint8(upscale_tensor(model, x, amp_dtype=amp_dtype))                # (H*s, W*s, C)
        return y[..., 0] if y.shape[2] == 1 else y

    return run


# ---------------------------------------------------------------------------------------------
# evaluation

def _check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    names = tuple(m.strip().lower() for m in metrics if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise ValueError(f"unknown metric(s) {bad or names}; allowed values: {', '.join(METRICS)}")
    return names


def _score(sr: np.ndarray, pair: Pair, scale: int, metrics: tuple[str, ...], niqe_params, lpips_model,
           device) -> dict[str, float]:
    out: dict[str, float] = {}
    ref_gray = (pair.hr if pair.hr is not None else pair.lr).ndim == 2
    for m in metrics:
        if pair.hr is None and m != "niqe":
            raise ValueError(f"{pair.name} has no ground truth (a no-reference folder): {m} needs one; "
                             "use --metrics niqe")
        if m in ("psnr", "psnr_rgb"):
            out[m] = M.psnr(sr, pair.hr, scale, y_channel=(m == "psnr"))
        elif m in ("ssim", "ssim_rgb"):
            out[m] = M.ssim(sr, pair.hr, scale, y_channel=(m == "ssim"))
        elif m == "niqe":
            # An RGB output of a gray image is scored as gray, like the gray reference.
            img = np.round(M.rgb_to_gray(sr)).astype(np.uint8) if ref_gray and sr.ndim == 3 else sr
            try:
                out[m] = M.niqe(img, shave=scale, params=niqe_params)
            except ValueError as e:
                # Too small for NIQE's 96x96 blocks (T91 has such images): one unscorable image
                # must not abort a whole evaluation or a training run's validation.
                log.warning("NIQE of %s: %s; it is left out of the NIQE mean", pair.name, e)
                out[m] = float("nan")
        elif m == "lpips":
            out[m] = M.lpips(sr, pair.hr, lpips_model, device)
    return out


def _mean_of_scored(values: list[float]) -> float:
    """Mean over the images a metric could score (NaN marks one it could not); NaN if none."""
    scored = [v for v in values if not math.isnan(v)]
    return float(np.mean(scored)) if scored else float("nan")


def evaluate_pairs(upscale: Upscaler, pairs: list[Pair], scale: int,
                   metrics: Iterable[str] = ("psnr", "ssim"), *, niqe_params: M.NiqeParams | str | None = None,
                   lpips_model: M.LPIPS | None = None, device: str | torch.device = "cpu",
                   on_output: Callable[[Pair, np.ndarray], None] | None = None,
                   progress: tqdm | bool = False, desc: str = "") -> dict[str, Any]:
    """Upscale every pair's LR and score it against its HR.

    Returns {"<metric>": mean, ..., "seconds_per_image": mean upscaling time, "per_image":
    [{"name", "<metric>", ..., "seconds"}]}. `on_output(pair, sr)` sees each SR image (for saving).
    `progress` is a tqdm bar to advance, True for a new one, or False.
    """
    metrics = _check_metrics(metrics)
    if "niqe" in metrics and not isinstance(niqe_params, M.NiqeParams):
        niqe_params = M.load_niqe_params(niqe_params)
    if "lpips" in metrics and lpips_model is None:
        raise ValueError("the lpips metric needs an LPIPS model: see metrics.load_lpips (--lpips-backbone, --lpips-lin)")
    bar = progress if isinstance(progress, tqdm) else tqdm(total=len(pairs), desc=desc, disable=not progress)
    rows = []
    try:
        for pair in pairs:
            if upscale is HR_REFERENCE and pair.hr is None:
                raise ValueError(f"{pair.name} has no ground truth (a no-reference folder): the hr "
                                 "pseudo-model cannot be evaluated on it")
            t0 = time.perf_counter()
            sr = pair.hr if upscale is HR_REFERENCE else upscale(pair.lr)
            seconds = time.perf_counter() - t0
            want = (pair.lr.shape[0] * scale, pair.lr.shape[1] * scale)
            if sr.shape[:2] != want:
                raise ValueError(f"{pair.name}: the upscaler returned {sr.shape[1]}x{sr.shape[0]} for a "
                                 f"{pair.lr.shape[1]}x{pair.lr.shape[0]} input; expected x{scale} = "
                                 f"{want[1]}x{want[0]} (is the model's scale {scale}?)")
            rows.append({"name": pair.name, **_score(sr, pair, scale, metrics, niqe_params, lpips_model, device),
                         "seconds": seconds})
            if on_output is not None:
                on_output(pair, sr)
            bar.update(1)
    finally:
        if bar is not progress:
            bar.close()
    summary: dict[str, Any] = {m: _mean_of_scored([r[m] for r in rows]) for m in metrics}
    summary["seconds_per_image"] = float(np.mean([r["seconds"] for r in rows]))
    summary["per_image"] = rows
    return summary


def evaluate_generator(model: nn.Module, hr_dir: str | os.PathLike, scale: int,
                       metrics: Iterable[str] = ("psnr", "ssim"), device: str | torch.device = "cpu",
                       max_images: int | None = None, autocast_bf16: bool = False,
                       niqe_params: M.NiqeParams | str | None = None,
                       files: list[Path] | None = None, degrade: str = "bicubic",
                       seed: int = 0) -> dict[str, Any]:
    """Validation for the training loop: `model` on the benchmark protocol for one HR folder, or on
    its degraded track (`degrade`, `seed`: as `load_pairs`).

    The model is run on `device` (moved there and back if it lives elsewhere) in eval mode; its
    training flag is restored afterwards. Returns the `evaluate_pairs` summary.
    """
    pairs = load_pairs(hr_dir, scale, max_images=max_images, files=files, degrade=degrade, seed=seed)
    device = torch.device(device)
    params = list(model.parameters())
    home = params[0].device if params else device
    was_training = model.training
    model.eval()
    if home != device:
        model.to(device)
    try:
        return evaluate_pairs(generator_upscaler(model, device, autocast_bf16), pairs, scale, metrics,
                              niqe_params=niqe_params, device=device)
    finally:
        if home != device:
            model.to(home)
        model.train(was_training)


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
    p.add_argument("--model", action="append", required=True, metavar="NAME|PATH|bicubic|hr",
                   help="model to evaluate (repeatable): a shipped name, a weights file, bicubic, or hr "
                        "(the HR image itself: a reference row for NIQE; its PSNR is inf)")
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
    from .models import MODELS, resolve_model_path
    from .weights import load_generator

    if precision not in ("fp32", "bf16", "int8"):
        raise ValueError(f"precision {precision!r}; allowed values: fp32, bf16, int8")
    if int8_calibration and precision != "int8":
        raise ValueError(f"--int8-calibration is only used with --precision int8 (got {precision})")
    if precision == "int8":
        from . import runtime

        runtime.check_int8(device)

    out: list[tuple[str, Upscaler]] = []
    for spec in specs:
        if spec == "bicubic":
            label, up = "bicubic", bicubic_upscaler(scale)
        elif spec == "hr":
            label, up = "hr", HR_REFERENCE
        else:
            model, info = load_generator(resolve_model_path(spec), hparams=hparams)
            if info["scale"] != scale:
                raise ValueError(f"model {spec} upscales x{info['scale']} but --scale is {scale}; "
                                 f"pass --scale {info['scale']} or a x{scale} model")
            label = spec if spec in MODELS else Path(spec).stem
            if precision == "int8":
                from .int8 import int8_generator

                # the shipped int8 file beside the weights, or one quantized now from the folders
                model = int8_generator(model.eval(), info, calibration=int8_calibration or None)
                label += "-int8"   # an int8 row must not pass for the model's published fp32 numbers
                up = generator_upscaler(model, device)
            else:
                up = generator_upscaler(model.to(device).eval(), device, precision == "bf16")
        labels = [lab for lab, _ in out]
        if label in labels:
            label = f"{label}#{labels.count(label) + 1}"
        out.append((label, up))
    return out


def run_eval(args: argparse.Namespace) -> int:
    from .models import ModelNotFound
    from .weights import WeightsError
    from . import runtime

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
