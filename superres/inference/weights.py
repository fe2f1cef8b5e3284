"""Load and save generator weights.

Ours: `.safetensors` with string metadata (arch, hparams as JSON, scale, description, ...).
Foreign: `.pth`/`.pt` read with `torch.load(weights_only=True)` only (never unpickle code), unwrapped
from `params_ema`/`params`/`state_dict`, `module.` prefixes stripped; then each registered
architecture (archs/) converts the community key layouts it knows and detects its hyperparameters
from key names and shapes. What keys cannot reveal comes from an explicit `hparams`, never a guess.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..archs import GENERATORS, Ambiguous, arch_name_of, build_generator
from ..archs.spec import Hparams, StateDict
from ..io.fs import atomic_write_with

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A weights file that cannot be read or matched to an architecture."""


# ---------------------------------------------------------------------------------------------
# writing

def save_weights(path: str | os.PathLike, model: nn.Module, *, arch: str | None = None,
                 extra_metadata: dict[str, Any] | None = None) -> None:
    """Save a generator as .safetensors with enough metadata to rebuild it."""
    from safetensors.torch import save_file

    arch = arch or arch_name_of(model)
    hparams = dict(model.hparams)
    meta = {"format": "superres", "arch": arch, "hparams": json.dumps(hparams, sort_keys=True),
            "scale": str(hparams.get("upscale", ""))}
    for k, v in (extra_metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


# ---------------------------------------------------------------------------------------------
# reading

def read_state_dict(path: str | os.PathLike) -> tuple[StateDict, dict[str, str]]:
    """Read tensors and metadata from .safetensors or a weights-only .pth/.pt file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several error types for corrupt headers
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e
        return state, meta
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's message suggests weights_only=False, i.e. running the file's code: never pass that on
        log.debug("torch.load(weights_only=True) refused %s (%s)", path, type(e).__name__)
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        what = ("a PyTorch checkpoint that holds more than tensors (loading it would run code from the "
                "file, which we never do)" if zipped else "not a weights file we can load")
        raise WeightsError(f"{path}: {what}; give a .safetensors file or a .pth/.pt file of plain "
                           f"tensors, or a model name ({', '.join(_model_names())})") from None
    return unwrap_checkpoint(obj, str(path)), {}


def _model_names() -> list[str]:
    from .models import MODELS

    return list(MODELS)


def unwrap_checkpoint(obj: Any, where: str = "checkpoint") -> StateDict:
    """Find the generator's state dict in the common checkpoint wrappers."""
    if isinstance(obj, dict):
        for key in ("params_ema", "params", "state_dict", "model", "generator", "g_ema"):
            if key in obj and isinstance(obj[key], dict):
                return unwrap_checkpoint(obj[key], where)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}
    found = list(obj.keys())[:10] if isinstance(obj, dict) else type(obj).__name__
    raise WeightsError(f"{where}: no tensor state dict found (top-level entries: {found})")


def _resolve(arch: str, detected: Hparams, given: Hparams, where: str) -> Hparams:
    """Detected hyperparameters with the explicit ones on top; an Ambiguous value left over is an
    error that names the key, the values that fit, and how to pass one."""
    hp = {**detected, **given}
    unknown = {k: v for k, v in hp.items() if isinstance(v, Ambiguous)}
    if unknown:
        lines = [f"{k}: one of {list(v.choices)} ({v.why})" for k, v in unknown.items()]
        needed = {k: v for k, v in unknown.items() if v.follows is None}
        example = ", ".join(f"{k!r}: {v.choices[0]!r}" for k, v in needed.items())
        flags = " ".join(f"--hparams {k}={v.choices[0]}" for k, v in needed.items())
        raise WeightsError(f"{where}: {arch} weights do not say {' or '.join(unknown)}: " + "; ".join(lines)
                           + f". Pass {' and '.join(needed)} explicitly: `{flags}` on the command line, "
                           f"hparams={{{example}}} to load_generator or Upscaler.from_pretrained; files "
                           "we save record it in their metadata")
    return hp


def identify_generator(state: StateDict, hparams: Hparams | None = None, where: str = "weights"
                       ) -> tuple[str, Hparams, StateDict]:
    """(arch, hyperparameters, state dict in that arch's key names) from key names and shapes alone.

    Every registered architecture tries its own layout and each community layout it converts;
    exactly one must claim the keys. `hparams` gives values the keys cannot reveal (see
    `archs.Ambiguous`); nothing is guessed.
    """
    given = dict(hparams or {})
    found: list[tuple[str, str, Hparams, StateDict]] = []
    for spec in GENERATORS.values():
        layouts: list[tuple[str, StateDict]] = [("native", state)]
        for layout, convert in spec.conversions.items():
            try:
                converted = convert(state)
            except ValueError as e:
                raise WeightsError(f"{where}: {e}") from e
            if converted is not None:
                layouts.append((layout, converted))
        for layout, candidate in layouts:
            try:
                detected = spec.detect(candidate, given)
            except ValueError as e:
                raise WeightsError(f"{where}: {e}") from e
            if detected is not None:
                found.append((spec.name, layout, detected, candidate))
    if not found:
        sample = sorted(state)[:8]
        raise WeightsError(f"{where}: the weights match no known architecture ({sorted(GENERATORS)}); "
                           f"{len(state)} keys, first ones: {sample}")
    if len(found) > 1:
        raise WeightsError(f"{where}: the keys fit several architectures "
                           f"{[(a, layout) for a, layout, _, _ in found]}; cannot tell which")
    arch, layout, detected, converted = found[0]
    if layout != "native":
        log.info("%s: %s weights in the %s key layout, converted", where, arch, layout)
    return arch, _resolve(arch, detected, given, where), converted


def detect_arch(state: StateDict, hparams: Hparams | None = None) -> tuple[str, Hparams]:
    """(arch name, hyperparameters) of a state dict in any layout `identify_generator` accepts."""
    arch, hp, _ = identify_generator(state, hparams)
    return arch, hp


def load_generator(path: str | os.PathLike, *, hparams: Hparams | None = None
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """Build the generator stored in `path` and load its weights with strict=True.

    Our files name their arch and hyperparameters in the metadata; other files are identified from
    their keys (`identify_generator`), with `hparams` supplying what keys cannot reveal.
    Returns (model in eval mode, info) where info has arch, hparams, scale and file metadata.
    """
    state, meta = read_state_dict(path)
    given = dict(hparams or {})
    if meta.get("format") == "superres" and meta.get("arch") in GENERATORS:
        arch, hparams = meta["arch"], json.loads(meta["hparams"])
        conflict = {k: (hparams[k], v) for k, v in given.items() if k in hparams and hparams[k] != v}
        if conflict:
            raise WeightsError(f"{path}: its metadata says {arch} with " + ", ".join(
                f"{k}={m!r}" for k, (m, _) in conflict.items()) + "; the explicit hparams say " + ", ".join(
                f"{k}={v!r}" for k, (_, v) in conflict.items()))
        hparams = {**hparams, **given}
    else:
        arch, hparams, state = identify_generator(state, given, str(path))
    try:
        model = build_generator(arch, **hparams)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: cannot build {arch} with {hparams}: {e}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path}: weights do not fit {arch} {hparams}: {e}") from e
    model.eval()
    info = {"arch": arch, "hparams": hparams, "scale": int(hparams["upscale"]), "metadata": meta,
            "path": str(path)}
    log.debug("loaded %s %s from %s", arch, hparams, path)
    return model, info
