"""Load and save generator weights.

Ours: `.safetensors` with string metadata (arch, hparams as JSON, scale, description, ...).
Foreign: `.pth`/`.pt` read with `torch.load(weights_only=True)` only (never unpickle code), unwrapped
from `params_ema`/`params`/`state_dict`, `module.` prefixes stripped, old ESRGAN key layout
converted, then the architecture and its hyperparameters are detected from key names and shapes.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .archs import GENERATORS, arch_name_of, build_generator

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


class WeightsError(ValueError):
    """A weights file that cannot be read or matched to an architecture."""


# ---------------------------------------------------------------------------------------------
# writing

def atomic_write_bytes(path: str | os.PathLike, write_fn) -> None:
    """Call write_fn(tmp_path) then rename onto `path`: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        # mkstemp makes the file 0600; give the result the permissions a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    atomic_write_bytes(path, lambda tmp: save_file(state, tmp, metadata=meta))


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


def convert_old_esrgan_keys(state: StateDict) -> StateDict:
    """The original ESRGAN repo's RRDB_ESRGAN_x4.pth layout -> BasicSR/Real-ESRGAN names."""
    if "RRDB_trunk.0.RDB1.conv1.weight" not in state:
        return state
    out: StateDict = {}
    for k, v in state.items():
        k2 = re.sub(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", lambda m: f"body.{m[1]}.rdb{m[2]}.", k)
        k2 = (k2.replace("trunk_conv.", "conv_body.").replace("upconv1.", "conv_up1.")
              .replace("upconv2.", "conv_up2.").replace("HRconv.", "conv_hr."))
        out[k2] = v
    return out


def _count_blocks(state: StateDict, pattern: str) -> int:
    idx = {int(m[1]) for k in state if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def detect_arch(state: StateDict) -> tuple[str, dict[str, Any]]:
    """Infer (arch name, hyperparameters) from key names and tensor shapes."""
    keys = set(state)
    if "conv_first.weight" in keys and "body.0.rdb1.conv1.weight" in keys:
        num_feat, first_in = state["conv_first.weight"].shape[:2]
        num_out = state["conv_last.weight"].shape[0]
        unshuffle_sq = first_in // num_out if first_in % num_out == 0 else 1
        upscale = {1: 4, 4: 2, 16: 1}.get(unshuffle_sq, 4)
        num_in = first_in // {4: 1, 2: 4, 1: 16}[upscale]
        return "rrdbnet", dict(num_in_ch=num_in, num_out_ch=num_out, num_feat=int(num_feat),
                               num_block=_count_blocks(state, r"body\.(\d+)\.rdb1\."),
                               num_grow_ch=int(state["body.0.rdb1.conv1.weight"].shape[0]),
                               upscale=upscale)
    if "conv_first.weight" in keys and "body.0.conv1.weight" in keys and "upconv1.weight" in keys:
        num_feat, num_in = state["conv_first.weight"].shape[:2]
        if "upconv2.weight" in keys:
            upscale = 4
        else:
            upscale = int(round((state["upconv1.weight"].shape[0] / num_feat) ** 0.5))
        return "msrresnet", dict(num_in_ch=int(num_in), num_out_ch=int(state["conv_last.weight"].shape[0]),
                                 num_feat=int(num_feat), upscale=upscale,
                                 num_block=_count_blocks(state, r"body\.(\d+)\.conv1\."))
    if "body.0.weight" in keys and "conv_first.weight" not in keys and state["body.0.weight"].ndim == 4:
        n_layers = _count_blocks(state, r"body\.(\d+)\.")
        convs = [i for i in range(n_layers) if state.get(f"body.{i}.weight") is not None
                 and state[f"body.{i}.weight"].ndim == 4]
        num_feat, num_in = state["body.0.weight"].shape[:2]
        act = "prelu" if "body.1.weight" in keys and state["body.1.weight"].ndim == 1 else "relu"
        last_out = state[f"body.{convs[-1]}.weight"].shape[0]
        num_out = num_in  # compact nets map C channels to C channels
        upscale = int(round((last_out / num_out) ** 0.5))
        return "compact", dict(num_in_ch=int(num_in), num_out_ch=int(num_out), num_feat=int(num_feat),
                               num_conv=len(convs) - 2, upscale=upscale, act_type=act)
    sample = sorted(keys)[:8]
    raise WeightsError(f"the weights match no known architecture ({sorted(GENERATORS)}); "
                       f"{len(keys)} keys, first ones: {sample}")


def load_generator(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Build the generator stored in `path` and load its weights with strict=True.

    Returns (model in eval mode, info) where info has arch, hparams, scale and file metadata.
    """
    state, meta = read_state_dict(path)
    if meta.get("format") == "superres" and meta.get("arch") in GENERATORS:
        arch, hparams = meta["arch"], json.loads(meta["hparams"])
    else:
        state = convert_old_esrgan_keys(state)
        arch, hparams = detect_arch(state)
    model = build_generator(arch, **hparams)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path}: weights do not fit {arch} {hparams}: {e}") from e
    model.eval()
    info = {"arch": arch, "hparams": hparams, "scale": int(hparams["upscale"]), "metadata": meta,
            "path": str(path)}
    log.debug("loaded %s %s from %s", arch, hparams, path)
    return model, info
