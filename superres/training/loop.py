"""`superres train`: one training loop, read top to bottom.

    superres train configs/srresnet_x4_psnr.toml --run-dir runs/psnr --set train.total_steps=20000
    superres train configs/srgan_x4.toml --run-dir runs/srgan --resume auto
    torchrun --nproc-per-node 2 -m superres train configs/tiny_cpu.toml --run-dir runs/tiny-ddp

Stage 1 (pixel loss) and stage 2 (GAN) are the same loop with different loss weights: with
losses.adversarial = losses.feature_matching = 0 no discriminator is built at all. In stage 2 one
step is one batch: the generator step (D frozen), then the discriminator step on the detached SR.
For the first train.d_warmup_steps steps only D is trained (G frozen, as BasicSR's
net_d_init_iters: D first learns to tell the pretrained generator's output from HR); after that D
trains every step and G every train.d_steps_per_g-th step. Both stay one batch per step, so the
sample stream is a function of the step and resuming is exact.

The run folder holds config.toml (resolved), checkpoints/, metrics.jsonl, samples/, tb/ (when
tensorboard is installed and log.tensorboard is on) and best.safetensors.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the run is data-parallel: gloo
on CPU, NCCL on CUDA. data.batch_size is the GLOBAL batch, split evenly over the ranks; rank r
takes global samples r, r+W, ..., so W ranks see exactly the samples one process would. Only rank 0
logs, validates and writes checkpoints.

Reading order: `train` at the end of the loop section is the loop itself. `setup_run` builds a
`RunState` (everything one process holds: models, optimisers, EMA, scaler, batches, step, outputs);
each step is `generator_step` then `discriminator_step`; `log_losses`, `validate_and_keep_best` and
`save_checkpoint` run at their intervals. Losses stay on the device (`LossMeter`) until a log,
validation or checkpoint reads them, so a GPU is not made to wait every step.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import statistics
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..archs import build_discriminator, build_generator
from ..data.datasets import IndexStreamSampler, PatchDataset, hr_folder
from ..inference import runtime
from ..inference.weights import load_generator, save_weights
from ..io.fs import atomic_write_with
from . import checkpoint as ckpt_lib
from .config import Config, ConfigError, config_digest, save_config, uses_discriminator
from .losses import (
    GAN_LOSSES,
    RELATIVISTIC,
    DLoss,
    GLoss,
    TextureLoss,
    VGGPerceptualLoss,
    artifact_loss,
    detail_loss,
    feature_matching_loss,
    pixel_loss,
    r1_penalty,
    unsharp_mask,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# small pieces the loop uses

def pick_device(name: str) -> torch.device:
    try:
        return runtime.pick_device(name)
    except runtime.RuntimeChoiceError as e:
        raise ConfigError(f"train.device: {e}") from None


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32."""
    try:
        return runtime.pick_precision(name, device, training=True)
    except runtime.RuntimeChoiceError as e:
        raise ConfigError(f"train.precision: {e}") from None


def lr_lambda(cfg: Config):
    """Multiplier on the base learning rate at a given step (the same shape for G and D)."""
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


def init_generator_from(gen: nn.Module, arch: str, src: nn.Module, src_arch: str, name: str) -> None:
    """Copy a pretrained generator's weights into `gen` (model.pretrained).

    The architecture and hyperparameters must match, except the scale: a model of another scale
    gives every tensor whose name and shape fit (for MSRResNet x4 -> x2 all but the second
    upsampling conv), and the rest keeps its fresh initialisation. EDSR starts its x3/x4 models
    from the x2 one this way; the shared body is most of the training.
    """
    g_rest = {k: v for k, v in gen.hparams.items() if k != "upscale"}
    s_rest = {k: v for k, v in src.hparams.items() if k != "upscale"}
    if arch != src_arch or g_rest != s_rest:
        raise ConfigError(f"model.pretrained {name} is {src_arch} {src.hparams}, but the config builds "
                          f"{arch} {gen.hparams}: only the scale may differ")
    if src.hparams.get("upscale") == gen.hparams.get("upscale"):
        gen.load_state_dict(src.state_dict())
        log.info("generator initialised from %s", name)
        return
    own, given = gen.state_dict(), src.state_dict()
    fits = {k: v for k, v in given.items() if k in own and own[k].shape == v.shape}
    fresh = sorted(k for k in own if k not in fits)
    if not fits:
        raise ConfigError(f"model.pretrained {name}: no weights fit the x{gen.hparams.get('upscale')} model")
    gen.load_state_dict(fits, strict=False)
    log.warning("generator initialised from the x%s model %s: %d of %d tensors copied; trained from "
                "scratch: %s", src.hparams.get("upscale"), name, len(fits), len(own), ", ".join(fresh) or "none")


def ema_decay_at(decay: float, step: int) -> float:
    """EMA decay warmed up over the first steps: (1 + step) / (10 + step), capped at `decay`.

    With a fixed 0.999 from step 0, the randomly initialised weights still carry 0.999^3000 = 5% of
    the average after 3000 steps, which cost 0.7 dB on Set5 in our x4 run; the ramp forgets them fast.
    """
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": torch.from_numpy(keys.astype(np.int64)),
             # the key alone is not numpy's whole state: without the position (and the cached
             # Gaussian) a resumed stream restarts the 624-word block and diverges from a straight run
             "numpy_pos": int(pos), "numpy_gauss": [int(has_gauss), float(cached_gauss)],
             # not an RNG, but it decides float results too: CPU kernels split their reductions by
             # the intra-op thread count, so a resume with another count is not bitwise identical
             "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), None))
    # checkpoints from before numpy_pos was saved: 624 (a fresh block) is the best guess there is
    has_gauss, cached_gauss = state.get("numpy_gauss", (0, 0.0))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state.get("numpy_pos", 624)),
                         int(has_gauss), float(cached_gauss)))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved_threads = state.get("cpu_threads")
    if saved_threads is not None and saved_threads != torch.get_num_threads():
        log.warning("the checkpoint was written with %d CPU thread(s), this process uses %d: CPU results "
                    "will not be bitwise identical to an uninterrupted run (set OMP_NUM_THREADS=%d to match)",
                    saved_threads, torch.get_num_threads(), saved_threads)


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to save a checkpoint and stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the first signal, for the exit code (128 + signum)

    def __call__(self, signum, frame) -> None:
        if self.requested:  # a second signal: the user really wants out
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        log.warning("signal %d: saving a checkpoint and stopping after this step", signum)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; one process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return info


