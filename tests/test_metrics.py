"""superres.metrics and superres.degrade.imresize against closed forms and the benchmark files.

Tests that need the shared benchmark data skip with a reason when it is absent.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from superres.evaluation import metrics as M
from superres.data.resize import imresize
from superres.evaluation.protocol import read_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCH = DATA / "benchmarks"
NIQE_PARAMS = DATA / "niqe_pris_params.npz"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared benchmark data not found at {path} (read-only data outside the repo)")
    return path


def _rand(shape, seed=0, lo=0, hi=256) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM closed forms

@pytest.mark.parametrize("shape", [(40, 48, 3), (40, 48)])
@pytest.mark.parametrize("y_channel", [True, False])
def test_identical_images_psnr_inf_ssim_one(shape, y_channel):
    img = _rand(shape)
    assert M.psnr(img, img, 4, y_channel=y_channel) == math.inf
    assert M.ssim(img, img, 4, y_channel=y_channel) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("d", [1, 3, 10])
def test_constant_offset_on_y_gives_closed_form_psnr(d):
    # A gray image is its own Y, so an offset of d on it is an offset of d on Y.
    hr = _rand((48, 48), seed=1, lo=20, hi=200)
    sr = (hr.astype(np.int32) + d).astype(np.uint8)
    assert M.psnr(sr, hr, 4) == pytest.approx(20 * math.log10(255 / d), abs=1e-9)
    # On RGB, +k on every channel moves Y by 219 k / 255.
    hr3 = _rand((48, 48, 3), seed=2, lo=20, hi=200)
    sr3 = (hr3.astype(np.int32) + d).astype(np.uint8)
    assert M.psnr(sr3, hr3, 4) == pytest.approx(20 * math.log10(255 / (219 * d / 255)), abs=1e-9)


@pytest.mark.parametrize("mu,d", [(100, 5), (30, 20), (200, 1)])
def test_ssim_of_a_constant_offset_matches_the_hand_formula(mu, d):
    # Flat images: variances and covariance are 0, so SSIM is the luminance term alone.
    hr = np.full((40, 40), mu, np.uint8)
    sr = np.full((40, 40), mu + d, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * mu * (mu + d) + c1) / (mu ** 2 + (mu + d) ** 2 + c1)
    assert M.ssim(sr, hr, 4) == pytest.approx(expected, abs=1e-9)


def test_ssim_matches_an_independent_2d_valid_filter():
    scipy_signal = pytest.importorskip("scipy.signal")
    a, b = _rand((40, 36), 3).astype(np.float64), _rand((40, 36), 4).astype(np.float64)
    x = np.arange(11) - 5.0
    g = np.exp(-x * x / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    f = lambda z: scipy_signal.correlate2d(z, w, mode="valid")  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ma, mb = f(a), f(b)
    va, vb, cv = f(a * a) - ma ** 2, f(b * b) - mb ** 2, f(a * b) - ma * mb
    ref = np.mean((2 * ma * mb + c1) * (2 * cv + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    assert M.ssim(a.astype(np.uint8), b.astype(np.uint8), 1, shave=0) == pytest.approx(ref, abs=1e-12)


def test_shave_ignores_the_border_and_hr_is_cropped_to_a_multiple_of_the_scale():
    hr = _rand((35, 38, 3), 5)                   # cropped to 32x36 for scale 4
    sr = hr[:32, :36].copy()
    sr[:4] = 0                                   # only the shaved border differs
    sr[:, -4:] = 255
    assert M.psnr(sr, hr, 4) == math.inf
    assert M.ssim(sr, hr, 4) == pytest.approx(1.0, abs=1e-12)
    assert math.isfinite(M.psnr(sr, hr, 4, shave=0))
    assert M.psnr(sr, hr, 4, shave=3) < math.inf
    # Differences inside: the shave does not hide them.
    sr2 = hr[:32, :36].copy()
    sr2[10, 10] ^= 0xFF
    assert math.isfinite(M.psnr(sr2, hr, 4))
    with pytest.raises(ValueError, match="must match"):
        M.psnr(hr[:28, :36], hr, 4)
    with pytest.raises(ValueError, match="too small"):
        M.psnr(hr[:8, :8], hr[:8, :8], 4)


def test_gray_is_its_own_y():
    gray = _rand((24, 24), 6)
    assert M.rgb_to_y(gray).dtype == np.float64
    np.testing.assert_array_equal(M.rgb_to_y(gray), gray.astype(np.float64))
    np.testing.assert_array_equal(M.rgb_to_y(gray[..., None]), gray.astype(np.float64))
    other = _rand((24, 24), 7)
    mse = np.mean((gray[4:-4, 4:-4].astype(np.float64) - other[4:-4, 4:-4]) ** 2)
    assert M.psnr(other, gray, 4) == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-9)
    # An RGB output scored against a gray reference: R = G = B gives back the gray (to rounding).
    rep = np.repeat(gray[..., None], 3, axis=2)
    assert M.psnr(rep, gray, 4) > 200
    np.testing.assert_allclose(M.rgb_to_gray(rep), gray, atol=1e-9)


def test_bt601_y_coefficients():
    px = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    np.testing.assert_allclose(M.rgb_to_y(px)[0], [16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0],
                               atol=1e-12)


def test_rgb_option_uses_all_channels():
    hr = _rand((40, 40, 3), 8, lo=10, hi=240)
    sr = hr.astype(np.int32)
    sr[..., 0] += 6                               # R only
    sr = sr.astype(np.uint8)
    assert M.psnr(sr, hr, 4, y_channel=False) == pytest.approx(10 * math.log10(255 ** 2 * 3 / 36), abs=1e-9)
    assert M.psnr(sr, hr, 4) == pytest.approx(20 * math.log10(255 / (6 * 65.481 / 255)), abs=1e-9)
    flat = np.full((40, 40, 3), 100, np.uint8)
    off = flat.copy()
    off[..., 0] += 10
    c1 = (0.01 * 255) ** 2
    s_r = (2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1)
    assert M.ssim(off, flat, 4, y_channel=False) == pytest.approx((s_r + 2) / 3, abs=1e-9)


def test_to_uint8_rounds_and_clamps_tensors_and_floats():
    t = torch.tensor([[[-0.1, 0.5 / 255, 0.49 / 255, 1.2]]])          # (1, 1, 4)
    np.testing.assert_array_equal(M.to_uint8(t), [[0, 1, 0, 255]])
    np.testing.assert_array_equal(M.to_uint8(np.array([[-3.0, 254.5, 300.0]])), [[0, 255, 255]])
    x = torch.rand(1, 3, 8, 8)
    np.testing.assert_array_equal(M.to_uint8(x), np.round(x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# LF-PSNR / HF-CORR / HF-RATIO

def _texture(shape=(96, 96, 3), seed=11) -> np.ndarray:
    """A textured image within [20, 200]: smooth shapes plus fine random detail, no clipping."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    base = 110 + 40 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    fine = M.gaussian_blur(rng.normal(0, 25, shape[:2]), 0.7)
    img = base + fine
    if len(shape) == 3:
        img = np.stack([img, img * 0.9 + 8, img * 0.8 + 20], axis=2)
    return np.clip(np.round(img), 20, 200).astype(np.uint8)


