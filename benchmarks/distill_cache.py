"""Cache a teacher's outputs as paired training data for distillation (`data.lr_dirs` mode).

For each training image (holdouts excluded, as `data.holdout` excludes them), takes `--crops` random
HR crops of `--size` pixels, degrades each with the realistic pipeline (seeded by file and crop),
runs the teacher on the LR, and writes

    OUT/lr/NAME_cK.png       the degraded LR (what the student sees)
    OUT/target/NAME_cK.png   the target: the HR's low frequencies + the teacher's high frequencies,
                             G_sigma(HR) + (T - G_sigma(T)), so tone and colour come from the photo
                             and the texture from the teacher

The teacher is needed only here, never at run time. Example (Real-ESRGAN x4plus as the teacher):

  PYTHONPATH=. python benchmarks/distill_cache.py --teacher RealESRGAN_x4plus.pth \
      --data T91 --data BSD200 --data photos --out distill/ --crops 2 --size 192
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from superres.data.datasets import list_images, load_rgb_uint8, split_holdout
from superres.data.degrade import degrade_image, image_seed
from superres.inference.upscaler import Upscaler

SCALE = 4


def mix(hr: np.ndarray, teacher: np.ndarray, sigma: float) -> np.ndarray:
    h, t = hr.astype(np.float64), teacher.astype(np.float64)
    low = gaussian_filter(h, (sigma, sigma, 0), mode="reflect")
    high = t - gaussian_filter(t, (sigma, sigma, 0), mode="reflect")
    return np.clip(np.round(low + high), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--holdout", type=int, default=10)
    ap.add_argument("--crops", type=int, default=2)
    ap.add_argument("--size", type=int, default=192, help="HR crop side (a multiple of 4)")
    ap.add_argument("--sigma", type=float, default=2.0, help="low-pass sigma in HR pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    (out / "lr").mkdir(parents=True, exist_ok=True)
    (out / "target").mkdir(parents=True, exist_ok=True)
    teacher = Upscaler.from_pretrained(a.teacher, precision="fp32", tile=0)
    paths = [p for d in a.data for p in split_holdout(list_images(d), a.holdout)[0]]
    for path in tqdm(paths, desc="teacher"):
        hr_full = load_rgb_uint8(path)
        size = min(a.size, hr_full.shape[0] // SCALE * SCALE, hr_full.shape[1] // SCALE * SCALE)
        if size < 128:
            continue
        rng = np.random.default_rng(image_seed(a.seed, path.name) % 2**32)
        for k in range(a.crops):
            name = f"{path.stem}_c{k}.png"
            if (out / "target" / name).exists():
                continue
            top = int(rng.integers(0, hr_full.shape[0] - size + 1))
            left = int(rng.integers(0, hr_full.shape[1] - size + 1))
            hr = np.ascontiguousarray(hr_full[top:top + size, left:left + size])
            lr = degrade_image(hr, "realistic", SCALE, seed=image_seed(a.seed, name))
            t = teacher.upscale_pixels(lr)
            Image.fromarray(lr).save(out / "lr" / name)
            Image.fromarray(mix(hr, t, a.sigma)).save(out / "target" / name)


if __name__ == "__main__":
    main()