class GanHealth:
    """Heuristic alarms on logged records, each warned once per episode:

    - the discriminator wins completely: loss_d below `d_floor` for `patience` logs in a row (G then
      gets no useful gradient: lower lr_d, raise d_steps_per_g, or use spectral norm / hinge);
    - the generator collapses: SR std below `std_ratio` x HR std for `patience` logs in a row, or
      its adversarial loss jumps above `explode` x its recent median.
    """

    def __init__(self, patience: int = 5, d_floor: float = 0.05, std_ratio: float = 0.25,
                 explode: float = 10.0) -> None:
        self.patience, self.d_floor, self.std_ratio, self.explode = patience, d_floor, std_ratio, explode
        self.d_low = self.std_low = 0
        self.adv_history: list[float] = []
        self.active: set[str] = set()

    def _alarm(self, name: str, on: bool, message: str) -> list[str]:
        if not on:
            self.active.discard(name)
            return []
        if name in self.active:
            return []
        self.active.add(name)
        return [message]

    def check(self, rec: dict[str, float]) -> list[str]:
        out: list[str] = []
        step = rec.get("step")
        if "loss_d" in rec:
            self.d_low = self.d_low + 1 if rec["loss_d"] < self.d_floor else 0
            out += self._alarm("d_wins", self.d_low >= self.patience,
                               f"step {step}: the discriminator wins completely (loss_d {rec['loss_d']:.3g} < "
                               f"{self.d_floor} for {self.d_low} logs; D(real) {rec.get('d_real', float('nan')):.3g}, "
                               f"D(fake) {rec.get('d_fake', float('nan')):.3g}): G gets no useful gradient. "
                               "Lower optim.lr_d or losses.adversarial, or raise train.d_steps_per_g")
        if "sr_std" in rec and "hr_std" in rec:
            low = rec["sr_std"] < self.std_ratio * rec["hr_std"]
            self.std_low = self.std_low + 1 if low else 0
            out += self._alarm("collapse", self.std_low >= self.patience,
                               f"step {step}: generator output collapsed (SR std {rec['sr_std']:.3g} vs HR std "
                               f"{rec['hr_std']:.3g} for {self.std_low} logs); lower losses.adversarial or "
                               "the learning rates, or resume from an earlier checkpoint")
        if "l_adv" in rec:
            v = rec["l_adv"]
            recent = self.adv_history[-20:]
            base = statistics.median(recent) if len(recent) >= 3 else None
            exploded = not math.isfinite(v) or (base is not None and abs(v) > self.explode * max(abs(base), 1.0))
            out += self._alarm("explode", exploded,
                               f"step {step}: the generator's adversarial loss exploded ({v:.3g}, recent "
                               f"median {base if base is not None else float('nan'):.3g})")
            self.adv_history.append(v)
        return out

    def replay(self, metrics_path: Path) -> None:
        """Feed the records a resumed run already logged, so streaks and open alarms carry over a
        resume (an alarm already raised before the kill is not raised again)."""
        if not metrics_path.is_file():
            return
        for line in metrics_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.check(rec)


def open_tensorboard(run_dir: Path, enabled: bool, purge_step: int | None = None):
    """A SummaryWriter on run_dir/tb, or None: tensorboard is optional.

    purge_step: a resumed run redoes the steps after its checkpoint; TensorBoard hides the events
    an earlier process wrote at this step or later, so each step shows once."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: metrics go to metrics.jsonl only "
                 "(pip install tensorboard, or set log.tensorboard = false to silence this)")
        return None
    return SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records after `step`: they came from the part of a killed run that a resume redoes."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if rec.get("step", 0) <= step:
            kept.append(line)
    atomic_write_with(path, lambda tmp: Path(tmp).write_text("".join(f"{x}\n" for x in kept)))


PATH_RULE = ("relative paths in a config file are relative to that file's folder, those given with "
             "--set to the working folder")


def _val_problems(cfg: Config) -> list[str]:
    """Validation folders that hold no image, or an image whose header does not read: found now,
    not at the first validation hours into the run."""
    from ..data.datasets import hr_folder, list_images
    from ..io.images import probe_image

    if not cfg.log.val_every:
        return []
    problems = []
    for d in cfg.data.val_dirs:
        files = list_images(hr_folder(d))
        if not files:
            problems.append(f"data.val_dirs: {d} holds no images (give the folder of HR images, or its "
                            "parent with an HR/ sub-folder)")
        for f in files:
            try:
                probe_image(f)
            except ValueError as e:
                problems.append(f"data.val_dirs: {e}")
    return problems


def check_paths(cfg: Config) -> None:
    """Every file and folder the config names must exist, checked before the run folder is made so
    a typo costs no half-made run. One error lists them all."""
    from ..data.datasets import IMAGE_EXTS

    problems = []
    for key in ("train_dirs", "lr_dirs", "val_dirs"):
        for d in getattr(cfg.data, key):
            if not Path(d).is_dir():
                problems.append(f"data.{key}: {d} is not a folder")
    for d in cfg.data.train_dirs:
        # The dataset reads every image later; here only whether there is any (a wrong folder level,
        # e.g. Set5 instead of Set5/HR, is the usual mistake).
        if Path(d).is_dir() and not any(p.suffix.lower() in IMAGE_EXTS for p in Path(d).rglob("*")):
            problems.append(f"data.train_dirs: {d} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    if cfg.model.pretrained and not Path(cfg.model.pretrained).is_file():
        problems.append(f"model.pretrained: {cfg.model.pretrained} is not a file (train stage 1 first, "
                        "or fix the path)")
    lo = cfg.losses
    if (lo.perceptual > 0 or lo.texture > 0) and lo.vgg_weights and not Path(lo.vgg_weights).is_file():
        problems.append(f"losses.vgg_weights: {lo.vgg_weights} is not a file (a torchvision-format VGG19 "
                        "state dict; none is downloaded)")
    if not problems:
        problems += _val_problems(cfg)
    if problems:
        raise ConfigError("missing inputs:\n  " + "\n  ".join(problems) + f"\n({PATH_RULE})")


# What `train` writes into a run folder; --overwrite deletes exactly these, never the folder itself
# (a mistyped --run-dir . must not empty the working folder).
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tb", "samples", "best.safetensors", "config.toml")


def check_run_folder(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """A run folder that already holds a run is continued (--resume) or replaced (--overwrite),
    never silently trained over: that restarted at step 0 and mixed two runs' checkpoints and logs."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder and --overwrite deletes it: give one")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a folder")
    if resume and resume != "auto" and not Path(resume).is_file():
        raise ConfigError(f"--resume {resume}: no such checkpoint file (or give --resume auto for the "
                          "latest one in the run folder)")
    # config.toml alone is a run that failed during setup: nothing to lose
    found = [name for name in RUN_OUTPUTS[:-1] if (run_dir / name).exists()]
    if found and not resume and not overwrite:
        latest = ckpt_lib.latest_checkpoint(run_dir / "checkpoints")
        where = f"its latest checkpoint is step {int(latest.stem.split('_')[1])}" if latest else "no checkpoint"
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(found)}; {where}). Continue it with "
                          "--resume auto, start it over with --overwrite (deletes its checkpoints, metrics, "
                          "samples and TensorBoard logs), or choose another --run-dir")


def clear_run_folder(run_dir: Path) -> None:
    """--overwrite: remove the previous run's outputs (only the names train writes)."""
    import shutil

    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    log.info("--overwrite: removed the previous run's outputs from %s", run_dir)


