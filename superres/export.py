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

import argparse
import contextlib
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import __version__
from .archs import build_generator
from .checkpoint import latest_checkpoint, load_train_state
from .config import Config, ConfigError, config_digest, load_config
from .fs import atomic_write_with, make_temp_file, remove_stale_temp_files, temp_file_target
from .weights import (StateDict, WeightsError, identify_generator, load_generator,
                      save_weights)

log = logging.getLogger(__name__)

# Opset 18 is the lowest the torch.export-based exporter emits natively and is read by every
# onnxruntime since 1.14 and by the other common runtimes; newer opsets add nothing these nets use.
ONNX_OPSET = 18
# fp32 conv stacks agree with onnxruntime to ~1e-6 on [0, 1] inputs; 1e-3 is a wrong-graph alarm,
# not a precision claim.
ONNX_TOLERANCE = 1e-3
# Check sizes differ from the trace size in every dynamic axis and are multiples of 4, because
# RRDBNet x1 pixel-unshuffles by 4.
_ONNX_TRACE_SHAPE = (1, 32, 32)
_ONNX_CHECK_SHAPE = (2, 20, 28)

# Provenance keys carried over when re-exporting an exported file.
_PROVENANCE_KEYS = ("step", "config_digest", "metrics", "best", "config", "description")


class ExportError(RuntimeError):
    """A source that cannot be exported, or an export that failed its own check."""


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


# ---------------------------------------------------------------------------------------------
# ONNX

def _require_onnx_tools() -> None:
    missing = []
    for mod in ("onnxscript", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ExportError(f"--onnx needs {' and '.join(missing)}: pip install -c constraints.txt "
                          "-e '.[onnx]' (the exporter is torch.onnx's torch.export-based one, which "
                          "needs onnxscript; onnxruntime checks the result)")


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence exporter chatter that users cannot act on.

    Without torchvision the exporter warns once per torchvision op it skips registering; the graph
    optimiser logs every rewrite at INFO, which the CLI's INFO level would print; and torch's own
    pytree code raises a deprecation FutureWarning from inside the exporter.
    """
    levels = {"torch.onnx._internal.exporter._registration": logging.ERROR,
              "onnxscript": logging.WARNING, "onnx_ir": logging.WARNING}
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    old_levels = {lg: lg.level for lg in loggers}
    for lg, level in loggers.items():
        lg.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for lg, level in old_levels.items():
            lg.setLevel(level)


def export_onnx(model: nn.Module, path: str | os.PathLike, *,
                metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Export with dynamic batch/height/width, then compare onnxruntime with PyTorch.

    The comparison runs on a random input of another batch size and spatial size than the trace,
    so a graph that baked in the trace shape fails here rather than in the user's hands. The file
    appears at `path` only if the check passes.
    """
    _require_onnx_tools()
    import onnxruntime as ort

    model = model.float().eval()
    channels = int(model.hparams.get("num_in_ch", 3))
    gen = torch.Generator().manual_seed(0)
    b, h, w = _ONNX_TRACE_SHAPE
    trace = torch.rand(b, channels, h, w, generator=gen)
    b, h, w = _ONNX_CHECK_SHAPE
    check = torch.rand(b, channels, h, w, generator=gen)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    with _quiet_onnx_exporter():
        program = torch.onnx.export(model, (trace,), None, dynamo=True, verbose=False,
                                    opset_version=ONNX_OPSET, input_names=["input"],
                                    output_names=["output"], dynamic_shapes=(dims,))
    program.model.metadata_props.update({k: str(v) for k, v in (metadata or {}).items()})
    with torch.no_grad():
        expected = model(check).numpy()
    result: dict[str, Any] = {"path": str(path), "opset": ONNX_OPSET,
                              "check_input": list(check.shape)}

    def write_and_check(tmp: str) -> None:
        # One file: external data only pays off past protobuf's 2 GB limit, far above our nets.
        program.save(tmp, external_data=False)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": check.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape} for input "
                              f"{tuple(check.shape)}; the dynamic axes were not exported")
        diff = float(abs(got - expected).max())
        result["max_abs_diff"] = diff
        if not diff <= ONNX_TOLERANCE:
            raise ExportError(f"ONNX output differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE}) "
                              f"on input {tuple(check.shape)}; the ONNX file was not written")

    atomic_write_with(path, lambda tmp: write_and_check(str(tmp)))
    return result


# ---------------------------------------------------------------------------------------------
# network interpolation

