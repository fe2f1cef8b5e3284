"""`superres degrade`: apply a training degradation to one image, to see what the model will learn
to undo.

    superres degrade photo.png -o photo_lr.png --preset realistic --seed 3 --scale 4

`bicubic` is the benchmark LR (MATLAB bicubic); `realistic` is one draw of the Real-ESRGAN
pipeline with the ranges of `[degrade]` in a training config (the paper's defaults without one);
`camera` is a milder one-pass preset (slight blur, sensor noise, JPEG 50-90). The same seed gives
the same image; `superres eval --degrade` uses the same presets.
"""
from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

from PIL import Image

from ..data.datasets import load_rgb_uint8
from ..data.degrade import DEGRADATIONS, degrade_image
from ..io.fs import atomic_write
from ..training.config import ConfigError, DegradeConfig, load_config

log = logging.getLogger(__name__)

# Every named degradation: `bicubic`, `realistic`, `camera` (see degrade.degrade_image).
PRESETS = DEGRADATIONS


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
    buf = io.BytesIO()
    Image.fromarray(lr).save(buf, format=fmt, **params)
    atomic_write(out, buf.getvalue())
    log.info("%s: %s x%d -> %s (%dx%d)", args.image, args.preset, args.scale, out, lr.shape[1], lr.shape[0])
    return 0
