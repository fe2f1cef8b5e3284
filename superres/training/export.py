"""`superres export` and `superres interpolate`: turn training runs into files users load.

    superres export runs/psnr -o psnr.safetensors --onnx psnr.onnx --description "MSRResNet x4, L1"
    superres interpolate psnr.safetensors gan.safetensors --alpha 0.7 -o mix.safetensors

Export reads a run folder (its latest checkpoint, or best.safetensors with --best), a bare training
checkpoint, or an already exported .safetensors file, and writes one generator (EMA by default) with
the metadata that rebuilds it (weights.save_weights) plus where it came from: the training config's
digest and TOML text, the step, the last validation record and the best score.

Interpolation is ESRGAN's network interpolation (Wang et al. 2018, sec. 3.4): a parameter-wise blend
of a PSNR-oriented and a GAN-trained model of the same architecture, trading fidelity for texture
without retraining.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .._version import __version__
from ..archs import build_generator
from ..inference.interpolate import architecture_difference, interpolate_state_dicts
from ..inference.onnx import ExportError, _require_onnx_tools, export_onnx
from ..inference.weights import StateDict, identify_generator, load_generator, save_weights
from ..io.fs import make_temp_file, remove_stale_temp_files, temp_file_target
from .checkpoint import latest_checkpoint, load_train_state
from .config import Config, ConfigError, config_digest, load_config

log = logging.getLogger(__name__)

# Provenance keys carried over when re-exporting an exported file.
_PROVENANCE_KEYS = ("step", "config_digest", "metrics", "best", "config", "description")


@dataclass
class ExportSource:
    """One generator plus what is known about the run it came from."""
    model: nn.Module
    arch: str
    path: Path                     # the file the weights were read from
    weights: str                   # "ema", "gen", or "file" for an exported .safetensors
    run_dir: Path | None = None
    step: int | None = None
    config_text: str | None = None
    config_digest: str | None = None
    metrics: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    inherited: dict[str, str] = field(default_factory=dict)  # metadata of an exported source file


# ---------------------------------------------------------------------------------------------
# reading a run

def _run_dir_for(path: Path) -> Path | None:
    """The run folder that holds `path`: itself, two levels up from a checkpoint, or the folder of
    a best.safetensors. Only these layouts count, so a stray config.toml near an unrelated weights
    file is never mistaken for its training config."""
    if path.is_dir():
        run_dir = path
    elif path.parent.name == "checkpoints":
        run_dir = path.parent.parent
    elif path.name == "best.safetensors":
        run_dir = path.parent
    else:
        return None
    return run_dir if (run_dir / "config.toml").is_file() else None


def last_validation_record(metrics_path: str | os.PathLike,
                           max_step: int | None = None) -> dict[str, Any] | None:
    """The last metrics.jsonl record with `val/...` keys at or before `max_step`."""
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    found = None
    with open(metrics_path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                # A run that is still training may be mid-way through writing its last line.
                log.warning("%s:%d is not valid JSON; skipped", metrics_path, lineno)
                continue
            if not any(k.startswith("val/") for k in rec):
                continue
            if max_step is not None and int(rec.get("step", 0)) > max_step:
                continue
            found = rec
    return found


def _build_from_state(state: StateDict, cfg: Config | None, where: Path) -> tuple[nn.Module, str]:
    if cfg is not None:
        arch, hparams = cfg.model.arch, {**cfg.model.hparams, "upscale": cfg.model.scale}
    else:
        arch, hparams, state = identify_generator(state, where=str(where))
        log.info("%s: no config.toml two levels up; architecture detected from the weights: %s %s",
                 where, arch, hparams)
    model = build_generator(arch, **hparams)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{where}: the weights do not fit {arch} {hparams} "
                          f"(from {'config.toml' if cfg else 'the key names'}): {e}") from e
    return model.eval(), arch


def _meta_json(meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        return meta[key]


def load_source(source: str | os.PathLike, *, weights: str = "ema", best: bool = False,
                run_dir: str | os.PathLike | None = None) -> ExportSource:
    """Find the generator to export in a run folder, a training checkpoint or a .safetensors file.

    `run_dir` names the run folder (config.toml, metrics.jsonl) of a checkpoint that was copied out
    of it; by default it is found from the usual layout or not at all.
    """
    source = Path(source)
    if weights not in ("ema", "gen"):
        raise ExportError(f"--weights {weights!r}; allowed values: ['ema', 'gen']")
    if not source.exists():
        raise ExportError(f"{source}: no such run folder or checkpoint file")
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not (run_dir / "config.toml").is_file():
            raise ExportError(f"--run-dir {run_dir}: no config.toml there; give the folder "
                              "`superres train --run-dir` wrote")
    else:
        run_dir = _run_dir_for(source)
        if run_dir is None and source.suffix != ".safetensors":
            log.warning("%s is outside its run folder: the file will carry no training config or "
                        "validation record (name the run folder with --run-dir)", source)
    if source.is_dir():
        if best:
            path = source / "best.safetensors"
            if not path.is_file():
                raise ExportError(f"{path} does not exist: it is written only when validation runs "
                                  "(log.val_every > 0). Export the latest checkpoint instead (drop --best)")
        else:
            path = latest_checkpoint(source / "checkpoints")
            if path is None:
                raise ExportError(f"{source}: no checkpoints/ckpt_*.pt in this folder; is it a run "
                                  "folder of `superres train`?")
    else:
        if best:
            raise ExportError(f"--best selects best.safetensors in a run folder; {source} is a file")
        path = source

    cfg = None
    if run_dir is not None:
        try:
            # As written: export needs only the model section, and the digest check below must see
            # the text the run saved (runs before config-relative paths saved cwd-relative ones).
            cfg = load_config(run_dir / "config.toml", resolve_paths=False)
        except ConfigError as e:
            raise ExportError(f"{run_dir / 'config.toml'}: {e}") from e

    if path.suffix == ".safetensors":
        src = _source_from_exported(path, weights)
        if cfg is not None:
            # The config lists only the hyperparameters it changes; compare those.
            wanted = {**cfg.model.hparams, "upscale": cfg.model.scale}
            have = {k: src.model.hparams.get(k) for k in wanted}
            why = architecture_difference(cfg.model.arch, wanted, src.arch, have)
            if why:
                log.warning("%s and %s describe different networks (%s); exporting the file's",
                            path, run_dir / "config.toml", why)
    else:
        src = _source_from_checkpoint(path, weights, cfg)
        if cfg is not None and src.config_digest and src.config_digest != config_digest(cfg):
            log.warning("%s was trained with a config other than %s (its digest differs): the exported "
                        "config may not be the one that made these weights", path, run_dir / "config.toml")
    src.run_dir = run_dir
    if run_dir is not None:
        src.config_text = (run_dir / "config.toml").read_text()
        src.config_digest = src.config_digest or config_digest(cfg)
        src.metrics = last_validation_record(run_dir / "metrics.jsonl", src.step)
        if src.best is not None:
            src.best.setdefault("metric", f"val/{cfg.log.best_metric}")
    return src


def _source_from_checkpoint(path: Path, weights: str, cfg: Config | None) -> ExportSource:
    try:
        state = load_train_state(path)
    except Exception as e:  # torch.load raises many types for foreign or damaged files
        raise ExportError(f"{path}: not a readable training checkpoint ({e})") from e
    if not isinstance(state, dict) or not isinstance(state.get(weights), dict):
        keys = sorted(state)[:10] if isinstance(state, dict) else type(state).__name__
        raise ExportError(f"{path}: no {weights!r} weights in this checkpoint (top-level keys: {keys}); "
                          "a `superres train` checkpoint has 'gen' and 'ema'")
    model, arch = _build_from_state(state[weights], cfg, path)
    best = state.get("best")
    return ExportSource(model=model, arch=arch, path=path, weights=weights,
                        step=int(state["step"]) if "step" in state else None,
                        config_digest=state.get("config_digest"),
                        best={"value": float(best)} if best is not None else None)


def _source_from_exported(path: Path, weights: str) -> ExportSource:
    if weights != "ema":
        raise ExportError(f"{path} holds one exported generator; --weights gen applies only to "
                          "training checkpoints (checkpoints/ckpt_*.pt)")
    model, info = load_generator(path)
    meta = info["metadata"]
    step = _meta_json(meta, "step")
    # best.safetensors from the training loop records its score as `val/<metric>`.
    scores = {k: _meta_json(meta, k) for k in meta if k.startswith("val/")}
    best = _meta_json(meta, "best")
    if best is None and len(scores) == 1:
        (metric, value), = scores.items()
        best = {"metric": metric, "value": value}
    return ExportSource(model=model, arch=info["arch"], path=path, weights="file",
                        step=int(step) if step is not None else None,
                        config_digest=meta.get("config_digest"), best=best,
                        inherited={k: meta[k] for k in _PROVENANCE_KEYS if k in meta})


# ---------------------------------------------------------------------------------------------
# writing

def export_metadata(src: ExportSource, description: str = "") -> dict[str, Any]:
    """The provenance keys written next to save_weights' arch/hparams/scale."""
    meta: dict[str, Any] = dict(src.inherited)
    fresh = {"step": src.step, "config_digest": src.config_digest, "metrics": src.metrics,
             "best": src.best, "config": src.config_text, "description": description or None}
    meta.update({k: v for k, v in fresh.items() if v is not None})
    meta.setdefault("description", "")
    meta["weights"] = src.weights
    meta["source"] = portable_path(src.path)
    meta["superres_version"] = __version__
    return meta


