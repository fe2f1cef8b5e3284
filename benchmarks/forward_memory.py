"""Peak host memory of one forward pass of a CPU tile, with the tail in strips or whole.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/forward_memory.py --model psnr-x4 --side 528
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/forward_memory.py --model psnr-x4 --side 272 --whole-tail
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/forward_memory.py --arch rrdbnet --side 544

One process per measurement (the peak RSS of a process only grows): the model is loaded, a 64x64
forward warms oneDNN up, then one forward of a side x side LR tile runs under inference_mode with
freed memory kept for reuse (inference.configure_host_allocator, as the Upscaler sets it on the
CPU). The number is the peak RSS over the one before that forward: what the tile costs, which
is what archs.spec.strip_tail_bytes and hr_feature_bytes estimate per LR pixel. --arch builds a
2-block net of that architecture with random weights (64 features): the body's depth does not
change the peak, its width and the tail do.
"""
from __future__ import annotations

import argparse
import logging
import resource
import time

log = logging.getLogger("forward_memory")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", default="psnr-x4", help="a shipped model name or weights file")
    g.add_argument("--arch", default=None, help="msrresnet or rrdbnet, 2 blocks, random weights")
    p.add_argument("--scale", type=int, default=4, help="with --arch")
    p.add_argument("--side", type=int, default=528, help="LR tile side, overlap included")
    p.add_argument("--whole-tail", action="store_true", help="no row strips (as before, and as ONNX runs)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    from superres.archs import blocks, build_generator
    from superres.inference.upscaler import Upscaler
    from superres.inference.core import configure_host_allocator

    torch.set_num_threads(1)
    configure_host_allocator()
    if args.whole_tail:
        blocks.STRIP_BYTES = 1 << 62
    if args.arch:
        extra = {"num_grow_ch": 32} if args.arch == "rrdbnet" else {}
        net, name = build_generator(args.arch, num_feat=64, num_block=2, upscale=args.scale, **extra).eval(), args.arch
    else:
        up = Upscaler.from_pretrained(args.model, device="cpu", precision="fp32", tile=0)
        net, name = up.model, args.model
    x = torch.rand(1, 3, args.side, args.side)
    with torch.inference_mode():
        net(torch.rand(1, 3, 64, 64))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        net(x)
        wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    log.info("%s, %d x %d LR, tail %s: peak %.0f MiB over the loaded model (%.0f bytes per LR pixel), %.1f s",
             name, args.side, args.side, "whole" if args.whole_tail else "in strips", peak,
             peak * 2**20 / args.side ** 2, wall)


if __name__ == "__main__":
    main()
