"""int8 inference on the CPU (`--precision int8`): a generator statically quantized by ONNX Runtime.

The fp32 generator is exported to ONNX (export.export_onnx) and quantized with
`onnxruntime.quantization.quantize_static`: QDQ format, per-channel int8 weights, uint8 activations
with reduce_range (7-bit activations: without AVX-512 VNNI the u8 x s8 multiply-add can saturate at
8 bits), MinMax ranges. ONNX Runtime fuses the QDQ pairs into integer convolutions on its CPU
provider; there is no int8 kernel on CUDA or MPS here, so int8 is CPU only.

Calibration: static quantization fixes every activation's range in advance from sample inputs.
Ranges are taken from LR patches of training images (T91 and BSD200, never a benchmark set),
made the way training makes them: random HR crops of CALIB_SIZE * scale pixels, downscaled by
MATLAB bicubic (degrade.imresize); CALIB_PATCHES patches, seed CALIB_SEED.

The shipped models come with their int8 file beside the weights (`psnr-x4.int8.onnx`), made by

    python -m superres.int8 --model psnr-x4 --calib-dir ../shared/data/train/T91 \\
        --calib-dir ../shared/data/train/BSD200

It records the sha256 of the weights it was made from; a file that does not match its weights is
refused rather than silently used. Any other generator (a weights file, a --strength blend) is
quantized when it is loaded, from calibration images the caller gives (`int8_calibration`,
`--int8-calibration DIR`): about a minute for an MSRResNet, and photos like the ones to upscale.

Measured with an AVX2 CPU, one thread (benchmarks/int8_experiment.py, numbers in its docstring):
psnr-x4 2.5x the speed of fp32 for 0.011 dB less PSNR on Set14; all four shipped models 2.2-2.5x
for at most 0.032 dB.
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
