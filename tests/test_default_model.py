"""The default model: the photo family (photo-x4) with `--strength auto`, wherever it runs."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from superres.apps.cli import main
from superres.apps.eval import _pipeline_upscaler
from superres.evaluation.protocol import bicubic_upscaler, evaluate_pairs, load_pairs
from superres.inference.adaptive import STRENGTH_STEP, StrengthRule, analyze_for_strength, auto_strength
from superres.inference.models import MODELS, default_model_name
from superres.inference.upscaler import Upscaler

REPO = Path(__file__).resolve().parents[1]
SET5 = REPO.parent / "shared" / "data" / "benchmarks" / "Set5"
needs_family = pytest.mark.skipif(not MODELS["photo-x4"].available,
                                  reason="photo-x4-light / realnet-x4 weights are not in superres/pretrained")
needs_clean_end = pytest.mark.skipif(not (MODELS["photo-x4"].available and MODELS["photo-x4-clean"].available),
                                     reason="photo-x4-clean weights are not in superres/pretrained")
needs_set5 = pytest.mark.skipif(not SET5.is_dir(), reason=f"Set5 not found at {SET5} (only the project's CI has it)")


def _photo(seed: int = 0, size: int = 48) -> np.ndarray:
    """A detailed synthetic photo: smooth shapes plus fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    base = np.stack([120 + 80 * np.sin(6 * xx), 110 + 70 * np.cos(5 * yy), 100 + 60 * np.sin(4 * (xx + yy))], -1)
    texture = gaussian_filter(rng.normal(0, 40, (size, size, 3)), (0.7, 0.7, 0))
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def test_the_rule_clips_rounds_and_reads_blur_as_damage():
    rule = StrengthRule(bias=1.0, noise_w=0.0, block_w=0.0, detail_w=-0.3)
    assert rule(None, None, None) == 1.0          # nothing measurable: the bias, clipped
    assert rule(0.0, 1.0, 1e9) == 0.0             # clipped at 0
    s = rule(0.0, 1.0, 7.0)
    assert 0.0 < s < 1.0 and abs(s / STRENGTH_STEP - round(s / STRENGTH_STEP)) < 1e-9
    # with the shipped rule a sharp photo keeps the light end, a blurred copy of it gets more cleaning
    sharp = _photo()
    blurred = np.clip(gaussian_filter(sharp.astype(float), (2.0, 2.0, 0)), 0, 255).astype(np.uint8)
    assert auto_strength(analyze_for_strength(sharp)) < auto_strength(analyze_for_strength(blurred))
    assert auto_strength(analyze_for_strength(sharp)) == 0.0


def test_the_rule_reads_pixels_only_so_a_jpeg_and_its_png_get_the_same_strength(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_photo(1)).save(buf, format="JPEG", quality=40)
    jpg = tmp_path / "a.jpg"
    jpg.write_bytes(buf.getvalue())
    pixels = np.asarray(Image.open(jpg).convert("RGB"))
    Image.fromarray(pixels).save(tmp_path / "a.png")
    from superres.inference.analysis import analyze_file

    a, b = analyze_file(jpg), analyze_file(tmp_path / "a.png")
    assert a["jpeg_quality"] == 40 and b["jpeg_quality"] is None
    assert auto_strength(a) == auto_strength(b)


@needs_family
def test_the_default_is_the_adaptive_photo_family():
    assert default_model_name() == "photo-x4"
    up = Upscaler.from_pretrained(precision="fp32")
    assert up.adaptive and up.info["heavy"] == "photo-x4-heavy" and up.scale == 4
    assert not Upscaler.from_pretrained("photo-x4", strength=0.3, precision="fp32").adaptive
    assert not Upscaler.from_pretrained("psnr-x4", strength="auto", precision="fp32").adaptive
    with pytest.raises(ValueError, match="allowed values: auto or a number"):
        Upscaler.from_pretrained("photo-x4", strength="strong")


@needs_family
def test_a_blend_is_the_same_bytes_wherever_it_is_made():
    """Strength s of the adaptive Upscaler = the fixed blend at s; its ends are the two models."""
    x = _photo(2, 40)
    up = Upscaler.from_pretrained("photo-x4", precision="fp32", tile=0)
    light = Upscaler.from_pretrained("photo-x4-light", precision="fp32", tile=0).upscale_pixels(x)
    heavy = Upscaler.from_pretrained("photo-x4-heavy", precision="fp32", tile=0).upscale_pixels(x)
    assert np.array_equal(up.upscale_pixels(x, strength=0.0), light)
    assert np.array_equal(up.upscale_pixels(x, strength=1.0), heavy)
    fixed = Upscaler.from_pretrained("photo-x4", strength=0.4, precision="fp32", tile=0).upscale_pixels(x)
    assert np.array_equal(up.upscale_pixels(x, strength=0.4), fixed)
    assert not np.array_equal(fixed, light) and not np.array_equal(fixed, heavy)
    # no strength: the image's own choice
    assert np.array_equal(up.upscale_pixels(x), up.upscale_pixels(x, strength=up.choose_strength(x)))


