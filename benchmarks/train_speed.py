"""Training-step speed: the training loop's default settings against a plain fp32 eager loop.

    PYTHONPATH=. python benchmarks/train_speed.py                # MSRResNet x4, batch 16, LR 32x32
    PYTHONPATH=. python benchmarks/train_speed.py --steps 10 --repeats 5 --json speed.json

"Ours" is one generator step as superres.train runs it in stage 1: the precision and memory format
that `pick_precision` / `train.channels_last` select from the default config (bf16 autocast and
channels_last on a CPU with native bf16), Adam, the L1 pixel loss, the LR schedule and the EMA
update. "Plain" is what one would write without thinking about speed: the same model, batch, data
and initial weights, fp32, NCHW, Adam, L1, no EMA. Ours does strictly more work per step, so the
ratio is a lower bound on what the precision and layout choices buy.

Warm-up steps are not timed. The two loops alternate repeat by repeat, so load from other processes
falls on both rather than on whichever ran second; the report gives median step times. Numbers on
a shared machine are noisy: the load average is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from superres.archs import build_generator
from superres.training.config import load_config
from superres.training.losses import pixel_loss
from superres.training.loop import ema_update, lr_lambda, pick_device, pick_precision

TARGET_RATIO = 1.8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_default_step(cfg, device: torch.device, lr: torch.Tensor, hr: torch.Tensor,
                      init: dict) -> tuple[Callable[[], None], str]:
    """One stage-1 generator step with the settings superres.train picks for `cfg`."""
    amp_dtype = pick_precision(cfg.train.precision, device)
    mem_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    gen = build_generator(cfg.model.arch, upscale=cfg.model.scale, **cfg.model.hparams)
    gen.load_state_dict(init)
    gen = gen.to(device, memory_format=mem_format).train()
    ema = build_generator(cfg.model.arch, upscale=cfg.model.scale, **cfg.model.hparams)
    ema.load_state_dict(init)
    ema = ema.to(device, memory_format=mem_format).eval().requires_grad_(False)
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.optim.lr_g, betas=tuple(cfg.optim.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    lr_in = lr.contiguous(memory_format=mem_format)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            sr = gen(lr_in)
        loss = cfg.losses.pixel_weight * pixel_loss(cfg.losses.pixel, sr.float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema_update(ema, gen, cfg.train.ema_decay)

    layout = "channels_last" if cfg.train.channels_last else "NCHW"
    return step, f"{amp_dtype or 'fp32'} autocast, {layout}, Adam, {cfg.losses.pixel}, EMA".replace(
        "torch.", "")


def make_plain_step(cfg, device: torch.device, lr: torch.Tensor, hr: torch.Tensor,
                    init: dict) -> tuple[Callable[[], None], str]:
    """The baseline: fp32 eager, default (NCHW) layout, Adam and L1, nothing else."""
    gen = build_generator(cfg.model.arch, upscale=cfg.model.scale, **cfg.model.hparams)
    gen.load_state_dict(init)
    gen = gen.to(device).train()
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.optim.lr_g, betas=tuple(cfg.optim.betas))

    def step() -> None:
        loss = F.l1_loss(gen(lr), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, "fp32, NCHW, Adam, l1"


def time_steps(step: Callable[[], None], n: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr-patch", type=int, default=32, help="LR patch side (HR = side x scale)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per loop before timing")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per loop per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures here")
    args = ap.parse_args()

    cfg = load_config(None, [f"data.batch_size={args.batch}",
                             f"data.hr_patch={args.lr_patch * 4}"])  # defaults: MSRResNet x4, 64 x 16
    device = pick_device(cfg.train.device)
    torch.manual_seed(0)
    init = build_generator(cfg.model.arch, upscale=cfg.model.scale, **cfg.model.hparams).state_dict()
    p, s = args.lr_patch, cfg.model.scale
    lr = torch.rand(args.batch, 3, p, p).to(device)
    hr = torch.rand(args.batch, 3, p * s, p * s).to(device)

    load_before = os.getloadavg()
    loops = {"default": make_default_step(cfg, device, lr, hr, init),
             "plain": make_plain_step(cfg, device, lr, hr, init)}
    for step, _ in loops.values():
        time_steps(step, args.warmup, device)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.repeats):
        order = list(loops) if r % 2 == 0 else list(reversed(loops))
        for name in order:
            times[name] += time_steps(loops[name][0], args.steps, device)

    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["plain"] / med["default"]
    print(f"{cfg.model.arch} x{s} {cfg.model.hparams or '(default hparams)'}, batch {args.batch}, "
          f"LR {p}x{p}, device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{args.warmup} warm-up + {args.repeats} x {args.steps} timed steps per loop")
    for name, (_, desc) in loops.items():
        t = times[name]
        print(f"  {name:8s} {desc:50s} median {med[name] * 1e3:8.1f} ms/step  {1 / med[name]:6.2f} it/s"
              f"  (min {min(t) * 1e3:.1f}, max {max(t) * 1e3:.1f} ms)")
    verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
    print(f"  speed-up default / plain: {ratio:.2f}x ({verdict} the {TARGET_RATIO}x target)")
    load_after = os.getloadavg()
    print(f"  1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, on "
          f"{os.cpu_count()} CPUs: above the CPU count, other processes shared the cores")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
                       "lr_patch": p, "median_s": med, "it_per_s": {k: 1 / v for k, v in med.items()},
                       "times_s": times, "ratio": ratio, "loadavg": [load_before[0], load_after[0]]}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
