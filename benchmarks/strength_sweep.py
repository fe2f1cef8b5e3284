"""Sweep the photo family's blend (0 = light model, 1 = heavy model) over degraded validation images.

For each HR image of the folders given (validation sets and the training folders' holdouts only;
never a test set), makes LR images of several kinds (clean MATLAB bicubic, the camera and realistic
presets, Gaussian noise, real JPEG files of several qualities, blur + noise + JPEG), runs the blend at
each strength, and writes one JSON line per (image, kind): the input analysis of the LR and the Y
PSNR, LF-PSNR and HF-CORR (shave = scale) at every strength. `fit_strength_rule.py` fits `--strength auto` to it.

  PYTHONPATH=. python benchmarks/strength_sweep.py --light L.safetensors --heavy realnet-x4 \
      --data Set5 --data Set14 --holdout-data T91 --holdout-data BSD200 --out sweep.jsonl
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from superres.data.datasets import held_out_images, hr_folder, list_images, load_rgb_uint8
from superres.data.degrade import degrade_image, image_seed
from superres.data.resize import imresize
from superres.evaluation.metrics import hf_corr, lf_psnr, psnr
from superres.inference.analysis import analyze_image
from superres.inference.core import upscale_tensor
from superres.inference.interpolate import interpolate_state_dicts
from superres.inference.models import resolve_model_path
from superres.inference.weights import load_generator, read_state_dict

SCALE = 4


def jpeg_roundtrip(lr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(lr).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def noisy(lr: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(lr + rng.normal(0, sigma, lr.shape)), 0, 255).astype(np.uint8)


def blurred(hr: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    return np.clip(np.round(gaussian_filter(hr.astype(np.float64), (sigma, sigma, 0))), 0, 255).astype(np.uint8)


def variants(hr: np.ndarray, name: str):
    seed = image_seed(0, name) % (2**31)
    clean = imresize(hr, 1 / SCALE)
    yield "clean", clean
    yield "camera", degrade_image(hr, "camera", SCALE, image_seed(0, name))
    yield "realistic", degrade_image(hr, "realistic", SCALE, image_seed(0, name))
    yield "realistic-s1", degrade_image(hr, "realistic", SCALE, image_seed(1, name))
    for s in (3, 8, 15):
        yield f"noise{s}", noisy(clean, s, seed + s)
    for q in (85, 60, 35):
        yield f"jpeg{q}", jpeg_roundtrip(clean, q)
    yield "blur-noise5-jpeg70", jpeg_roundtrip(noisy(imresize(blurred(hr, 1.0), 1 / SCALE), 5, seed), 70)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--light", required=True)
    ap.add_argument("--heavy", required=True)
    ap.add_argument("--data", action="append", default=[])
    ap.add_argument("--holdout-data", action="append", default=[])
    ap.add_argument("--holdout", type=int, default=10)
    ap.add_argument("--strengths", default="0,0.2,0.4,0.6,0.8,1")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    light, _ = read_state_dict(resolve_model_path(a.light))
    model, _ = load_generator(resolve_model_path(a.heavy))
    heavy = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    strengths = [float(s) for s in a.strengths.split(",")]
    blends = {s: interpolate_state_dicts(light, heavy, s) for s in strengths}
    images = [(Path(d).name, p) for d in a.data for p in list_images(hr_folder(d))]
    images += [(Path(d).name + "-holdout", p) for d in a.holdout_data for p in held_out_images(d, a.holdout)]
    done = set()
    out = Path(a.out)
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["set"], r["image"], r["kind"]))
    with out.open("a") as f:
        for i, (set_name, path) in enumerate(images):
            hr = load_rgb_uint8(path)
            hr = hr[:hr.shape[0] // SCALE * SCALE, :hr.shape[1] // SCALE * SCALE]
            for kind, lr in variants(hr, path.name):
                if (set_name, path.stem, kind) in done:
                    continue
                row = {"set": set_name, "image": path.stem, "kind": kind, "analysis": analyze_image(lr), "psnr": {},
                       "lf-psnr": {}, "hf-corr": {}}
                x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))).float().div(255)[None]
                for s, sd in blends.items():
                    model.load_state_dict(sd)
                    y = upscale_tensor(model, x)
                    sr = (y[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                    row["psnr"][f"{s:g}"] = round(psnr(sr, hr, SCALE), 4)
                    row["lf-psnr"][f"{s:g}"] = round(lf_psnr(sr, hr, SCALE), 4)
                    row["hf-corr"][f"{s:g}"] = round(hf_corr(sr, hr, SCALE), 4)
                f.write(json.dumps(row) + "\n")
                f.flush()
            print(f"{i + 1}/{len(images)} {set_name}/{path.name}", flush=True)


if __name__ == "__main__":
    main()