def portable_path(path: str | os.PathLike) -> str:
    """A path for metadata that travels with the file: relative to the working folder when it lies
    under it, else only its last three parts (run/checkpoints/ckpt_N.pt); a shipped model should
    not carry the home folder of the machine it was trained on."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(*path.parts[-3:]).as_posix()


def export_run(source: str | os.PathLike, output: str | os.PathLike, *, weights: str = "ema",
               best: bool = False, description: str = "",
               onnx_path: str | os.PathLike | None = None,
               extra_metadata: dict[str, str] | None = None,
               run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write `output` (.safetensors) and optionally an ONNX file; returns a report dict.

    extra_metadata: more string keys for the file, e.g. psnr_twin (the model `--strength` blends
    toward) or a model card's fields.
    """
    if onnx_path is not None:
        _require_onnx_tools()  # fail before writing anything rather than half-way
    src = load_source(source, weights=weights, best=best, run_dir=run_dir)
    meta = export_metadata(src, description)
    meta.update(extra_metadata or {})
    writers = {Path(output): lambda tmp: save_weights(tmp, src.model, arch=src.arch, extra_metadata=meta)}
    if onnx_path is not None:
        onnx_meta = {"arch": src.arch, "hparams": json.dumps(src.model.hparams, sort_keys=True),
                     "scale": str(src.model.hparams["upscale"]), "description": meta["description"],
                     "step": "" if src.step is None else str(src.step)}
        writers[Path(onnx_path)] = lambda tmp: export_onnx(src.model, tmp, metadata=onnx_meta)
    results = write_together(writers)
    report: dict[str, Any] = {
        "output": str(output), "source": str(src.path), "weights": src.weights, "arch": src.arch,
        "hparams": dict(src.model.hparams), "step": src.step,
        "params": sum(p.numel() for p in src.model.parameters()),
        "metrics": src.metrics, "best": src.best,
    }
    if onnx_path is not None:
        report["onnx"] = {**results[1], "path": str(onnx_path)}
    return report


