"""The README's first picture: one photo as a clean, a phone-JPEG and a badly degraded input,
upscaled x4 by bicubic, the default model (photo-x4, --strength auto) and a peer model.

  PYTHONPATH=. python benchmarks/readme_figure.py examples/chelsea.png --peer RealESRGAN_x4plus.pth \
      -o docs/first_picture.png

The photo is the HR; each row's input is made from it (MATLAB bicubic /4; the same plus JPEG quality
60 over sensor-like noise sigma 3; the realistic pipeline, seed 0). Crops are 1:1 output pixels.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from superres.data.degrade import degrade_image
from superres.data.resize import imresize
from superres.inference.upscaler import Upscaler

SCALE = 4


def phone_jpeg(lr: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    noisy = np.clip(np.round(lr + rng.normal(0, 3.0, lr.shape)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=60)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def label(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + 16), "white")
    out.paste(img, (0, 16))
    ImageDraw.Draw(out).text((3, 2), text, fill="black")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("photo")
    ap.add_argument("--peer", required=True, help="the peer model's weights file (e.g. Real-ESRGAN x4plus)")
    ap.add_argument("--peer-label", default="Real-ESRGAN x4plus")
    ap.add_argument("--crop", default="112,40,224,176", help="left,top,width,height in output pixels")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    hr = np.asarray(Image.open(a.photo).convert("RGB"))
    hr = hr[:hr.shape[0] // SCALE * SCALE, :hr.shape[1] // SCALE * SCALE]
    clean = imresize(hr, 1 / SCALE)
    rows = [("clean", clean), ("phone JPEG", phone_jpeg(clean)),
            ("badly degraded", degrade_image(hr, "realistic", SCALE, seed=0))]
    default = Upscaler.from_pretrained(precision="fp32")
    peer = Upscaler.from_pretrained(a.peer, precision="fp32")
    left, top, w, h = (int(v) for v in a.crop.split(","))
    box = (left, top, left + w, top + h)
    sheet_rows = []
    for name, lr in rows:
        s, end = default.choose_blend(lr)
        panels = [
            (f"{name} input", Image.fromarray(lr).resize((lr.shape[1] * SCALE, lr.shape[0] * SCALE), Image.NEAREST)),
            ("bicubic", Image.fromarray(lr).resize((lr.shape[1] * SCALE, lr.shape[0] * SCALE), Image.BICUBIC)),
            (f"default (strength {s:g}{', clean end' if end == 'clean' else ''})",
             Image.fromarray(default.upscale_pixels(lr, strength=s, end=end))),
            (a.peer_label, Image.fromarray(peer.upscale_pixels(lr))),
        ]
        if name == "clean":
            panels.append(("original", Image.fromarray(hr)))
        tiles = [label(p.crop(box), t) for t, p in panels]
        row = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), tiles[0].height), "white")
        x = 0
        for t in tiles:
            row.paste(t, (x, 0))
            x += t.width + 4
        sheet_rows.append(row)
    width = max(r.width for r in sheet_rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in sheet_rows) + 4 * (len(sheet_rows) - 1)), "white")
    y = 0
    for r in sheet_rows:
        sheet.paste(r, (0, y))
        y += r.height + 4
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.output, optimize=True)
    print(f"wrote {a.output} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
