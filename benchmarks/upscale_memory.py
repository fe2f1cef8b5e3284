"""Peak host memory of one large CPU upscale, against the size of the result.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/upscale_memory.py            # 4000x3000 -> 16000x12000
    PYTHONPATH=. python benchmarks/upscale_memory.py --width 1000 --height 750 --json mem.json

The upscale runs in a fresh subprocess so that its peak RSS (resource.getrusage ru_maxrss of that
process) is the upscale's own and not this script's. The model is an MSRResNet x4 (num_feat 64,
num_block 16) with random weights: memory does not depend on the weights. The tile size is the
Upscaler's default (automatic from free memory), precision its default (auto).

What a good number looks like: the uint8 result has to be held (W*H*3 bytes), plus one band of
float32 tile rows and one tile's activations. A float32 copy of the whole output (W*H*3*4 bytes)
is what a naive "accumulate everything in float, then convert" implementation costs; peak RSS
should stay well under two of those.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MIB = 1 << 20


def _rss_now_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(width: int, height: int, tile: int | None, stand_in: bool) -> None:
    import numpy as np
    import torch

    from superres.archs import build_generator
    from superres.archs.spec import strip_tail_bytes
    from superres.inference.upscaler import Upscaler

    torch.manual_seed(0)
    if stand_in:
        class NearestX4(torch.nn.Module):
            """No activations: what is left is the tiler's own memory (result, band, one tile's I/O),
            at the tile MSRResNet x4 would get."""
            hparams = {"upscale": 4}
            activation_bytes_per_lr_pixel = strip_tail_bytes({"num_feat": 64}, 4)

            def forward(self, x):
                return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")

        model = NearestX4()
    else:
        model = build_generator("msrresnet", num_feat=64, num_block=16, upscale=4)
    up = Upscaler(model, {"arch": "msrresnet", "scale": 4}, device="cpu", tile=tile)
    # a synthetic photo-like image: smooth gradients plus noise, uint8 RGB
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=2) * 200
    del yy, xx
    img = np.clip(base + rng.normal(0, 20, base.shape).astype(np.float32), 0, 255).astype(np.uint8)
    del base
    before = _rss_now_mib()
    tile_used = up.tile_size()   # the automatic size depends on free memory just before the call
    t0 = time.perf_counter()
    out = up.upscale_pixels(img)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux
    print(json.dumps({"peak_rss_mib": peak, "rss_before_upscale_mib": before, "seconds": seconds,
                      "tile": tile_used, "precision": str(up.amp_dtype),
                      "threads": torch.get_num_threads(), "out_shape": list(out.shape),
                      "out_dtype": str(out.dtype)}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--tile", type=int, default=None, help="LR tile side (default: automatic)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    p.add_argument("--stand-in", action="store_true",
                   help="nearest-neighbour x4 in place of the network: the tiler's own memory, in seconds")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.width, args.height, args.tile, args.stand_in)
        return 0
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--width", str(args.width),
           "--height", str(args.height)] + (["--tile", str(args.tile)] if args.tile is not None else []) \
        + (["--stand-in"] if args.stand_in else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    ow, oh = args.width * 4, args.height * 4
    f32 = ow * oh * 3 * 4 / MIB
    u8 = ow * oh * 3 / MIB
    r.update(float32_output_mib=f32, uint8_output_mib=u8, peak_over_float32_output=r["peak_rss_mib"] / f32)
    print(f"input {args.width}x{args.height} RGB -> output {ow}x{oh} x4, "
          f"{'nearest-neighbour stand-in' if args.stand_in else 'MSRResNet 64/16'}, "
          f"tile {r['tile']}, {r['precision']}, {r['threads']} thread(s), {r['seconds']:.1f} s")
    print(f"peak RSS                    {r['peak_rss_mib']:10.1f} MiB")
    print(f"RSS before the upscale      {r['rss_before_upscale_mib']:10.1f} MiB")
    print(f"one float32 output copy     {f32:10.1f} MiB")
    print(f"uint8 output                {u8:10.1f} MiB")
    print(f"peak / float32 output       {r['peak_over_float32_output']:10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
