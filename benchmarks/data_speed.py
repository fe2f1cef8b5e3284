"""How fast the training data pipeline makes (LR, HR) pairs, next to one training step.

    PYTHONPATH=. python benchmarks/data_speed.py [--batches 20] [--steps 5] [--device cpu]

bicubic: PatchDataset cuts HR patches and their exact MATLAB-bicubic LR in DataLoader workers.
realistic: the workers only cut HR patches; RealisticDegrader degrades each batch in the main
process, as the training loop does on its device. The reference is one MSRResNet x4 training step
(L1, Adam, bf16 autocast, channels_last) at batch 16 on LR 32x32. Targets: loading + degradation
at most 10% (bicubic) / 25% (realistic) of a step. Workers overlap with the step, so the bicubic
figure is an upper bound of what loading costs; the realistic degradation does not overlap.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from superres.archs import build_generator
from superres.training.config import DegradeConfig
from superres.data.datasets import IndexStreamSampler, PatchDataset
from superres.data.degrade import RealisticDegrader, make_generator

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIRS = [REPO.parent / "shared/data/train/T91", REPO.parent / "shared/data/train/BSD200"]


def time_loader(ds: PatchDataset, args, device: torch.device, degrader=None) -> list[float]:
    """Seconds per batch (after the workers' start-up), degradation included when given."""
    loader = DataLoader(ds, batch_size=args.batch, sampler=IndexStreamSampler(), num_workers=args.workers,
                        drop_last=True, persistent_workers=args.workers > 0)
    it = iter(loader)
    for _ in range(2):  # worker start-up and first prefetch are not the steady state
        next(it)
    times = []
    for step in tqdm(range(args.batches), desc=ds.degradation, leave=False):
        t0 = time.perf_counter()
        batch = next(it)
        hr = batch["hr"].to(device)
        if degrader is not None:
            lr = degrader(hr, generator=make_generator(0, step))
        else:
            lr = batch["lr"].to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    assert lr.shape[-1] * args.scale == hr.shape[-1]
    return times


def time_degrader_alone(args, device: torch.device) -> list[float]:
    deg = RealisticDegrader(DegradeConfig(), args.scale)
    hr = torch.rand(args.batch, 3, args.patch, args.patch, device=device)
    times = []
    for step in range(args.batches):
        t0 = time.perf_counter()
        deg(hr, generator=make_generator(1, step))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def time_train_step(args, device: torch.device) -> list[float]:
    gen = build_generator("msrresnet", upscale=args.scale, num_feat=64, num_block=16)
    gen = gen.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.9, 0.99))
    lp = args.patch // args.scale
    lr = torch.rand(args.batch, 3, lp, lp, device=device).contiguous(memory_format=torch.channels_last)
    hr = torch.rand(args.batch, 3, args.patch, args.patch, device=device)
    times = []
    for i in tqdm(range(args.steps + 1), desc="train step", leave=False):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            sr = gen(lr)
        loss = (sr.float() - hr).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step pays for one-time kernel selection
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dirs", nargs="+", default=[str(d) for d in DEFAULT_DIRS], help="HR training folders")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=128, help="HR patch side")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=20, help="timed batches per degradation")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)

    t0 = time.perf_counter()
    datasets = {d: PatchDataset(args.dirs, scale=args.scale, hr_patch=args.patch, degradation=d)
                for d in ("bicubic", "realistic")}
    decode_s = (time.perf_counter() - t0) / 2
    step = statistics.median(time_train_step(args, device))
    rows = {
        "bicubic (workers)": time_loader(datasets["bicubic"], args, device),
        "realistic (workers HR + degrader)": time_loader(datasets["realistic"], args, device,
                                                         RealisticDegrader(DegradeConfig(), args.scale)),
        "  RealisticDegrader alone": time_degrader_alone(args, device),
    }
    targets = {"bicubic (workers)": 0.10, "realistic (workers HR + degrader)": 0.25}

    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}, HR patch "
          f"{args.patch}, x{args.scale}, {args.workers} workers; decoding the folders once: {decode_s:.1f} s")
    print(f"MSRResNet x{args.scale} training step (bf16 autocast, channels_last): "
          f"{step * 1000:.0f} ms median of {args.steps}")
    print(f"{'pipeline':36s} {'ms/batch':>9s} {'pairs/s':>8s} {'of a step':>9s}  target")
    for name, times in rows.items():
        med = statistics.median(times)
        target = targets.get(name)
        verdict = "" if target is None else f"<= {target:.0%} {'ok' if med / step <= target else 'MISSED'}"
        print(f"{name:36s} {med * 1000:9.1f} {args.batch / med:8.0f} {med / step:9.1%}  {verdict}")


if __name__ == "__main__":
    main()
