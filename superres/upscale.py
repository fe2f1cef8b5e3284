"""`superres upscale`: the file job around the inference core (inference.py).

    superres upscale photo.jpg -o photo_x4.png
    superres upscale photos/ -o out/ --recursive --model psnr-x4 --tile 256 --report report.json

Inputs (files, folders, globs) -> output paths -> read, `Upscaler.upscale_image`, write, report.
`Upscaler` and `auto_tile_size` live in inference.py and are re-exported here, so
`from superres.upscale import Upscaler` keeps working.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import runtime
from .images import FORMATS, DEFAULT_QUALITY, ImageError, normalize_format, read_image, write_image
from .inference import ALPHA_MODES, DEFAULT_OVERLAP, Upscaler, auto_tile_size, output_size
from .models import MODELS, ModelNotFound

log = logging.getLogger(__name__)

__all__ = ["Upscaler", "auto_tile_size", "output_size", "gather_inputs", "add_upscale_arguments", "run_upscale"]


# ---------------------------------------------------------------------------------------------
# the command

_GLOB_CHARS = set("*?[")


def gather_inputs(specs: list[str], recursive: bool) -> tuple[list[tuple[Path, Path]], list[str]]:
    """INPUT arguments -> [(file, root)] where root is the folder the output mirrors from, and a list
    of error lines for arguments that matched nothing."""
    items: list[tuple[Path, Path]] = []
    errors: list[str] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if p.is_dir():
            files = p.rglob("*") if recursive else p.iterdir()
            found = sorted(f for f in files if f.is_file() and f.suffix.lower() in _READABLE)
            if not found:
                errors.append(f"{spec}: no image files in this folder"
                              + ("" if recursive else " (use --recursive for sub-folders)"))
            items.extend((f, p) for f in found)
        elif p.is_file():
            items.append((p, p.parent))
        elif _GLOB_CHARS & set(spec):
            found = sorted(Path(f) for f in glob.glob(spec, recursive=recursive) if Path(f).is_file())
            if not found:
                errors.append(f"{spec}: the pattern matches no files")
            items.extend((f, f.parent) for f in found)
        else:
            errors.append(f"{spec}: no such file or folder")
    seen, unique = set(), []
    for f, root in items:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((f, root))
    return unique, errors


_READABLE = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pbm",
             ".jfif", ".jpe"}


def _output_path(src: Path, root: Path, out: Path, single_file: bool, suffix: str, fmt: str | None) -> Path:
    if single_file:
        return out
    rel = src.relative_to(root) if src.is_relative_to(root) else Path(src.name)
    ext = "." + fmt.lower() if fmt else (src.suffix.lower() if src.suffix.lower() in FORMATS else ".png")
    ext = {".jpeg": ".jpg", ".tiff": ".tif"}.get(ext, ext)
    return out / rel.parent / f"{rel.stem}{suffix}{ext}"


def add_upscale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, or glob patterns")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (one input) or folder (several inputs; sub-folders are mirrored)")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help=f"a shipped model ({', '.join(MODELS)}) or a .safetensors/.pth file "
                        "(default: the best shipped model)")
    p.add_argument("--strength", type=float, default=None, metavar="0..1",
                   help="blend a GAN model toward its PSNR twin: 1 = GAN as trained, 0 = PSNR model")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="tile side in input pixels; 0 = whole image at once (default: from free memory)")
    p.add_argument("--tile-overlap", type=int, default=DEFAULT_OVERLAP, metavar="N",
                   help=f"input pixels shared by neighbouring tiles, blended (default {DEFAULT_OVERLAP})")
    p.add_argument("--device", default="auto", choices=runtime.DEVICES)
    p.add_argument("--precision", default="auto", choices=runtime.PRECISIONS,
                   help="auto: bf16 + channels_last on CPUs with native bf16, fp16 on CUDA, else fp32")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--outscale", type=float, default=None, metavar="F",
                      help="final scale factor (the model's pass, then a Lanczos resize)")
    size.add_argument("--width", type=int, default=None, help="final width (keeps the aspect ratio "
                                                              "unless --height is also given)")
    p.add_argument("--height", type=int, default=None, help="final height")
    p.add_argument("--alpha", default="model", choices=ALPHA_MODES,
                   help="how to upscale an alpha channel (default: by the model)")
    p.add_argument("--format", default=None, choices=sorted({f.lstrip('.') for f in FORMATS}),
                   help="output format (default: from the output's extension, else the input's)")
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG/WebP quality 1..100")
    p.add_argument("--suffix", default="", help="added to output file names in an output folder")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip)")
    p.add_argument("--report", default=None, metavar="FILE.json",
                   help="write a JSON list of inputs, outputs, sizes, seconds and errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_upscale(args: argparse.Namespace) -> int:
    items, errors = gather_inputs(args.inputs, args.recursive)
    for e in errors:
        log.error(e)
    if not items:
        log.error("nothing to upscale")
        return 1
    out = Path(args.output).expanduser()
    single_file = len(items) == 1 and len(args.inputs) == 1 and Path(args.inputs[0]).is_file() \
        and not out.is_dir() and not args.output.endswith(os.sep)
    fmt = normalize_format(args.format).lower() if args.format else None
    if single_file and out.suffix.lower() not in FORMATS and not fmt:
        log.error("%s: the output file needs an image extension (%s) or --format", out,
                  ", ".join(sorted(FORMATS)))
        return 2
    if args.height and args.outscale:
        log.error("--height and --outscale cannot be combined")
        return 2
    try:
        up = Upscaler.from_pretrained(args.model, strength=args.strength, device=args.device,
                                      precision=args.precision, tile=args.tile, tile_overlap=args.tile_overlap)
    except (ModelNotFound, ValueError, runtime.RuntimeChoiceError) as e:
        log.error("%s", e)
        return 2
    log.info("model %s (%s x%d) on %s, %s", up.name, up.info.get("arch"), up.scale, up.device,
             runtime.precision_name(up.amp_dtype))
    input_paths = {f.resolve() for f, _ in items}
    report: list[dict[str, Any]] = []
    failed = 0
    bar = tqdm(items, desc="images", unit="img", disable=args.no_progress or len(items) == 1, file=sys.stderr)
    for src, root in bar:
        dst = _output_path(src, root, out, single_file, args.suffix, fmt)
        entry: dict[str, Any] = {"input": str(src), "output": str(dst)}
        t0 = time.perf_counter()
        try:
            if dst.resolve() in input_paths:
                raise ImageError(f"{src}: the output {dst} would overwrite an input; choose another -o "
                                 "or a --suffix")
            if dst.exists() and not args.overwrite:
                entry["status"] = "skipped"
                log.info("%s exists, skipped (--overwrite replaces it)", dst)
                report.append(entry)
                continue
            img = read_image(src)
            entry["input_size"] = [img.width, img.height]
            tiles = tqdm(total=up.count_tiles(img.height, img.width) * (2 if img.alpha is not None
                                                                        and args.alpha == "model" else 1),
                         desc=src.name, unit="tile", leave=False, file=sys.stderr,
                         disable=args.no_progress)
            with tiles:
                result = up.upscale_image(img, outscale=args.outscale, width=args.width, height=args.height,
                                          alpha=args.alpha, on_tile=lambda done, total: tiles.update(1))
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_image(dst, result, format=fmt, quality=args.quality)
            entry.update(status="ok", output_size=[result.width, result.height])
        except (ImageError, OSError, ValueError) as e:
            failed += 1
            entry.update(status="error", error=str(e))
            log.error("%s", e if str(src) in str(e) else f"{src}: {e}")
        except Exception as e:  # one bad image must not stop the batch
            failed += 1
            entry.update(status="error", error=f"{type(e).__name__}: {e}")
            log.exception("%s: failed", src)
        entry["seconds"] = round(time.perf_counter() - t0, 4)
        report.append(entry)
    if args.report:
        from .weights import atomic_write_bytes

        data = json.dumps(report, indent=2).encode()
        # atomic_write_bytes takes a function that writes the temp file, not the bytes themselves
        atomic_write_bytes(args.report, lambda tmp: Path(tmp).write_bytes(data))
    n_ok = sum(e.get("status") == "ok" for e in report)
    log.info("%d written, %d skipped, %d failed", n_ok, sum(e.get("status") == "skipped" for e in report),
             failed)
    return 1 if failed or errors else 0