def interpolate_state_dicts(a: StateDict, b: StateDict, alpha: float) -> StateDict:
    """(1 - alpha) * a + alpha * b for every floating-point tensor; alpha 0 gives a, 1 gives b.

    Integer tensors (counters, indices) cannot be blended and must be equal in both.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha = {alpha} must be in [0, 1] (0 = the first model, 1 = the second)")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise ValueError(f"the state dicts have different keys: only in the first {only_a[:5]}, "
                         f"only in the second {only_b[:5]}")
    out: StateDict = {}
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise ValueError(f"{key}: shape {tuple(ta.shape)} in the first, {tuple(tb.shape)} in the second")
        if ta.is_floating_point():
            # lerp is exact at both ends (returns a at 0 and b at 1), which the strength knob relies on;
            # fp32 arithmetic keeps bf16/fp16 weights from losing the small differences.
            blended = torch.lerp(ta.float(), tb.to(device=ta.device, dtype=torch.float32), alpha)
            out[key] = blended.to(ta.dtype)
        elif torch.equal(ta, tb.to(ta.device)):
            out[key] = ta.clone()
        else:
            raise ValueError(f"{key}: integer tensors differ between the models and cannot be blended")
    return out


def architecture_difference(arch_a: str, hparams_a: dict[str, Any], arch_b: str,
                            hparams_b: dict[str, Any]) -> str | None:
    """None if both describe the same network, else a sentence naming what differs."""
    if arch_a != arch_b:
        return f"architecture {arch_a!r} vs {arch_b!r}"
    diffs = [f"{k}={hparams_a.get(k)!r} vs {k}={hparams_b.get(k)!r}"
             for k in sorted(set(hparams_a) | set(hparams_b)) if hparams_a.get(k) != hparams_b.get(k)]
    return f"{arch_a} hyperparameters differ: {', '.join(diffs)}" if diffs else None


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


# ---------------------------------------------------------------------------------------------
# CLI

def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_OR_CKPT",
                   help="a run folder (its latest checkpoint), a checkpoints/ckpt_*.pt file, or an "
                        "exported .safetensors file (to add a description or an ONNX copy)")
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    p.add_argument("--onnx", metavar="PATH", default=None,
                   help="also write an ONNX model (dynamic batch/height/width), checked against "
                        "PyTorch with onnxruntime")
    p.add_argument("--weights", choices=("ema", "gen"), default="ema",
                   help="which generator of a training checkpoint: the EMA (default, usually better) "
                        "or the raw trained weights")
    p.add_argument("--best", action="store_true",
                   help="export the run's best.safetensors (best validation score) instead of its "
                        "latest checkpoint")
    p.add_argument("--run-dir", default=None, metavar="RUN",
                   help="the run folder of a checkpoint copied out of it, so its config.toml and "
                        "validation record go into the file")
    p.add_argument("--description", default="", metavar="TEXT", help="free text stored in the file")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="extra metadata, repeatable; psnr_twin=NAME_OR_FILE lets `superres upscale "
                        "--strength` blend this (GAN) model toward that PSNR model")


def run_export(args: argparse.Namespace) -> int:
    try:
        extra = {}
        for item in args.meta:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ExportError(f"--meta {item!r}: expected KEY=VALUE")
            extra[key.strip()] = value
        report = export_run(args.source, args.output, weights=args.weights, best=args.best,
                            description=args.description, onnx_path=args.onnx, extra_metadata=extra,
                            run_dir=args.run_dir)
    except (ExportError, WeightsError) as e:
        log.error("%s", e)
        return 2
    step = "?" if report["step"] is None else report["step"]
    log.info("wrote %s: %s x%d, %.2fM parameters, %s weights from %s (step %s)", report["output"],
             report["arch"], report["hparams"]["upscale"], report["params"] / 1e6, report["weights"],
             report["source"], step)
    if report["metrics"]:
        scores = {k: round(v, 4) for k, v in report["metrics"].items() if k.startswith("val/")}
        log.info("last validation (step %s): %s", report["metrics"].get("step"), scores)
    if report["best"]:
        log.info("best: %s", report["best"])
    if "onnx" in report:
        o = report["onnx"]
        log.info("wrote %s (opset %d); onnxruntime vs PyTorch on a %s input: max abs diff %.2e",
                 o["path"], o["opset"], "x".join(map(str, o["check_input"])), o["max_abs_diff"])
    return 0


def add_interpolate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A", help="first model (alpha = 0), e.g. the PSNR-oriented one: a shipped "
                                          "model name or a weights file")
    p.add_argument("b", metavar="B", help="second model (alpha = 1), e.g. its GAN fine-tune")
    p.add_argument("--alpha", type=float, required=True,
                   help="weight of B in [0, 1]: result = (1 - alpha) * A + alpha * B")
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    p.add_argument("--description", default="", metavar="TEXT", help="free text stored in the file")


def run_interpolate(args: argparse.Namespace) -> int:
    from .models import ModelNotFound, resolve_model_path

    try:
        # model names (psnr-x4, ...) as `upscale` and `eval` take them, or weights files
        a, b = resolve_model_path(args.a), resolve_model_path(args.b)
        report = interpolate_files(a, b, args.alpha, args.output, description=args.description)
    except (ExportError, WeightsError, ValueError, ModelNotFound) as e:
        log.error("%s", e)
        return 2
    log.info("wrote %s: %s %s, alpha %g", report["output"], report["arch"], report["hparams"],
             report["alpha"])
    return 0
