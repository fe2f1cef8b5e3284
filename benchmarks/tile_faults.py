"""Page faults and time per output pixel of one CPU upscale, by tile size and malloc setting.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/tile_faults.py --size 1024x1024 --tiles 512 256
    PYTHONPATH=. python benchmarks/tile_faults.py --size 2000x1500 --tiles 512 --rounds 1   # the issue's case
    PYTHONPATH=. python benchmarks/tile_faults.py --size 256x256 --tiles 128 --rounds 1     # a quick look

Why: glibc serves every allocation over its mmap threshold (at most 32 MB) with a fresh mmap and
gives it back with munmap on free, so every conv output of a big tile is page-faulted in again, page
by page, on every tile. This script counts that (ru_minflt of the process, deterministic) beside
wall, CPU and kernel time per output pixel, for a large input cut into tiles of each size and for
a 256x256 input run as one tile (the reference figure). Wall time on a shared machine includes
waiting for a core; CPU time (user + sys) of the single-threaded process does not.

Each malloc setting runs in its own subprocess, because mallopt changes the process for good and a
default heap cannot be restored; inside one subprocess the cases run round-robin (`--rounds`
times) so that a slow spell on a shared machine spreads over all of them, and the medians are
compared. The model is the shipped psnr-x4 (MSRResNet, 64 features) unless --model says otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time

log = logging.getLogger("tile_faults")

# glibc's malloc as the process starts (SUPERRES_KEEP_FREED_MEMORY=0), or with freed memory kept for
# reuse (inference.configure_host_allocator, which Upscaler applies for CPU tiles up to 256)
SETTINGS = ("default", "keep")


def child(model: str, size: tuple[int, int], ref_side: int, tiles: list[int], rounds: int,
          setting: str) -> dict:
    import numpy as np
    import torch

    from superres.inference.upscaler import Upscaler
    from superres.inference.core import configure_host_allocator

    torch.set_num_threads(1)
    # asked for here, whatever the tile, so that every tile size is measured under the same malloc
    applied = configure_host_allocator() if setting == "keep" else False
    up = Upscaler.from_pretrained(model, device="cpu", precision="fp32", tile=0)
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    ref = rng.integers(0, 256, (ref_side, ref_side, 3), dtype=np.uint8)
    up.upscale_pixels(ref)   # warm-up: oneDNN picks its kernels, the heap takes its first shape
    # the reference (seconds) runs before and after every large case (minutes): one sample of it
    # moved 5.2-5.7 us per pixel with a neighbour's load, which is the size of the effect measured
    cases = [("ref", ref, 0)]
    for t in tiles:
        cases += [(f"tile{t}", big, t), ("ref", ref, 0)]
    samples: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
    for _ in range(rounds):
        for name, img, tile in cases:
            up.tile = tile
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            up.upscale_pixels(img)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            out_px = img.shape[0] * img.shape[1] * up.scale ** 2
            samples[name].append({"wall_s": wall, "minflt": r1.ru_minflt - r0.ru_minflt,
                                  "majflt": r1.ru_majflt - r0.ru_majflt,
                                  "sys_s": r1.ru_stime - r0.ru_stime, "user_s": r1.ru_utime - r0.ru_utime,
                                  "us_per_out_px": wall / out_px * 1e6,
                                  "cpu_us_per_out_px": (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
                                  / out_px * 1e6,
                                  "faults_per_out_mpx": (r1.ru_minflt - r0.ru_minflt) / out_px * 1e6})
            log.info("%s %s: %.1f s, %d faults, %.1f s sys", setting, name, wall,
                     samples[name][-1]["minflt"], samples[name][-1]["sys_s"])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    med = {name: {k: statistics.median(s[k] for s in v) for k in v[0]} for name, v in samples.items()}
    for name in med:
        med[name]["vs_ref"] = med[name]["us_per_out_px"] / med["ref"]["us_per_out_px"]
        med[name]["cpu_vs_ref"] = med[name]["cpu_us_per_out_px"] / med["ref"]["cpu_us_per_out_px"]
    return {"setting": setting, "allocator_configured": applied, "model": model, "size": list(size),
            "ref_side": ref_side, "rounds": rounds, "peak_rss_mib": peak_mib, "median": med,
            "samples": samples}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="psnr-x4")
    p.add_argument("--size", default="512x512", help="WxH of the large input (LR pixels)")
    p.add_argument("--ref-side", type=int, default=256, help="LR side of the one-tile reference input")
    p.add_argument("--tiles", type=int, nargs="+", default=[512, 256, 128])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from superres.apps.bench import parse_size
    size = parse_size(args.size)
    if args.child:
        result = child(args.model, size, args.ref_side, args.tiles, args.rounds, args.child)
        sys.stdout.write(json.dumps(result) + "\n")
        return
    results = []
    for setting in args.settings:
        cmd = [sys.executable, __file__, "--child", setting, "--model", args.model, "--size", args.size,
               "--ref-side", str(args.ref_side), "--rounds", str(args.rounds),
               "--tiles", *map(str, args.tiles)]
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "SUPERRES_KEEP_FREED_MEMORY": "0" if setting == "default" else "1"}
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
        results.append(json.loads(out.stdout.splitlines()[-1]))
    for r in results:
        for name, m in r["median"].items():
            sys.stdout.write(f"{r['setting']:9s} {name:8s} wall {m['us_per_out_px']:.2f} us/px "
                             f"(x{m['vs_ref']:.3f} of ref), CPU {m['cpu_us_per_out_px']:.2f} us/px "
                             f"(x{m['cpu_vs_ref']:.3f})  {m['faults_per_out_mpx']:.0f} faults/MPx  "
                             f"sys {m['sys_s']:.1f} s of {m['wall_s']:.1f} s  "
                             f"(peak RSS {r['peak_rss_mib']:.0f} MiB)\n")
    if args.json:
        from superres.io.fs import atomic_write
        atomic_write(args.json, json.dumps(results, indent=2).encode())


if __name__ == "__main__":
    main()
