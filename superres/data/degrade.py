"""Degradations that make LR images from HR ones.

`imresize` reproduces MATLAB's `imresize(img, scale, 'bicubic')`, which is how every published SR
benchmark made its LR inputs: Keys cubic with a=-0.5, the kernel widened by 1/scale when shrinking
(antialiasing), symmetric border handling, one dimension at a time (the one shrinking most first,
rows first on a tie) and, for uint8 images, rounding to uint8 after each pass.

`RealisticDegrader` is the second-order degradation of Real-ESRGAN (Wang et al. 2021, "Real-ESRGAN:
Training Real-World Blind Super-Resolution with Pure Synthetic Data"): blur, resize, noise, JPEG,
twice, then a sinc filter and the final resize/JPEG in random order. It runs on (B, 3, H, W) batches
on the training device; every random choice comes from one torch.Generator, so a batch is
reproducible from its seed. Every range is a field of `DegradeConfig`.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .dct import block_dct_matrix
from .resize import imresize

__all__ = ["RealisticDegrader", "make_generator", "gaussian_kernel", "sinc_kernel", "filter2d", "resize",
           "add_gaussian_noise", "add_poisson_noise", "jpeg_compress", "jpeg_quant_tables",
           "check_degrade_config", "DEGRADATIONS", "image_seed", "camera_degrade", "degrade_image"]


class DegradeConfigError(ValueError):
    """A `degrade.*` value out of range (training.config reports it as a ConfigError)."""


@dataclass
class DegradeConfig:
    """Ranges of the `realistic` degradation (Real-ESRGAN, Wang et al. 2021); defaults are the
    paper's. A field ending in 2 is the second-order stage's. Ranges are [low, high], sampled
    uniformly; noise sigma is in 8-bit levels; sizes are kernel side lengths (odd)."""
    kernel_size: list[int] = field(default_factory=lambda: [7, 21])
    betag: list[float] = field(default_factory=lambda: [0.5, 4.0])  # generalized Gaussian shape
    betap: list[float] = field(default_factory=lambda: [1.0, 2.0])  # plateau shape
    resize_modes: list[str] = field(default_factory=lambda: ["area", "bilinear", "bicubic"])
    kernel_probs: dict[str, float] = field(default_factory=lambda: {
        "iso": 0.45, "aniso": 0.25, "generalized_iso": 0.12, "generalized_aniso": 0.03,
        "plateau_iso": 0.12, "plateau_aniso": 0.03})
    blur_sigma: list[float] = field(default_factory=lambda: [0.2, 3.0])
    sinc_prob: float = 0.1
    resize_probs: dict[str, float] = field(default_factory=lambda: {"up": 0.2, "down": 0.7, "keep": 0.1})
    resize_range: list[float] = field(default_factory=lambda: [0.15, 1.5])
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_sigma: list[float] = field(default_factory=lambda: [1.0, 30.0])
    poisson_scale: list[float] = field(default_factory=lambda: [0.05, 3.0])
    gray_noise_prob: float = 0.4
    jpeg_quality: list[float] = field(default_factory=lambda: [30.0, 95.0])
    second_blur_prob: float = 0.8
    kernel_probs2: dict[str, float] = field(default_factory=lambda: {
        "iso": 0.45, "aniso": 0.25, "generalized_iso": 0.12, "generalized_aniso": 0.03,
        "plateau_iso": 0.12, "plateau_aniso": 0.03})
    blur_sigma2: list[float] = field(default_factory=lambda: [0.2, 1.5])
    sinc_prob2: float = 0.1
    resize_probs2: dict[str, float] = field(default_factory=lambda: {"up": 0.3, "down": 0.4, "keep": 0.3})
    resize_range2: list[float] = field(default_factory=lambda: [0.3, 1.2])
    gaussian_noise_prob2: float = 0.5
    noise_sigma2: list[float] = field(default_factory=lambda: [1.0, 25.0])
    poisson_scale2: list[float] = field(default_factory=lambda: [0.05, 2.5])
    gray_noise_prob2: float = 0.4
    jpeg_quality2: list[float] = field(default_factory=lambda: [30.0, 95.0])
    final_sinc_prob: float = 0.8


# =============================================================================================
# realistic degradation: the pieces
#
# Each piece works on a (B, C, H, W) float batch in [0, 1] with per-sample parameters, so one batch
# can mix blur kernels, noise levels and JPEG qualities.

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
RESIZE_CHOICES = ("up", "down", "keep")


def _kernel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    xx, yy = np.meshgrid(r, r)
    return xx, yy


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float = 0.0, *,
                    beta: float = 1.0, shape: str = "gaussian") -> np.ndarray:
    """(size, size) kernel summing to 1, from the quadratic form q = d^T Sigma^-1 d with
    Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T:

    gaussian: exp(-q / 2); generalized: exp(-q^beta / 2); plateau: 1 / (1 + q^beta).
    """
    if shape not in ("gaussian", "generalized", "plateau"):
        raise ValueError(f"kernel shape {shape!r}; allowed values: gaussian, generalized, plateau")
    xx, yy = _kernel_grid(size)
    c, s = math.cos(theta), math.sin(theta)
    # Coordinates along the kernel's principal axes, where Sigma is diagonal.
    u, v = c * xx + s * yy, -s * xx + c * yy
    q = (u / sigma_x) ** 2 + (v / sigma_y) ** 2
    if shape == "plateau":
        k = 1.0 / (1.0 + q ** beta)
    else:
        k = np.exp(-0.5 * q ** (beta if shape == "generalized" else 1.0))
    return k / k.sum()


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """(size, size) circular low-pass kernel with cutoff `cutoff` (radians per pixel, <= pi),
    normalised to sum 1: k(r) = cutoff * J1(cutoff * r) / (2 pi r), the ideal disc filter's impulse
    response. It rings like the overshoot of sharpened or band-limited images."""
    xx, yy = _kernel_grid(size)
    r = np.hypot(xx, yy)
    # numpy has no Bessel J1 and scipy is not a runtime dependency; torch's is exact enough.
    j1 = torch.special.bessel_j1(torch.from_numpy(cutoff * r)).numpy()
    safe_r = np.where(r == 0, 1.0, r)
    k = np.where(r == 0, cutoff ** 2 / (4 * math.pi), cutoff * j1 / (2 * math.pi * safe_r))
    return k / k.sum()


def _stack_kernels(kernels: list[np.ndarray]) -> torch.Tensor:
    """(B, k, k) float32 with every kernel zero-padded, centred, to the largest size."""
    k = max(a.shape[0] for a in kernels)
    out = np.zeros((len(kernels), k, k), dtype=np.float32)
    for i, a in enumerate(kernels):
        o = (k - a.shape[0]) // 2
        out[i, o:o + a.shape[0], o:o + a.shape[0]] = a
    return torch.from_numpy(out)


def filter2d(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve sample i of x (B, C, H, W) with kernels[i] (B, k, k, odd k), mirrored edges.

    One grouped conv2d for the whole batch: every (sample, channel) plane is its own group.
    """
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    if kernels.shape != (b, k, k) or k % 2 == 0:
        raise ValueError(f"filter2d: expected ({b}, k, k) kernels with odd k, got {tuple(kernels.shape)}")
    p = k // 2
    # Reflection needs the pad to be smaller than the image; tiny images repeat their edge instead.
    mode = "reflect" if p < min(h, w) else "replicate"
    xp = F.pad(x.reshape(1, b * c, h, w), (p, p, p, p), mode=mode)
    # conv2d correlates; flipping makes it a true convolution for the asymmetric kernels.
    weight = kernels.flip(-1, -2).to(x.device, x.dtype).repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(xp, weight, groups=b * c).view(b, c, h, w)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a batch to `size` (h, w) with area / bilinear / bicubic interpolation.

    No antialiasing on purpose: the aliasing of a plain downscale is part of what is simulated
    ("area" is the antialiased choice).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}; allowed values: {list(RESIZE_MODES)}")
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _per_sample(v, b: int, device, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(v, device=device, dtype=dtype).expand(b).reshape(b, 1, 1, 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def add_gaussian_noise(x: torch.Tensor, sigma, gray=False,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """x + N(0, sigma^2), clamped to [0, 1]; sigma per sample (in [0, 1] units, e.g. 10 / 255).

    Gray samples get the same noise in every channel (luminance noise), the others colour noise.
    """
    b = x.shape[0]
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    gray4 = _per_sample(gray, b, x.device, torch.bool)
    noise = torch.where(gray4, noise[:, :1].expand_as(noise), noise)
    return (x + noise * _per_sample(sigma, b, x.device, x.dtype)).clamp_(0, 1)


def add_poisson_noise(x: torch.Tensor, scale, gray=False, generator: torch.Generator | None = None,
                      levels: float = 255.0) -> torch.Tensor:
    """Shot noise: each pixel value v is taken as a photon count v * levels, resampled from a
    Poisson law and scaled back, so the noise variance is scale^2 * v / levels (brighter pixels are
    noisier). `scale` per sample; gray samples draw one noise from the luminance for all channels."""
    b = x.shape[0]
    gray = _per_sample(gray, b, x.device, torch.bool).view(b)
    noise = torch.empty_like(x)
    # Poisson sampling is slow on CPU, so gray samples draw one channel, not three.
    for mask, src_of in ((gray, _luma), (~gray, lambda t: t)):
        if mask.any():
            src = src_of(x[mask]).clamp(0, 1)
            noise[mask] = torch.poisson(src * levels, generator=generator) / levels - src
    return (x + noise * _per_sample(scale, b, x.device, x.dtype)).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------
# JPEG: baseline encoder + decoder round trip, batched in torch, one quality per sample.
# What makes JPEG artefacts is kept: 8-bit YCbCr, 4:2:0 chroma, 8x8 DCT, the standard tables
# scaled by quality the way libjpeg does, rounding of coefficients and of decoded samples.

_LUMA_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float32)  # ITU-T T.81 Annex K, table K.1
_CHROMA_TABLE = np.full((8, 8), 99, dtype=np.float32)       # table K.2
_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]

_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114],
                        [-0.168735892, -0.331264108, 0.5],
                        [0.5, -0.418687589, -0.081312411]], dtype=np.float32)  # JFIF
