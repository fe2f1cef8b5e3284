"""`superres train CONFIG --run-dir DIR [--set key=value] [--resume auto]`: the command over
training.loop.train (config loading, run-folder errors, the resume hint).
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from ..training.checkpoint import CheckpointWriteError
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
    rc = _run_train(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun rank leaves without running destructors: gloo's process-group destructor can
        # deadlock at interpreter exit (training/loop.py close_run). Files and logs are closed and
        # flushed first; the exit code is the same.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def _run_train(args: argparse.Namespace) -> int:
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one copy of the log, from rank 0
    run_dir, existed = None, True
    try:
        cfg = load_config(args.config, args.overrides)
        run_dir = args.run_dir or str(Path("runs") / Path(args.config).stem)
        existed = Path(run_dir).exists()
        summary = train(cfg, run_dir, resume=args.resume, overwrite=args.overwrite)
    except CheckpointWriteError as e:
        log.error("%s", e.strerror)
        return 1
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