@pytest.mark.parametrize("shape", [(96, 96, 3), (96, 96)])
def test_hr_against_itself_gives_inf_one_one(shape):
    hr = _texture(shape)
    assert M.lf_psnr(hr, hr, 4) == math.inf
    assert M.hf_corr(hr, hr, 4) == pytest.approx(1.0, abs=1e-12)
    assert M.hf_ratio(hr, hr, 4) == pytest.approx(1.0, abs=1e-12)


def test_bicubic_upscale_has_less_and_weaker_fine_detail():
    hr = _texture()
    sr = imresize(imresize(hr, 1 / 4), 4.0)
    assert sr.shape == hr.shape
    ratio, corr = M.hf_ratio(sr, hr, 4), M.hf_corr(sr, hr, 4)
    assert 0 < ratio < 1
    assert 0 < corr < 1
    assert math.isfinite(M.lf_psnr(sr, hr, 4))
    # The low frequencies survive bicubic much better than the full band does.
    assert M.lf_psnr(sr, hr, 4) > M.psnr(sr, hr, 4)


def test_noise_adds_uncorrelated_fine_detail():
    hr = _texture()
    noise = np.random.default_rng(12).normal(0, 8, hr.shape)
    sr = np.clip(np.round(hr + noise), 0, 255).astype(np.uint8)
    assert M.hf_ratio(sr, hr, 4) > 1
    assert M.hf_corr(sr, hr, 4) < 1


