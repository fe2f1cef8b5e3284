"""The benchmark protocol of the SR literature, and `superres eval`.

HR folder in -> HR cropped to a multiple of the scale -> LR by MATLAB bicubic -> upscaler ->
output rounded to uint8 -> PSNR/SSIM (and LF-PSNR, HF-CORR, HF-RATIO) on Y with `scale` pixels
shaved, NIQE on Y (see metrics.py).
Two more tracks: a degraded one (`degrade="realistic"` or `"camera"`: the LR is a seeded draw of
that degradation per image, scored against the clean HR) and a no-reference one (a folder of real
LR photos such as RealSRSet: NIQE only, and compare sheets to look at).
An upscaler is any function from an LR uint8 image to an SR uint8 image: the `bicubic` baseline or
a generator run on the whole image in fp32. The training loop's validation calls
`evaluate_generator`, which shares `evaluate_pairs` with the command line.
"""
from __future__ import annotations

import io
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..data.datasets import hr_folder, hr_key, list_images, lr_index, read_uint8
from ..data.degrade import DEGRADATIONS, degrade_image, image_seed
from ..data.resize import imresize
from ..io.fs import atomic_write
from . import metrics as M

log = logging.getLogger(__name__)

Upscaler = Callable[[np.ndarray], np.ndarray]   # LR uint8 (HxW or HxWx3) -> SR uint8
METRICS = ("psnr", "ssim", "psnr_rgb", "ssim_rgb", "niqe", "lpips", "lf-psnr", "hf-corr", "hf-ratio")
_FORMATS = {"psnr": ".2f", "psnr_rgb": ".2f", "ssim": ".4f", "ssim_rgb": ".4f", "niqe": ".2f", "lpips": ".4f",
            "lf-psnr": ".2f", "hf-corr": ".3f", "hf-ratio": ".3f"}
# Full-reference metrics on Y with `scale` pixels shaved, called as f(sr, hr, scale).
_Y_METRICS = {"lf-psnr": M.lf_psnr, "hf-corr": M.hf_corr, "hf-ratio": M.hf_ratio}


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
            if (hr.shape[0] // scale, hr.shape[1] // scale) != lr.shape[:2]:
                # a smaller LR (say an x8 LR named x4) would score a crop of the HR, silently
                raise ValueError(f"{lp} is {lr.shape[1]}x{lr.shape[0]}, but {p} ({hr.shape[1]}x{hr.shape[0]}) "
                                 f"at x{scale} needs an LR of {hr.shape[1] // scale}x{hr.shape[0] // scale}: "
                                 "is the LR folder for another scale?")
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
                       autocast_bf16: bool = False, *, policy=None) -> Upscaler:
    """Run `model` (already on `device`, in eval mode) on the whole LR image, through the inference
    core (`inference.upscale_tensor`: padded to the model's input multiple, so an x2 RRDBNet takes
    odd sizes such as Set14's comic 125x180).

    fp32 unless autocast_bf16 (with the core's fp32 fallback on NaN/Inf), or as `policy` says (a
    runtime.InferencePolicy: the dtype and memory format `superres upscale` uses for a precision). A gray LR is replicated to
    3 channels for RGB models; the output is clamped to [0, 1] and rounded to uint8 like an image file.
    """
    from ..inference.core import tensor_to_uint8, upscale_tensor

    device = torch.device(device)
    in_ch = int(getattr(model, "hparams", {}).get("num_in_ch", 3))
    amp_dtype = torch.bfloat16 if autocast_bf16 else None
    channels_last = False
    if policy is not None:
        amp_dtype, channels_last = policy.amp_dtype, policy.channels_last
        if channels_last:
            model = model.to(memory_format=torch.channels_last)

    def run(lr: np.ndarray) -> np.ndarray:
        arr = lr
        if arr.ndim == 2 and in_ch == 3:
            arr = np.repeat(arr[..., None], 3, axis=2)
        elif arr.ndim == 3 and in_ch == 1:
            arr = np.round(M.rgb_to_gray(arr)).astype(np.uint8)
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
        x = (x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]).float() / 255.0   # (1, C, H, W)
        y = tensor_to_uint8(upscale_tensor(model, x, amp_dtype=amp_dtype, channels_last=channels_last))
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
        elif m in _Y_METRICS:
            out[m] = _Y_METRICS[m](sr, pair.hr, scale)
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
