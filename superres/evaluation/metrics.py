"""Image quality metrics computed the way SR papers compute them.

PSNR and SSIM follow the MATLAB protocol behind the published tables: the HR image cropped to a
multiple of the scale, the SR output rounded to uint8, the BT.601 luma (Y in [16, 235]) kept in
float64, `scale` pixels shaved from every border and SSIM with an 11x11 Gaussian (sigma 1.5) over
the valid region. A grayscale image is its own Y.

LF-PSNR, HF-CORR and HF-RATIO split the comparison by frequency on the same prepared Y images: PSNR
after a Gaussian low-pass (sigma 2 HR pixels), and the correlation and standard-deviation ratio of
the high-pass residuals y - G(y) (sigma 1 HR pixel). The Gaussian is scipy.ndimage.gaussian_filter's
(truncate 4, mode 'reflect'), implemented here in numpy.

NIQE (Mittal et al., "Making a completely blind image quality analyzer") reproduces the reference
MATLAB release and BasicSR's port of it, so numbers are comparable with published NIQE columns.

LPIPS (Zhang et al.) needs two files from the user: a torchvision-format backbone state dict and
the LPIPS linear heads. Nothing is ever downloaded.

Runtime dependencies are numpy, torch and pillow only.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.resize import imresize

log = logging.getLogger(__name__)

__all__ = ["to_uint8", "rgb_to_y", "rgb_to_gray", "psnr", "ssim", "gaussian_blur", "lf_psnr", "hf_corr",
           "hf_ratio", "NiqeParams", "load_niqe_params", "niqe", "LPIPS", "load_lpips", "lpips"]

# BT.601 "studio swing" luma from RGB in [0, 1], as MATLAB's rgb2ycbcr; they sum to 219.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# image preparation

def to_uint8(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """An image as HxW or HxWxC uint8, the form every published number was computed from.

    numpy uint8 is returned as is; other numpy dtypes are read on the 0..255 scale; a torch tensor
    (C, H, W) or (1, C, H, W) is read on the 0..1 scale. Floats are clamped and rounded.
    """
    if isinstance(img, torch.Tensor):
        t = img.detach()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected a single image, got a batch of shape {tuple(t.shape)}")
            t = t[0]
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        arr = t.to("cpu", torch.float64).numpy() * 255.0
    else:
        arr = np.asarray(img)
        if arr.dtype == np.uint8:
            return arr
        arr = arr.astype(np.float64)
    arr = np.clip(np.floor(arr + 0.5), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return arr


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 in float64, not rounded.

    A 2-D (or single-channel) image is already luma and is returned unchanged as float64.
    """
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return arr.astype(np.float64)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {arr.shape}")
    return 16.0 + arr[..., :3].astype(np.float64) @ _Y_WEIGHTS / 255.0


def rgb_to_gray(img: np.ndarray) -> np.ndarray:
    """Full-range luma 0.299 R + 0.587 G + 0.114 B in float64; a 2-D image is returned as float64.

    This is the BT.601 Y without the studio-swing offset and scale (the weights / 219 sum to 1), so
    an RGB output can be scored against a gray reference, which is its own Y.
    """
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return arr.astype(np.float64)
    return arr[..., :3].astype(np.float64) @ (_Y_WEIGHTS / 219.0)


def _is_gray(a: np.ndarray) -> bool:
    return a.ndim == 2


def _crop_to(hr: np.ndarray, sr: np.ndarray, scale: int) -> np.ndarray:
    h, w = hr.shape[:2]
    hr = hr[: h - h % scale, : w - w % scale]
    if hr.shape[:2] != sr.shape[:2]:
        raise ValueError(f"SR image is {sr.shape[1]}x{sr.shape[0]} but the HR image cropped to a multiple "
                         f"of the scale {scale} is {hr.shape[1]}x{hr.shape[0]}; they must match")
    return hr


def _shave(a: np.ndarray, border: int) -> np.ndarray:
    if border <= 0:
        return a
    if min(a.shape[:2]) <= 2 * border:
        raise ValueError(f"image {a.shape[1]}x{a.shape[0]} is too small to shave {border} px per border")
    return a[border:-border, border:-border]


