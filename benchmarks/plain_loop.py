"""The plain torch fp32 loop, end to end: what a user writes by hand to upscale one photo.

    /usr/bin/time -f "%e s %M KB" python benchmarks/plain_loop.py photo.png out.png [--model NAME]
    /usr/bin/time -f "%e s %M KB" superres upscale photo.png -o out2.png          # beside it

As SRGAN / Real-ESRGAN inference scripts do it: import torch, build the generator and load its
weights, read the image with PIL, run the whole image through the network in fp32 eager mode under
`torch.no_grad`, round, and save with PIL's PNG encoder at its defaults. No tiling, no allocator
settings, no engine, no strength blend (the default family's light end alone: the same
convolutions, so the same arithmetic per pixel). Only our loader is used, so that the weights file
and architecture are the ones the CLI runs. Run both commands interleaved, several times, on an idle
machine, and compare medians of the ratio: one-off timings on a shared VM swing by 20% or more.
"""
from __future__ import annotations

import argparse
import time

t_start = time.perf_counter()

import numpy as np
import torch
from PIL import Image

from superres.inference.models import resolve_model_path
from superres.inference.weights import load_generator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--model", default="photo-x4-light",
                   help="a shipped model name or a weights file (default: the default family's light end)")
    a = p.parse_args()
    model, _ = load_generator(resolve_model_path(a.model))
    model.eval()
    t_loaded = time.perf_counter()
    rgb = np.asarray(Image.open(a.input).convert("RGB"))
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        y = model(x)
    t_model = time.perf_counter()
    out = (y[0].clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(out).save(a.output)
    t_end = time.perf_counter()
    print(f"start-up + load {t_loaded - t_start:.2f} s, read + model {t_model - t_loaded:.2f} s, "
          f"PNG save {t_end - t_model:.2f} s, total in Python {t_end - t_start:.2f} s")


if __name__ == "__main__":
    main()
