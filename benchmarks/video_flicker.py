"""Flicker of each model on a static-camera clip: how much the output changes between frames that
show the same scene, against the same measure for bicubic.

    PYTHONPATH=. python benchmarks/video_flicker.py --image examples/chelsea.png --crop 160x120
    PYTHONPATH=. python benchmarks/video_flicker.py --model gan-x4 --model psnr-x4 --json flicker.json

The clip is made from one photo: FRAMES copies of a crop, each with fresh sensor noise (Gaussian,
sigma --noise levels) and encoded with x264 (CRF 23), as a tripod shot of a still scene would be.
Everything that changes from frame to frame is noise or compression, so the mean absolute
difference between consecutive frames (8-bit levels) measures shimmer. It is reported for the
bicubic upscale of the decoded clip and for each model through `superres.video.upscale_video`
(the same code as `superres upscale clip.mp4`), and as a ratio model / bicubic: 1 = no more
flicker than the input, above 1 = the model amplifies frame-to-frame noise.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def make_static_clip(photo: np.ndarray, path: Path, frames: int, noise: float, fps: int = 15, seed: int = 0):
    import av
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "medium"})
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            noisy = np.clip(photo + rng.normal(0, noise, photo.shape), 0, 255).astype(np.uint8)
            f = av.VideoFrame.from_ndarray(noisy, format="rgb24")
            f.pts = i
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)


def decode(path: Path) -> list[np.ndarray]:
    import av
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def main() -> int:
    from PIL import Image

    from superres.data.resize import imresize
    from superres.inference.models import MODELS
    from superres.inference.upscaler import Upscaler
    from superres.apps.video import VideoOptions, temporal_difference, upscale_video

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="examples/chelsea.png")
    p.add_argument("--crop", default="160x120", help="WxH crop from the image's centre (default 160x120)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--noise", type=float, default=3.0, help="sensor noise sigma, 8-bit levels (default 3)")
    p.add_argument("--model", action="append", default=None,
                   help="model(s) to measure (default: every shipped x4 model)")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    w, h = (int(v) for v in args.crop.lower().split("x"))
    img = np.asarray(Image.open(args.image).convert("RGB"))
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    photo = img[top:top + h, left:left + w].astype(np.float64)
    models = args.model or [n for n, e in MODELS.items() if e.available and e.scale == 4]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "static.mp4"
        make_static_clip(photo, clip, args.frames, args.noise)
        frames = decode(clip)
        bicubic = temporal_difference([imresize(f, 4.0) for f in frames])
        rows.append({"model": "bicubic", "temporal_diff": round(bicubic, 3), "ratio_to_bicubic": 1.0})
        for name in models:
            out = Path(tmp) / f"{name}.mp4"
            upscale_video(clip, out, Upscaler.from_pretrained(name), VideoOptions(crf=12), progress=False)
            d = temporal_difference(decode(out))
            rows.append({"model": name, "temporal_diff": round(d, 3), "ratio_to_bicubic": round(d / bicubic, 3)})
    res = {"image": args.image, "crop": args.crop, "frames": args.frames, "noise_sigma": args.noise,
           "results": rows}
    print("| model | mean abs. frame difference | vs bicubic |\n| --- | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['temporal_diff']:.3f} | {r['ratio_to_bicubic']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