def prepare_pair(sr, hr, scale: int = 1, *, shave: int | None = None,
                 y_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(sr, hr) as float64 arrays ready for PSNR/SSIM: uint8-rounded, cropped, Y (or RGB), shaved."""
    sr8, hr8 = to_uint8(sr), to_uint8(hr)
    hr8 = _crop_to(hr8, sr8, scale)
    border = scale if shave is None else shave
    if y_channel:
        if _is_gray(hr8) != _is_gray(sr8):
            # A gray image is its own Y; bring the colour one onto that scale.
            a, b = rgb_to_gray(sr8), rgb_to_gray(hr8)
        else:
            a, b = rgb_to_y(sr8), rgb_to_y(hr8)
    else:
        a, b = sr8.astype(np.float64), hr8.astype(np.float64)
        if a.ndim != b.ndim:
            a, b = [x if x.ndim == 3 else np.repeat(x[..., None], 3, axis=2) for x in (a, b)]
            a, b = a[..., :3], b[..., :3]
    return _shave(a, border), _shave(b, border)


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM

def psnr(sr, hr, scale: int = 1, *, shave: int | None = None, y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB (peak 255); inf for identical images.

    `scale` crops HR to a multiple of it and is the default number of border pixels shaved.
    """
    a, b = prepare_pair(sr, hr, scale, shave=shave, y_channel=y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 / mse)


@lru_cache(maxsize=4)
def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    # fspecial('gaussian') is separable: the normalised 2-D window is the outer product of this.
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    k = len(g)
    h, w = img.shape[:2]
    rows = sum(g[i] * img[i:h - k + 1 + i] for i in range(k))
    return sum(g[i] * rows[:, i:w - k + 1 + i] for i in range(k))


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gaussian_1d(11, 1.5)
    if min(a.shape) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after shaving, got {a.shape[1]}x{a.shape[0]}")
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a ** 2
    var_b = _filter_valid(b * b, g) - mu_b ** 2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim(sr, hr, scale: int = 1, *, shave: int | None = None, y_channel: bool = True) -> float:
    """Structural similarity (Wang et al. 2004) on the 0..255 scale; RGB is the mean over channels."""
    a, b = prepare_pair(sr, hr, scale, shave=shave, y_channel=y_channel)
    if a.ndim == 2:
        return _ssim_plane(a, b)
    return float(np.mean([_ssim_plane(a[..., c], b[..., c]) for c in range(a.shape[2])]))


# ---------------------------------------------------------------------------------------------
# Frequency-split metrics: LF-PSNR, HF-CORR, HF-RATIO

# A residual whose standard deviation is below this (in grey levels) counts as flat: the Gaussian of
# a constant image differs from it only by float rounding (~1e-13), never by a real detail.
_FLAT_STD = 1e-9


@lru_cache(maxsize=8)
def _gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
    # scipy.ndimage's kernel: exp(-x^2 / (2 sigma^2)) for |x| <= int(truncate * sigma + 0.5), normalised.
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 / (float(sigma) ** 2) * x * x)
    return g / g.sum()


def _reflect_index(n: int, radius: int) -> np.ndarray:
    # scipy's 'reflect' (d c b a | a b c d | d c b a), repeated for any radius: period 2n.
    idx = np.mod(np.arange(-radius, n + radius), 2 * n)
    return np.where(idx >= n, 2 * n - 1 - idx, idx)


