"""Training state checkpoints (for resuming). Exported user-facing weights live in weights.py.

A checkpoint is a plain dict of tensors, numbers, strings and lists saved with torch.save and read
with `torch.load(weights_only=True)`, so loading one never runs pickled code.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..io.fs import atomic_write_with

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


def save_train_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    atomic_write_with(path, lambda tmp: torch.save(state, tmp))


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