@pytest.mark.parametrize("c", [1, 3, 10])
def test_constant_offset_gives_closed_form_lf_psnr(c):
    # A gray image is its own Y; the Gaussian of y + c is G(y) + c, so the low-pass MSE is c^2.
    hr = _texture((64, 64))
    assert hr.min() >= 20 and hr.max() <= 200
    sr = (hr.astype(np.int32) + c).astype(np.uint8)
    assert M.lf_psnr(sr, hr, 4) == pytest.approx(10 * math.log10(255 ** 2 / c ** 2), abs=1e-9)
    # The offset has no high frequencies: the residuals are HR's own.
    assert M.hf_corr(sr, hr, 4) == pytest.approx(1.0, abs=1e-9)
    assert M.hf_ratio(sr, hr, 4) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("sigma", [1, 2])
@pytest.mark.parametrize("shape", [(40, 36), (7, 5), (30, 20, 3)])
def test_gaussian_blur_equals_scipy_reflect(sigma, shape):
    ndimage = pytest.importorskip("scipy.ndimage")
    img = np.random.default_rng(13).uniform(0, 255, shape)
    # (7, 5) is smaller than the kernel radius (8 for sigma 2): the mirror repeats, as scipy's does.
    ref = (ndimage.gaussian_filter(img, sigma=sigma, mode="reflect") if img.ndim == 2
           else np.stack([ndimage.gaussian_filter(img[..., k], sigma=sigma, mode="reflect")
                          for k in range(img.shape[2])], axis=2))
    np.testing.assert_allclose(M.gaussian_blur(img, sigma), ref, rtol=0, atol=1e-9)


def test_flat_images_follow_the_documented_values():
    flat = np.full((40, 40), 120, np.uint8)
    tex = _texture((40, 40))
    assert M.hf_corr(flat, tex, 4) == 0.0 and M.hf_corr(tex, flat, 4) == 0.0
    assert M.hf_corr(flat, flat, 4) == 0.0
    assert math.isnan(M.hf_ratio(tex, flat, 4)) and math.isnan(M.hf_ratio(flat, flat, 4))
    assert M.hf_ratio(flat, tex, 4) == 0.0
    assert M.lf_psnr(flat, flat, 4) == math.inf


@pytest.mark.parametrize("fn", [M.lf_psnr, M.hf_corr, M.hf_ratio])
def test_frequency_metrics_reject_bad_input_like_psnr(fn):
    hr = _texture((64, 64, 3))
    with pytest.raises(ValueError, match="must match"):
        fn(hr[:60, :64], hr, 4)
    with pytest.raises(ValueError, match="too small"):
        fn(hr[:8, :8], hr[:8, :8], 4)


# ---------------------------------------------------------------------------------------------
# NIQE

def test_niqe_on_a_real_image_is_finite_and_higher_when_blurred():
    _need(NIQE_PARAMS)
    hr = read_image(_need(BENCH / "Set5" / "HR" / "baby.png"))
    sharp = M.niqe(hr, shave=4)
    blurred = M.niqe(imresize(imresize(hr, 0.25), 4.0), shave=4)
    assert math.isfinite(sharp) and math.isfinite(blurred)
    assert 0 < sharp < blurred
    assert M.niqe(hr, shave=4, params=NIQE_PARAMS) == sharp
    # dtype=float64 (MATLAB's arithmetic) differs from the float32 default by a little only.
    assert M.niqe(hr, shave=4, dtype=np.float64) == pytest.approx(sharp, abs=0.05)


def test_niqe_of_a_gray_image_is_that_of_r_eq_g_eq_b():
    # The reference reads a gray file as three equal channels and scores their BT.601 Y.
    _need(NIQE_PARAMS)
    gray = read_image(_need(BENCH / "Set14" / "HR" / "bridge.png"))
    assert gray.ndim == 2
    assert M.niqe(gray, shave=4) == M.niqe(np.repeat(gray[..., None], 3, axis=2), shave=4)