@needs_family
def test_frames_of_a_video_share_one_strength(monkeypatch):
    up = Upscaler.from_pretrained("photo-x4", precision="fp32", tile=0)
    calls = []
    monkeypatch.setattr(up, "choose_strength", lambda pixels=None, measures=None: calls.append(1) or 0.6)
    frames = [_photo(i, 24) for i in range(3)]
    outs = up.upscale_frames(frames)
    assert len(calls) == 1 and len(outs) == 3
    # ... and each frame is what that strength gives it
    assert np.abs(outs[2].astype(int) - up.upscale_pixels(frames[2], strength=0.6)).max() <= 1


@needs_family
def test_upscale_reports_and_logs_the_analysis_and_the_strength(tmp_path, caplog):
    src = tmp_path / "in.png"
    Image.fromarray(_photo(3, 32)).save(src)
    report = tmp_path / "report.json"
    caplog.set_level(logging.INFO)
    assert main(["upscale", str(src), "-o", str(tmp_path / "out.png"), "--report", str(report),
                 "--no-progress", "--precision", "fp32"]) == 0
    entry = json.loads(report.read_text())[0]
    assert entry["status"] == "ok" and entry["strength"] == auto_strength(entry["analysis"])
    assert {"noise_sigma", "jpeg_quality", "blockiness", "detail"} <= set(entry["analysis"])
    line = next(r.getMessage() for r in caplog.records if "->" in r.getMessage())
    assert f"strength {entry['strength']:g}" in line and "detail" in line
    # --denoise overrides the choice
    assert main(["upscale", str(src), "-o", str(tmp_path / "d.png"), "--report", str(report),
                 "--no-progress", "--precision", "fp32", "--denoise", "0.7"]) == 0
    assert json.loads(report.read_text())[0]["strength"] == 0.7