_YCC_TO_RGB = np.array([[1.0, 0.0, 1.402],
                        [1.0, -0.344136286, -0.714136286],
                        [1.0, 1.772, 0.0]], dtype=np.float32)


_DCT64 = block_dct_matrix().astype(np.float32)


def jpeg_quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) qualities 1..100 -> luma and chroma tables (B, 8, 8), scaled like libjpeg's
    jpeg_set_quality (50 = the standard tables, 100 = all ones)."""
    q = torch.round(quality.float()).clamp(1, 100)
    s = torch.where(q < 50, torch.floor(5000 / q), 200 - 2 * q).view(-1, 1, 1)

    def scaled(table: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(table).to(q.device)
        return torch.floor((t * s + 50) / 100).clamp(1, 255)

    return scaled(_LUMA_TABLE), scaled(_CHROMA_TABLE)


def _quantize_blocks(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Level-shifted planes (B, C, H, W), H and W multiples of 8 -> decoded planes, 8-bit values."""
    b, c, h, w = x.shape
    d = torch.from_numpy(_DCT64).to(x.device, x.dtype)
    blocks = x.view(b, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(b, -1, 64)
    t = table.to(x.dtype).view(b, 1, 64)
    coef = torch.round((blocks @ d.T) / t) * t
    out = (coef @ d).view(b, c, h // 8, w // 8, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)
    return torch.round(out + 128).clamp_(0, 255)


def _color(m: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """3x3 colour matrix applied to (B, 3, H, W)."""
    b, _, h, w = x.shape
    return (torch.from_numpy(m).to(x.device, x.dtype) @ x.reshape(b, 3, h * w)).view(b, 3, h, w)


def jpeg_compress(x: torch.Tensor, quality) -> torch.Tensor:
    """JPEG-compress and decode a (B, 3, H, W) batch in [0, 1]; `quality` is 1..100, a number or
    one per sample. Close to (not bit-exact with) libjpeg with 4:2:0 chroma subsampling."""
    b, c, h, w = x.shape
    if c != 3:
        raise ValueError(f"jpeg_compress: expected 3 channels, got shape {tuple(x.shape)}")
    quality = torch.as_tensor(quality, dtype=torch.float32, device=x.device).expand(b)
    luma_t, chroma_t = jpeg_quant_tables(quality)
    img = torch.round(x.float().clamp(0, 1) * 255)
    # libjpeg fills partial MCUs (16x16 for 4:2:0) by repeating the last row and column.
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), mode="replicate")
    ycc = _color(_RGB_TO_YCC, img)
    ycc[:, 1:] += 128
    ycc = torch.round(ycc).clamp_(0, 255)
    y = _quantize_blocks(ycc[:, :1] - 128, luma_t)
    cbcr = torch.round(F.avg_pool2d(ycc[:, 1:], 2))
    cbcr = _quantize_blocks(cbcr - 128, chroma_t)
    # libjpeg's default "fancy" upsampling is the 3/4, 1/4 triangle filter, i.e. bilinear x2.
    cbcr = torch.round(F.interpolate(cbcr, scale_factor=2, mode="bilinear", align_corners=False))
    ycc = torch.cat([y, cbcr - 128], dim=1)
    rgb = _color(_YCC_TO_RGB, ycc)
    rgb = torch.round(rgb).clamp_(0, 255)[:, :, :h, :w]
    return (rgb / 255).to(x.dtype)


# =============================================================================================
# realistic degradation: the pipeline

def check_degrade_config(d: DegradeConfig) -> None:
    """Raise DegradeConfigError naming the first `degrade.*` value that is out of range."""
    def fail(key: str, msg: str) -> None:
        raise DegradeConfigError(f"degrade.{key} = {getattr(d, key)!r}: {msg}")

    def check_range(key: str, lo: float, hi: float) -> None:
        v = getattr(d, key)
        if len(v) != 2 or not lo <= v[0] <= v[1] <= hi:
            fail(key, f"expected [low, high] with {lo} <= low <= high <= {hi}")

    def check_prob(key: str) -> None:
        if not 0.0 <= getattr(d, key) <= 1.0:
            fail(key, "a probability must be in [0, 1]")

    def check_choice(key: str, allowed: tuple[str, ...]) -> None:
        v = getattr(d, key)
        if (not v or set(v) - set(allowed) or not all(isinstance(p, (int, float)) for p in v.values())
                or min(v.values()) < 0 or abs(sum(v.values()) - 1) > 1e-6):
            fail(key, f"expected probabilities summing to 1 for keys from {list(allowed)}")

    ks = d.kernel_size
    if len(ks) != 2 or ks[0] < 3 or ks[0] > ks[1] or ks[0] % 2 == 0 or ks[1] % 2 == 0:
        fail("kernel_size", "expected [smallest, largest] odd sizes >= 3, e.g. [7, 21]")
    check_range("betag", 1e-3, math.inf)
    check_range("betap", 1e-3, math.inf)
    if not d.resize_modes or set(d.resize_modes) - set(RESIZE_MODES):
        fail("resize_modes", f"expected a non-empty list from {list(RESIZE_MODES)}")
    for sfx in ("", "2"):
        check_range("blur_sigma" + sfx, 1e-3, math.inf)
        check_range("noise_sigma" + sfx, 0.0, 255.0)
        check_range("poisson_scale" + sfx, 0.0, math.inf)
        check_range("jpeg_quality" + sfx, 1.0, 100.0)
        check_choice("kernel_probs" + sfx, KERNEL_TYPES)
        check_choice("resize_probs" + sfx, RESIZE_CHOICES)
        for key in ("sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
            check_prob(key + sfx)
        lo, hi = getattr(d, "resize_range" + sfx)
        if not 0 < lo <= 1 <= hi:
            fail("resize_range" + sfx, "expected [low, high] with 0 < low <= 1 <= high")
    check_prob("second_blur_prob")
    check_prob("final_sinc_prob")


@dataclass
class _Stage:
    """One order of the degradation: the DegradeConfig fields with or without the "2" suffix."""
    kernel_probs: dict[str, float]
    blur_sigma: list[float]
    sinc_prob: float
    resize_probs: dict[str, float]
    resize_range: list[float]
    gaussian_noise_prob: float
    noise_sigma: list[float]
    poisson_scale: list[float]
    gray_noise_prob: float
    jpeg_quality: list[float]

    @classmethod
    def from_config(cls, d: DegradeConfig, suffix: str) -> "_Stage":
        return cls(**{f: getattr(d, f + suffix) for f in cls.__dataclass_fields__})


def make_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, rank): pass it to RealisticDegrader so the
    degradation of a training step is the same after a resume and differs between DDP ranks."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class RealisticDegrader:
    """Real-ESRGAN's second-order degradation of HR batches (paper section 3, defaults section 4.1).

        degrader = RealisticDegrader(cfg.degrade, scale=4)
        lr = degrader(hr, generator=make_generator(seed, step, rank))  # (B, 3, H/4, W/4)

    Order: [blur, resize, noise, JPEG] with the first-stage ranges; [blur (skipped with probability
    1 - second_blur_prob), resize, noise] with the second-stage ranges; then either
    [resize to H/scale, sinc, JPEG] or [JPEG, resize to H/scale, sinc], with equal probability (the
    sinc is an identity with probability 1 - final_sinc_prob). Blur kernels, noise and JPEG quality
    are drawn per sample; a resize has one factor and mode per batch because a batch has one shape.
    The second resize is relative to the final LR size, as in the authors' release, so the chain
    of two downscales cannot shrink the image below resize_range2[0] of the LR size.
    """

    def __init__(self, cfg: DegradeConfig, scale: int) -> None:
        check_degrade_config(cfg)
        if scale < 1:
            raise ValueError(f"RealisticDegrader: scale must be >= 1, got {scale}")
        self.cfg, self.scale = cfg, int(scale)
        self.stages = (_Stage.from_config(cfg, ""), _Stage.from_config(cfg, "2"))
        lo, hi = cfg.kernel_size
        self.kernel_sizes = np.arange(lo, hi + 1, 2)

    @torch.no_grad()
    def __call__(self, hr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if hr.ndim != 4 or hr.shape[1] != 3:
            raise ValueError(f"RealisticDegrader: expected a (B, 3, H, W) batch, got {tuple(hr.shape)}")
        b, _, h, w = hr.shape
        s = self.scale
        if h % s or w % s:
            raise ValueError(f"RealisticDegrader: HR size {h}x{w} is not a multiple of scale {s}")
        rng, noise_gen = _split_generator(generator, hr.device)
        one, two = self.stages
        lr_size = (h // s, w // s)
        out = hr.float()

        out = filter2d(out, _stack_kernels([self._blur_kernel(rng, one) for _ in range(b)]))
        factor = self._resize_factor(rng, one)
        out = resize(out, (int(h * factor), int(w * factor)), rng.choice(self.cfg.resize_modes))
        out = self._noise(out, rng, noise_gen, one)
        out = jpeg_compress(out, rng.uniform(*one.jpeg_quality, size=b))

        blur2 = rng.random(b) < self.cfg.second_blur_prob
        kernels = [self._blur_kernel(rng, two) if blur2[i] else _pulse() for i in range(b)]
        out = filter2d(out, _stack_kernels(kernels))
        factor = self._resize_factor(rng, two)
        out = resize(out, (int(lr_size[0] * factor), int(lr_size[1] * factor)),
                     rng.choice(self.cfg.resize_modes))
        out = self._noise(out, rng, noise_gen, two)

        final_sinc = rng.random(b) < self.cfg.final_sinc_prob
        sincs = _stack_kernels([self._final_sinc(rng) if final_sinc[i] else _pulse() for i in range(b)])
        mode = rng.choice(self.cfg.resize_modes)
        quality = rng.uniform(*two.jpeg_quality, size=b)
        if rng.random() < 0.5:
            out = filter2d(resize(out, lr_size, mode), sincs)
            out = jpeg_compress(out, quality)
        else:
            out = jpeg_compress(out, quality)
            out = filter2d(resize(out, lr_size, mode), sincs)
        # The model will see 8-bit images at test time.
        return torch.round(out.clamp(0, 1) * 255) / 255

    def _blur_kernel(self, rng: np.random.Generator, st: _Stage) -> np.ndarray:
        size = int(rng.choice(self.kernel_sizes))
        if rng.random() < st.sinc_prob:
            # Small kernels cannot hold the slow ringing of a low cutoff, so it is bounded there.
            low = math.pi / 3 if size < 13 else math.pi / 5
            return sinc_kernel(size, rng.uniform(low, math.pi))
        names = list(st.kernel_probs)
        kind = names[rng.choice(len(names), p=np.array([st.kernel_probs[n] for n in names]))]
        shape = {"generalized": "generalized", "plateau": "plateau"}.get(kind.split("_")[0], "gaussian")
        sx = rng.uniform(*st.blur_sigma)
        if kind.endswith("aniso"):
            sy, theta = rng.uniform(*st.blur_sigma), rng.uniform(-math.pi, math.pi)
        else:
            sy, theta = sx, 0.0
        beta = {"gaussian": lambda: 1.0, "generalized": lambda: rng.uniform(*self.cfg.betag),
                "plateau": lambda: rng.uniform(*self.cfg.betap)}[shape]()
        return gaussian_kernel(size, sx, sy, theta, beta=beta, shape=shape)

    def _final_sinc(self, rng: np.random.Generator) -> np.ndarray:
        return sinc_kernel(int(rng.choice(self.kernel_sizes)), rng.uniform(math.pi / 3, math.pi))

    @staticmethod
    def _resize_factor(rng: np.random.Generator, st: _Stage) -> float:
        names = list(st.resize_probs)
        choice = names[rng.choice(len(names), p=np.array([st.resize_probs[n] for n in names]))]
        lo, hi = st.resize_range
        return {"up": lambda: rng.uniform(1, hi), "down": lambda: rng.uniform(lo, 1),
                "keep": lambda: 1.0}[choice]()

    @staticmethod
    def _noise(x: torch.Tensor, rng: np.random.Generator, gen: torch.Generator, st: _Stage) -> torch.Tensor:
        b = x.shape[0]
        gaussian = rng.random(b) < st.gaussian_noise_prob
        gray = torch.from_numpy(rng.random(b) < st.gray_noise_prob)
        sigma = torch.from_numpy(rng.uniform(*st.noise_sigma, size=b) / 255)
        pscale = torch.from_numpy(rng.uniform(*st.poisson_scale, size=b))
        out = x.clone()
        for mask, add, amount in ((gaussian, add_gaussian_noise, sigma), (~gaussian, add_poisson_noise, pscale)):
            if mask.any():
                idx = torch.from_numpy(np.flatnonzero(mask))
                out[idx.to(x.device)] = add(x[idx.to(x.device)], amount[idx].float(), gray[idx], generator=gen)
        return out


def _pulse() -> np.ndarray:
    """The identity kernel, for samples that skip a filter inside a batched convolution."""
    k = np.zeros((1, 1))
    k[0, 0] = 1.0
    return k


def _split_generator(generator: torch.Generator | None,
                     device: torch.device) -> tuple[np.random.Generator, torch.Generator]:
    """One draw from `generator` (or torch's global RNG) seeds both the numpy RNG for the small
    per-sample parameters and a generator on `device` for the noise images, so a CPU generator
    reproduces a batch on any device without copying noise from the host."""
    where = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=where))
    ss = np.random.SeedSequence(seed)
    noise_gen = torch.Generator(device=device)
    noise_gen.manual_seed(int(ss.spawn(1)[0].generate_state(1, np.uint64)[0] >> 1))
    return np.random.default_rng(ss), noise_gen


# =============================================================================================
# named degradations for one image: `superres degrade` and the degraded tracks of `superres eval`

DEGRADATIONS = ("bicubic", "realistic", "camera")

# The `camera` preset: one pass of what a decent camera or phone does to a photo that is later
# shrunk, milder than the realistic pipeline: a slight isotropic blur (lens, demosaicing), a
# downscale, sensor noise (shot or read noise, partly luminance-only) and one JPEG at 50-90.
CAMERA = _Stage(kernel_probs={"iso": 1.0}, blur_sigma=[0.2, 1.0], sinc_prob=0.0,
                resize_probs={"keep": 1.0}, resize_range=[1.0, 1.0], gaussian_noise_prob=0.5,
                noise_sigma=[1.0, 10.0], poisson_scale=[0.05, 1.0], gray_noise_prob=0.4,
                jpeg_quality=[50.0, 90.0])
_CAMERA_KERNEL = 9  # covers +-4 px: 4 sigma of the largest camera blur


def image_seed(seed: int, name: str) -> int:
    """The seed of one image's degradation: a function of (seed, file name) only, so two runs, two
    machines and any order or subset of the images give every image the same LR."""
    digest = hashlib.sha256(f"{int(seed)}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def camera_degrade(hr: torch.Tensor, scale: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, H/scale, W/scale) quantised to 8 bits: the `camera` preset."""
    b, _, h, w = hr.shape
    rng, noise_gen = _split_generator(generator, hr.device)
    kernels = [gaussian_kernel(_CAMERA_KERNEL, s, s) for s in rng.uniform(*CAMERA.blur_sigma, size=b)]
    out = filter2d(hr.float(), _stack_kernels(kernels))
    out = resize(out, (h // scale, w // scale), str(rng.choice(RESIZE_MODES)))
    out = RealisticDegrader._noise(out, rng, noise_gen, CAMERA)
    out = jpeg_compress(out, rng.uniform(*CAMERA.jpeg_quality, size=b))
    return torch.round(out.clamp(0, 1) * 255) / 255


def degrade_image(hr: np.ndarray, preset: str, scale: int, seed: int = 0,
                  cfg: DegradeConfig | None = None) -> np.ndarray:
    """uint8 HxW or HxWx3 -> uint8 (H/scale)x(W/scale)[x3], after cropping H and W to multiples of
    scale. `bicubic` is the benchmark LR (MATLAB bicubic, no randomness); `realistic` one draw of
    the Real-ESRGAN pipeline with `cfg`'s ranges (the paper's without one); `camera` the milder
    preset above. The same seed gives the same image; a gray image stays gray."""
    if preset not in DEGRADATIONS:
        raise ValueError(f"degradation {preset!r}; allowed values: {list(DEGRADATIONS)}")
    if hr.dtype != np.uint8 or hr.ndim not in (2, 3) or (hr.ndim == 3 and hr.shape[2] != 3):
        raise ValueError(f"degrade_image: expected uint8 HxW or HxWx3, got {hr.dtype} {hr.shape}")
    h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
    if h == 0 or w == 0:
        raise ValueError(f"a {hr.shape[1]}x{hr.shape[0]} image is smaller than the scale {scale}")
    hr = hr[:h, :w]
    if preset == "bicubic":
        return imresize(hr, 1 / scale)
    gray = hr.ndim == 2
    rgb = np.repeat(hr[..., None], 3, axis=2) if gray else hr
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255)[None]
    gen = torch.Generator().manual_seed(int(seed))
    if preset == "realistic":
        lr = RealisticDegrader(cfg or DegradeConfig(), scale)(x, generator=gen)
    else:
        lr = camera_degrade(x, scale, gen)
    out = (lr[0] * 255).round().byte().permute(1, 2, 0).numpy()
    if gray:
        # Colour noise on a gray photo has nowhere to go: keep its luminance (BT.601 weights).
        out = np.clip(np.round(out.astype(np.float64) @ np.array([0.299, 0.587, 0.114])), 0, 255)
        out = out.astype(np.uint8)
    return out
