"""`--strength auto`: how much of a blend family's heavy model an image gets, from its analysis.

A blend family (models.ModelEntry.heavy) is two nets of one architecture fine-tuned from a common
start, so any mix of their weights is a working model (ESRGAN's network interpolation): strength 0
is the light end (keeps everything, removes little), 1 the heavy end (removes noise, blur and JPEG
damage, and some fine detail with them). `auto_strength` maps an input's noise, 8x8 blocking and
detail (analysis.py) to a strength. It reads only the pixels, never the file's JPEG tables, so an
image scores the same as a JPEG, as the PNG decoded from it, and in `superres eval`.

A family may also have a clean end (models.ModelEntry.clean, fine-tuned from the light end): an
input whose pixels show no JPEG history (analysis.jpeg_history: never compressed, e.g. a render, a
scan, a clean downscale) starts its blend from the clean end instead of the light one. A given
strength (`--denoise`, the web page's slider) blends the light and heavy ends, as before.

The rule is a clipped linear function of three measures whose constants were fitted by
`benchmarks/fit_strength_rule.py` to maximize the mean PSNR over a sweep of validation images
(Set5, Set14 and the training folders' holdouts, never a test set) under eleven kinds of
degradation; training_logs/photo-x4/README.md has the fit and its numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .analysis import blockiness, detail, estimate_noise, jpeg_history, luma

__all__ = ["StrengthRule", "AUTO_RULE", "auto_strength", "analyze_for_strength", "STRENGTH_STEP"]

# Strengths are rounded to this step: a few blends serve every image (each is a copy of the net),
# and a change of strength smaller than this is invisible.
STRENGTH_STEP = 0.1


@dataclass(frozen=True)
class StrengthRule:
    """strength = clip(bias + noise_w * noise_sigma + block_w * (blockiness - 1) + detail_w * log(detail))."""

    bias: float
    noise_w: float
    block_w: float
    detail_w: float

    def __call__(self, noise_sigma: float | None, block: float | None, det: float | None) -> float:
        n = 0.0 if noise_sigma is None else float(noise_sigma)
        b = 0.0 if block is None else float(block) - 1.0
        d = 0.0 if not det else math.log(max(float(det), 1e-3))
        s = self.bias + self.noise_w * n + self.block_w * b + self.detail_w * d
        return round(min(1.0, max(0.0, s)) / STRENGTH_STEP) * STRENGTH_STEP


# fitted by benchmarks/fit_strength_rule.py on training_logs/photo-x4/strength_sweep.jsonl
AUTO_RULE = StrengthRule(bias=1.9375, noise_w=-0.1034, block_w=0.0002, detail_w=-0.5172)


def analyze_for_strength(pixels: np.ndarray) -> dict[str, Any]:
    """The pixel measures `--strength auto` reads (noise_sigma, blockiness, detail, and jpeg_history
    for the clean end), as in analysis.py."""
    y = luma(pixels)
    noise = estimate_noise(y)
    det = detail(y)
    return {"noise_sigma": None if noise is None else round(noise, 3),
            "jpeg_history": jpeg_history(y)[0],
            "blockiness": round(blockiness(y), 4),
            "detail": None if det is None else round(det, 3)}


def auto_strength(measures: dict[str, Any], rule: StrengthRule = AUTO_RULE) -> float:
    """The strength for an image with these measures (analyze_for_strength's or analyze_image's)."""
    return round(rule(measures.get("noise_sigma"), measures.get("blockiness"), measures.get("detail")), 2)
