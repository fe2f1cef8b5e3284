"""`superres degrade`: apply a training degradation to one image, to see what the model will learn
to undo.

    superres degrade photo.png -o photo_lr.png --preset realistic --seed 3 --scale 4

`bicubic` is the benchmark LR (MATLAB bicubic); `realistic` is one draw of the Real-ESRGAN
pipeline with the ranges of `[degrade]` in a training config (the paper's defaults without one).
The same seed gives the same image.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import ConfigError, DegradeConfig, load_config
from .data import load_rgb_uint8
from .degrade import RealisticDegrader, imresize
from .weights import atomic_write_bytes

log = logging.getLogger(__name__)

PRESETS = ("bicubic", "realistic")


def degrade_image(hr: np.ndarray, preset: str, scale: int, seed: int = 0,
                  cfg: DegradeConfig | None = None) -> np.ndarray:
    """HxWx3 uint8 -> (H/scale)x(W/scale)x3 uint8, after cropping H and W to multiples of scale."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}; allowed values: {list(PRESETS)}")
    h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
    if h == 0 or w == 0:
        raise ValueError(f"a {hr.shape[1]}x{hr.shape[0]} image is smaller than the scale {scale}")
    hr = hr[:h, :w]
    if preset == "bicubic":
        return imresize(hr, 1 / scale)
    x = torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1))).float().div_(255)[None]
    lr = RealisticDegrader(cfg or DegradeConfig(), scale)(x, generator=torch.Generator().manual_seed(seed))
    return (lr[0] * 255).round().byte().permute(1, 2, 0).numpy()


def add_degrade_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="HR image")
    p.add_argument("-o", "--output", required=True, help="LR image to write (format from the extension)")
    p.add_argument("--preset", choices=PRESETS, default="realistic", help="degradation (default realistic)")
    p.add_argument("--seed", type=int, default=0, help="random draw of the realistic pipeline (default 0)")
    p.add_argument("--scale", type=int, default=4, help="downscaling factor (default 4)")
    p.add_argument("--config", default=None,
                   help="training config whose [degrade] ranges to use (default: the paper's)")


def run_degrade(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config).degrade if args.config else DegradeConfig()
    except ConfigError as e:
        log.error("%s", e)
        return 2
    out = Path(args.output)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        log.error("cannot tell the image format of %s from its extension; use .png, .jpg, ...", out)
        return 2
    if args.scale < 1:
        log.error("--scale %d: must be >= 1", args.scale)
        return 2
    try:
        lr = degrade_image(load_rgb_uint8(args.image), args.preset, args.scale, args.seed, cfg)
    except (OSError, ValueError) as e:
        log.error("%s: %s", args.image, e)
        return 2
    # JPEG output would add its own compression on top of the one being shown.
    params = {"quality": 100} if fmt == "JPEG" else {}
    atomic_write_bytes(out, lambda tmp: Image.fromarray(lr).save(tmp, format=fmt, **params))
    log.info("%s: %s x%d -> %s (%dx%d)", args.image, args.preset, args.scale, out, lr.shape[1], lr.shape[0])
    return 0
