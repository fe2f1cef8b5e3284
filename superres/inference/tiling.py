"""Tiled forward with overlap and feathered blending, in memory bounded by the tile size.

The LR image is cut on a regular grid of cores; each tile reads `overlap` LR pixels beyond its core on
every side that has a neighbour, so two neighbours share a band 2*overlap wide. A tile's outputs near
its own cut edge are wrong (the network saw zero padding there instead of the neighbour's pixels), so
in each shared band the outer quarter on either side gets weight 0 and the middle half a smoothstep
ramp: the seam is blended over `overlap` LR pixels, and every pixel that counts was computed with at
least overlap/2 pixels of real context (exactly the untiled result when the network's receptive field
is no wider than that).

Tile weights are separable, w(y, x) = r_i(y) * c_j(x), so the total weight is the outer product of two
1-D sums and no weight map is stored. Tiles run row by row; once a row of tiles is done, the output
rows above the next row's first tile are final, and are normalised and written to the result in its
own dtype (uint8 for most files). Host memory is therefore the result itself plus one band of float32
rows, whatever the image size.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..io.images import max_value

__all__ = ["tile_spans", "feather_weights", "count_tiles", "tiled_upscale"]

TileForward = Callable[[torch.Tensor], torch.Tensor]
OnTile = Callable[[int, int], None]


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def tile_spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """[start, stop) of each tile along one side: equal cores of at most ~`tile`, widened by `overlap`.

    `tile` <= 0 or >= length gives one span. With `multiple` > 1 every boundary is a multiple of it
    (`length` must already be one): networks that pixel-unshuffle their input need that.
    """
    if length % multiple:
        raise ValueError(f"length {length} is not a multiple of {multiple}")
    if tile <= 0 or tile >= length:
        return [(0, length)]
    tile = max(tile, multiple)
    overlap = _round_up(max(overlap, 0), multiple)
    n = math.ceil(length / tile)
    bounds = sorted({min(length, round(k * length / n / multiple) * multiple) for k in range(n + 1)})
    bounds[-1] = length
    return [(max(0, a - overlap), min(length, b + overlap)) for a, b in zip(bounds, bounds[1:])]


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)   # s(t) + s(1 - t) = 1: two neighbours always sum to one


def feather_weights(spans: list[tuple[int, int]], scale: int) -> list[np.ndarray]:
    """One float32 weight per output pixel of each span (output = LR * scale), as described above."""
    weights = []
    for i, (a, b) in enumerate(spans):
        pos = np.arange(a * scale, b * scale, dtype=np.float64) + 0.5
        w = np.ones_like(pos)
        if i > 0:                      # band shared with the previous tile: ramp up
            w *= _ramp(pos, spans[i][0] * scale, spans[i - 1][1] * scale)
        if i + 1 < len(spans):         # band shared with the next tile: ramp down
            w *= 1.0 - _ramp(pos, spans[i + 1][0] * scale, spans[i][1] * scale)
        weights.append(w.astype(np.float32))
    return weights


def _ramp(pos: np.ndarray, band0: int, band1: int) -> np.ndarray:
    """0 in the first quarter of the band [band0, band1), smoothstep up over the middle half, then 1."""
    quarter = (band1 - band0) / 4
    width = max(band1 - band0 - 2 * quarter, 1e-9)   # no overlap: a hard step at band0
    return _smoothstep((pos - band0 - quarter) / width)


def count_tiles(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> int:
    h, w = _round_up(height, multiple), _round_up(width, multiple)
    return len(tile_spans(h, tile, overlap, multiple)) * len(tile_spans(w, tile, overlap, multiple))


def tiled_upscale(image: np.ndarray, forward: TileForward, *, scale: int, tile: int, overlap: int,
                  multiple: int = 1, on_tile: OnTile | None = None) -> np.ndarray:
    """Run `forward` over `image` tile by tile and blend: (H, W, C) -> (H*scale, W*scale, C).

    image: uint8, uint16 or float32 in [0, 1]; the result has the same dtype, clipped to range.
    forward: (1, C, h, w) float32 CPU tensor in [0, 1] -> (1, C, h*scale, w*scale) on any device.
    tile: core size in LR pixels (0 = the whole image at once); overlap: LR pixels read beyond it.
    multiple: tile boundaries and the padded image size are multiples of it.
    on_tile(done, total) is called after every tile.
    """
    if image.ndim != 3:
        raise ValueError(f"tiled_upscale: expected (H, W, C), got {image.shape}")
    h, w, c = image.shape
    src = image
    if h % multiple or w % multiple:   # mirror-pad to the multiple; the extra output is cut off below
        src = np.pad(image, ((0, _round_up(h, multiple) - h), (0, _round_up(w, multiple) - w), (0, 0)),
                     mode="symmetric")
    ph, pw = src.shape[:2]
    rows, cols = tile_spans(ph, tile, overlap, multiple), tile_spans(pw, tile, overlap, multiple)
    row_w, col_w = feather_weights(rows, scale), feather_weights(cols, scale)
    row_sum, col_sum = _total(rows, row_w, ph * scale), _total(cols, col_w, pw * scale)
    maxval = max_value(image.dtype)
    out = np.empty((h * scale, w * scale, c), image.dtype)
    total, done = len(rows) * len(cols), 0
    # One buffer for every row's band, as tall as the tallest: allocating a fresh band per row held
    # two (the old one until its shared rows were copied), 418 MB more at a 16000-wide x4 output.
    store = np.zeros((max(b - a for a, b in rows) * scale, pw * scale, c), np.float32)
    band, band_y = store[:0], 0
    for i, (y0, y1) in enumerate(rows):
        # the new band starts at this row's first output row; rows still shared with it carry over
        # (moved up within the buffer: numpy copies overlapping ranges correctly)
        start = y0 * scale - band_y
        n_keep = band.shape[0] - start
        if n_keep > 0:
            store[:n_keep] = band[start:]
        height = (y1 - y0) * scale
        store[max(n_keep, 0):height] = 0.0
        band, band_y = store[:height], y0 * scale
        for j, (x0, x1) in enumerate(cols):
            x = torch.from_numpy(src[y0:y1, x0:x1].astype(np.float32))
            if maxval != 1.0:
                x /= maxval
            y = forward(x.permute(2, 0, 1).unsqueeze(0))
            expect = (1, c, (y1 - y0) * scale, (x1 - x0) * scale)
            if tuple(y.shape) != expect:
                raise ValueError(f"the model returned {tuple(y.shape)} for a tile, expected {expect}")
            tile_out = y[0].to("cpu", torch.float32).permute(1, 2, 0).numpy()   # (h*s, w*s, C)
            weight = row_w[i][:, None] * col_w[j][None, :]
            band[:, x0 * scale:x1 * scale] += tile_out * weight[..., None]
            done += 1
            if on_tile is not None:
                on_tile(done, total)
        final = (rows[i + 1][0] if i + 1 < len(rows) else ph) * scale
        _finish(band[:final - band_y], band_y, row_sum, col_sum, out, maxval)
    return out


def _total(spans: list[tuple[int, int]], weights: list[np.ndarray], length: int) -> np.ndarray:
    total = np.zeros(length, np.float32)
    scale = length // spans[-1][1]
    for (a, b), wt in zip(spans, weights):
        total[a * scale:b * scale] += wt
    return total


def _finish(seg: np.ndarray, y: int, row_sum: np.ndarray, col_sum: np.ndarray, out: np.ndarray,
            maxval: float) -> None:
    """Normalise the finished rows seg = band rows [y, y + len) and store them in `out`'s dtype."""
    n = min(seg.shape[0], out.shape[0] - y)   # rows past the image are mirror padding
    if n <= 0:
        return
    w = out.shape[1]
    seg = seg[:n, :w]
    seg /= (row_sum[y:y + n, None] * col_sum[None, :w])[..., None]
    np.clip(seg, 0.0, 1.0, out=seg)
    if maxval != 1.0:
        seg *= maxval
        seg += 0.5   # the cast below truncates; +0.5 makes it round
    out[y:y + n] = seg
