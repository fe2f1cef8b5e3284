"""How far a strength rule could take the photo family: every fixed blend, and the best blend per image.

    superres eval --model bicubic --data Set5 --data Set14 --degrade realistic --seed 0 --save-lr lr
    PYTHONPATH=. python benchmarks/strength_oracle.py --lr lr/Set5-realistic --hr Set5 \
        --lr lr/Set14-realistic --hr Set14

The LR images are the ones `superres eval` scores (its --save-lr), so the numbers line up with its
table. For each image it runs the default family (photo-x4) at strengths 0, 0.2, ..., 1 and scores
PSNR, LF-PSNR and HF-CORR on the Y channel (shave = scale). It prints the set's mean at each fixed
strength, then the "oracle": each image at the strength that maximises its HF-CORR (with the PSNR
and LF-PSNR that choice gives). An oracle below a bar means no rule on these two models can meet
it; only better models can. Validation sets only (never a test set: the oracle looks at the HR).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from superres.data.datasets import hr_folder, list_images, load_rgb_uint8
from superres.evaluation.metrics import hf_corr, lf_psnr, psnr
from superres.inference.upscaler import Upscaler

STRENGTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", action="append", required=True, help="folder of LR images (repeatable)")
    p.add_argument("--hr", action="append", required=True, help="its HR folder, same names (repeatable)")
    p.add_argument("--model", default="photo-x4")
    a = p.parse_args()
    if len(a.lr) != len(a.hr):
        p.error("give one --hr for each --lr")
    up = Upscaler.from_pretrained(a.model, precision="fp32")
    scale = up.scale
    for lr_dir, hr_dir in zip(a.lr, a.hr):
        hr_root = hr_folder(Path(hr_dir))
        scores = []   # image x strength x (hf-corr, psnr, lf-psnr)
        for path in list_images(Path(lr_dir)):
            lr = load_rgb_uint8(path)
            hr = load_rgb_uint8(hr_root / path.name)[:lr.shape[0] * scale, :lr.shape[1] * scale]
            row = []
            for s in STRENGTHS:
                sr = up.upscale_pixels(lr, strength=s)
                row.append((hf_corr(sr, hr, scale), psnr(sr, hr, scale), lf_psnr(sr, hr, scale)))
            scores.append(row)
        arr = np.array(scores)
        mean = arr.mean(axis=0)
        print(f"{lr_dir} ({len(arr)} images)")
        print("| strength | PSNR | LF-PSNR | HF-CORR |\n|---:|---:|---:|---:|")
        for s, (hf, ps, lf) in zip(STRENGTHS, mean):
            print(f"| {s:g} | {ps:.2f} | {lf:.2f} | {hf:.4f} |")
        best = arr[:, :, 0].argmax(axis=1)
        pick = arr[np.arange(len(arr)), best]
        hf, ps, lf = pick.mean(axis=0)
        print(f"| oracle (best HF-CORR per image) | {ps:.2f} | {lf:.2f} | {hf:.4f} |")
        print("oracle strengths:", " ".join(f"{STRENGTHS[b]:g}" for b in best), "\n")


if __name__ == "__main__":
    main()