def _jpeg_decoded(pixels: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@needs_clean_end
def test_inputs_with_no_jpeg_history_start_from_the_clean_end():
    up = Upscaler.from_pretrained("photo-x4", precision="fp32", tile=0)
    assert up.has_clean_end and up.info["clean"] == "photo-x4-clean"
    clean = _photo(7, 96)
    jpeg = _jpeg_decoded(clean, 70)
    strength, end = up.choose_blend(clean)
    assert end == "clean" and up.choose_blend(jpeg)[1] == "light"
    # no JPEG grid but blurred: something for the heavy end to remove, so the light end's blend
    blurred = np.clip(gaussian_filter(clean.astype(float), (2.5, 2.5, 0)), 0, 255).astype(np.uint8)
    blur_strength, blur_end = up.choose_blend(blurred)
    assert analyze_for_strength(blurred)["jpeg_history"] is False
    assert blur_strength > 0 and blur_end == "light"
    auto = up.upscale_pixels(clean)
    assert np.array_equal(auto, up.upscale_pixels(clean, strength=strength, end="clean"))
    # a strength given without an end (--denoise, the page's slider) blends from the light end
    assert not np.array_equal(auto, up.upscale_pixels(clean, strength=strength))
    # at strength 0 the clean end is the photo-x4-clean model itself
    alone = Upscaler.from_pretrained("photo-x4-clean", precision="fp32", tile=0)
    assert np.array_equal(alone.upscale_pixels(clean), up.upscale_pixels(clean, strength=0.0, end="clean"))
    with pytest.raises(ValueError, match="allowed values: light, clean"):
        up.upscale_pixels(clean, strength=0.0, end="heavy")


@needs_clean_end
def test_upscale_reports_and_logs_which_end_it_started_from(tmp_path, caplog):
    clean = _photo(8, 96)
    Image.fromarray(clean).save(tmp_path / "clean.png")
    Image.fromarray(_jpeg_decoded(clean, 60)).save(tmp_path / "from_jpeg.png")
    report = tmp_path / "report.json"
    caplog.set_level(logging.INFO)
    assert main(["upscale", str(tmp_path / "clean.png"), str(tmp_path / "from_jpeg.png"), "-o", str(tmp_path / "out"),
                 "--report", str(report), "--no-progress", "--precision", "fp32"]) == 0
    entries = {Path(e["input"]).name: e for e in json.loads(report.read_text())}
    assert entries["clean.png"]["end"] == "clean" and entries["clean.png"]["analysis"]["jpeg_history"] is False
    assert entries["from_jpeg.png"]["end"] == "light" and entries["from_jpeg.png"]["analysis"]["jpeg_history"] is True
    lines = [r.getMessage() for r in caplog.records if "->" in r.getMessage()]
    assert any("clean.png" in m and "from the clean end" in m and "no JPEG history" in m for m in lines)
    assert any("from_jpeg.png" in m and "JPEG quality ~" in m and "clean end" not in m for m in lines)


def test_denoise_is_refused_for_a_model_that_is_not_a_family(tmp_path, caplog):
    src = tmp_path / "in.png"
    Image.fromarray(_photo(4, 16)).save(src)
    code = main(["upscale", str(src), "-o", str(tmp_path / "o.png"), "--model", "psnr-x4", "--denoise", "0.5",
                 "--no-progress"])
    assert code == 2 and not (tmp_path / "o.png").exists()
    assert any("--denoise 0.5: model psnr-x4 is not a blend family" in r.getMessage() for r in caplog.records)


@needs_family
def test_eval_default_scores_what_upscale_writes(tmp_path):
    lr = _photo(5, 40)
    src = tmp_path / "lr.png"
    Image.fromarray(lr).save(src)
    assert main(["upscale", str(src), "-o", str(tmp_path / "sr.png"), "--no-progress", "--precision", "fp32"]) == 0
    written = np.asarray(Image.open(tmp_path / "sr.png"))
    import torch

    assert np.array_equal(_pipeline_upscaler("default", 4, torch.device("cpu"), "fp32")(lr), written)
    with pytest.raises(ValueError, match="int8"):
        _pipeline_upscaler("default", 4, torch.device("cpu"), "int8")


@needs_family
@needs_set5
@pytest.mark.parametrize("track", ["bicubic", "camera", "realistic"])
def test_the_default_beats_bicubic_on_every_set5_track(track):
    """Set5, seed 0, as `superres eval --model default` runs it. Measured at release (README):
    PSNR 29.51 / 27.68 / 22.7x vs bicubic 28.43 / 27.20 / 22.57; LF-PSNR above bicubic's on each."""
    import torch

    pairs = load_pairs(SET5, 4, degrade=track, seed=0)
    metrics = ("psnr", "lf-psnr")
    ours = evaluate_pairs(_pipeline_upscaler("default", 4, torch.device("cpu"), "fp32"), pairs, 4, metrics=metrics)
    bic = evaluate_pairs(bicubic_upscaler(4), pairs, 4, metrics=metrics)
    margin = {"bicubic": 0.8, "camera": 0.3, "realistic": 0.05}[track]
    assert ours["psnr"] > bic["psnr"] + margin, (ours, bic)
    assert ours["lf-psnr"] >= bic["lf-psnr"], (ours, bic)


@needs_family
def test_serve_picks_the_strength_per_image_and_says_which(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from superres.apps.serve import ModelPool, ServiceConfig, create_app

    pool = ModelPool(["photo-x4"], precision="fp32", tile=0)
    buf = io.BytesIO()
    Image.fromarray(_photo(6, 24)).save(buf, format="JPEG", quality=50)
    data = buf.getvalue()
    with TestClient(create_app(pool, ServiceConfig())) as client:
        model = client.get("/v1/models").json()["models"][0]
        assert model["name"] == "photo-x4" and model["adaptive"] and model["strength"]
        r = client.post("/v1/upscale", files={"file": ("x.jpg", data)})
        assert r.status_code == 200, r.text
        auto = float(r.headers["x-superres-strength"])
        assert "JPEG quality 50" in r.headers["x-superres-analysis"]
        # 1 is the heavy end for a family (not "as trained"), and is what the header says
        r = client.post("/v1/upscale", files={"file": ("x.jpg", data)}, data={"strength": "1"})
        assert r.status_code == 200 and r.headers["x-superres-strength"] == "1"
        job = client.post("/v1/jobs", files={"file": ("x.jpg", data)}).json()
        for _ in range(200):
            job = client.get(f"/v1/jobs/{job['id']}").json()
            if job["state"] in ("done", "failed"):
                break
            import time
            time.sleep(0.05)
        assert job["state"] == "done" and job["strength"] == auto and job["analysis"]["jpeg_quality"] == 50
        if MODELS["photo-x4-clean"].available:   # the end it started from, in the header and the job
            assert r.headers["x-superres-end"] == "light" and job["end"] == "light"
            png = io.BytesIO()
            Image.fromarray(_photo(6, 96)).save(png, format="PNG")
            r = client.post("/v1/upscale", files={"file": ("x.png", png.getvalue())})
            assert r.status_code == 200 and r.headers["x-superres-end"] == "clean"
            assert "from the clean end" not in r.headers["x-superres-analysis"]