def test_niqe_missing_params_file_is_a_clear_error(tmp_path, monkeypatch):
    img = _rand((200, 200), 9)
    missing = tmp_path / "nope" / "niqe_pris_params.npz"
    with pytest.raises(FileNotFoundError, match="niqe_pris_params.npz") as e:
        M.niqe(img, params=missing)
    assert str(missing) in str(e.value) and "--niqe-params" in str(e.value)
    monkeypatch.setenv(M.NIQE_PARAMS_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=M.NIQE_PARAMS_ENV):
        M.load_niqe_params()
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(36))
    with pytest.raises(ValueError, match="missing keys"):
        M.load_niqe_params(bad)


def test_niqe_needs_two_blocks():
    _need(NIQE_PARAMS)
    with pytest.raises(ValueError, match="two 96x96 blocks"):
        M.niqe(_rand((100, 100), 10))


# ---------------------------------------------------------------------------------------------
# LPIPS

@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("LPIPS tried to download something")

    import socket
    import urllib.request

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_lpips_missing_weight_files_is_a_clear_error(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="never downloads") as e:
        M.load_lpips(None, None)
    assert "--lpips-backbone" in str(e.value)
    backbone = tmp_path / "alexnet.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, backbone)
    with pytest.raises(FileNotFoundError, match="linear-head") as e:
        M.load_lpips(backbone, tmp_path / "missing_lin.pth")
    assert "missing_lin.pth" in str(e.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_lpips_loads_weights_in_the_expected_format(tmp_path, no_network, suffix):
    torch.manual_seed(0)
    ref = M.LPIPS("alex")
    for p in ref.parameters():                     # positive heads, as trained LPIPS heads are
        if p.ndim == 4 and p.shape[2:] == (1, 1):
            p.data.abs_()
    backbone = {f"features.{k}": v for k, v in ref.features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(2, 2)      # a whole torchvision model is accepted
    lin = {k: v for k, v in ref.state_dict().items() if k.startswith("lin")}
    assert sorted(lin) == [f"lin{k}.model.1.weight" for k in range(5)]
    bpath, lpath = tmp_path / f"alex{suffix}", tmp_path / f"lin{suffix}"
    if suffix == ".pth":
        torch.save(backbone, bpath)
        torch.save(lin, lpath)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in backbone.items()}, str(bpath))
        save_file({k: v.contiguous() for k, v in lin.items()}, str(lpath))
    model = M.load_lpips(bpath, lpath, "alex")
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    a, b = _rand((64, 64, 3), 11), _rand((64, 64, 3), 12)
    assert M.lpips(a, a, model) == 0.0
    d = M.lpips(a, b, model)
    assert math.isfinite(d) and d > 0
    assert M.lpips(a, b, model) == pytest.approx(M.lpips(b, a, model), rel=1e-5)
    with pytest.raises(ValueError, match="linear-head keys"):
        torch.save({"lin0.model.1.weight": lin["lin0.model.1.weight"]}, tmp_path / "short.pth")
        M.load_lpips(bpath, tmp_path / "short.pth", "alex")


# ---------------------------------------------------------------------------------------------
# imresize against MATLAB's output

# Fraction of identical pixels and largest difference measured against the MATLAB files.
MATLAB_MATCH = {2: (1.0, 0), 3: (1.0, 0), 4: (1.0, 0)}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_imresize_reproduces_matlab_lr_bicubic(scale):
    hr_dir = _need(BENCH / "Set5" / "HR")
    lr_dir = _need(BENCH / "Set5" / "LR_bicubic" / f"X{scale}")
    same = total = worst = 0
    for p in sorted(hr_dir.glob("*.png")):
        hr = read_image(p)
        h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
        lr = imresize(hr[:h, :w], 1 / scale)
        ref = read_image(lr_dir / f"{p.stem}x{scale}.png")
        assert lr.shape == ref.shape, p.name
        diff = np.abs(lr.astype(np.int16) - ref.astype(np.int16))
        same += int((diff == 0).sum())
        total += diff.size
        worst = max(worst, int(diff.max()))
    assert total > 0
    frac, max_diff = MATLAB_MATCH[scale]
    assert same / total >= 0.995 and worst <= 1
    assert same / total == frac and worst == max_diff, (same / total, worst)
