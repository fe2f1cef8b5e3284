"""What an input image needs before it is upscaled: its noise level, JPEG quality and sharpness.

All measures work on the luma in 8-bit levels (BT.601 Y of RGB, or the gray plane), with numpy and
Pillow only (no torch), so `superres analyze` is fast and cheap to import.

  * noise_sigma: Immerkaer's fast noise estimate (J. Immerkaer, "Fast Noise Variance Estimation",
    1996) taken over the flattest blocks of the image only, so that edges and texture do not count
    as noise.
  * jpeg_quality: for a JPEG file, the IJG quality (1..100) whose scaled Annex K luminance table is
    closest to the file's own table.
  * jpeg_history: whether the pixels were ever JPEG-compressed on an 8x8 grid, read from the pixels
    alone (so a PNG decoded from a JPEG counts): JPEG stores each block's DCT coefficients as
    multiples of a quantizer, and after decoding they still sit near those multiples (within the
    +-0.5 rounding of the pixels), where the coefficients of a never-compressed image spread evenly.
    For each of the 15 lowest AC frequencies the largest step whose multiples the coefficients
    cluster on is found; most frequencies with a step means True, and the steps against the IJG
    tables give the quality (jpeg_quality, jpeg_source "8x8 DCT coefficients"). None when the image
    is too small or too flat to tell. A JPEG shrunk or resized after decoding loses the grid, and a
    JPEG saved at quality 95 and up (quantizers of 1 and 2) can pass for clean.
  * blockiness: the mean luma step across 8x8 block boundaries over the mean step elsewhere (1.0 =
    no block grid), a second sign of JPEG history (it also sees heavy blocking after mild filtering).
    The grid is taken as aligned with the image's top-left corner.
  * detail: the standard deviation of the luma's Laplacian, in levels; lower means blurrier.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.dct import block_dct_matrix
from ..io.images import read_image

__all__ = ["analyze_image", "analyze_file", "describe", "luma", "estimate_noise", "jpeg_quality_from_tables",
           "ijg_luminance_table", "blockiness", "detail", "IJG_LUMINANCE", "jpeg_grid_steps", "jpeg_history"]

# JPEG spec Annex K.1, table K.1 (luminance), in natural (row-major) order
IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.int64)

NOISE_BLOCK = 16            # block side for the flat-region search
NOISE_FLAT_FRACTION = 0.2   # the share of blocks, flattest first, that the noise is measured on
_IMMERKAER = math.sqrt(math.pi / 2) / 6


def luma(pixels: np.ndarray) -> np.ndarray:
    """(H, W) float32 luma in 8-bit levels of (H, W) or (H, W, C) pixels (uint8, uint16 or float in [0, 1]).

    16-bit samples are cut to 8 bits (>> 8); of more than 3 channels the first 3 are RGB.
    """
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or a.size == 0:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return a.astype(np.float32)
    if a.shape[2] < 3:   # gray + something: the gray plane
        return a[..., 0].astype(np.float32)
    rgb = a[..., :3].astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _immerkaer_abs(y: np.ndarray) -> np.ndarray:
    """|y * [[1,-2,1],[-2,4,-2],[1,-2,1]]| on the valid (H-2, W-2) region."""
    # the mask is the outer product of [1, -2, 1] with itself: two separable passes
    r = y[:, :-2] - 2.0 * y[:, 1:-1] + y[:, 2:]
    c = r[:-2] - 2.0 * r[1:-1] + r[2:]
    return np.abs(c)


def estimate_noise(y: np.ndarray, *, block: int = NOISE_BLOCK, fraction: float = NOISE_FLAT_FRACTION) -> float | None:
    """Gaussian noise std (levels) of a luma plane: Immerkaer's estimate over the flattest blocks.

    The image is cut into `block` x `block` tiles; those with the lowest gradient energy (measured on
    a 2x2-averaged copy, so the noise itself sways the ranking less) are the flat regions, and the
    estimate pools the Immerkaer response over the lowest `fraction` of them. None for an image
    under 3x3 pixels.
    """
    h, w = y.shape
    if h < 3 or w < 3:
        return None
    conv = _immerkaer_abs(y)                       # (h-2, w-2); conv[i, j] is centred on y[i+1, j+1]
    ch, cw = conv.shape
    nby, nbx = ch // block, cw // block
    if nby * nbx < 4:
        return float(_IMMERKAER * conv.mean())
    conv_blocks = conv[:nby * block, :nbx * block].reshape(nby, block, nbx, block).mean(axis=(1, 3))
    # gradient energy of the same tiles, on the luma averaged 2x2 (halves the noise std)
    inner = y[1:1 + nby * block, 1:1 + nbx * block]
    half = 0.25 * (inner[0::2, 0::2] + inner[1::2, 0::2] + inner[0::2, 1::2] + inner[1::2, 1::2])
    gx = np.zeros_like(half)
    gy = np.zeros_like(half)
    gx[:, :-1] = np.diff(half, axis=1) ** 2
    gy[:-1, :] = np.diff(half, axis=0) ** 2
    b2 = block // 2
    energy = (gx + gy).reshape(nby, b2, nbx, b2).mean(axis=(1, 3))
    n = max(4, int(round(fraction * energy.size)))
    flat = np.argpartition(energy.ravel(), n - 1)[:n]
    return float(_IMMERKAER * conv_blocks.ravel()[flat].mean())


def ijg_luminance_table(quality: int) -> np.ndarray:
    """The 64 luminance quantizers (natural order) libjpeg / Pillow write for `quality` (1..100)."""
    q = min(100, max(1, int(quality)))
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((IJG_LUMINANCE * scale + 50) // 100, 1, 255)


_IJG_TABLES = np.stack([ijg_luminance_table(q) for q in range(1, 101)])   # (100, 64)


def jpeg_quality_from_tables(tables) -> int | None:
    """The IJG quality whose luminance table is closest (L1) to table 0 of `tables`.

    `tables` is Pillow's `Image.quantization` ({table id: 64 values in natural order}) or a
    sequence whose first item is the luminance table. None when there is no usable table.
    """
    if tables is None:
        return None
    lum = tables.get(0, next(iter(tables.values()), None)) if isinstance(tables, dict) else \
        (tables[0] if len(tables) else None)
    if lum is None:
        return None
    t = np.asarray(list(lum), dtype=np.int64).ravel()
    if t.size != 64:
        return None
    t = np.clip(t, 1, 255)
    dist = np.abs(_IJG_TABLES - t).sum(axis=1)
    return int(np.argmin(dist)) + 1


# row-major flattened 8x8 blocks @ _DCT64.T = their JPEG DCT coefficients
_DCT64 = block_dct_matrix()
# the 15 lowest AC frequencies (zigzag positions 1..15), as indices into a row-major 8x8 block: they
# have the smallest quantizers and the most non-zero coefficients, so their steps show first
_ZIGZAG = sorted(((i, j) for i in range(8) for j in range(8)),
                 key=lambda p: (p[0] + p[1], p[1] if (p[0] + p[1]) % 2 else p[0]))
JPEG_FREQS = tuple(i * 8 + j for i, j in _ZIGZAG[1:16])
_MAX_STEP = 64            # quantizers above this (quality < ~15 at these frequencies) are not looked for
_MIN_COEFFS = 40          # non-zero multiples a step needs before its clustering counts
_CLUSTER = 0.5            # mean cos(2 pi c / step) above this: the coefficients sit on the step's multiples
_MAX_BLOCKS = 4096        # blocks examined (spread evenly over the image); enough for a stable answer
_PHASE_CONTRAST = 1.05    # a shifted grid is tried when its boundary steps beat the others' mean by this


def _block_coefficients(y: np.ndarray, oy: int = 0, ox: int = 0) -> np.ndarray:
    """(N, 64) DCT coefficients of the 8x8 blocks of `y` on the grid starting at (oy, ox)."""
    y = y[oy:, ox:]
    h, w = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    if h == 0 or w == 0:
        return np.zeros((0, 64))
    blocks = y[:h, :w].reshape(h // 8, 8, w // 8, 8).swapaxes(1, 2).reshape(-1, 8, 8)
    if len(blocks) > _MAX_BLOCKS:
        blocks = blocks[np.linspace(0, len(blocks) - 1, _MAX_BLOCKS).astype(np.int64)]
    return blocks.reshape(-1, 64).astype(np.float64) @ _DCT64.T


def jpeg_grid_steps(y: np.ndarray, oy: int = 0, ox: int = 0, *, coeffs: np.ndarray | None = None
                    ) -> list[int | None]:
    """For each of JPEG_FREQS: the largest quantizer step (2.._MAX_STEP) whose multiples the block
    DCT coefficients of luma `y` cluster on (None: no step, or too few non-zero coefficients).
    `coeffs`: the blocks' coefficients when already taken (_block_coefficients(y, oy, ox)).

    A quantized coefficient is n * step + e, e the small error the decoder's rounding adds, so
    cos(2 pi c / step) is near 1 for it; also for every divisor of the step, never for a larger
    one, so the search runs from large steps down. Coefficients under step / 2 (quantized to 0, or
    too small to say) are left out."""
    if coeffs is None:
        coeffs = _block_coefficients(y, oy, ox)
    out: list[int | None] = []
    for k in JPEG_FREQS:
        c = coeffs[:, k]
        mag = np.abs(c)
        found = None
        for step in range(_MAX_STEP, 1, -1):
            sel = c[mag > step / 2]
            if sel.size < _MIN_COEFFS:
                continue
            if float(np.cos(sel * (2 * np.pi / step)).mean()) > _CLUSTER:
                found = step
                break
        out.append(found)
    return out


def _grid_phase(y: np.ndarray) -> tuple[int, int]:
    """(row, column) offset of the 8x8 grid whose boundaries carry the largest luma steps; 0 on an
    axis where no phase stands out."""
    phases = []
    for d in (np.abs(np.diff(y, axis=0)).mean(axis=1), np.abs(np.diff(y, axis=1)).mean(axis=0)):
        n = (d.size // 8) * 8
        # d[j] is the step between j and j+1: a grid starting at offset o has boundaries at j = o - 1 (mod 8)
        per = d[:n].reshape(-1, 8).mean(axis=0) if n else np.zeros(8)
        top = int(np.argmax(per))
        rest = (per.sum() - per[top]) / 7
        phases.append((top + 1) % 8 if rest > 0 and per[top] > _PHASE_CONTRAST * rest else 0)
    return phases[0], phases[1]


def jpeg_history(y: np.ndarray) -> tuple[bool | None, int | None]:
    """(whether luma `y` was JPEG-compressed, the IJG quality its quantizers match or None).

    Tries the grid aligned with the top-left corner (JPEGs decoded and saved as they are) and the
    one the 8x8 luma steps point to (an image cropped after decoding); the first with a step at
    half or more of the frequencies that have enough non-zero coefficients wins. (None, None) when
    fewer than 5 frequencies have enough of them."""
    h, w = y.shape
    if h < 16 or w < 16:
        return None, None
    offsets = [(0, 0)]
    phase = _grid_phase(y)
    if phase != (0, 0):
        offsets.append(phase)
    best: list[int | None] | None = None
    readable = 0
    for oy, ox in offsets:
        coeffs = _block_coefficients(y, oy, ox)
        # a frequency can show a step only if enough of its coefficients are not (near) zero
        testable = int((np.count_nonzero(np.abs(coeffs[:, list(JPEG_FREQS)]) > 1.0, axis=0)
                        >= _MIN_COEFFS).sum()) if coeffs.size else 0
        readable = max(readable, testable)
        if testable < 5:
            continue
        steps = jpeg_grid_steps(y, oy, ox, coeffs=coeffs)
        if sum(s is not None for s in steps) * 2 >= testable:
            best = steps
            break
    if best is None:
        return (False if readable >= 5 else None), None
    idx = [i for i, s in enumerate(best) if s is not None]
    found = np.log(np.array([best[i] for i in idx], dtype=np.float64))
    tables = np.log(_IJG_TABLES[:, [JPEG_FREQS[i] for i in idx]].astype(np.float64))
    quality = int(np.argmin(np.abs(tables - found).sum(axis=1))) + 1
    return True, quality


def blockiness(y: np.ndarray, block: int = 8) -> float:
    """Mean |luma step| across `block`-aligned boundaries over the mean step elsewhere (1.0 = none)."""
    h, w = y.shape
    on_sum = off_sum = 0.0
    on_n = off_n = 0
    for d in (np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0)).T):
        # d[:, j] is the step between positions j and j+1; a boundary when j+1 is a multiple of block
        n = d.shape[1]
        if n < block:
            continue
        cols = d.sum(axis=0, dtype=np.float64)
        on = np.zeros(n, dtype=bool)
        on[block - 1::block] = True
        on_sum += cols[on].sum()
        off_sum += cols[~on].sum()
        on_n += int(on.sum()) * d.shape[0]
        off_n += int((~on).sum()) * d.shape[0]
    if not on_n or not off_n or off_sum <= 0:
        return 1.0
    return float((on_sum / on_n) / (off_sum / off_n))


def detail(y: np.ndarray) -> float | None:
    """Standard deviation (levels) of the 4-neighbour Laplacian of a luma plane; None under 3x3."""
    if y.shape[0] < 3 or y.shape[1] < 3:
        return None
    lap = (y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:]) - 4.0 * y[1:-1, 1:-1]
    return float(lap.std(dtype=np.float64))


def analyze_image(pixels: np.ndarray, *, jpeg_tables=None) -> dict:
    """Noise, JPEG quality, blockiness and detail of an (H, W) or (H, W, C) image.

    `jpeg_tables` is the file's quantization tables (Pillow's `Image.quantization`) when it was a
    JPEG; without them `jpeg_quality` is None.
    """
    y = luma(pixels)
    h, w = y.shape
    q = jpeg_quality_from_tables(jpeg_tables)
    history, grid_quality = jpeg_history(y)
    source = "quantization tables" if q is not None else None
    if q is None and grid_quality is not None:
        q, source = grid_quality, "8x8 DCT coefficients"
    noise = estimate_noise(y)
    det = detail(y)
    return {
        "width": int(w), "height": int(h),
        "noise_sigma": None if noise is None else round(noise, 3),
        # from the pixels alone, as the strength rule reads them: a JPEG file, the PNG decoded from
        # it and `superres eval`'s LR get the same answer (quality 95+ can leave no trace)
        "jpeg_history": history,
        "jpeg_quality": q,
        "jpeg_source": source,
        "blockiness": round(blockiness(y), 4),
        "detail": None if det is None else round(det, 3),
    }


def analyze_file(path: str | os.PathLike) -> dict:
    """`analyze_image` of an image file, plus its name; ValueError naming the file on bad input."""
    path = Path(path)
    img = read_image(path)   # ImageError (a ValueError) naming the file
    tables = None
    if img.format == "JPEG":
        try:
            with Image.open(path) as im:
                tables = getattr(im, "quantization", None)
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the JPEG quantization tables ({e})") from e
    out = {"file": str(path)}
    out.update(analyze_image(img.pixels, jpeg_tables=tables))
    return out


def describe(analysis: dict, strength: float | None = None, end: str | None = None) -> str:
    """One short line of an analysis (and the strength and blend end chosen from it), for logs and
    the web page."""
    parts = []
    if analysis.get("noise_sigma") is not None:
        parts.append(f"noise {analysis['noise_sigma']:.1f}")
    if analysis.get("jpeg_quality") is not None:
        approx = "~" if analysis.get("jpeg_source") == "8x8 DCT coefficients" else ""
        parts.append(f"JPEG quality {approx}{analysis['jpeg_quality']}")
    elif analysis.get("jpeg_history") is False:
        parts.append("no JPEG history")
    if analysis.get("blockiness") is not None:
        parts.append(f"blockiness {analysis['blockiness']:.2f}")
    if analysis.get("detail") is not None:
        parts.append(f"detail {analysis['detail']:.0f}")
    if strength is not None:
        parts.append(f"strength {strength:g}" + (f" from the {end} end" if end == "clean" else ""))
    return ", ".join(parts) or "no analysis"
