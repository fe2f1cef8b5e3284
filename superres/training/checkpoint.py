"""Training state checkpoints (for resuming). Exported user-facing weights live in weights.py.

A checkpoint is a plain dict of tensors, numbers, strings and lists saved with torch.save and read
with `torch.load(weights_only=True)`, so loading one never runs pickled code.
"""
from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..io.fs import atomic_write_with

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (disk full, quota, permissions), said in words."""


def save_train_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically: the previous checkpoints stay whole whatever happens to this one."""
    try:
        atomic_write_with(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as e:
        # torch.save reports a full disk as RuntimeError("... iostream error" / "file write failed")
        text = str(e).lower()
        full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "iostream" in text \
            or "write failed" in text or "no space" in text
        if not full and not isinstance(e, OSError):
            raise
        what = "the disk is full" if full else (e.strerror or str(e))
        raise CheckpointWriteError(getattr(e, "errno", None) or errno.EIO,
                                   f"could not write the checkpoint {path}: {what}; free space (or lower "
                                   "log.keep_last) and resume with --resume auto: the earlier checkpoints "
                                   "are intact") from None


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(str(path), map_location="cpu", weights_only=True)


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints in `ckpt_dir` sorted by step (oldest first)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m[1]), p) for p in ckpt_dir.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1] if ckpts else None


def checkpoint_path(ckpt_dir: str | os.PathLike, step: int) -> Path:
    return Path(ckpt_dir) / f"ckpt_{step:08d}.pt"


def prune_checkpoints(ckpt_dir: str | os.PathLike, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
        log.debug("removed old checkpoint %s", old)