def gaussian_blur(img: np.ndarray, sigma: float, *, truncate: float = 4.0) -> np.ndarray:
    """Gaussian low-pass of the two spatial axes of an HxW or HxWxC image, in float64.

    The same result as `scipy.ndimage.gaussian_filter(img, sigma, mode='reflect', truncate=truncate)`
    on a 2-D float image (per channel for HxWxC): a separable kernel of radius
    int(truncate * sigma + 0.5), borders mirrored including the edge pixel (d c b a | a b c d).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    out = np.asarray(img, dtype=np.float64)
    if out.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {out.shape}")
    g = _gaussian_taps(float(sigma), float(truncate))
    radius = (len(g) - 1) // 2
    for axis in (0, 1):
        a = np.moveaxis(out, axis, 0)
        n = a.shape[0]
        padded = a[_reflect_index(n, radius)]
        acc = np.zeros_like(a)
        for k, w in enumerate(g):
            acc += w * padded[k:k + n]
        out = np.moveaxis(acc, 0, axis)
    return out


def lf_psnr(sr, hr, scale: int = 1, *, shave: int | None = None, y_channel: bool = True,
            sigma: float = 2.0) -> float:
    """PSNR in dB (peak 255) of the low frequencies: both images Gaussian-blurred (sigma 2 HR pixels).

    The pair is prepared as for `psnr` (uint8, HR cropped to a multiple of `scale`, Y, `scale`
    pixels shaved) and the shaved images are then filtered (`gaussian_blur`, mirrored borders), so
    the shaved border never leaks into the score. inf for identical images. A high LF-PSNR with a
    low PSNR means the model keeps colours and shapes and differs only in fine texture.
    """
    a, b = prepare_pair(sr, hr, scale, shave=shave, y_channel=y_channel)
    mse = float(np.mean((gaussian_blur(a, sigma) - gaussian_blur(b, sigma)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 / mse)


def _hf_residuals(sr, hr, scale: int, shave: int | None, y_channel: bool,
                  sigma: float) -> tuple[np.ndarray, np.ndarray]:
    a, b = prepare_pair(sr, hr, scale, shave=shave, y_channel=y_channel)
    return a - gaussian_blur(a, sigma), b - gaussian_blur(b, sigma)


def hf_corr(sr, hr, scale: int = 1, *, shave: int | None = None, y_channel: bool = True,
            sigma: float = 1.0) -> float:
    """Pearson correlation of the high-pass residuals r = y - G_sigma(y) (sigma 1 HR pixel) of SR and HR.

    Prepared and filtered as `lf_psnr` (shaved Y, then filtered). 1.0 when SR's fine detail is HR's
    (up to gain), about 0 for detail unrelated to HR (invented texture, noise). If either residual
    is flat (zero variance: a constant image) the correlation is undefined and 0.0 is returned.
    """
    ra, rb = _hf_residuals(sr, hr, scale, shave, y_channel, sigma)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    if ra.std() < _FLAT_STD or rb.std() < _FLAT_STD:
        return 0.0
    saa, sbb = float(np.sum(ra * ra)), float(np.sum(rb * rb))
    return float(np.clip(float(np.sum(ra * rb)) / math.sqrt(saa * sbb), -1.0, 1.0))


def hf_ratio(sr, hr, scale: int = 1, *, shave: int | None = None, y_channel: bool = True,
             sigma: float = 1.0) -> float:
    """std(r_SR) / std(r_HR) of the high-pass residuals of `hf_corr`: how much fine detail SR has.

    1 = as much as the original, below 1 = smoother (bicubic, a PSNR-trained model), above 1 = more
    (sharpening, noise, GAN texture). nan if HR's residual is flat (a constant image); 0.0 if only
    SR's is.
    """
    ra, rb = _hf_residuals(sr, hr, scale, shave, y_channel, sigma)
    sa, sb = float(ra.std()), float(rb.std())
    if sb < _FLAT_STD:
        return float("nan")
    return 0.0 if sa < _FLAT_STD else sa / sb


# ---------------------------------------------------------------------------------------------
# NIQE

NIQE_PARAMS_ENV = "SUPERRES_NIQE_PARAMS"
DEFAULT_NIQE_PARAMS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "niqe_pris_params.npz"


@dataclass(frozen=True)
class NiqeParams:
    """The pristine-image model: mean (36,) and covariance (36, 36) of the features, MSCN window."""
    mu: np.ndarray
    cov: np.ndarray
    window: np.ndarray
    path: str = ""


def load_niqe_params(path: str | os.PathLike | None = None) -> NiqeParams:
    """Load the pristine model from `path`, else $SUPERRES_NIQE_PARAMS, else the shared data folder."""
    candidates = [path] if path else []
    if not candidates and os.environ.get(NIQE_PARAMS_ENV):
        candidates = [os.environ[NIQE_PARAMS_ENV]]
    if not candidates:
        candidates = [DEFAULT_NIQE_PARAMS]
    p = Path(candidates[0]).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"NIQE needs the pristine-image model niqe_pris_params.npz (keys mu_pris_param, cov_pris_param, "
            f"gaussian_window; it ships with BasicSR as basicsr/metrics/niqe_pris_params.npz), and {p} does "
            f"not exist. Pass its path with --niqe-params PATH (or niqe(..., params=PATH)), set "
            f"{NIQE_PARAMS_ENV}=PATH, or put it at {DEFAULT_NIQE_PARAMS}.")
    return _load_niqe_params_cached(str(p.resolve()))


@lru_cache(maxsize=4)
def _load_niqe_params_cached(path: str) -> NiqeParams:
    with np.load(path) as d:
        missing = {"mu_pris_param", "cov_pris_param", "gaussian_window"} - set(d.files)
        if missing:
            raise ValueError(f"{path}: not a NIQE parameter file, missing keys {sorted(missing)} "
                             f"(found {d.files})")
        mu = np.asarray(d["mu_pris_param"], dtype=np.float64).reshape(-1)
        cov = np.asarray(d["cov_pris_param"], dtype=np.float64)
        window = np.asarray(d["gaussian_window"], dtype=np.float64)
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f"{path}: expected a (36,) mean and (36, 36) covariance, got {mu.shape}, {cov.shape}")
    return NiqeParams(mu, cov, window, path)


@lru_cache(maxsize=1)
def _gamma_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # The reference fits the GGD shape by nearest match on this grid of 9801 shapes.
    shapes = np.arange(0.2, 10.001, 0.001)
    g1 = np.array([math.gamma(1.0 / a) for a in shapes])
    g2 = np.array([math.gamma(2.0 / a) for a in shapes])
    g3 = np.array([math.gamma(3.0 / a) for a in shapes])
    ratio = g2 * g2 / (g1 * g3)
    return shapes, ratio, np.stack([g1, g2, g3])


def _aggd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian fit per row of (B, N): shape, left and right scale, mean.

    The moments are taken in x's dtype (see `niqe` on float32). A row with no negative (or no
    positive) value gives NaN scales, as the reference does; such blocks are later left out of the
    covariance.
    """
    shapes, ratio, (g1, g2, g3) = _gamma_table()
    dt = x.dtype.type
    neg, pos = x < 0, x > 0
    sq = x * x
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(np.where(neg, sq, 0).sum(1) / neg.sum(1).astype(dt))
        right = np.sqrt(np.where(pos, sq, 0).sum(1) / pos.sum(1).astype(dt))
        gh = left / right
        rhat = np.abs(x).mean(1) ** 2 / sq.mean(1)
        rnorm = rhat * (gh ** 3 + 1) * (gh + 1) / (gh ** 2 + 1) ** 2
        # argmin over NaN rows returns 0, the first grid shape, like the reference.
        idx = np.argmin((ratio[None, :] - rnorm.astype(np.float64)[:, None]) ** 2, axis=1)
        k = np.sqrt(g1[idx] / g3[idx])
        beta_l, beta_r = left * k, right * k
        mean = (beta_r - beta_l) * g2[idx] / g1[idx]
    return shapes[idx], beta_l, beta_r, mean


