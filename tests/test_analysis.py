"""`superres analyze` and superres.inference.analysis: noise, JPEG quality, blockiness and detail
estimates on synthetic images, bad input through the CLI and the --json output."""
from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from superres.apps.cli import main
from superres.inference.analysis import (analyze_file, analyze_image, blockiness, detail, estimate_noise,
                                         ijg_luminance_table, jpeg_history, jpeg_quality_from_tables, luma)


def _smooth(h: int = 256, w: int = 256) -> np.ndarray:
    """A smooth float image within [40, 210], so added noise is (almost) never clipped."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    return 125 + 60 * np.sin(2 * np.pi * xx * 1.3) * np.cos(2 * np.pi * yy * 0.9) + 20 * (xx - yy)


def _natural(h: int = 256, w: int = 256) -> np.ndarray:
    """The smooth image with hard edges and a small checker texture on part of it."""
    yy, xx = np.mgrid[0:h, 0:w]
    b = _smooth(h, w)
    b[(xx - 100) ** 2 + (yy - 120) ** 2 < 60 ** 2] += 40
    b[(xx > 30) & (xx < 90) & (yy > 160)] -= 50
    b += 15 * ((xx // 7 + yy // 11) % 2) * (xx > 150) * (yy < 100)
    return np.clip(b, 0, 255)


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _rgb(gray_u8: np.ndarray) -> np.ndarray:
    return np.repeat(gray_u8[..., None], 3, axis=2)


def _jpeg_bytes(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _blur(a: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(a.astype(np.float64), r, mode="edge")
    p = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, p)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, p)


def test_smooth_base_is_within_range():
    b = _smooth()
    assert b.min() >= 40 and b.max() <= 210


@pytest.mark.parametrize("sigma", [2, 5, 10, 20])
@pytest.mark.parametrize("base", [_smooth, _natural])
def test_noise_estimate_is_close_to_the_truth(sigma, base):
    rng = np.random.default_rng(sigma)
    img = base()
    noisy = img + rng.normal(0, sigma, img.shape)
    est = analyze_image(_rgb(_u8(noisy)))["noise_sigma"]
    tol = 1.0 if sigma == 2 else 0.2 * sigma
    assert abs(est - sigma) <= tol, (sigma, est)


def test_edges_do_not_count_as_noise():
    # hard 50-level diagonal stripes over 60% of the image (the mask ignores axis-aligned edges), noise
    # of sigma 3 everywhere
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:256, 0:256]
    edgy = _smooth() + 50 * (((xx + 2 * yy) // 9) % 2) * (xx < 154) - 25
    y = luma(_u8(edgy + rng.normal(0, 3, edgy.shape)))
    assert abs(estimate_noise(y) - 3) <= 0.6
    # the estimate over every block (edges included) is far off
    assert estimate_noise(y, fraction=1.0) > 6


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
def test_jpeg_quality_from_pillow_tables(tmp_path, quality):
    rng = np.random.default_rng(1)
    px = _rgb(_u8(_natural() + rng.normal(0, 2, (256, 256))))
    path = tmp_path / f"q{quality}.jpg"
    path.write_bytes(_jpeg_bytes(px, quality))
    r = analyze_file(path)
    assert r["jpeg_quality"] == quality
    assert r["jpeg_source"] == "quantization tables"
    assert (r["width"], r["height"], r["file"]) == (256, 256, str(path))


def test_ijg_tables_round_trip_every_quality():
    for q in range(1, 101):
        assert jpeg_quality_from_tables({0: list(ijg_luminance_table(q))}) == q
    assert jpeg_quality_from_tables(None) is None


def test_png_from_a_low_quality_jpeg_is_blocky(tmp_path):
    rng = np.random.default_rng(2)
    px = _rgb(_u8(_natural() + rng.normal(0, 1.5, (256, 256))))
    decoded = np.asarray(Image.open(io.BytesIO(_jpeg_bytes(px, 20))).convert("RGB"))
    Image.fromarray(decoded).save(tmp_path / "from_jpeg.png")
    Image.fromarray(px).save(tmp_path / "clean.png")
    blocky, clean = analyze_file(tmp_path / "from_jpeg.png"), analyze_file(tmp_path / "clean.png")
    assert blocky["blockiness"] > 1.2
    assert clean["blockiness"] < 1.1
    # the PNG's pixels still carry the JPEG's quantizers
    assert blocky["jpeg_history"] is True and blocky["jpeg_source"] == "8x8 DCT coefficients"
    assert clean["jpeg_history"] is False and clean["jpeg_quality"] is None
    assert blockiness(np.full((32, 32), 100.0, np.float32)) == 1.0   # a flat image has no grid


def _textured(seed: int = 3, h: int = 256, w: int = 320) -> np.ndarray:
    """An RGB image with texture at every frequency (blurred noise, edges, grain): many non-zero
    DCT coefficients in every 8x8 block, as in a photo."""
    rng = np.random.default_rng(seed)
    base = np.stack([_blur(rng.normal(0, 1, (h, w)), 1.5) for _ in range(3)], axis=2) * 240 + 128
    return _u8(base + rng.normal(0, 6, (h, w, 3)) + _natural(h, w)[..., None] - 128)


@pytest.mark.parametrize("quality", [25, 50, 75, 90])
def test_jpeg_quality_read_back_from_the_decoded_pixels(quality):
    px = _textured()
    decoded = np.asarray(Image.open(io.BytesIO(_jpeg_bytes(px, quality))).convert("RGB"))
    history, q = jpeg_history(luma(decoded))
    assert history is True
    assert abs(q - quality) <= 4
    # cropped off the 8x8 grid after decoding: the grid is found from the block steps
    if quality <= 50:
        assert jpeg_history(luma(decoded[3:, 5:]))[0] is True


def test_never_compressed_pixels_have_no_jpeg_history():
    assert jpeg_history(luma(_textured(seed=4))) == (False, None)
    # a quality-100 JPEG (quantizers of 1) leaves no trace in the pixels, only in the file
    assert jpeg_history(luma(np.asarray(Image.open(io.BytesIO(_jpeg_bytes(_textured(), 100)))
                                        .convert("RGB")))) == (False, None)
    # too flat or too small to tell
    assert jpeg_history(np.full((64, 64), 128.0, np.float32)) == (None, None)
    assert jpeg_history(np.zeros((12, 40), np.float32)) == (None, None)


def test_jpeg_history_reads_the_pixels_and_the_quality_the_tables(tmp_path):
    # the same answer for a JPEG file as for the PNG decoded from it (what --strength auto needs)
    for q, history in ((60, True), (100, False)):
        (tmp_path / f"q{q}.jpg").write_bytes(_jpeg_bytes(_textured(), q))
        a = analyze_file(tmp_path / f"q{q}.jpg")
        assert a["jpeg_history"] is history
        assert a["jpeg_quality"] == q and a["jpeg_source"] == "quantization tables"


def test_blur_lowers_detail():
    rng = np.random.default_rng(3)
    sharp = _natural() + rng.normal(0, 1, (256, 256))
    blurred = _blur(sharp, 2.0)
    d_sharp, d_blur = detail(luma(_u8(sharp))), detail(luma(_u8(blurred)))
    assert d_blur < 0.5 * d_sharp


def test_luma_of_gray_16bit_and_float():
    g = _u8(_smooth(32, 32))
    assert np.array_equal(luma(g), g.astype(np.float32))
    assert np.array_equal(luma(g.astype(np.uint16) << 8), g.astype(np.float32))
    assert np.allclose(luma(_rgb(g)), g, atol=1e-3)
    assert np.allclose(luma(g / 255.0), g, atol=1e-3)
    r = analyze_image(np.zeros((2, 2), np.uint8))
    assert r["noise_sigma"] is None and r["detail"] is None and r["blockiness"] == 1.0


def test_cli_bad_input_names_each_file(tmp_path, capsys, caplog):
    good = tmp_path / "good.png"
    Image.fromarray(_rgb(_u8(_smooth(64, 64)))).save(good)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all\n")
    missing = tmp_path / "missing.png"
    with caplog.at_level(logging.ERROR):
        rc = main(["analyze", str(good), str(missing), str(empty), str(text)])
    assert rc == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and str(good) in out
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    for bad in (missing, empty, text):
        assert sum(str(bad) in m for m in errors) == 1, (bad, errors)
    assert not any("Traceback" in m for m in errors)


def test_cli_good_input_exits_0_and_writes_json(tmp_path, capsys):
    rng = np.random.default_rng(4)
    px = _rgb(_u8(_smooth(128, 160) + rng.normal(0, 5, (128, 160))))
    jpg, png = tmp_path / "a.jpg", tmp_path / "b.png"
    jpg.write_bytes(_jpeg_bytes(px, 85))
    Image.fromarray(px).save(png)
    out_json = tmp_path / "out.json"
    assert main(["analyze", str(jpg), str(png), "--json", str(out_json)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{jpg}: 160x128") and "jpeg_quality=85" in lines[0]
    data = json.loads(out_json.read_text())
    assert [d["file"] for d in data] == [str(jpg), str(png)]
    keys = {"file", "width", "height", "noise_sigma", "jpeg_history", "jpeg_quality", "jpeg_source",
            "blockiness", "detail"}
    assert all(set(d) == keys for d in data)
    assert data[0]["jpeg_quality"] == 85 and data[0]["jpeg_source"] == "quantization tables"
    assert data[1]["jpeg_quality"] is None and data[1]["jpeg_source"] is None
    assert data[0]["jpeg_history"] is True and data[1]["jpeg_history"] is False
    assert "no JPEG history" in lines[1]
    assert (data[1]["width"], data[1]["height"]) == (160, 128)
    assert abs(data[1]["noise_sigma"] - 5) <= 1.0
