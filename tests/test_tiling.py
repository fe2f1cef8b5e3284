"""Tiled forward with feathered blending: agrees with the untiled forward, weights are a partition of one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from superres.archs import build_generator
from superres.inference.tiling import count_tiles, feather_weights, tile_spans, tiled_upscale

SCALE = 4


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Structured content plus noise, uint8 RGB (H, W, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / 7) * 80 + 128, np.cos(yy / 11) * 80 + 128, (xx * 0.7 + yy) % 256], axis=2)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    model = build_generator("msrresnet", num_feat=8, num_block=1, upscale=SCALE).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return forward


@pytest.fixture(scope="module")
def deep_generator():
    """Receptive field wider than overlap/2 for the small overlap used with it."""
    torch.manual_seed(1)
    model = build_generator("msrresnet", num_feat=8, num_block=3, upscale=SCALE).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return forward


def _untiled(image, forward):
    return tiled_upscale(image, forward, scale=SCALE, tile=0, overlap=16)


@pytest.mark.parametrize("h,w,dtype", [(400, 600, np.uint8), (403, 601, np.float32)])
def test_tiled_matches_untiled(generator, h, w, dtype):
    image = _photo(h, w)
    if dtype == np.float32:
        image = image.astype(np.float32) / 255
    calls = []
    tiled = tiled_upscale(image, generator, scale=SCALE, tile=96, overlap=16,
                          on_tile=lambda done, total: calls.append((done, total)))
    ref = _untiled(image, generator)
    assert tiled.shape == ref.shape == (h * SCALE, w * SCALE, 3)
    assert tiled.dtype == ref.dtype == dtype
    n = count_tiles(h, w, 96, 16)
    assert n > 20 and calls == [(i + 1, n) for i in range(n)]
    peak = 255.0 if dtype == np.uint8 else 1.0
    assert _psnr(tiled, ref, peak) >= 50
    assert np.abs(tiled.astype(np.float64) - ref.astype(np.float64)).max() <= 2 / 255 * peak + 1e-6


def test_blending_hides_seams_of_a_wide_receptive_field(deep_generator):
    # overlap 4: the network sees zero padding well inside the part of a tile that counts, so the
    # result is not exact, but the feathered blend keeps it close
    image = _photo(150, 190, seed=3)
    tiled = tiled_upscale(image, deep_generator, scale=SCALE, tile=48, overlap=4)
    ref = _untiled(image, deep_generator)
    assert _psnr(tiled, ref, 255) >= 40


def test_image_smaller_than_one_tile(generator):
    image = _photo(37, 53)
    out = tiled_upscale(image, generator, scale=SCALE, tile=96, overlap=16)
    assert count_tiles(37, 53, 96, 16) == 1
    np.testing.assert_array_equal(out, _untiled(image, generator))
    assert out.shape == (37 * SCALE, 53 * SCALE, 3)


def test_uint16_in_uint16_out(generator):
    image = (_photo(60, 90).astype(np.uint16) * 257)
    tiled = tiled_upscale(image, generator, scale=SCALE, tile=32, overlap=8)
    ref = _untiled(image, generator)
    assert tiled.dtype == np.uint16
    assert _psnr(tiled, ref, 65535) >= 50


class _SmallField(torch.nn.Module):
    """conv 3x3 then nearest x4: each output depends on a 3x3 LR neighbourhood (radius 1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        with torch.inference_mode():
            return torch.sigmoid(F.interpolate(self.conv(x), scale_factor=SCALE, mode="nearest"))


@pytest.mark.parametrize("tile,overlap", [(40, 4), (64, 16), (33, 2)])
def test_small_receptive_field_gives_the_untiled_result(tile, overlap):
    model = _SmallField()
    image = _photo(130, 170, seed=2).astype(np.float32) / 255
    tiled = tiled_upscale(image, model, scale=SCALE, tile=tile, overlap=overlap)
    ref = _untiled(image, model)
    np.testing.assert_allclose(tiled, ref, rtol=0, atol=2e-6)
    u8 = (image * 255).round().astype(np.uint8)
    assert np.abs(tiled_upscale(u8, model, scale=SCALE, tile=tile, overlap=overlap).astype(int)
                  - _untiled(u8, model).astype(int)).max() <= 1


def test_model_with_wrong_output_size_is_an_error():
    with pytest.raises(ValueError, match="expected"):
        tiled_upscale(np.zeros((20, 20, 3), np.uint8), lambda x: F.interpolate(x, scale_factor=2),
                      scale=SCALE, tile=0, overlap=0)


# ---------------------------------------------------------------------------------------------
# spans and weights

@pytest.mark.parametrize("length,tile,overlap,multiple", [
    (600, 96, 16, 1), (601, 96, 16, 1), (403, 100, 7, 1), (50, 96, 16, 1), (256, 64, 0, 1),
    (400, 96, 10, 4), (98, 32, 3, 2)])
def test_tile_spans_cover_with_overlap(length, tile, overlap, multiple):
    spans = tile_spans(length, tile, overlap, multiple)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
        assert (a1 < b0 if overlap else a1 == b0) and a0 < a1 and b0 < b1   # overlap and advance
    if multiple > 1:
        assert all(a % multiple == 0 and b % multiple == 0 for a, b in spans)
    if tile >= length:
        assert spans == [(0, length)]


@pytest.mark.parametrize("length,tile,overlap", [(600, 96, 16), (601, 96, 16), (403, 100, 7),
                                                 (256, 64, 0), (90, 20, 1), (200, 50, 30)])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_feather_weights_of_neighbours_sum_to_one(length, tile, overlap, scale):
    spans = tile_spans(length, tile, overlap)
    weights = feather_weights(spans, scale)
    total = np.zeros(length * scale, np.float64)
    for (a, b), w in zip(spans, weights):
        assert w.shape == ((b - a) * scale,)
        assert w.min() >= 0 and w.max() <= 1
        total[a * scale:b * scale] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_feather_weights_ignore_the_tile_edge_next_to_a_cut():
    spans = tile_spans(400, 96, 16)
    weights = feather_weights(spans, SCALE)
    (a0, b0), (a1, b1) = spans[0], spans[1]
    band = (b0 - a1) * SCALE                         # output pixels shared by tiles 0 and 1
    assert band == 2 * 16 * SCALE
    # the outer quarter of the band on each side counts for nothing: the network saw padding there
    assert np.all(weights[0][-band // 4:] == 0)
    assert np.all(weights[1][:band // 4] == 0)
    assert np.all(weights[0][: (a1 - a0) * SCALE] == 1)