def _block_features(mscn: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """(n_blocks, 18) features of the MSCN image cut into bh x bw blocks."""
    h, w = mscn.shape
    nh, nw = h // bh, w // bw
    blocks = mscn[: nh * bh, : nw * bw].reshape(nh, bh, nw, bw).transpose(0, 2, 1, 3).reshape(-1, bh, bw)
    feats = []
    alpha, bl, br, _ = _aggd(blocks.reshape(len(blocks), -1))
    feats += [alpha, (bl + br) / 2]
    # Products with the right, lower, lower-right and lower-left neighbour (wrapping inside the
    # block, as the reference's circular shift does).
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        prod = blocks * np.roll(blocks, (dy, dx), axis=(1, 2))
        alpha, bl, br, mean = _aggd(prod.reshape(len(blocks), -1))
        feats += [alpha, mean, bl, br]
    return np.stack(feats, axis=1).astype(np.float64)


def _filter_replicate(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    # imfilter(..., 'replicate') with a symmetric window, as a sum of shifted copies. Accumulated in
    # float64 and returned in img's dtype, as scipy.ndimage.convolve does for BasicSR.
    kh, kw = window.shape
    ph, pw = kh // 2, kw // 2
    pad = np.pad(img.astype(np.float64), ((ph, kh - 1 - ph), (pw, kw - 1 - pw)), mode="edge")
    h, w = img.shape
    out = np.zeros((h, w), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            out += window[i, j] * pad[i:i + h, j:j + w]
    return out.astype(img.dtype)


def _mscn(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    # In float32 the variance E[x^2] - mu^2 loses its low digits in flat regions, so sigma is not
    # ~0 there; BasicSR's published numbers carry that, hence the dtype is kept on purpose.
    one = img.dtype.type(1)
    mu = _filter_replicate(img, window)
    sigma = np.sqrt(np.abs(_filter_replicate(img * img, window) - mu * mu))
    return (img - mu) / (sigma + one)


def niqe_features(y: np.ndarray, window: np.ndarray, block_size: int = 96,
                  dtype: type = np.float32) -> np.ndarray:
    """(n_blocks, 36) NIQE features of a luma image on the 0..255 scale (both scales side by side)."""
    h, w = y.shape
    nh, nw = h // block_size, w // block_size
    if nh * nw < 2:
        raise ValueError(f"NIQE needs at least two {block_size}x{block_size} blocks; the image is {w}x{h}")
    img = y[: nh * block_size, : nw * block_size].astype(dtype)
    f1 = _block_features(_mscn(img, window), block_size, block_size)
    # MATLAB bicubic by 0.5 with antialiasing, on the float image: not rounded.
    half = (imresize(img.astype(np.float64) / 255.0, 0.5) * 255.0).astype(dtype)
    f2 = _block_features(_mscn(half, window), block_size // 2, block_size // 2)
    return np.concatenate([f1, f2], axis=1)


def niqe(img, *, shave: int = 0, params: NiqeParams | str | os.PathLike | None = None,
         y_channel: bool = True, block_size: int = 96, dtype: type = np.float32) -> float:
    """NIQE of one image (lower is more natural), as the MATLAB release and BasicSR compute it.

    `img` is uint8 HxW / HxWx3 (or anything `to_uint8` takes). The score is computed on the BT.601
    Y channel (y_channel=False: full-range luma 0.299 R + 0.587 G + 0.114 B), with `shave` pixels cut
    from every border and the luma rounded to integers as the reference does; a gray image is taken
    as R = G = B, as the reference reads it (its Y is 16 + 219/255 v; used as is with
    y_channel=False). `params` is a NiqeParams, a path, or None for `load_niqe_params()`.

    dtype=float32 (default) follows BasicSR's arithmetic, which produced the NIQE columns of recent
    papers; float64 follows MATLAB's. They differ by about 0.01 on a dataset mean.
    """
    if not isinstance(params, NiqeParams):
        params = load_niqe_params(params)
    arr = to_uint8(img)
    if arr.ndim == 2 and y_channel:
        # The reference reads every file as 3-channel (a gray file as R = G = B) and takes the
        # studio-swing Y of it, 16 + 219/255 v, not v itself; NIQE is not invariant to that.
        y = rgb_to_y(np.repeat(arr[..., None], 3, axis=2))
    elif arr.ndim == 2:
        y = arr.astype(np.float64)
    elif y_channel:
        y = rgb_to_y(arr)
    else:
        y = rgb_to_gray(arr)
    y = np.round(_shave(y, shave))
    feats = niqe_features(y, params.window, block_size, dtype)
    mu = np.nanmean(feats, axis=0)
    complete = feats[~np.isnan(feats).any(axis=1)]
    if len(complete) < 2:
        raise ValueError(f"NIQE: fewer than two {block_size}x{block_size} blocks have finite features "
                         "(is the image flat?)")
    cov = np.cov(complete, rowvar=False)
    d = params.mu - mu
    inv = np.linalg.pinv((params.cov + cov) / 2)
    return float(np.sqrt(d @ inv @ d))


# ---------------------------------------------------------------------------------------------
# LPIPS

# torchvision layer layouts; LPIPS taps the ReLU after the listed conv indices.
_ALEX_LAYERS: list[tuple[int, int, int, int, int]] = [  # (in, out, kernel, stride, padding)
    (3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
_ALEX_POOL_AFTER = {0, 1}
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_VGG16_TAPS = (3, 8, 15, 22, 29)   # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_ALEX_TAPS = (1, 4, 7, 9, 11)      # relu1 .. relu5


def _alexnet_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (cin, cout, k, s, p) in enumerate(_ALEX_LAYERS):
        layers += [nn.Conv2d(cin, cout, k, s, p), nn.ReLU(inplace=False)]
        if i in _ALEX_POOL_AFTER:
            layers.append(nn.MaxPool2d(3, 2))
    layers.append(nn.MaxPool2d(3, 2))
    return nn.Sequential(*layers)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, 1, 1), nn.ReLU(inplace=False)]
            cin = int(v)
    return nn.Sequential(*layers)


_BACKBONES = {"alex": (_alexnet_features, _ALEX_TAPS, (64, 192, 384, 256, 256)),
              "vgg": (_vgg16_features, _VGG16_TAPS, (64, 128, 256, 512, 512))}


class _LinHead(nn.Module):
    # Named `model` with the 1x1 conv at index 1 so the official head keys (linK.model.1.weight) load.
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(p=0.0), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """Learned perceptual distance: unit-normalised backbone features, squared differences,
    weighted per channel by the linear heads, averaged over space and summed over layers.

    Inputs are (B, 3, H, W) in [0, 1]; the output is (B,). Weights must be loaded by the caller
    (see `load_lpips`); a fresh instance is randomly initialised.
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in _BACKBONES:
            raise ValueError(f"unknown LPIPS backbone {net!r}; allowed values: {sorted(_BACKBONES)}")
        build, taps, channels = _BACKBONES[net]
        self.net = net
        self.features = build()
        self.taps = taps
        for k, c in enumerate(channels):
            self.add_module(f"lin{k}", _LinHead(c))
        # Input normalisation of the LPIPS release, for inputs in [-1, 1].
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        x = ((x * 2 - 1) - self.shift) / self.scale
        last = max(self.taps)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            if i == last:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0
        for k, (fx, fy) in enumerate(zip(self._taps(x), self._taps(y))):
            total = total + getattr(self, f"lin{k}")((fx - fy) ** 2).mean(dim=(2, 3))
        return total.view(-1)  # (B,)


def _features_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    # Accept a whole torchvision model (features.N.*, classifier.* ignored) or its features only.
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if feats:
        return feats
    if state and all(k.split(".")[0].isdigit() for k in state):
        return dict(state)
    raise ValueError(f"{path}: no torchvision backbone weights found (expected keys like 'features.0.weight'; "
                     f"first keys: {sorted(state)[:6]})")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from ..inference.weights import read_state_dict

    state, _ = read_state_dict(path)
    return state


def load_lpips(backbone_path: str | os.PathLike | None, lin_path: str | os.PathLike | None,
               net: str = "alex") -> LPIPS:
    """LPIPS with the user's weight files; a missing file is an error, never a download.

    `backbone_path`: torchvision AlexNet/VGG16 state dict (.pth or .safetensors).
    `lin_path`: the LPIPS v0.1 linear heads for the same backbone (keys lin0.model.1.weight ...).
    """
    for what, p in (("backbone", backbone_path), ("linear-head", lin_path)):
        if not p or not Path(p).expanduser().is_file():
            raise FileNotFoundError(
                f"LPIPS needs two weight files and the {what} file {p!r} is missing. Supply the torchvision "
                f"{'AlexNet' if net == 'alex' else 'VGG16'} weights (--lpips-backbone PATH) and the LPIPS "
                f"v0.1 '{net}' linear heads (--lpips-lin PATH); superres never downloads them.")
    model = LPIPS(net)
    bpath, lpath = Path(backbone_path).expanduser(), Path(lin_path).expanduser()
    model.features.load_state_dict(_features_state(_read_tensors(bpath), bpath), strict=True)
    lin = {k.replace("module.", ""): v for k, v in _read_tensors(lpath).items()}
    lin_keys = {k for k in model.state_dict() if k.startswith("lin")}
    if set(lin) != lin_keys:
        raise ValueError(f"{lpath}: expected the LPIPS linear-head keys {sorted(lin_keys)}, got {sorted(lin)[:8]}")
    for k in range(len(model.taps)):
        head = getattr(model, f"lin{k}")
        head.load_state_dict({n[len(f"lin{k}."):]: v for n, v in lin.items() if n.startswith(f"lin{k}.")},
                             strict=True)
    return model.eval()


def lpips(sr, hr, model: LPIPS, device: str | torch.device = "cpu") -> float:
    """LPIPS distance between two RGB images (uint8 arrays or [0, 1] tensors); 0 for identical ones."""
    def as_tensor(img) -> torch.Tensor:
        arr = to_uint8(img)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1)[None].float() / 255.0

    a, b = as_tensor(sr), as_tensor(hr)
    if a.shape != b.shape:
        raise ValueError(f"LPIPS needs images of the same size, got {tuple(a.shape)} and {tuple(b.shape)}")
    model = model.to(device)
    with torch.inference_mode():
        return float(model(a.to(device), b.to(device))[0])
