"""Upscaler (Python API) and `superres upscale` (CLI) with a tiny random-weights generator."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from superres.archs import build_generator
from superres.apps.cli import main
from superres.io.images import ImageData, read_image, write_image
from superres.inference.upscaler import Upscaler
from superres.inference.weights import save_weights

SCALE = 4
RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_weights(path, build_generator("msrresnet", num_feat=8, num_block=1, upscale=SCALE))
    return path


@pytest.fixture(scope="module")
def up(model_path):
    return Upscaler.from_pretrained(model_path, precision="fp32", tile=32, tile_overlap=8)


def _rgb(h=20, w=30):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _transparent_square(size=40, lo=12, hi=28) -> np.ndarray:
    """RGBA: alpha 0 everywhere but an opaque square; colour under the transparent part is black."""
    a = np.zeros((size, size, 4), np.uint8)
    a[lo:hi, lo:hi, :3] = RNG.integers(0, 256, (hi - lo, hi - lo, 3))
    a[lo:hi, lo:hi, 3] = 255
    return a


# ---------------------------------------------------------------------------------------------
# the Python API

def test_from_pretrained(up, model_path):
    assert up.scale == SCALE and up.tile == 32 and up.tile_overlap == 8
    assert up.name == "tiny" and up.amp_dtype is None


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA"])
def test_pil_in_pil_out_mode_kept(up, mode):
    im = Image.fromarray(np.dstack([_rgb(), RNG.integers(0, 256, (20, 30, 1), dtype=np.uint8)]), "RGBA")
    im = im.convert(mode)
    out = up.upscale(im)
    assert isinstance(out, Image.Image)
    assert out.mode == mode and out.size == (30 * SCALE, 20 * SCALE)


def test_pil_palette_comes_back_rgb(up):
    out = up.upscale(Image.fromarray(_rgb()).quantize(8))
    assert out.mode == "RGB" and out.size == (120, 80)


def test_pil_16bit_gray_kept(up):
    g = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    out = up.upscale(Image.frombytes("I;16", (30, 20), g.astype("<u2").tobytes()))
    assert out.mode == "I;16" and out.size == (120, 80)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 1), (20, 30, 3), (20, 30, 4)])
def test_numpy_in_same_dtype_out(up, dtype, shape):
    a = RNG.random(shape)
    a = (a * np.iinfo(dtype).max).round().astype(dtype) if np.dtype(dtype).kind == "u" else a.astype(dtype)
    out = up.upscale(a)
    assert isinstance(out, np.ndarray) and out.dtype == dtype
    assert out.shape == (shape[0] * SCALE, shape[1] * SCALE) + shape[2:]
    if np.dtype(dtype).kind == "f":
        assert out.min() >= 0 and out.max() <= 1


def test_numpy_uint16_uses_the_full_range(up):
    # a 16-bit image is processed at 16 bits: the output is not a multiple of 257 (an 8-bit detour)
    a = (RNG.random((20, 30, 3)) * 65535).astype(np.uint16)
    out = up.upscale(a)
    assert np.mean(out % 257 != 0) > 0.5


def test_dtypes_agree(up):
    a = _rgb()
    u8 = up.upscale(a).astype(np.float64) / 255
    f32 = up.upscale(a.astype(np.float32) / 255).astype(np.float64)
    u16 = up.upscale(a.astype(np.uint16) * 257).astype(np.float64) / 65535
    assert np.abs(u8 - f32).max() <= 0.6 / 255
    assert np.abs(u16 - f32).max() <= 1e-4


@pytest.mark.parametrize("shape", [(3, 20, 30), (1, 3, 20, 30), (2, 3, 20, 30), (1, 20, 30), (4, 20, 30)])
def test_tensor_in_tensor_out(up, shape):
    t = torch.rand(shape, dtype=torch.float32)
    out = up.upscale(t)
    assert isinstance(out, torch.Tensor) and out.dtype == t.dtype
    assert tuple(out.shape) == shape[:-2] + (shape[-2] * SCALE, shape[-1] * SCALE)
    assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_tensor_matches_numpy(up):
    a = RNG.random((20, 30, 3)).astype(np.float32)
    t = up.upscale(torch.from_numpy(a).permute(2, 0, 1))
    np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), up.upscale(a), atol=1e-6)


def test_imagedata_in_imagedata_out_keeps_metadata(up):
    img = ImageData(_rgb(), icc_profile=b"icc", exif=b"II*\x00\x08\x00\x00\x00\x00\x00", format="PNG")
    out = up.upscale(img)
    assert isinstance(out, ImageData)
    assert (out.width, out.height) == (120, 80)
    assert out.icc_profile == b"icc" and out.exif == img.exif


@pytest.mark.parametrize("kwargs,size", [
    ({"outscale": 2}, (60, 40)), ({"outscale": 2.5}, (75, 50)), ({"outscale": 1}, (30, 20)),
    ({"width": 50}, (50, 33)), ({"height": 50}, (75, 50)), ({"width": 77, "height": 33}, (77, 33))])
def test_requested_size(up, kwargs, size):
    out = up.upscale(Image.fromarray(_rgb()), **kwargs)
    assert out.size == size
    assert up.upscale(_rgb(), **kwargs).shape == (size[1], size[0], 3)


def test_outscale_and_width_together_is_an_error(up):
    with pytest.raises(ValueError):
        up.upscale(_rgb(), outscale=2, width=10)


@pytest.mark.parametrize("alpha", ["model", "bicubic"])
def test_transparent_background_stays_transparent(up, alpha):
    out = np.asarray(up.upscale(Image.fromarray(_transparent_square(), "RGBA"), alpha=alpha))
    assert out.shape == (160, 160, 4)
    a = out[..., 3]
    # background: well away from the square (12..28 LR -> 48..112 HR); inside: well within it
    bg = np.ones_like(a, bool)
    bg[40:120, 40:120] = False
    assert a[bg].max() == 0
    assert a[56:104, 56:104].min() == 255


@pytest.mark.parametrize("alpha", ["model", "bicubic"])
def test_transparent_background_with_a_biased_model(model_path, alpha):
    # a model whose output drifts on flat input (here a bias on its last layer) must not lay a
    # veil over a fully transparent background
    up = Upscaler.from_pretrained(model_path, precision="fp32", tile=0)
    with torch.no_grad():
        up.model.conv_last.bias.fill_(0.02)
    assert up.upscale_pixels(np.zeros((8, 8, 1), np.uint8)).min() >= 3   # the drift is real
    out = np.asarray(up.upscale(Image.fromarray(_transparent_square(), "RGBA"), alpha=alpha))[..., 3]
    bg = np.ones_like(out, bool)
    bg[40:120, 40:120] = False
    assert out[bg].max() == 0 and out[56:104, 56:104].min() == 255


def test_unknown_alpha_mode(up):
    with pytest.raises(ValueError, match="alpha"):
        up.upscale(_transparent_square(), alpha="nearest")


def test_tiling_setting_does_not_change_the_result_much(model_path):
    a = _rgb(70, 90)
    whole = Upscaler.from_pretrained(model_path, precision="fp32", tile=0).upscale(a)
    tiled = Upscaler.from_pretrained(model_path, precision="fp32", tile=24, tile_overlap=8).upscale(a)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 2


def test_wrong_input_type(up):
    with pytest.raises(TypeError):
        up.upscale([[1, 2], [3, 4]])


# ---------------------------------------------------------------------------------------------
# the command line

def _cli(model_path, *args) -> int:
    return main(["upscale", *map(str, args), "--model", str(model_path), "--no-progress", "--tile", "32"])


def _save(path, arr, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _leftovers(folder):
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_cli_single_file(tmp_path, model_path):
    src = _save(tmp_path / "in.png", _rgb())
    out = tmp_path / "out" / "big.png"
    assert _cli(model_path, src, "-o", out) == 0
    img = read_image(out)
    assert (img.width, img.height) == (120, 80) and img.format == "PNG"
    assert not _leftovers(tmp_path)


def test_cli_single_file_format_and_size(tmp_path, model_path):
    src = _save(tmp_path / "in.png", _rgb())
    assert _cli(model_path, src, "-o", tmp_path / "o.jpg", "--outscale", "2", "--quality", "80") == 0
    with Image.open(tmp_path / "o.jpg") as im:
        assert im.format == "JPEG" and im.size == (60, 40)
    assert _cli(model_path, src, "-o", tmp_path / "w.webp", "--width", "45") == 0
    with Image.open(tmp_path / "w.webp") as im:
        assert im.format == "WEBP" and im.size == (45, 30)
    assert _cli(model_path, src, "-o", tmp_path / "h.png", "--height", "10") == 0
    assert Image.open(tmp_path / "h.png").size == (15, 10)


def test_cli_16bit_png_stays_16bit(tmp_path, model_path):
    src = tmp_path / "in16.png"
    write_image(src, ImageData(RNG.integers(0, 256, (12, 14, 3), dtype=np.uint16)))
    assert _cli(model_path, src, "-o", tmp_path / "out16.png") == 0
    img = read_image(tmp_path / "out16.png")
    assert img.pixels.dtype == np.uint16 and (img.width, img.height) == (56, 48)


def test_cli_folder_recursive_mirrors_subfolders(tmp_path, model_path):
    src = tmp_path / "in"
    _save(src / "a.png", _rgb(10, 12))
    _save(src / "sub" / "b.jpg", _rgb(10, 12))
    _save(src / "sub" / "deeper" / "c.bmp", _rgb(10, 12))
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert _cli(model_path, src, "-o", out, "--recursive", "--suffix", "_x4") == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a_x4.png", "sub/b_x4.jpg", "sub/deeper/c_x4.bmp"]
    assert read_image(out / "sub" / "deeper" / "c_x4.bmp").width == 48


def test_cli_folder_without_recursive_takes_top_level_only(tmp_path, model_path):
    src = tmp_path / "in"
    _save(src / "a.png", _rgb(10, 12))
    _save(src / "sub" / "b.png", _rgb(10, 12))
    out = tmp_path / "out"
    assert _cli(model_path, src, "-o", out, "--format", "webp") == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["a.webp"]


def test_cli_never_writes_over_an_input(tmp_path, model_path, caplog):
    src = _save(tmp_path / "in.png", _rgb())
    before = src.read_bytes()
    assert _cli(model_path, src, "-o", src, "--overwrite") != 0
    assert src.read_bytes() == before
    assert any("overwrite an input" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    # a folder upscaled into itself without a suffix: every output would be an input
    folder = tmp_path / "f"
    a, b = _save(folder / "a.png", _rgb(8, 8)), _save(folder / "b.png", _rgb(8, 8))
    snap = {p: p.read_bytes() for p in (a, b)}
    assert _cli(model_path, folder, "-o", folder, "--overwrite") != 0
    assert {p: p.read_bytes() for p in (a, b)} == snap
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png"]


def test_cli_existing_output_skipped_unless_overwrite(tmp_path, model_path):
    src = _save(tmp_path / "in.png", _rgb())
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    report = tmp_path / "r.json"
    assert _cli(model_path, src, "-o", out, "--report", report) == 0
    assert out.read_bytes() == b"keep me"
    assert json.loads(report.read_text())[0]["status"] == "skipped"
    assert _cli(model_path, src, "-o", out, "--overwrite", "--report", report) == 0
    assert read_image(out).width == 120
    assert json.loads(report.read_text())[0]["status"] == "ok"


def test_cli_corrupt_file_among_good_ones(tmp_path, model_path, caplog):
    src = tmp_path / "in"
    _save(src / "a.png", _rgb(10, 12))
    (src / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _save(src / "c.jpg", _rgb(10, 12))
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    caplog.set_level(logging.INFO)
    code = _cli(model_path, src, "-o", out, "--report", report)
    assert code != 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.jpg"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "b_broken.png" in errors[0] and "\n" not in errors[0], errors
    entries = {e["input"]: e for e in json.loads(report.read_text())}
    bad = entries[str(src / "b_broken.png")]
    assert bad["status"] == "error" and "b_broken.png" in bad["error"]
    assert not _leftovers(out)


def test_cli_report_fields(tmp_path, model_path):
    src = tmp_path / "in"
    _save(src / "a.png", _rgb(10, 12))
    (src / "z.png").write_bytes(b"")
    report = tmp_path / "rep" / "report.json"
    assert _cli(model_path, src, "-o", tmp_path / "out", "--report", report) == 1
    entries = json.loads(report.read_text())
    assert [e["status"] for e in entries] == ["ok", "error"]
    ok, err = entries
    assert ok["input"] == str(src / "a.png") and ok["output"] == str(tmp_path / "out" / "a.png")
    assert ok["input_size"] == [12, 10] and ok["output_size"] == [48, 40]
    assert isinstance(ok["seconds"], float) and ok["seconds"] >= 0 and "error" not in ok
    assert "z.png" in err["error"] and "empty" in err["error"] and isinstance(err["seconds"], float)
    assert not _leftovers(tmp_path / "rep") and not _leftovers(tmp_path / "out")


@pytest.mark.parametrize("alpha", ["model", "bicubic"])
def test_cli_alpha(tmp_path, model_path, alpha):
    src = tmp_path / "t.png"
    Image.fromarray(_transparent_square(), "RGBA").save(src)
    out = tmp_path / "t_x4.png"
    assert _cli(model_path, src, "-o", out, "--alpha", alpha) == 0
    img = read_image(out)
    assert img.alpha is not None and img.alpha.shape == (160, 160)
    bg = np.ones_like(img.alpha, bool)
    bg[40:120, 40:120] = False
    assert img.alpha[bg].max() == 0 and img.alpha[56:104, 56:104].min() == 255


def test_cli_missing_input_and_bad_model(tmp_path, model_path):
    assert _cli(model_path, tmp_path / "nope.png", "-o", tmp_path / "o.png") != 0
    src = _save(tmp_path / "in.png", _rgb())
    assert main(["upscale", str(src), "-o", str(tmp_path / "o.png"), "--model",
                 str(tmp_path / "missing.safetensors"), "--no-progress"]) != 0
    assert not (tmp_path / "o.png").exists()


def test_hparams_option_answers_what_the_keys_cannot_tell(tmp_path, caplog):
    """A compact net with LeakyReLU saved as bare tensors: relu and leakyrelu have the same keys,
    so the loader asks, and --hparams act_type=leakyrelu answers."""
    import torch

    from superres.archs import build_generator
    from superres.apps.cli import main

    torch.manual_seed(0)
    net = build_generator("compact", num_feat=8, num_conv=2, upscale=2, act_type="leakyrelu")
    torch.save(net.state_dict(), tmp_path / "community.pth")
    from PIL import Image
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "in.png")
    argv = ["upscale", str(tmp_path / "in.png"), "--model", str(tmp_path / "community.pth"), "--no-progress"]
    assert main(argv + ["-o", str(tmp_path / "a.png")]) == 2
    assert "--hparams act_type=" in caplog.text
    assert main(argv + ["-o", str(tmp_path / "b.png"), "--hparams", "act_type=leakyrelu"]) == 0
    with torch.no_grad():
        want = net(torch.full((1, 3, 8, 8), 100 / 255)).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    got = np.asarray(Image.open(tmp_path / "b.png")).astype(np.float32) / 255
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6
    with pytest.raises(SystemExit) as usage:   # argparse's usage error
        main(argv + ["-o", str(tmp_path / "c.png"), "--hparams", "oops"])
    assert usage.value.code == 2
