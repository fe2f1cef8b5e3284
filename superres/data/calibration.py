"""Calibration patches for static int8 quantization: seeded LR crops of image folders, made by one
of the named degradations (bicubic, realistic, camera).
"""
from __future__ import annotations

import logging
import os
from typing import Iterable

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = ["CALIB_PATCHES", "CALIB_SIZE", "CALIB_SEED", "calibration_patches"]

CALIB_PATCHES = 48    # LR patches; more changed nothing measurable in MinMax ranges of our nets
CALIB_SIZE = 48       # LR side; HR crops of 192 (x4) fit all but a few of T91's smallest images
CALIB_SEED = 0


# ---------------------------------------------------------------------------------------------
# calibration data

def calibration_patches(folders: Iterable[str | os.PathLike], scale: int, *, count: int = CALIB_PATCHES,
                        lr_size: int = CALIB_SIZE, seed: int = CALIB_SEED,
                        degrade: str = "bicubic") -> torch.Tensor:
    """(count, 3, lr_size, lr_size) float LR patches in [0, 1]: one random HR crop of lr_size * scale
    from each of `count` images drawn at random from the folders, made LR by `degrade` (a name in
    degrade.DEGRADATIONS: MATLAB bicubic by default; `realistic` for a model meant for real photos,
    whose activations on noisy, blocky inputs reach ranges clean LR never shows). Images smaller
    than the crop are passed over."""
    from .datasets import list_images, read_uint8
    from .degrade import DEGRADATIONS, degrade_image, image_seed

    if degrade not in DEGRADATIONS:
        raise ValueError(f"int8 calibration degradation {degrade!r}; allowed values: {', '.join(DEGRADATIONS)}")

    folders = list(folders)
    rng = np.random.default_rng(seed)
    paths = [p for folder in folders for p in list_images(folder, recursive=False)]
    hr_side = lr_size * scale
    patches = []
    for i in rng.permutation(len(paths)):
        img = read_uint8(paths[i], gray=False)
        h, w = img.shape[:2]
        if h < hr_side or w < hr_side:
            continue
        top, left = int(rng.integers(0, h - hr_side + 1)), int(rng.integers(0, w - hr_side + 1))
        crop = np.ascontiguousarray(img[top:top + hr_side, left:left + hr_side])
        # seeded per file like `eval --degrade`, so a rerun makes the same patches
        lr = degrade_image(crop, degrade, scale, seed=image_seed(seed, paths[i].name))
        patches.append(torch.from_numpy(lr).permute(2, 0, 1).float() / 255.0)
        if len(patches) == count:
            break
    if len(patches) < count:
        raise ValueError(f"int8 calibration: only {len(patches)} images in {', '.join(map(str, folders))} are at "
                        f"least {hr_side}x{hr_side}; {count} are needed")
    return torch.stack(patches)
