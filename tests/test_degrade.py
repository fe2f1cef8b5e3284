"""Degradations: each piece of the realistic pipeline checked for the effect it is meant to have,
the JPEG approximation against PIL's real encoder, and the pipeline's shape and determinism."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from superres.training.config import ConfigError, DegradeConfig, load_config
from superres.data.degrade import DegradeConfigError, RealisticDegrader, add_gaussian_noise, add_poisson_noise, filter2d, gaussian_kernel, jpeg_compress, jpeg_quant_tables, make_generator, resize, sinc_kernel
from superres.data.resize import degrade_bicubic, imresize


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float() / 255


def _hwc_uint8(t: torch.Tensor) -> np.ndarray:
    return (t * 255).round().byte().permute(1, 2, 0).numpy()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def _photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients, hard-edged shapes and mild texture: what JPEG is tuned for."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(3 * xx + 1), 0.5 + 0.4 * np.cos(4 * yy), 0.3 + 0.5 * xx * yy], -1)
    gy, gx = np.mgrid[0:h, 0:w]
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, h / 4)
        img[np.hypot(gy - cy, gx - cx) < r] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _high_freq_energy(x: torch.Tensor) -> float:
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return float((lap ** 2).mean())


# ---------------------------------------------------------------------------------------------
# bicubic

def test_degrade_bicubic_is_imresize_of_the_uint8_images():
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)
    lr = degrade_bicubic(torch.stack([_chw(a) for a in imgs]), 4)
    assert lr.shape == (2, 3, 6, 8)
    for a, t in zip(imgs, lr):
        np.testing.assert_array_equal(_hwc_uint8(t), imresize(a, 1 / 4))


# ---------------------------------------------------------------------------------------------
# blur kernels

def test_gaussian_kernels_are_normalised_and_oriented():
    k = gaussian_kernel(21, 3.0, 1.0, 0.0)
    assert k.shape == (21, 21) and k.sum() == pytest.approx(1.0)
    assert k[10, 13] > k[13, 10]  # wide along x (columns)
    # Rotating by 90 degrees swaps the axes.
    np.testing.assert_allclose(gaussian_kernel(21, 3.0, 1.0, math.pi / 2), k.T, atol=1e-12)
    np.testing.assert_allclose(gaussian_kernel(15, 2.0, 2.0), gaussian_kernel(15, 2.0, 2.0).T)
    # beta = 1 makes the generalized Gaussian the ordinary one; the plateau is flatter on top.
    np.testing.assert_allclose(gaussian_kernel(15, 2.0, 1.5, 0.3, beta=1.0, shape="generalized"),
                               gaussian_kernel(15, 2.0, 1.5, 0.3), atol=1e-12)
    g, p = gaussian_kernel(21, 2.0, 2.0), gaussian_kernel(21, 2.0, 2.0, beta=2.0, shape="plateau")
    assert p[10, 11] / p[10, 10] > g[10, 11] / g[10, 10]


def test_sinc_kernel_sums_to_one_and_is_band_limited():
    special = pytest.importorskip("scipy.special")
    cutoff = math.pi / 3
    k = sinc_kernel(21, cutoff)
    assert k.sum() == pytest.approx(1.0)
    # The paper's formula (up to normalisation), checked with an independent Bessel J1.
    r = np.hypot(*np.mgrid[-10:11, -10:11])
    ref = np.where(r == 0, cutoff ** 2 / (4 * math.pi), cutoff * special.j1(cutoff * r) / (2 * math.pi * np.where(r == 0, 1, r)))
    np.testing.assert_allclose(k, ref / ref.sum(), rtol=1e-4, atol=1e-8)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(k, (128, 128))))
    f = np.fft.fftshift(np.fft.fftfreq(128)) * 2 * math.pi
    radius = np.hypot(*np.meshgrid(f, f))
    assert spectrum[radius < 0.5 * cutoff].mean() == pytest.approx(1.0, abs=0.05)
    assert spectrum[radius > 1.5 * cutoff].max() < 0.1  # truncation to 21 taps leaves small ripple


def test_filter2d_is_a_per_sample_convolution_with_mirrored_edges():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((3, 3, 20, 24))).float()
    aniso = gaussian_kernel(9, 2.5, 0.7, 0.6)
    aniso[0, 0] += 0.05  # break the point symmetry so a correlation would not pass for a convolution
    pulse = np.zeros((9, 9))
    pulse[4, 4] = 1
    kernels = torch.from_numpy(np.stack([aniso, pulse, gaussian_kernel(9, 1.0, 1.0)])).float()
    out = filter2d(x, kernels)
    for c in range(3):
        ref = ndimage.convolve(x[0, c].double().numpy(), aniso, mode="mirror")
        np.testing.assert_allclose(out[0, c].numpy(), ref, atol=1e-5)
    torch.testing.assert_close(out[1], x[1])
    assert _high_freq_energy(out[2]) < 0.3 * _high_freq_energy(x[2])


def test_blur_lowers_high_frequency_energy_more_for_wider_kernels():
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    energies = [_high_freq_energy(filter2d(x, torch.from_numpy(gaussian_kernel(21, s, s))[None].float()))
                for s in (0.5, 1.0, 3.0)]
    assert _high_freq_energy(x) > energies[0] > energies[1] > energies[2]


# ---------------------------------------------------------------------------------------------
# resize and noise

@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
def test_resize_produces_the_requested_size(mode):
    x = torch.rand(2, 3, 40, 30)
    assert resize(x, (17, 61), mode).shape == (2, 3, 17, 61)
    flat = torch.full((1, 3, 40, 30), 0.25)
    torch.testing.assert_close(resize(flat, (10, 8), mode), torch.full((1, 3, 10, 8), 0.25))


def test_gaussian_noise_has_the_configured_sigma():
    x = torch.full((2, 3, 96, 96), 0.5)
    g = torch.Generator().manual_seed(0)
    out = add_gaussian_noise(x, torch.tensor([5 / 255, 20 / 255]), torch.tensor([False, True]), generator=g)
    noise = (out - x) * 255
    assert noise[0].std().item() == pytest.approx(5, rel=0.03)
    assert noise[1].std().item() == pytest.approx(20, rel=0.03)
    assert abs(noise.mean().item()) < 0.2
    torch.testing.assert_close(noise[1, 0], noise[1, 2])  # gray: one noise for all channels
    assert not torch.allclose(noise[0, 0], noise[0, 2])


def test_poisson_noise_variance_scales_with_intensity():
    # Values far enough from 0 and 1 that clamping does not eat the tails.
    x = torch.cat([torch.full((1, 3, 128, 128), 0.15), torch.full((1, 3, 128, 128), 0.6)])
    scale = 1.5
    out = add_poisson_noise(x, scale, generator=torch.Generator().manual_seed(0))
    var = (out - x).flatten(1).var(dim=1)
    expected = scale ** 2 * torch.tensor([0.15, 0.6]) / 255
    torch.testing.assert_close(var, expected, rtol=0.06, atol=0)
    assert (var[1] / var[0]).item() == pytest.approx(4.0, rel=0.1)
    gray = add_poisson_noise(x, scale, gray=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gray[:, 0], gray[:, 1])


# ---------------------------------------------------------------------------------------------
# JPEG

def test_quant_tables_follow_libjpeg_scaling():
    luma, chroma = jpeg_quant_tables(torch.tensor([50.0, 100.0, 10.0]))
    assert luma[0, 0, 0] == 16 and luma[0, 7, 7] == 99 and chroma[0, 0, 0] == 17 and chroma[0, 7, 7] == 99
    assert (luma[1] == 1).all() and (chroma[1] == 1).all()
    assert luma[2, 0, 0] == 80  # quality 10: scale 5000/10 = 500%


@pytest.mark.parametrize("quality", [30, 60, 95])
def test_jpeg_is_close_to_pil_jpeg_at_the_same_quality(quality):
    img = _photo_like(72, 88)  # not a multiple of 16: partial blocks are padded like libjpeg
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    pil = np.asarray(Image.open(buf).convert("RGB"))
    ours = _hwc_uint8(jpeg_compress(_chw(img)[None], quality)[0])
    assert abs(_psnr(ours, img) - _psnr(pil, img)) < 1.0
    assert _psnr(ours, pil) > 38  # artefacts in the same places, not just the same amount
    if quality < 95:
        assert _psnr(ours, img) < 45  # and it really did compress


def test_jpeg_takes_one_quality_per_sample():
    x = torch.from_numpy(np.stack([_photo_like(32, 32, s) for s in (0, 1)]).transpose(0, 3, 1, 2)).float() / 255
    both = jpeg_compress(x, torch.tensor([30.0, 90.0]))
    torch.testing.assert_close(both[0], jpeg_compress(x[:1], 30)[0])
    torch.testing.assert_close(both[1], jpeg_compress(x[1:], 90)[0])


# ---------------------------------------------------------------------------------------------
# the pipeline

def test_realistic_degrader_shape_range_and_determinism():
    deg = RealisticDegrader(DegradeConfig(), scale=4)
    hr = torch.rand(3, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    a = deg(hr, generator=torch.Generator().manual_seed(7))
    b = deg(hr, generator=torch.Generator().manual_seed(7))
    c = deg(hr, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, 3, 16, 12) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a * 255, (a * 255).round(), atol=1e-4, rtol=0)  # 8-bit levels
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # per-sample draws


def test_realistic_degrader_survives_tiny_patches_and_every_draw():
    deg = RealisticDegrader(DegradeConfig(), scale=4)
    hr = torch.rand(4, 3, 16, 16)
    for seed in range(6):  # the second resize can shrink a 4-pixel LR to 1 pixel
        assert deg(hr, generator=torch.Generator().manual_seed(seed)).shape == (4, 3, 4, 4)
    with pytest.raises(ValueError, match="multiple of scale 4"):
        deg(torch.rand(1, 3, 18, 16))


def test_make_generator_depends_on_seed_step_and_rank():
    draws = {(s, t, r): torch.randint(0, 2 ** 62, (1,), generator=make_generator(s, t, r)).item()
             for s, t, r in [(0, 0, 0), (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]}
    assert len(set(draws.values())) == 4


def test_degrade_config_is_validated_with_the_key_named():
    with pytest.raises(ConfigError, match=r"degrade\.jpeg_quality2"):
        load_config(None, ["degrade.jpeg_quality2=[30, 120]"])
    with pytest.raises(ConfigError, match=r"degrade\.kernel_probs"):
        load_config(None, ['degrade.kernel_probs={iso = 0.5, aniso = 0.4}'])
    # the pipeline itself raises its own error type (a ValueError), which the config reports as above
    with pytest.raises(DegradeConfigError, match=r"degrade\.kernel_size"):
        RealisticDegrader(DegradeConfig(kernel_size=[8, 21]), 4)
    cfg = load_config(None, ["data.degradation=realistic", "degrade.noise_sigma=[1, 10]"])
    assert cfg.degrade.noise_sigma == [1.0, 10.0]