def check_finite(values: dict[str, float], step: int) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"step {step + 1}: non-finite loss {bad}; stopping before the weights are saved. Resume from "
            "the last checkpoint with a lower learning rate, optim.grad_clip, or train.precision = 'fp32'")


# ---------------------------------------------------------------------------------------------
# run state: what setup builds and the loop reads and advances

class LossMeter:
    """The losses of the steps since the last read, kept as detached tensors on the device.

    Reading a value (`.item()`) waits for the device to finish, so it happens once per log interval
    (and before anything is written), not once per step. Each step's values are kept rather than
    summed on the device so the NaN guard can still name the first bad step, and the mean is summed
    in the same order, in float64, as when every step was read on its own.
    """

    def __init__(self, check_finite: bool) -> None:
        # With an fp16 GradScaler an inf step is skipped by the scaler itself; otherwise it is fatal.
        self.check_finite = check_finite
        self.pending: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.poisoned = False  # a non-finite loss was found: nothing this process trained may be saved

    def add(self, step: int, logs: dict[str, torch.Tensor]) -> None:
        """Record step `step`'s (0-based) values; detached so no autograd graph outlives its step."""
        self.pending.append((step, {k: v.detach() for k, v in logs.items()}))

    def settle(self) -> None:
        """Read the pending values in one device sync and add them to the sums.

        Raises FloatingPointError at the first non-finite step, before the caller writes anything."""
        if self.poisoned:
            raise FloatingPointError("a non-finite loss was found earlier in this run")
        if not self.pending:
            return
        flat = [v.reshape(()).to(torch.float64) for _, logs in self.pending for v in logs.values()]
        read = iter(torch.stack(flat).tolist() if flat else [])
        pending, self.pending = self.pending, []
        for step, logs in pending:
            values = {k: next(read) for k in logs}
            if self.check_finite:
                try:
                    check_finite(values, step)
                except FloatingPointError:
                    self.poisoned = True
                    raise
            for k, v in values.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
                self.counts[k] = self.counts.get(k, 0) + 1

    def drain(self) -> tuple[dict[str, float], dict[str, int]]:
        """Settle, then hand over and reset the sums and counts of the log interval."""
        self.settle()
        out = (self.sums, self.counts)
        self.sums, self.counts = {}, {}
        return out


Optimizer = torch.optim.Optimizer
Scheduler = torch.optim.lr_scheduler.LRScheduler


@dataclass
class RunState:
    """Everything one training process holds: built by `setup_run`, advanced by the loop in `train`.

    gen_train / disc_train are what forward and backward go through: the DistributedDataParallel
    wrappers under torchrun, else the modules themselves. gen / disc are always the raw modules
    (state dicts, and D judging G's output while D is frozen).
    """

    cfg: Config
    run_dir: Path
    dinfo: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    mem_format: torch.memory_format
    gen: nn.Module
    gen_train: nn.Module
    ema: nn.Module
    opt_g: Optimizer
    sched_g: Scheduler
    disc: nn.Module | None
    disc_train: nn.Module | None
    opt_d: Optimizer | None
    sched_d: Scheduler | None
    g_adv_loss: GLoss
    d_adv_loss: DLoss
    need_real_logits: bool  # G's losses read D on the real batch too (relativistic GAN, feature matching)
    percep: nn.Module | None
    texture: nn.Module | None
    scaler: torch.amp.GradScaler
    degrader: Any  # RealisticDegrader or None (the dataset makes LR itself)
    deg_rng: torch.Generator | None
    batches: Iterator[dict[str, torch.Tensor]]
    # The checkpoint's sampler position is sample_base + (step - step_base) * global batch.
    sample_base: int
    step_base: int
    was_deterministic: bool  # restored when the run ends
    resumed_from: Path | None
    step: int = 0
    best: float | None = None
    last_saved: int = -1  # the step of the newest checkpoint on disk, -1 for none
    meter: LossMeter = field(default_factory=lambda: LossMeter(True))
    metrics_file: Any = None  # rank 0: metrics.jsonl, open for appending
    tb: Any = None  # rank 0: a TensorBoard SummaryWriter, or None
    health: GanHealth = field(default_factory=GanHealth)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def trains_g(self) -> bool:
        """Stage 1 trains G every step; stage 2 trains D every step and G after D's warm-up, on every
        d_steps_per_g-th step."""
        t = self.cfg.train
        return self.disc is None or (self.step >= t.d_warmup_steps
                                     and (self.step - t.d_warmup_steps) % t.d_steps_per_g == 0)


# ---------------------------------------------------------------------------------------------
# setup

def setup_run(cfg: Config, run_dir: Path, resume: str | None, overwrite: bool) -> RunState:
    """Check inputs, make the run folder, build everything and restore a checkpoint: a RunState at
    the step the loop starts from. The order of the random draws here is part of the resume
    contract: a resumed run must end up with the RNG state a straight run had at that step."""
    t = cfg.train
    # Every rank checks before any rank writes (init_distributed waits for all of them).
    check_paths(cfg)
    check_run_folder(run_dir, resume, overwrite)
    dinfo = init_distributed(t.device)
    if dinfo.is_main:
        if overwrite:
            clear_run_folder(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")

    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.use_deterministic_algorithms(True)
    device = pick_device(t.device)
    if device.type == "cuda" and dinfo.enabled:
        device = torch.device("cuda", dinfo.local_rank)
    amp_dtype = pick_precision(t.precision, device)
    mem_format = torch.channels_last if t.channels_last else torch.contiguous_format
    if cfg.data.batch_size % dinfo.world_size:
        raise ConfigError(f"data.batch_size = {cfg.data.batch_size} is the global batch and must be "
                          f"divisible by the {dinfo.world_size} processes")
    log.info("device %s, precision %s, channels_last %s, %d process(es) x batch %d", device,
             amp_dtype or "fp32", t.channels_last, dinfo.world_size, cfg.data.batch_size // dinfo.world_size)

    gen, ema, opt_g, sched_g = build_generator_side(cfg, device, mem_format)
    disc, opt_d, sched_d = build_discriminator_side(cfg, device, mem_format)
    g_adv_loss, d_adv_loss = GAN_LOSSES[cfg.losses.gan_type]
    percep, texture = build_feature_losses(cfg, device, mem_format)
    # fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not (a disabled scaler
    # passes everything through unchanged).
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    degrader, deg_rng = build_degrader(cfg, dinfo)

    rs = RunState(cfg=cfg, run_dir=run_dir, dinfo=dinfo, device=device, amp_dtype=amp_dtype,
                  mem_format=mem_format, gen=gen, gen_train=gen, ema=ema, opt_g=opt_g, sched_g=sched_g,
                  disc=disc, disc_train=disc, opt_d=opt_d, sched_d=sched_d, g_adv_loss=g_adv_loss,
                  d_adv_loss=d_adv_loss,
                  need_real_logits=disc is not None and (cfg.losses.gan_type in RELATIVISTIC
                                                         or cfg.losses.feature_matching > 0),
                  percep=percep, texture=texture, scaler=scaler, degrader=degrader, deg_rng=deg_rng,
                  batches=iter(()), sample_base=0, step_base=0, was_deterministic=was_deterministic,
                  resumed_from=None, meter=LossMeter(check_finite=not scaler.is_enabled()))
    resume_rng, next_sample = restore_checkpoint(rs, resume)
    if resume and dinfo.is_main:  # also `--resume auto` without a checkpoint: records after it are redone
        truncate_metrics(run_dir / "metrics.jsonl", rs.step)
    wrap_distributed(rs)
    open_batches(rs, next_sample)
    # Creating the batch iterator drew the loader's base seed from the global torch RNG (one int64,
    # two 32-bit words). A straight run drew it before step 0, so the saved state already includes
    # it: restoring before open_batches would put every later checkpoint's RNG state two draws ahead.
    if resume_rng is not None:
        set_rng_state(resume_rng)
    return rs


def build_generator_side(cfg: Config, device: torch.device, mem_format: torch.memory_format
                         ) -> tuple[nn.Module, nn.Module, Optimizer, Scheduler]:
    """The generator (from model.pretrained when given), its EMA copy, optimiser and schedule."""
    gen = build_generator(cfg.model.arch, upscale=cfg.model.scale, **cfg.model.hparams)
    if cfg.model.pretrained:  # check_paths made sure the file exists
        src, info = load_generator(cfg.model.pretrained)
        init_generator_from(gen, cfg.model.arch, src, info["arch"], cfg.model.pretrained)
    gen = gen.to(device, memory_format=mem_format)
    # Built rather than deep-copied: its random init draws from the torch RNG, and resume exactness
    # depends on the draws setup makes staying what they were.
    ema = build_generator(cfg.model.arch, upscale=cfg.model.scale, **cfg.model.hparams)
    ema.load_state_dict(gen.state_dict())
    ema = ema.to(device, memory_format=mem_format).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.optim.lr_g, betas=tuple(cfg.optim.betas),
                             weight_decay=cfg.optim.weight_decay)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lr_lambda(cfg))
    return gen, ema, opt_g, sched_g


