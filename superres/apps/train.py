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

import argparse
import logging
import os
import shlex
import signal
from pathlib import Path

from ..training.config import ConfigError, load_config
from ..training.loop import train

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# CLI

def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="TOML config file (see configs/)")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set losses.adversarial=5e-3 (repeatable)")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="resume from the latest checkpoint in the run folder (auto) or a checkpoint file")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run folder that already holds a run: deletes its checkpoints, "
                        "metrics.jsonl, samples, TensorBoard logs and best.safetensors first")


def run_train(args: argparse.Namespace) -> int:
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one copy of the log, from rank 0
    run_dir, existed = None, True
    try:
        cfg = load_config(args.config, args.overrides)
        run_dir = args.run_dir or str(Path("runs") / Path(args.config).stem)
        existed = Path(run_dir).exists()
        summary = train(cfg, run_dir, resume=args.resume, overwrite=args.overwrite)
    except ConfigError as e:
        log.error("%s", e)
        # A setup error found after the folder was made (a device that is not there, a pretrained
        # model of another architecture) leaves only config.toml: remove the folder we created.
        if int(os.environ.get("RANK", "0")) == 0 and not existed and run_dir and Path(run_dir).is_dir():
            if [p.name for p in Path(run_dir).iterdir()] == ["config.toml"]:
                (Path(run_dir) / "config.toml").unlink()
                Path(run_dir).rmdir()
        return 2
    if summary["interrupted"] is not None:
        signum = int(summary["interrupted"])
        log.warning("interrupted by %s at step %d of %d; the checkpoint is saved. Resume with:\n  %s",
                    signal.Signals(signum).name, summary["step"], cfg.train.total_steps,
                    resume_command(args, run_dir))
        return 128 + signum  # the shell's convention for a process ended by this signal: 130, 143
    log.info("finished at step %d; run folder %s", summary["step"], summary["run_dir"])
    return 0


def resume_command(args: argparse.Namespace, run_dir: str) -> str:
    """The command line that continues this run: the same config and overrides, --resume auto."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = ["superres"] if world <= 1 else ["torchrun", "--nproc-per-node", str(world), "-m", "superres"]
    sets = [part for item in args.overrides for part in ("--set", item)]
    return shlex.join([*launcher, "train", str(args.config), "--run-dir", str(run_dir), *sets,
                       "--resume", "auto"])
