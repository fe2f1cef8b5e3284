"""`superres export` (a training run or checkpoint -> .safetensors, optionally ONNX) and
`superres interpolate` (blend two models of one architecture): the commands over training.export.
"""
from __future__ import annotations

import argparse
import logging

from ..inference.weights import WeightsError
from ..training.export import ExportError, export_run, interpolate_files

log = logging.getLogger(__name__)


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
    from ..inference.models import ModelNotFound, resolve_model_path

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