def build_discriminator_side(cfg: Config, device: torch.device, mem_format: torch.memory_format
                             ) -> tuple[nn.Module | None, Optimizer | None, Scheduler | None]:
    """Stage 2 only: the discriminator, its optimiser and schedule; (None, None, None) in stage 1."""
    if not uses_discriminator(cfg):
        return None, None, None
    lo = cfg.losses
    disc = build_discriminator(cfg.disc.arch, **cfg.disc.hparams).to(device, memory_format=mem_format)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.optim.lr_d, betas=tuple(cfg.optim.betas),
                             weight_decay=cfg.optim.weight_decay)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, lr_lambda(cfg))
    log.info("discriminator %s %s; GAN loss %s (weight %g), feature matching %g", cfg.disc.arch,
             disc.hparams, lo.gan_type, lo.adversarial, lo.feature_matching)
    return disc, opt_d, sched_d


def build_feature_losses(cfg: Config, device: torch.device, mem_format: torch.memory_format
                         ) -> tuple[nn.Module | None, nn.Module | None]:
    """The VGG perceptual and texture losses, each None when its weight is 0."""
    lo = cfg.losses
    percep = texture = None
    if lo.perceptual > 0:
        if not Path(lo.vgg_weights).is_file():
            raise ConfigError(f"losses.vgg_weights = {lo.vgg_weights!r}: no such file. losses.perceptual > 0 "
                              "needs a torchvision-format VGG19 state dict; none is downloaded")
        try:
            percep = VGGPerceptualLoss.from_file(lo.vgg_weights, lo.vgg_layers,
                                                 before_activation=lo.vgg_before_activation)
        except ValueError as e:
            raise ConfigError(f"losses.vgg_weights: {e}") from e
        percep = percep.to(device, memory_format=mem_format)
    if lo.texture > 0:
        try:
            texture = TextureLoss(lo.texture_layers, patch=lo.texture_patch, seed=lo.texture_seed,
                                  weights_path=lo.vgg_weights or None)
        except ValueError as e:
            raise ConfigError(f"losses.texture: {e}") from e
        texture = texture.to(device, memory_format=mem_format)
    return percep, texture


