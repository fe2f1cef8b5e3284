"""`superres train`: one training loop, read top to bottom.

    superres train configs/srresnet_x4_psnr.toml --run-dir runs/psnr --set train.total_steps=20000

Stage 1 (pixel loss) and stage 2 (GAN) are the same loop with different loss weights. The run
folder holds config.toml (resolved), checkpoints/, metrics.jsonl, samples/ and best.safetensors.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import checkpoint as ckpt_lib
from .archs import build_generator
from .config import Config, ConfigError, config_digest, load_config, save_config
from .data import IndexStreamSampler, PatchDataset
from .weights import load_generator, save_weights

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# small pieces the loop uses

def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """bf16 autocast only pays off on CPUs with native bf16 (AVX-512 BF16 / AMX)."""
    cap = torch.backends.cpu.get_cpu_capability().lower()
    if "avx512" not in cap and "amx" not in cap:
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32."""
    if name == "fp32":
        return None
    if name == "fp16":
        if device.type == "cpu":
            raise ConfigError("train.precision = 'fp16' is not supported on CPU; use 'bf16' or 'fp32'")
        return torch.float16
    if name == "bf16":
        return torch.bfloat16
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def lr_lambda(cfg: Config):
    """Multiplier on the base learning rate at a given step."""
    o, total = cfg.optim, cfg.train.total_steps

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        if o.schedule == "multistep":
            return o.gamma ** sum(step >= m for m in o.milestones)
        t = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def pixel_loss(kind: str, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    if kind == "l1":
        return (sr - hr).abs().mean()
    if kind == "mse":
        return ((sr - hr) ** 2).mean()
    return torch.sqrt((sr - hr) ** 2 + 1e-6).mean()  # charbonnier, eps^2 = 1e-6


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to save a checkpoint and stop after the current step."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        if self.requested:  # a second signal: the user really wants out
            raise KeyboardInterrupt
        self.requested = True
        log.warning("signal %d: saving a checkpoint and stopping after this step", signum)


# ---------------------------------------------------------------------------------------------
# the loop

def train(cfg: Config, run_dir: str | Path, resume: str | None = None) -> dict[str, Any]:
    """Train as configured; returns a summary dict (final step, losses, best metric)."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.toml")
    t, lg = cfg.train, cfg.log

    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    device = pick_device(t.device)
    amp_dtype = pick_precision(t.precision, device)
    mem_format = torch.channels_last if t.channels_last else torch.contiguous_format
    log.info("device %s, precision %s, channels_last %s", device,
             amp_dtype or "fp32", t.channels_last)

    # -- models and optimisers ---------------------------------------------------------------
    gen = build_generator(cfg.model.arch, upscale=cfg.model.scale, **cfg.model.hparams)
    if cfg.model.pretrained:
        src, info = load_generator(cfg.model.pretrained)
        if info["arch"] != cfg.model.arch or info["hparams"] != gen.hparams:
            raise ConfigError(f"model.pretrained {cfg.model.pretrained} is {info['arch']} "
                              f"{info['hparams']}, but the config builds {cfg.model.arch} {gen.hparams}")
        gen.load_state_dict(src.state_dict())
        log.info("generator initialised from %s", cfg.model.pretrained)
    gen = gen.to(device, memory_format=mem_format)
    ema = build_generator(cfg.model.arch, upscale=cfg.model.scale, **cfg.model.hparams)
    ema.load_state_dict(gen.state_dict())
    ema = ema.to(device, memory_format=mem_format).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.optim.lr_g, betas=tuple(cfg.optim.betas),
                             weight_decay=cfg.optim.weight_decay)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lr_lambda(cfg))

    # -- resume ----------------------------------------------------------------------------
    step, best = 0, None
    resume_path = None
    if resume == "auto":
        resume_path = ckpt_lib.latest_checkpoint(ckpt_dir)
    elif resume:
        resume_path = Path(resume)
    if resume_path is not None:
        state = ckpt_lib.load_train_state(resume_path)
        gen.load_state_dict(state["gen"])
        ema.load_state_dict(state["ema"])
        opt_g.load_state_dict(state["opt_g"])
        sched_g.load_state_dict(state["sched_g"])
        step, best = int(state["step"]), state.get("best")
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", resume_path, step)

    # -- data ------------------------------------------------------------------------------
    dataset = PatchDataset(cfg.data.train_dirs, scale=cfg.model.scale, hr_patch=cfg.data.hr_patch,
                           seed=t.seed, degradation=cfg.data.degradation,
                           lr_dirs=cfg.data.lr_dirs or None)
    # The sampler's whole state is the next sample index, which follows from the step.
    sampler = IndexStreamSampler(start_index=step * cfg.data.batch_size)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=sampler,
                        num_workers=cfg.data.num_workers, drop_last=True,
                        persistent_workers=cfg.data.num_workers > 0)
    batches = iter(loader)

    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    metrics_file = open(run_dir / "metrics.jsonl", "a")

    def save_checkpoint() -> None:
        state = {"step": step, "gen": gen.state_dict(), "ema": ema.state_dict(),
                 "opt_g": opt_g.state_dict(), "sched_g": sched_g.state_dict(), "rng": rng_state(),
                 "sampler": {"next_index": step * cfg.data.batch_size}, "best": best,
                 "config_digest": config_digest(cfg)}
        ckpt_lib.save_train_state(ckpt_lib.checkpoint_path(ckpt_dir, step), state)
        ckpt_lib.prune_checkpoints(ckpt_dir, lg.keep_last)

    def write_metrics(record: dict[str, Any]) -> None:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()

    from tqdm import tqdm

    bar = tqdm(total=t.total_steps, initial=step, disable=not lg.progress, dynamic_ncols=True,
               desc="train")
    running: dict[str, float] = {}
    t_last, step_last = time.time(), step
    try:
        while step < t.total_steps and not stop.requested:
            batch = next(batches)
            lr = batch["lr"].to(device, non_blocking=True).contiguous(memory_format=mem_format)
            hr = batch["hr"].to(device, non_blocking=True)

            # -- generator step ----------------------------------------------------------------
            gen.train()
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                sr = gen(lr)
            sr = sr.float()
            l_pix = pixel_loss(cfg.losses.pixel, sr, hr)
            loss_g = cfg.losses.pixel_weight * l_pix
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(gen.parameters(), cfg.optim.grad_clip)
            opt_g.step()
            sched_g.step()
            ema_update(ema, gen, t.ema_decay)
            step += 1
            bar.update(1)

            for k, v in {"l_pix": l_pix.item(), "loss_g": loss_g.item()}.items():
                running[k] = running.get(k, 0.0) + v

            # -- logging, validation, checkpoints ----------------------------------------------
            if step % lg.log_every == 0 or step == t.total_steps:
                n = step - step_last
                rec = {"step": step, "lr_g": sched_g.get_last_lr()[0],
                       "it_per_s": n / max(1e-9, time.time() - t_last)}
                rec.update({k: v / n for k, v in running.items()})
                write_metrics(rec)
                bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k.startswith("l")})
                running, t_last, step_last = {}, time.time(), step
            if lg.val_every and (step % lg.val_every == 0 or step == t.total_steps):
                result = validate(ema, cfg, device, amp_dtype, run_dir, step)
                write_metrics({"step": step, **result})
                key = f"val/{lg.best_metric}"
                score = result.get(key)
                if score is not None:
                    better = best is None or (score < best if lg.best_metric == "niqe" else score > best)
                    if better:
                        best = score
                        save_weights(run_dir / "best.safetensors", ema,
                                     extra_metadata={"step": step, key: score})
                log.info("step %d validation %s", step, {k: round(v, 4) for k, v in result.items()})
            if step % lg.ckpt_every == 0:
                save_checkpoint()
    finally:
        bar.close()
        if step > 0 and not (ckpt_lib.latest_checkpoint(ckpt_dir) or Path()).name.endswith(f"{step:08d}.pt"):
            save_checkpoint()
        metrics_file.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
    return {"step": step, "best": best, "run_dir": str(run_dir)}


@torch.no_grad()
def validate(model: nn.Module, cfg: Config, device: torch.device, amp_dtype, run_dir: Path,
             step: int) -> dict[str, float]:
    """PSNR/SSIM (Y, shave=scale) of `model` on each validation folder; saves a few samples."""
    from .evaluate import evaluate_generator

    out: dict[str, float] = {}
    for d in cfg.data.val_dirs:
        res = evaluate_generator(model, d, cfg.model.scale, metrics=("psnr", "ssim"), device=str(device),
                                 max_images=cfg.data.val_max_images or None)
        name = Path(d).name if Path(d).name != "HR" else Path(d).parent.name
        out[f"val/{name}/psnr"] = float(res["psnr"])
        out[f"val/{name}/ssim"] = float(res["ssim"])
    if cfg.data.val_dirs:
        names = [k for k in out if k.endswith("/psnr")]
        out["val/psnr"] = float(np.mean([out[k] for k in names]))
        out["val/ssim"] = float(np.mean([out[k.replace("/psnr", "/ssim")] for k in names]))
    return out


# ---------------------------------------------------------------------------------------------
# CLI

def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="TOML config file (see configs/)")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set losses.adversarial=5e-3 (repeatable)")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="resume from the latest checkpoint in the run folder (auto) or a checkpoint file")


def run_train(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    run_dir = args.run_dir or str(Path("runs") / Path(args.config).stem)
    summary = train(cfg, run_dir, resume=args.resume)
    log.info("finished at step %d; run folder %s", summary["step"], summary["run_dir"])
    return 0