def _remove_stale_temps(dest: Path) -> None:
    """Temp files of an export to `dest` that was killed (SIGKILL runs no cleanup): name them and
    remove them. Only our own temp-file pattern matches (fs.remove_stale_temp_files), never a user's
    file."""
    for p in remove_stale_temp_files(dest.parent, {dest.name}):
        target = temp_file_target(p) or dest   # the old pattern is only matched for `dest`
        log.warning("an earlier export to %s was interrupted before it finished (%s %s); removed "
                    "its temp file %s", target, target.name, "is from before it" if target.exists()
                    else "was never written", p.name)


def write_together(writers: dict[Path, Callable[[str], Any]]) -> list[Any]:
    """Write several files so that all of them appear or none: each writer fills a hidden temp
    file beside its destination, and only when every one has succeeded are they renamed into
    place, back to back. A kill or a failed check during the slow part (the ONNX export and its
    onnxruntime comparison) leaves the old files, if any, untouched and no new one without its
    partner. Returns the writers' results in order."""
    for dest in writers:
        if dest.is_dir():
            raise ExportError(f"{dest} is a folder; give a file name")
        _remove_stale_temps(dest)
    temps: dict[Path, Path] = {}
    try:
        results = []
        for dest, write in writers.items():
            tmp = make_temp_file(dest)
            temps[dest] = tmp
            results.append(write(str(tmp)))
        for dest, tmp in temps.items():
            os.replace(tmp, dest)
        return results
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise


def _file_summary(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    summary: dict[str, Any] = {"path": str(path), "sha256": digest.hexdigest()}
    for key in ("description", "step", "config_digest"):
        if meta.get(key):
            summary[key] = meta[key]
    return summary


def interpolate_files(path_a: str | os.PathLike, path_b: str | os.PathLike, alpha: float,
                      output: str | os.PathLike, *, description: str = "") -> dict[str, Any]:
    """Blend two weights files of the same architecture into `output` (.safetensors)."""
    path_a, path_b = Path(path_a), Path(path_b)
    model_a, info_a = load_generator(path_a)
    model_b, info_b = load_generator(path_b)
    why = architecture_difference(info_a["arch"], info_a["hparams"], info_b["arch"], info_b["hparams"])
    if why:
        raise ExportError(f"cannot interpolate {path_a} and {path_b}: {why}. Network interpolation "
                          "needs two models of the same architecture, e.g. a PSNR model and its GAN "
                          "fine-tune")
    state = interpolate_state_dicts(model_a.state_dict(), model_b.state_dict(), alpha)
    model_a.load_state_dict(state, strict=True)
    meta = {"alpha": alpha, "source_a": _file_summary(path_a, info_a["metadata"]),
            "source_b": _file_summary(path_b, info_b["metadata"]),
            "description": description or f"network interpolation: {1 - alpha:g} x {path_a.name} "
                                          f"+ {alpha:g} x {path_b.name}",
            "superres_version": __version__}
    save_weights(output, model_a, arch=info_a["arch"], extra_metadata=meta)
    return {"output": str(output), "arch": info_a["arch"], "hparams": info_a["hparams"], "alpha": alpha}
