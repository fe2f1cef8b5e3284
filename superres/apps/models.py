"""`superres models`: list the shipped models (name, scale, parameters, file) and, with --all,
the architectures a weights path can load.
"""
from __future__ import annotations

import argparse

from ..inference.models import MODELS, default_model_name


def add_models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true",
                   help="also list names whose weights are not shipped, and the architectures and file "
                        "layouts that --model PATH can load")


def run_models(args: argparse.Namespace) -> int:
    from ..inference.weights import load_generator

    default = default_model_name()
    rows = []
    # shipped models first, so `--all` only appends to what the plain listing shows
    for name, e in sorted(MODELS.items(), key=lambda item: not item[1].available):
        if not e.available and not args.all:
            continue
        if e.available:
            model, info = load_generator(e.path)
            params = sum(p.numel() for p in model.parameters())
            rows.append((name + (" (default)" if name == default else ""), f"x{e.scale}", e.inputs, info["arch"],
                         f"{params / 1e6:.2f}M", str(e.path)))
        else:
            rows.append((name, f"x{e.scale}", e.inputs, "-", "-", "not shipped"))
    header = ("name", "scale", "inputs", "arch", "params", "file")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if not rows:
        print("no model weights are shipped in this installation; `superres models --all` lists the names")
    if args.all:
        _print_loadable()
    return 0


# what a weights file given as --model PATH may hold: weights.detect_arch recognises these
_ARCH_NOTES = {
    "msrresnet": "SRResNet / MSRResNet (BasicSR)",
    "rrdbnet": "ESRGAN / Real-ESRGAN RRDBNet (BasicSR key names or the original ESRGAN repo's)",
    "compact": "Real-ESRGAN SRVGGNetCompact (realesr-general, animevideo)",
}


def _print_loadable() -> None:
    from ..archs import GENERATORS

    print()
    print("--model PATH also loads these architectures from a weights file:")
    rows = [(name, "x" + ",".join(map(str, spec.scales)), _ARCH_NOTES.get(name, ""))
            for name, spec in GENERATORS.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        print(f"  {r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}".rstrip())
    print("in these files: .safetensors (ours, with metadata, or bare tensors); .pth/.pt holding only "
          "tensors (a state dict, or one under params_ema / params / state_dict / model / generator / "
          "g_ema). Files that need code to unpickle are refused.")
