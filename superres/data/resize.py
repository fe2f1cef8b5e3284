"""MATLAB's imresize (bicubic, antialiased), exact to the last bit on uint8: the benchmark LR of
the paper protocol, the clean training LR, and the resize the metrics use.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["imresize", "bicubic_weights", "degrade_bicubic"]


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


@lru_cache(maxsize=128)
def bicubic_weights(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """Dense (out_len, in_len) float64 matrix M with out = M @ in along one dimension.

    Built from MATLAB's `contributions()`: the same sample positions, kernel width, normalisation
    and symmetric ("mirror") padding, folded into a dense matrix so a pass is one matmul.
    """
    kernel_width = 4.0
    shrink = scale < 1 and antialias
    if shrink:
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)               # output pixel centre in input coordinates
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]       # 1-based input indices
    dist = u[:, None] - idx
    w = scale * _cubic(scale * dist) if shrink else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    # MATLAB's symmetric padding: index sequence 1..n, n..1 repeated.
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_len), taps), src.ravel()), w.ravel())
    return mat


def _out_size(h: int, w: int, scale: float | None, size: tuple[int, int] | None) -> tuple[int, int, float, float]:
    if size is not None:
        oh, ow = int(size[0]), int(size[1])
        return oh, ow, oh / h, ow / w
    if scale is None or scale <= 0:
        raise ValueError(f"imresize: give a positive scale or size, got scale={scale}, size={size}")
    return int(math.ceil(h * scale)), int(math.ceil(w * scale)), float(scale), float(scale)


def _order(sh: float, sw: float) -> tuple[str, str]:
    # MATLAB resizes the dimension with the smallest scale first (rows first on a tie).
    return ("h", "w") if sh <= sw else ("w", "h")


def imresize(img, scale: float | None = None, *, size: tuple[int, int] | None = None,
             antialias: bool = True, quantize: bool | None = None):
    """MATLAB-compatible bicubic resize.

    numpy: HW or HWC array. uint8 input -> uint8 output, rounded after each pass like MATLAB;
        uint16 likewise; float input -> float64 output, not rounded.
    torch: (..., H, W) float tensor on any device, e.g. a (B, C, H, W) batch. With quantize=True the
        values are taken as [0, 1] images from uint8 files and rounded to multiples of 1/255 after
        each pass, which gives exactly the numpy uint8 result.
    `scale` multiplies both sides (0.25 for x4 down); or give `size=(out_h, out_w)`.
    """
    if isinstance(img, torch.Tensor):
        return _imresize_torch(img, scale, size, antialias, bool(quantize))
    arr = np.asarray(img)
    if arr.ndim not in (2, 3):
        raise ValueError(f"imresize: expected an HW or HWC array, got shape {arr.shape}")
    h, w = arr.shape[:2]
    oh, ow, sh, sw = _out_size(h, w, scale, size)
    integer = arr.dtype in (np.uint8, np.uint16)
    maxval = float(np.iinfo(arr.dtype).max) if integer else None
    do_round = integer if quantize is None else quantize
    out = arr.astype(np.float64)
    for dim in _order(sh, sw):
        if dim == "h":
            m = bicubic_weights(h, oh, sh, antialias)
            out = np.tensordot(m, out, axes=([1], [0]))
        else:
            m = bicubic_weights(w, ow, sw, antialias)
            out = np.moveaxis(np.tensordot(m, out, axes=([1], [1])), 0, 1)
        if do_round:
            out = np.clip(np.floor(out + 0.5), 0, maxval if maxval else 255.0)
    if integer:
        return out.astype(arr.dtype)
    return out


def _imresize_torch(x: torch.Tensor, scale, size, antialias: bool, quantize: bool) -> torch.Tensor:
    if x.ndim < 2:
        raise ValueError(f"imresize: expected a (..., H, W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"imresize: expected a float tensor, got {x.dtype}")
    h, w = x.shape[-2:]
    oh, ow, sh, sw = _out_size(h, w, scale, size)
    # float64 weights on CPU reproduce MATLAB to the last bit after rounding; float32 elsewhere.
    wdtype = torch.float64 if x.device.type == "cpu" else torch.float32
    # Quantized images are processed as exact integers 0..255, as MATLAB does with uint8.
    out = torch.round(x.to(wdtype) * 255.0) if quantize else x.to(wdtype)
    for dim in _order(sh, sw):
        if dim == "h":
            m = torch.from_numpy(bicubic_weights(h, oh, sh, antialias)).to(x.device, wdtype)
            out = torch.einsum("oh,...hw->...ow", m, out)
        else:
            m = torch.from_numpy(bicubic_weights(w, ow, sw, antialias)).to(x.device, wdtype)
            out = torch.einsum("ow,...hw->...ho", m, out)
        if quantize:
            out = torch.floor(out + 0.5).clamp_(0, 255)
    if quantize:
        out = out / 255.0
    return out.to(x.dtype)


def degrade_bicubic(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, C, H, W) batch in [0, 1] -> the benchmark LR: MATLAB bicubic x1/scale of 8-bit pixels.

    Equal to `imresize` of the uint8 images; H and W should be multiples of `scale`.
    """
    return imresize(hr, 1 / scale, quantize=True)