class MixedDegrader:
    """The realistic pipeline, with `clean_fraction` of the batches made by plain MATLAB bicubic
    and `camera_fraction` by the camera preset instead; the choice is one draw from the same
    generator per batch, so a resumed run repeats it (and clean_fraction 0 repeats older runs)."""

    def __init__(self, realistic: Any, camera_fraction: float, scale: int,
                 clean_fraction: float = 0.0) -> None:
        from ..data.degrade import camera_degrade
        from ..data.resize import degrade_bicubic  # imported only by realistic runs

        self.realistic, self.camera_fraction, self.scale = realistic, camera_fraction, scale
        self.clean_fraction = clean_fraction
        self.camera, self.clean = camera_degrade, degrade_bicubic

    def __call__(self, hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand((), generator=generator).item() - self.clean_fraction
        if u < 0:
            return self.clean(hr, self.scale)
        if u < self.camera_fraction:
            return self.camera(hr, self.scale, generator)
        return self.realistic(hr, generator)


def build_degrader(cfg: Config, dinfo: DistInfo) -> tuple[Any, torch.Generator | None]:
    """data.degradation = realistic: the batch-wise degrader and its seeded RNG; else (None, None)."""
    if cfg.data.degradation != "realistic":
        return None, None
    from ..data.degrade import RealisticDegrader

    degrader = RealisticDegrader(cfg.degrade, cfg.model.scale)
    if cfg.data.camera_fraction > 0 or cfg.data.clean_fraction > 0:
        degrader = MixedDegrader(degrader, cfg.data.camera_fraction, cfg.model.scale,
                                 cfg.data.clean_fraction)
    # On the CPU whatever the device: the degrader draws one seed per batch from it and makes its
    # noise on the device itself. One stream per rank, as each rank degrades different images.
    deg_rng = torch.Generator()
    deg_rng.manual_seed(int(np.random.SeedSequence([cfg.train.seed, dinfo.rank]).generate_state(1)[0]))
    return degrader, deg_rng


def _learning_rate_from_config(key: str, opt: torch.optim.Optimizer, sched: Any, lr: float) -> None:
    """Make a resumed optimizer follow the config's learning rate.

    An optimizer's and a LambdaLR's state dicts carry the base rate they were built with, so loading
    them silently undid `--set optim.lr_g=...` on a resume (the schedule's shape, a function of the
    config, did follow). The config is what the user asked for: the base rate becomes its value and
    the current rate is that times the schedule at the resumed step.
    """
    before = list(sched.base_lrs)
    sched.base_lrs = [lr] * len(opt.param_groups)
    for group, fn in zip(opt.param_groups, sched.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * fn(sched.last_epoch)
    if any(b != lr for b in before):
        log.info("%s = %g from the config (the checkpoint had %g)", key, lr, before[0])


def restore_checkpoint(rs: RunState, resume: str | None) -> tuple[dict[str, Any] | None, int]:
    """Load the checkpoint --resume names into rs. Returns its RNG state (for the caller to restore
    once the data iterator exists) and the global sample index the next batch starts at."""
    cfg, ckpt_dir = rs.cfg, rs.run_dir / "checkpoints"
    path = ckpt_lib.latest_checkpoint(ckpt_dir) if resume == "auto" else (Path(resume) if resume else None)
    if resume == "auto" and path is None:
        log.info("--resume auto: no checkpoint in %s, starting from scratch", ckpt_dir)
    if path is None:
        return None, 0
    state = ckpt_lib.load_train_state(path)
    rs.gen.load_state_dict(state["gen"])
    rs.ema.load_state_dict(state["ema"])
    rs.opt_g.load_state_dict(state["opt_g"])
    rs.sched_g.load_state_dict(state["sched_g"])
    _learning_rate_from_config("optim.lr_g", rs.opt_g, rs.sched_g, cfg.optim.lr_g)
    rs.step, rs.best = int(state["step"]), state.get("best")
    # A best score means something only against the same validation: after a change of metric or
    # track (say from clean bicubic to the realistic track) the old score would shut out every new one.
    saved_track = state.get("best_track", _best_track_of_old_checkpoint(cfg))
    if rs.best is not None and saved_track != best_track(cfg):
        log.info("validation changed since %s (%s -> %s): best.safetensors will be replaced by the next "
                 "validation", path.name, saved_track, best_track(cfg))
        rs.best = None
    rs.last_saved = rs.step
    rs.resumed_from = path
    next_sample = int(state.get("sampler", {}).get("next_index", rs.step * cfg.data.batch_size))
    if rs.disc is not None:
        if "disc" in state:
            rs.disc.load_state_dict(state["disc"])
            rs.opt_d.load_state_dict(state["opt_d"])
            rs.sched_d.load_state_dict(state["sched_d"])
            _learning_rate_from_config("optim.lr_d", rs.opt_d, rs.sched_d, cfg.optim.lr_d)
        else:
            log.info("%s has no discriminator (a stage-1 checkpoint): D starts fresh", path)
    if rs.scaler.is_enabled() and "scaler" in state:
        rs.scaler.load_state_dict(state["scaler"])
    if rs.deg_rng is not None:
        saved = state.get("degrader_rng")
        if saved is not None and len(saved) == rs.dinfo.world_size:
            rs.deg_rng.set_state(saved[rs.dinfo.rank])
        else:
            log.warning("%s has no degradation RNG state for %d process(es): reseeded", path,
                        rs.dinfo.world_size)
    if state.get("config_digest") != config_digest(cfg):
        log.info("the config differs from the one %s was trained with", path.name)
    log.info("resumed from %s at step %d", path, rs.step)
    return state["rng"], next_sample


def wrap_distributed(rs: RunState) -> None:
    """Under torchrun: DistributedDataParallel wrappers for what forward/backward go through."""
    if not rs.dinfo.enabled:
        return
    ids = [rs.device.index] if rs.device.type == "cuda" else None
    rs.gen_train = nn.parallel.DistributedDataParallel(rs.gen, device_ids=ids)
    if rs.disc is None:
        return
    # BatchNorm (vgg128, patchgan without spectral norm) normalises each rank's share of the batch on
    # its own, so W ranks would not train the D one process does. SyncBatchNorm uses the global batch
    # statistics (it keeps the parameter objects, so opt_d stays valid), but it is CUDA-only: on CPU
    # the difference stays, and is said.
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in rs.disc.modules()):
        if rs.device.type == "cuda":
            rs.disc = nn.SyncBatchNorm.convert_sync_batchnorm(rs.disc)
        elif rs.dinfo.is_main:
            log.warning("the discriminator has BatchNorm, which sees each process's %d samples, not the "
                        "global batch of %d, and SyncBatchNorm needs CUDA: this run differs from a "
                        "1-process one (disc.hparams.spectral_norm = true avoids BatchNorm)",
                        rs.cfg.data.batch_size // rs.dinfo.world_size, rs.cfg.data.batch_size)
    rs.disc_train = nn.parallel.DistributedDataParallel(rs.disc, device_ids=ids)


def open_batches(rs: RunState, next_sample: int) -> None:
    """The training batch stream, starting at global sample `next_sample`."""
    cfg, dinfo = rs.cfg, rs.dinfo
    try:
        dataset = PatchDataset(cfg.data.train_dirs, scale=cfg.model.scale, hr_patch=cfg.data.hr_patch,
                               seed=cfg.train.seed, degradation=cfg.data.degradation,
                               lr_dirs=cfg.data.lr_dirs or None, holdout=cfg.data.holdout)
    except (ValueError, FileNotFoundError) as e:   # no usable image, a missing or too small LR pair
        raise ConfigError(f"data.train_dirs: {e}"
                          + (f"; lower data.hr_patch (now {cfg.data.hr_patch})" if "usable" in str(e) else "")) from None
    # The sampler's whole state is the next global sample index; rank r takes r, r+W, r+2W, ...
    sampler = IndexStreamSampler(start_index=-(-next_sample // dinfo.world_size), rank=dinfo.rank,
                                 world_size=dinfo.world_size)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size // dinfo.world_size, sampler=sampler,
                        num_workers=cfg.data.num_workers, drop_last=True,
                        persistent_workers=cfg.data.num_workers > 0)
    rs.batches = iter(loader)
    rs.sample_base, rs.step_base = sampler.next_index * dinfo.world_size, rs.step


def open_outputs(rs: RunState, resume: str | None) -> None:
    """Rank 0: metrics.jsonl (appended to), TensorBoard, and the GAN health alarms' history."""
    if not rs.dinfo.is_main:
        return
    rs.metrics_file = open(rs.run_dir / "metrics.jsonl", "a")
    # records are logged after their step, so the first one this process writes is step + 1
    rs.tb = open_tensorboard(rs.run_dir, rs.cfg.log.tensorboard, purge_step=rs.step + 1 if resume else None)
    if rs.resumed_from is not None:
        rs.health.replay(rs.run_dir / "metrics.jsonl")


# ---------------------------------------------------------------------------------------------
# one training step: the generator step, then the discriminator step

def next_batch(rs: RunState) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) on the device; with realistic degradation LR is made here from HR."""
    batch = next(rs.batches)
    hr = batch["hr"].to(rs.device, non_blocking=True)
    if rs.degrader is not None:
        lr = rs.degrader(hr, rs.deg_rng)
    else:
        lr = batch["lr"].to(rs.device, non_blocking=True)
    return lr.contiguous(memory_format=rs.mem_format), hr


def generator_step(rs: RunState, lr: torch.Tensor, hr: torch.Tensor, train_g: bool,
                   logs: dict[str, torch.Tensor]) -> torch.Tensor:
    """G's forward pass; when train_g also its loss, backward and optimiser step, D frozen.

    Returns SR in float32. On D-only steps (train_g False: D's warm-up, or between G steps with
    d_steps_per_g > 1) SR is computed without a graph: D still needs fresh fakes to learn from.
    """
    rs.gen.train()
    if rs.disc is not None:
        # D only judges in this step: the generator loss must not leave gradients on D's weights
        rs.disc.requires_grad_(False)
    with torch.set_grad_enabled(train_g), rs.autocast():
        sr = rs.gen_train(lr)
    sr = sr.float()  # losses in fp32: an fp16 L1 of nearly equal images underflows
    if train_g:
        loss_g = generator_loss(rs, lr, sr, hr, logs)
        rs.opt_g.zero_grad(set_to_none=True)
        rs.scaler.scale(loss_g).backward()
        if rs.cfg.optim.grad_clip > 0:
            rs.scaler.unscale_(rs.opt_g)  # clip the true gradient, not the loss-scaled one
            torch.nn.utils.clip_grad_norm_(rs.gen.parameters(), rs.cfg.optim.grad_clip)
        rs.scaler.step(rs.opt_g)
        rs.sched_g.step()
        ema_update(rs.ema, rs.gen, ema_decay_at(rs.cfg.train.ema_decay, rs.step))
    else:
        # G's schedule follows the step count, also on steps where only D trains: torch warns that
        # the scheduler stepped without its optimiser, which is what is meant here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            rs.sched_g.step()
    return sr


def generator_loss(rs: RunState, lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor,
                   logs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weighted sum of G's losses as configured; each term also goes into `logs`."""
    lo = rs.cfg.losses
    hr_d = hr  # the discriminator's "real" is the plain HR even when the other losses aim sharper
    if lo.sharpen_target > 0:
        with torch.no_grad():
            hr = unsharp_mask(hr, lo.sharpen_target, lo.sharpen_sigma, lo.sharpen_threshold)
    l_pix = pixel_loss(lo.pixel, sr, hr)
    loss_g = lo.pixel_weight * l_pix
    logs["l_pix"] = l_pix
    if lo.detail > 0:
        l_det = detail_loss(sr, hr, lo.detail_sigma)
        loss_g = loss_g + lo.detail * l_det
        logs["l_det"] = l_det
    if rs.percep is not None:
        with rs.autocast():
            l_percep = rs.percep(sr, hr)
        loss_g = loss_g + lo.perceptual * l_percep
        logs["l_percep"] = l_percep
    if rs.texture is not None:
        with rs.autocast():
            l_tex = rs.texture(sr, hr)
        loss_g = loss_g + lo.texture * l_tex
        logs["l_tex"] = l_tex
    if lo.artifact > 0:
        # LDL compares G with its own EMA: where they disagree locally, G's detail is an artifact
        with torch.no_grad(), rs.autocast():
            sr_ema = rs.ema(lr)
        l_art = artifact_loss(sr, hr, sr_ema.float(), lo.artifact_window)
        loss_g = loss_g + lo.artifact * l_art
        logs["l_art"] = l_art
    if rs.disc is not None:
        # The raw module, not its DDP wrapper: D is frozen here, and the wrapper would sync D's
        # (absent) gradients; G's wrapper already syncs G's.
        with rs.autocast():
            fake_logits, fake_feats = rs.disc(sr, return_features=True)
            real_logits = real_feats = None
            if rs.need_real_logits:
                with torch.no_grad():
                    real_logits, real_feats = rs.disc(hr_d, return_features=True)
        if lo.adversarial > 0:
            l_adv = rs.g_adv_loss(fake_logits.float(), None if real_logits is None else real_logits.float())
            loss_g = loss_g + lo.adversarial * l_adv
            logs["l_adv"] = l_adv
        if lo.feature_matching > 0:
            l_fm = feature_matching_loss(fake_feats, real_feats)
            loss_g = loss_g + lo.feature_matching * l_fm
            logs["l_fm"] = l_fm
        # for GanHealth: a generator collapsing to flat output shows as SR std << HR std
        logs["sr_std"], logs["hr_std"] = sr.detach().std(), hr_d.std()
    logs["loss_g"] = loss_g
    return loss_g


def discriminator_step(rs: RunState, sr: torch.Tensor, hr: torch.Tensor, logs: dict[str, torch.Tensor]) -> None:
    """One D update on HR (real) against the detached SR (fake) of this step's generator pass."""
    lo, disc = rs.cfg.losses, rs.disc
    disc.requires_grad_(True)  # frozen during the generator step
    # R1 penalises D's gradient on real images (it keeps D from growing arbitrarily sharp around the
    # data). It is lazy, as in StyleGAN2: computed every r1_every-th step and scaled by r1_every, so
    # its average strength is unchanged at a fraction of the double-backward cost.
    do_r1 = lo.r1 > 0 and rs.step % lo.r1_every == 0
    hr_d = hr.detach().requires_grad_(True) if do_r1 else hr
    with rs.autocast():
        real_logits = rs.disc_train(hr_d)
        # detached: this step trains D only; G's gradient came from the generator step
        fake_logits = rs.disc_train(sr.detach())
    loss_d = rs.d_adv_loss(real_logits.float(), fake_logits.float())
    if do_r1:
        l_r1 = r1_penalty(real_logits, hr_d)
        loss_d = loss_d + 0.5 * lo.r1 * lo.r1_every * l_r1
        logs["l_r1"] = l_r1.detach()
    rs.opt_d.zero_grad(set_to_none=True)
    rs.scaler.scale(loss_d).backward()
    if rs.cfg.optim.grad_clip_d > 0:
        rs.scaler.unscale_(rs.opt_d)  # clip the true gradient, not the loss-scaled one
        torch.nn.utils.clip_grad_norm_(disc.parameters(), rs.cfg.optim.grad_clip_d)
    rs.scaler.step(rs.opt_d)
    rs.sched_d.step()
    # D's mean logits on real and fake: how far apart D holds them is the GAN's health at a glance
    logs.update(loss_d=loss_d.detach(), d_real=real_logits.detach().float().mean(),
                d_fake=fake_logits.detach().float().mean())


# ---------------------------------------------------------------------------------------------
# logging, validation, checkpoints

def write_metrics(rs: RunState, record: dict[str, Any]) -> None:
    """Rank 0: one JSON line in metrics.jsonl, and the same scalars in TensorBoard."""
    rs.metrics_file.write(json.dumps(record) + "\n")
    rs.metrics_file.flush()
    if rs.tb is not None:
        for k, v in record.items():
            if k != "step":
                tb_key = k if "/" in k else f"train/{k}"
                rs.tb.add_scalar(tb_key, v, record["step"])


def log_losses(rs: RunState, since_step: int, since_time: float) -> dict[str, Any] | None:
    """The mean of each logged value since the last log (over all ranks), written by rank 0.

    Every rank calls this: the sums are all-reduced. Returns rank 0's record (None elsewhere)."""
    sums, counts = rs.meter.drain()  # the one device sync of the log interval
    keys = sorted(sums)
    if rs.dinfo.enabled:  # the mean over all ranks, as one process would log it
        packed = torch.tensor([sums[k] for k in keys], dtype=torch.float64,
                              device=rs.device if rs.device.type == "cuda" else "cpu")
        dist.all_reduce(packed)
        sums = dict(zip(keys, (packed / rs.dinfo.world_size).tolist()))
    if not rs.dinfo.is_main:
        return None
    rec: dict[str, Any] = {"step": rs.step, "lr_g": rs.sched_g.get_last_lr()[0]}
    if rs.sched_d is not None:
        rec["lr_d"] = rs.sched_d.get_last_lr()[0]
    rec["it_per_s"] = (rs.step - since_step) / max(1e-9, time.time() - since_time)
    rec.update({k: sums[k] / counts[k] for k in keys})
    write_metrics(rs, rec)
    for warning in rs.health.check(rec):
        log.warning("%s", warning)
    return rec


def best_track(cfg: Config) -> str:
    """What a best score was measured on: the metric, the validation sets and how their LR is made."""
    d = cfg.data
    seed = f" seed {d.val_seed}" if d.val_degradation != "bicubic" else ""
    sets = ", ".join(name for name, _, _ in _val_sets(cfg))
    return f"{cfg.log.best_metric} on {d.val_degradation}{seed} LR of [{sets}]"


def _best_track_of_old_checkpoint(cfg: Config) -> str:
    # checkpoints from before best_track was saved could only validate on bicubic LR
    return best_track(replace(cfg, data=replace(cfg.data, val_degradation="bicubic")))


def validate_and_keep_best(rs: RunState) -> None:
    """Rank 0: validate the EMA generator, log the result, and export it to best.safetensors when
    log.best_metric improved (lower is better for NIQE, higher for PSNR/SSIM) among the validations
    whose mean PSNR reaches log.best_min_psnr."""
    lg = rs.cfg.log
    rs.meter.settle()  # a non-finite loss stops the run before its weights can become "best"
    result = validate(rs.ema, rs.cfg, rs.device, rs.amp_dtype, rs.run_dir, rs.step, rs.tb)
    write_metrics(rs, {"step": rs.step, **result})
    key = f"val/{lg.best_metric}"
    score = result.get(key)
    if score is not None and lg.best_min_psnr > 0 and result["val/psnr"] < lg.best_min_psnr:
        log.info("step %d: val/psnr %.4f is below log.best_min_psnr = %g, so it cannot be the best",
                 rs.step, result["val/psnr"], lg.best_min_psnr)
        score = None
    if score is not None:
        better = rs.best is None or (score < rs.best if lg.best_metric == "niqe" else score > rs.best)
        if better:
            rs.best = score
            save_weights(rs.run_dir / "best.safetensors", rs.ema, extra_metadata={"step": rs.step, key: score})
    log.info("step %d validation %s", rs.step, {k: round(v, 4) for k, v in result.items()})


def save_checkpoint(rs: RunState) -> None:
    """All ranks call this (the degradation RNG states are gathered); rank 0 writes."""
    rs.meter.settle()  # never write weights that a non-finite loss produced
    deg_states = None
    if rs.deg_rng is not None:
        deg_states = [rs.deg_rng.get_state()]
        if rs.dinfo.enabled:
            deg_states = [None] * rs.dinfo.world_size
            dist.all_gather_object(deg_states, rs.deg_rng.get_state())
    rs.last_saved = rs.step
    if not rs.dinfo.is_main:
        return
    cfg = rs.cfg
    state = {"step": rs.step, "gen": rs.gen.state_dict(), "ema": rs.ema.state_dict(),
             "opt_g": rs.opt_g.state_dict(), "sched_g": rs.sched_g.state_dict(), "rng": rng_state(),
             "sampler": {"next_index": rs.sample_base + (rs.step - rs.step_base) * cfg.data.batch_size},
             "best": rs.best, "best_track": best_track(cfg), "config_digest": config_digest(cfg)}
    if rs.disc is not None:
        state.update(disc=rs.disc.state_dict(), opt_d=rs.opt_d.state_dict(), sched_d=rs.sched_d.state_dict())
    if rs.scaler.is_enabled():
        state["scaler"] = rs.scaler.state_dict()
    if deg_states is not None:
        state["degrader_rng"] = deg_states
    ckpt_dir = rs.run_dir / "checkpoints"
    ckpt_lib.save_train_state(ckpt_lib.checkpoint_path(ckpt_dir, rs.step), state)
    ckpt_lib.prune_checkpoints(ckpt_dir, cfg.log.keep_last)


def stop_together(rs: RunState, requested: bool) -> bool:
    """Under DDP a signal may reach only some ranks: all stop when any was asked to."""
    flag = torch.tensor([float(requested)], device=rs.device if rs.device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


# DistributedDataParallel wrappers of finished runs, kept alive on purpose (close_run says why)
ENDED_DDP_WRAPPERS: list[tuple[Any, Any]] = []


def close_run(rs: RunState, save: bool, failed: bool) -> None:
    """The end of a run, clean or not: the final checkpoint when `save`, then files, the
    deterministic-algorithms switch and the process group, whatever that checkpoint does."""
    try:
        if save:
            save_checkpoint(rs)
    finally:
        if rs.metrics_file is not None:
            rs.metrics_file.close()
        if rs.tb is not None:
            rs.tb.close()
        torch.use_deterministic_algorithms(rs.was_deterministic)
        if rs.dinfo.enabled:
            # Without the barrier a rank that finishes first tears down its gloo connections while
            # rank 0 is still writing the final checkpoint, and gloo aborts the process (SIGABRT,
            # "terminate called without an active exception"); after a failure peers may be gone.
            if not failed:
                dist.barrier()
            dist.destroy_process_group()
            # gloo's ProcessGroup destructor joins its worker threads while holding the GIL, and a
            # worker still releasing a finished collective's tensor waits for the GIL: a deadlock
            # (a CPU rank stuck in ~ProcessGroupGloo under ~Reducer when train() returned, seen once
            # on a loaded machine). The DDP wrappers own the group, so they are kept for the life
            # of the process and that destructor never runs; the command line ends such a rank
            # with os._exit (apps/train.py).
            ENDED_DDP_WRAPPERS.append((rs.gen_train, rs.disc_train))


# ---------------------------------------------------------------------------------------------
# the loop

def train(cfg: Config, run_dir: str | Path, resume: str | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Train as configured; returns a summary dict (final step, best metric, run folder, and the
    signal number if a signal stopped it early, else None).

    resume: "auto" (the run folder's latest checkpoint) or a checkpoint file. overwrite: replace a
    run already in run_dir. Without either, a run folder that holds a run is an error.
    """
    from tqdm import tqdm

    rs = setup_run(cfg, Path(run_dir), resume, overwrite)
    t, lg = cfg.train, cfg.log
    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    open_outputs(rs, resume)
    bar = tqdm(total=t.total_steps, initial=rs.step, disable=not (lg.progress and rs.dinfo.is_main),
               dynamic_ncols=True, desc="train")
    validates = bool(lg.val_every and (cfg.data.val_dirs or cfg.data.holdout > 1) and rs.dinfo.is_main)
    t_last, step_last = time.time(), rs.step
    mid_step = failed = False
    try:
        while rs.step < t.total_steps and not stop.requested:
            mid_step = True  # from here until the step is counted, G and D may be half-updated
            lr, hr = next_batch(rs)
            logs: dict[str, torch.Tensor] = {}
            sr = generator_step(rs, lr, hr, rs.trains_g(), logs)
            if rs.disc is not None:
                discriminator_step(rs, sr, hr, logs)
            # once per step, after both optimisers stepped: the fp16 loss scale adapts to both
            rs.scaler.update()
            rs.meter.add(rs.step, logs)
            rs.step += 1
            mid_step = False
            bar.update(1)

            last = rs.step == t.total_steps
            if rs.step % lg.log_every == 0 or last:
                rec = log_losses(rs, step_last, t_last)
                if rec is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items()
                                     if k.startswith(("l", "d_")) and k not in ("lr_g", "lr_d")})
                t_last, step_last = time.time(), rs.step
            if validates and (rs.step % lg.val_every == 0 or last):
                validate_and_keep_best(rs)
            if rs.step % lg.ckpt_every == 0:
                save_checkpoint(rs)
            if rs.dinfo.enabled:
                stop.requested = stop_together(rs, stop.requested)
    except BaseException:
        failed = True
        raise
    finally:
        bar.close()
        # A step cut short leaves G and D half-updated, and a non-finite loss poisons the weights:
        # keep the last good checkpoint instead. Under DDP the other ranks may be gone after a
        # failure, so only a clean exit saves there.
        save = (rs.step > 0 and rs.step != rs.last_saved and not mid_step and not rs.meter.poisoned
                and not (failed and rs.dinfo.enabled))
        try:
            close_run(rs, save, failed)
        finally:  # only now: a second signal during the final save still means "get out"
            for s, h in old_handlers.items():
                signal.signal(s, h)
    # A signal that came during the last step stopped nothing: that run is finished, not interrupted.
    interrupted = stop.signum if stop.requested and rs.step < t.total_steps else None
    if rs.dinfo.enabled and stop.requested and rs.step < t.total_steps and interrupted is None:
        interrupted = signal.SIGTERM  # another rank got the signal; this one stopped with it
    return {"step": rs.step, "best": rs.best, "run_dir": str(rs.run_dir), "interrupted": interrupted}


# ---------------------------------------------------------------------------------------------
# validation

def _val_name(d: str | Path) -> str:
    return Path(d).name if Path(d).name != "HR" else Path(d).parent.name


def _val_sets(cfg: Config) -> list[tuple[str, Path, list[Path] | None]]:
    """(name, folder, files or None for the whole folder): val_dirs, then each training folder's
    held-out images when data.holdout is set."""
    from ..data.datasets import held_out_images

    sets: list[tuple[str, Path, list[Path] | None]] = [(_val_name(d), Path(d), None)
                                                       for d in cfg.data.val_dirs]
    if cfg.data.holdout > 1:
        for d in cfg.data.train_dirs:
            held = held_out_images(d, cfg.data.holdout)
            if held:
                sets.append((f"{Path(d).name}-holdout", Path(d), held))
    return sets


@torch.no_grad()
def validate(model: nn.Module, cfg: Config, device: torch.device, amp_dtype, run_dir: Path,
             step: int, tb=None) -> dict[str, float]:
    """PSNR/SSIM (Y, shave=scale) and optionally NIQE of `model` on each validation folder; saves
    SR samples from the first folder to run_dir/samples."""
    from ..evaluation.protocol import evaluate_generator

    metrics = ("psnr", "ssim")
    if cfg.log.val_niqe or cfg.log.best_metric == "niqe":
        metrics += ("niqe",)
    out: dict[str, float] = {}
    names = []
    deg = cfg.data.val_degradation
    for name, d, files in _val_sets(cfg):
        res = evaluate_generator(model, d, cfg.model.scale, metrics=metrics, device=str(device),
                                 max_images=cfg.data.val_max_images or None, files=files,
                                 degrade=deg, seed=cfg.data.val_seed)
        # named as `superres eval` names the track, so the two tables can be read side by side
        name = name if deg == "bicubic" else f"{name}-{deg}"
        names.append(name)
        for m in metrics:
            out[f"val/{name}/{m}"] = float(res[m])
    if names:
        for m in metrics:
            out[f"val/{m}"] = float(np.mean([out[f"val/{n}/{m}"] for n in names]))
        if cfg.log.sample_images > 0 and cfg.data.val_dirs:
            save_samples(model, hr_folder(cfg.data.val_dirs[0]), cfg.model.scale, cfg.log.sample_images,
                         run_dir / "samples", step, device, tb, degrade=deg, seed=cfg.data.val_seed)
    return out


@torch.no_grad()
def save_samples(model: nn.Module, hr_dir: Path, scale: int, count: int, out_dir: Path, step: int,
                 device: torch.device, tb=None, lr_crop: int = 48, degrade: str = "bicubic",
                 seed: int = 0) -> list[Path]:
    """For the first `count` images: a centre crop as [LR (nearest) | SR | HR] side by side, so the
    samples of successive steps can be compared at a glance. The LR is the crop's bicubic LR, or a
    draw of `degrade` seeded by (seed, file name), the same at every step."""
    from PIL import Image

    from ..data.datasets import list_images, load_rgb_uint8, to_tensor
    from ..data.degrade import degrade_image, image_seed
    from ..inference.core import tensor_to_uint8, upscale_tensor

    was_training = model.training
    model.eval()
    paths = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in list_images(hr_dir, recursive=False)[:count]:
        hr = load_rgb_uint8(path)
        side = min(hr.shape[0], hr.shape[1], lr_crop * scale) // scale * scale
        top, left = (hr.shape[0] - side) // 2, (hr.shape[1] - side) // 2
        hr = hr[top:top + side, left:left + side]
        lr = degrade_image(hr, degrade, scale, image_seed(seed, path.name))
        sr = tensor_to_uint8(upscale_tensor(model, to_tensor(lr)[None].to(device)))
        lr_big = lr.repeat(scale, axis=0).repeat(scale, axis=1)
        strip = np.concatenate([lr_big, sr, hr], axis=1)
        dest = out_dir / f"step{step:08d}_{path.stem}.png"
        atomic_write_with(dest, lambda tmp, strip=strip: Image.fromarray(strip).save(tmp, format="PNG"))
        paths.append(dest)
        if tb is not None:
            tb.add_image(f"samples/{path.stem}", strip, step, dataformats="HWC")
    model.train(was_training)
    return paths
