"""`superres upscale`: the command (options, inputs, output plan, report) over the file job.

    superres upscale photo.jpg -o photo_x4.png
    superres upscale photos/ -o out/ --recursive --model psnr-x4 --tile 256 --report report.json

Inputs (files, folders, globs) -> output paths (checked before the model loads) -> the file job
(filejob.py) locally, or on Ray (cluster.py); one video input goes to video.py. The model is an
`inference.upscaler.Upscaler`, imported only once the options are checked, so `superres upscale
--help` and option errors do not import torch.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..inference import runtime
from ..inference.models import MODELS, ModelNotFound, resolve_model_path
from ..inference.runtime import ALPHA_MODES, DEFAULT_OVERLAP
from ..io.formats import (
    DEFAULT_PNG_LEVEL,
    DEFAULT_QUALITY,
    FORMATS,
    IMAGE_EXTENSIONS,
    UNSUPPORTED_EXTENSIONS,
    ImageError,
    normalize_format,
)
from ..io.fs import atomic_write, remove_stale_temp_files
from .filejob import (DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_PIXELS, FileJobOptions, _raise_terminated,
                      _Terminated, upscale_files, upscaler_options)

if TYPE_CHECKING:
    from ..inference.upscaler import Upscaler


log = logging.getLogger(__name__)

__all__ = ["gather_inputs", "add_upscale_arguments", "run_upscale"]


def hparam(text: str) -> tuple[str, Any]:
    """`--hparams KEY=VALUE` (argparse type): VALUE in TOML syntax (64, true, "prelu"), or a bare word."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
        import tomli as tomllib  # type: ignore[no-redef]

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. act_type=leakyrelu")
    try:
        return key.strip(), tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value.strip()


def check_denoise(args: argparse.Namespace) -> None:
    """ValueError when --denoise names a model that is not a blend family (before it loads)."""
    if getattr(args, "denoise", None) is None:
        return
    from ..inference.models import MODELS, default_model_name

    name = args.model or default_model_name()
    if name not in MODELS or MODELS[name].heavy is None:
        families = ", ".join(n for n, e in MODELS.items() if e.heavy) or "none shipped"
        raise ValueError(f"--denoise {args.denoise:g}: model {name} is not a blend family "
                         f"(families: {families}); for a GAN model with a PSNR twin use --strength")


def _load_upscaler(args: argparse.Namespace) -> "Upscaler | None":
    """The model the options name, or None after logging why not (a usage error: exit 2)."""
    from ..inference.upscaler import Upscaler
    try:
        check_denoise(args)
        Upscaler.tune_host_allocator_before(args.device, args.tile)
        up = Upscaler.from_pretrained(**upscaler_options(args))
    except (ModelNotFound, ValueError, runtime.RuntimeChoiceError) as e:
        log.error("%s", e)
        return None
    up.tune_host_allocator()   # many tiles in one process: keep freed memory for reuse
    return up


def _run_video(args: argparse.Namespace) -> int:
    """One video file in, one video file out (superres.video); needs the [video] extra."""
    try:
        import av  # noqa: F401
    except ModuleNotFoundError:
        log.error("video input needs PyAV: pip install -c constraints.txt -e '.[video]'")
        return 2
    from .video import run_video
    src, dst = Path(args.inputs[0]), Path(args.output).expanduser()
    if dst.is_dir() or args.output.endswith(("/", os.sep)):
        dst = dst / f"{src.stem}{args.suffix}{src.suffix}"
    try:
        # before the model loads: an output that is the input would replace the original video
        if _same_file(src, dst):
            raise _UsageError(f"-o {args.output} names the input video {src} itself; an output never replaces "
                              f"an input: give another name or folder (e.g. -o {src.with_name(src.stem + '_x4' + src.suffix)})")
        _check_writable(dst.parent)
        _check_report(args, {src.resolve()}, [dst])
    except _UsageError as e:
        log.error("%s", e)
        return 2
    up = _load_upscaler(args)
    if up is None:
        return 2
    return run_video(args, up, src, dst)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links, `./`, case-insensitive file systems included)."""
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_report(args: argparse.Namespace, inputs: set[Path], outputs: list[Path]) -> None:
    """--report must not replace an input or an output of this run, and its folder must be writable:
    both known before any compute."""
    if not args.report:
        return
    report = Path(args.report).expanduser()
    target = report.resolve()
    if target in inputs or any(_same_file(i, report) for i in inputs):
        raise _UsageError(f"--report {args.report} names an input of this run; the report never replaces an "
                          "input: give another file name, e.g. --report report.json")
    if any(target == o.resolve() for o in outputs):
        raise _UsageError(f"--report {args.report} names an output of this run; give another file name, "
                          "e.g. --report report.json")
    if report.is_dir():
        raise _UsageError(f"--report {args.report} is a folder; give a file name, e.g. {report / 'report.json'}")
    _check_writable(report.parent if str(report.parent) else Path("."))


_GLOB_CHARS = set("*?[")
EXAMPLE = "superres upscale photo.jpg -o photo_x4.png"


def _is_candidate(f: Path) -> bool:
    """A folder entry to try as an image: anything but a sub-folder that has an image extension.

    Broken links, pipes and unreadable files are kept so that reading them reports them; skipping them
    here would drop them silently.
    """
    suffix = f.suffix.lower()
    return (suffix in IMAGE_EXTENSIONS or suffix in UNSUPPORTED_EXTENSIONS) and not f.is_dir()


def gather_inputs(specs: list[str], recursive: bool) -> tuple[list[tuple[Path, Path]], list[str]]:
    """INPUT arguments -> [(file, root)] where root is the folder the output mirrors from, and a list
    of error lines for arguments that matched nothing."""
    items: list[tuple[Path, Path]] = []
    errors: list[str] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if p.is_dir():
            files = p.rglob("*") if recursive else p.iterdir()
            found = sorted(f for f in files if _is_candidate(f))
            if not found:
                errors.append(f"{spec}: no image files in this folder"
                              + ("" if recursive else " (use --recursive for sub-folders)"))
            items.extend((f, p) for f in found)
        elif p.exists() or p.is_symlink():
            items.append((p, p.parent))   # a file, or a broken link / pipe that reading will report
        elif _GLOB_CHARS & set(spec):
            found = sorted(Path(f) for f in glob.glob(spec, recursive=recursive) if _is_candidate(Path(f)))
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


def _output_path(src: Path, root: Path, out: Path, single_file: bool, suffix: str, fmt: str | None) -> Path:
    if single_file:
        return out
    rel = src.relative_to(root) if src.is_relative_to(root) else Path(src.name)
    ext = "." + fmt.lower() if fmt else (src.suffix.lower() if src.suffix.lower() in FORMATS else ".png")
    ext = {".jpeg": ".jpg", ".tiff": ".tif"}.get(ext, ext)
    return out / rel.parent / f"{rel.stem}{suffix}{ext}"


# option values, checked by argparse before anything is loaded ---------------------------------

def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") \
            from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {lo}..{hi}, got {value}" if hi is not None
                                             else f"must be {lo} or more, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _unit_float(text: str) -> float:
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in 0..1, got {text}")
    return value


ENGINE_NAMES = ("auto", "torch", "winograd", "onnxruntime", "openvino")   # inference/engines.py (kept here: --help imports no torch)


def default_engine() -> str:
    """The command line's engine unless --engine says: $SUPERRES_ENGINE, else auto."""
    value = os.environ.get("SUPERRES_ENGINE", "auto")
    return value if value in ENGINE_NAMES else "auto"


def _strength(text: str) -> str | float:
    return "auto" if text.strip().lower() == "auto" else _unit_float(text)


def _pixel_count(text: str) -> int:
    """'50000000', '50M', '0.5G', '2e6' -> a number of pixels; 0 = no limit."""
    t = text.strip().upper()
    factor = {"K": 10**3, "M": 10**6, "G": 10**9}.get(t[-1:], 1)
    value = _number(t[:-1] if factor > 1 else t, float) * factor
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more, got {text}")
    return int(value)


def add_upscale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, or glob patterns")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (one input) or folder (several inputs; sub-folders are mirrored)")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help=f"a shipped model ({', '.join(MODELS)}) or a .safetensors/.pth file "
                        "(default: the best shipped model)")
    p.add_argument("--hparams", type=hparam, action="append", default=None, metavar="KEY=VALUE",
                   help="a hyperparameter a foreign weights file cannot reveal from its keys (repeatable), "
                        "e.g. --hparams act_type=leakyrelu for a compact net; the loader says when one "
                        "is needed")
    blend = p.add_mutually_exclusive_group()
    blend.add_argument("--strength", type=_strength, default="auto", metavar="auto|0..1",
                       help="auto (default): photo-x4 picks its blend per image from the input's noise, JPEG "
                            "blocking and detail (shown in the log and --report), other models run as "
                            "trained; a number fixes the blend: for photo-x4 0 = its light end, 1 = its "
                            "heavy (denoising) end, for a GAN model with a PSNR twin 1 = the GAN as "
                            "trained, 0 = the PSNR model")
    blend.add_argument("--denoise", type=_unit_float, default=None, metavar="0..1",
                       help="photo-x4 only: override the automatic choice, 0 = keep everything (light "
                            "end), 1 = remove the most noise and JPEG damage (heavy end)")
    p.add_argument("--tile", type=int_in(0), default=None, metavar="N",
                   help="tile side in input pixels; 0 = whole image at once (default: from free memory)")
    p.add_argument("--tile-overlap", type=int_in(0), default=DEFAULT_OVERLAP, metavar="N",
                   help=f"input pixels shared by neighbouring tiles, blended (default {DEFAULT_OVERLAP})")
    p.add_argument("--device", default="auto", choices=runtime.DEVICES)
    p.add_argument("--engine", default=default_engine(), choices=ENGINE_NAMES,
                   help="auto (default; $SUPERRES_ENGINE changes it): for fp32 on the CPU the fastest installed engine whose "
                        "output is within 1 level of torch's, measured once per machine, thread count and model and "
                        "cached (for int8: ONNX Runtime or OpenVINO, within 1 level of ONNX Runtime); "
                        "torch: PyTorch itself; winograd: PyTorch with its 3x3 convs run by NNPACK's Winograd kernels "
                        "(no extra package); onnxruntime / openvino: the model exported to ONNX (cached) and "
                        "run by that library (the [onnx] / [openvino] extras)")
    p.add_argument("--precision", default="auto", choices=runtime.INFERENCE_PRECISIONS,
                   help="auto: bf16 + channels_last on CPUs with native bf16, fp16 on CUDA, else fp32. "
                        "int8 (CPU only, needs onnxruntime): ONNX Runtime's static int8 form of the model, "
                        "2.2-2.5x fp32's speed on an AVX2 CPU for <= 0.032 dB PSNR on Set14 (with --engine openvino "
                        "the same int8 file runs in OpenVINO, 2.65x ONNX Runtime on an AVX-512 VNNI CPU); shipped "
                        "models bring it, other weights need --int8-calibration")
    p.add_argument("--int8-calibration", action="append", default=None, metavar="DIR",
                   help="with --precision int8 for a weights file or --strength blend: folder of photos "
                        "like the ones to upscale (repeatable); the model is quantized from LR patches "
                        "of them when it is loaded (about a minute)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--outscale", type=_positive_float, default=None, metavar="F",
                      help="final scale factor (the model's pass, then a Lanczos resize)")
    size.add_argument("--width", type=int_in(1), default=None, help="final width (keeps the aspect ratio "
                                                                     "unless --height is also given)")
    p.add_argument("--height", type=int_in(1), default=None, help="final height")
    p.add_argument("--alpha", default="model", choices=ALPHA_MODES,
                   help="how to upscale an alpha channel (default: by the model)")
    p.add_argument("--format", default=None, choices=sorted({f.lstrip('.') for f in FORMATS}),
                   help="output format (default: from the output's extension, else the input's)")
    p.add_argument("--quality", type=int_in(1, 100), default=DEFAULT_QUALITY,
                   help=f"JPEG/WebP quality 1..100 (default {DEFAULT_QUALITY})")
    p.add_argument("--png-level", type=int_in(0, 9), default=DEFAULT_PNG_LEVEL,
                   help=f"PNG zlib level 0..9 (default {DEFAULT_PNG_LEVEL}: about half the encode time of "
                        "level 6 for ~4%% more bytes; lossless either way)")
    p.add_argument("--suffix", default="", help="added to output file names in an output folder")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip)")
    p.add_argument("--max-pixels", type=_pixel_count, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse inputs with more pixels than this, read from the file's header before "
                        f"decoding (default {DEFAULT_MAX_PIXELS // 10**6}M; 0 = no limit)")
    p.add_argument("--max-output-pixels", type=_pixel_count, default=DEFAULT_MAX_OUTPUT_PIXELS,
                   metavar="N", help="refuse inputs whose result would have more pixels than this "
                                     f"(default {DEFAULT_MAX_OUTPUT_PIXELS // 10**6}M; 0 = no limit)")
    p.add_argument("--report", default=None, metavar="FILE.json",
                   help="write a JSON list of inputs, outputs, sizes, seconds and errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    from .video import add_video_arguments
    add_video_arguments(p)
    from .cluster import add_cluster_arguments
    add_cluster_arguments(p)


# the output, checked before the model is loaded ------------------------------------------------

class _UsageError(ValueError):
    """An option combination that cannot work; exit code 2 before any image is read."""


def _check_writable(folder: Path) -> None:
    """_UsageError unless files can be created in `folder` (or in the folders it will be made from)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _UsageError(f"cannot create the output folder {folder}: {existing} is a file")
    try:
        # an unnamed file where the OS allows it: nothing is left even if we are killed right here
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        where = existing if existing == folder else f"{existing} (to make {folder})"
        raise _UsageError(f"cannot create files in {where}: {e.strerror or e}") from None


def _plan_output(args: argparse.Namespace, items: list[tuple[Path, Path]]) -> tuple[Path, bool, str | None]:
    """(output path, whether it is one file, output format name or None); _UsageError when the
    inputs and -o / --format do not fit together."""
    out = Path(args.output).expanduser()
    fmt = normalize_format(args.format).lower() if args.format else None
    as_folder = out.is_dir() or args.output.endswith(("/", os.sep))
    one_input = len(args.inputs) == 1 and len(items) == 1 and not Path(args.inputs[0]).is_dir() \
        and not (_GLOB_CHARS & set(args.inputs[0]) and not Path(args.inputs[0]).exists())
    suffix = out.suffix.lower()
    looks_like_file = out.is_file() or suffix in FORMATS or suffix in IMAGE_EXTENSIONS
    if not as_folder and not one_input and looks_like_file:
        several = f"{len(items)} inputs" if len(items) != 1 else f"the folder or pattern {args.inputs[0]!r}"
        raise _UsageError(f"-o {args.output} is a file name, but {several} need an output folder: "
                          f"give one, e.g. -o {out.with_suffix('')}/ (created if missing)")
    single_file = one_input and not as_folder
    if single_file:
        if suffix not in FORMATS and not fmt:
            raise _UsageError(f"{out}: the output file needs an image extension "
                              f"({', '.join(sorted(FORMATS))}) or --format")
        if fmt and suffix in IMAGE_EXTENSIONS and FORMATS.get(suffix, "").lower() != fmt:
            raise _UsageError(f"--format {args.format} would write {fmt.upper()} data into {out.name}; "
                              f"name the output {out.with_suffix('.' + args.format).name} or drop --format")
        if out.is_dir():
            raise _UsageError(f"-o {out} is a folder")
        _check_writable(out.parent)
    else:
        _check_writable(out)
    if args.height and args.outscale:
        raise _UsageError("--height and --outscale cannot be combined")
    return out, single_file, fmt


def _run_on_ray(args: argparse.Namespace, plan: list[tuple[Path, Path]], fmt: str | None,
                input_paths: set[Path], errors: list[str]) -> int:
    """The same files as the local loop, on a Ray actor pool (superres.cluster)."""
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError:
        log.error("--ray needs Ray: pip install -c constraints.txt -e '.[cluster]'")
        return 2
    if args.workers is not None and args.workers < 1 or args.gpus_per_worker < 0:
        log.error("--workers %s / --gpus-per-worker %s: give at least 1 worker and a GPU share >= 0",
                  args.workers, args.gpus_per_worker)
        return 2
    try:
        resolve_model_path(args.model)   # a bad --model is a usage error here, not on every worker
    except ModelNotFound as e:
        log.error("%s", e)
        return 2
    from .cluster import RayOptions, run_on_ray
    report = [{"input": e.split(": ")[0], "status": "error", "error": e} for e in errors]
    try:
        report += run_on_ray(RayOptions.from_args(args), upscaler_options(args), FileJobOptions.from_args(args),
                             plan, fmt, input_paths)
    except KeyboardInterrupt:
        log.error("interrupted; finished outputs are kept: run the same command again to do the rest")
        return 130
    failed = sum(e["status"] == "error" for e in report)
    return _finish(args, report, failed, None, 0)


def _clashes(plan: list[tuple[Path, Path, Path]]) -> dict[Path, list[Path]]:
    by_output: dict[Path, list[Path]] = {}
    for src, _, dst in plan:
        by_output.setdefault(dst.resolve() if dst.parent.exists() else dst.absolute(), []).append(src)
    return {dst: srcs for dst, srcs in by_output.items() if len(srcs) > 1}


def _distinct_outputs(plan: list[tuple[Path, Path, Path]], out: Path, single_file: bool, suffix: str,
                      fmt: str | None) -> list[tuple[Path, Path, Path]]:
    """Every input its own output. Same-named inputs from different folders (a/x.png b/x.png, or
    camera folders DCIM/100 and DCIM/101) would write one file: then every output goes under the name
    of the folder its input came from (out/a/x.png, out/b/x.png), so none is lost and the layout stays
    one rule for the whole run. Inputs that still meet (x.png and x.jpg in one folder) are refused,
    named, before anything runs."""
    clashes = _clashes(plan)
    if not clashes:
        return plan
    mirrored = [(src, root, _output_path(src, root, out / (root.resolve().name or "root"), single_file, suffix, fmt))
                for src, root, _ in plan]
    still = _clashes(mirrored)
    if not still:
        dst, srcs = next(iter(clashes.items()))
        log.info("%s would all be written to %s: each output goes under its input's folder name instead "
                 "(e.g. %s)", ", ".join(map(str, srcs)), dst, mirrored[[s for s, _, _ in plan].index(srcs[0])][2])
        return mirrored
    dst, srcs = next(iter(clashes.items()))
    raise _UsageError(f"{' and '.join(map(str, srcs))} would both be written to {dst}; upscale them into "
                      "separate -o folders, or give --format or --suffix so that the names differ")


def run_upscale(args: argparse.Namespace) -> int:
    from .video import is_video
    if len(args.inputs) == 1 and is_video(args.inputs[0]) and Path(args.inputs[0]).is_file():
        return _run_video(args)
    from tqdm import tqdm

    items, errors = gather_inputs(args.inputs, args.recursive)
    for e in errors:
        log.error(e)
    if not items:
        log.error("nothing to upscale; give image files, folders or patterns, e.g. `%s`", EXAMPLE)
        return 1
    try:
        out, single_file, fmt = _plan_output(args, items)
    except (_UsageError, ImageError) as e:
        log.error("%s", e)
        return 2
    plan = [(src, root, _output_path(src, root, out, single_file, args.suffix, fmt)) for src, root in items]
    input_paths = {f.resolve() for f, _ in items}
    try:
        plan = _distinct_outputs(plan, out, single_file, args.suffix, fmt)
        _check_report(args, input_paths, [dst for _, _, dst in plan])
    except _UsageError as e:
        log.error("%s", e)
        return 2
    by_folder: dict[Path, set[str]] = {}
    for _, _, dst in plan:
        by_folder.setdefault(dst.parent, set()).add(dst.name)
    for folder, names in by_folder.items():
        removed = remove_stale_temp_files(folder, names)
        if removed:
            log.info("removed %d temp file(s) left in %s by an interrupted run", len(removed), folder)
    if args.ray:
        return _run_on_ray(args, [(src, dst) for src, _, dst in plan], fmt, input_paths, errors)
    up = _load_upscaler(args)
    if up is None:
        return 2
    log.info("model %s (%s x%d) on %s, %s on %s%s", up.name, up.info.get("arch"), up.scale, up.device,
             up.precision, up.engine, f", strength per image (a blend with {up.info['heavy']})" if up.adaptive else "")
    report: list[dict[str, Any]] = [{"input": e.split(": ")[0], "status": "error", "error": e} for e in errors]
    failed = len(errors)
    interrupted: int | None = None
    bar = tqdm(total=len(plan), desc="images", unit="img", disable=args.no_progress or len(items) == 1,
               file=sys.stderr)
    # PIL's decompression-bomb limit gives way to --max-pixels, which is checked first from the header
    from PIL import Image

    saved_pil_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None if not args.max_pixels else max(args.max_pixels, saved_pil_limit or 0)
    main_thread = threading.current_thread() is threading.main_thread()
    saved_sigterm = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None

    def on_entry(entry: dict[str, Any]) -> None:
        nonlocal failed
        failed += entry["status"] == "error"
        report.append(entry)
        bar.update(1)

    try:
        upscale_files(up, [(src, dst) for src, _, dst in plan], FileJobOptions.from_args(args), fmt, input_paths,
                      on_entry)
    except KeyboardInterrupt:
        interrupted = 130
    except _Terminated:
        interrupted = 143
    finally:
        bar.close()
        Image.MAX_IMAGE_PIXELS = saved_pil_limit
        if main_thread:
            signal.signal(signal.SIGTERM, saved_sigterm)
    return _finish(args, report, failed, interrupted, len(plan) - len(report) + len(errors))


def _finish(args: argparse.Namespace, report: list[dict[str, Any]], failed: int, interrupted: int | None,
            not_done: int) -> int:
    """Write --report, log the summary line, return the exit code (local and Ray runs alike)."""
    if args.report:
        atomic_write(args.report, json.dumps(report, indent=2).encode())
    n_ok = sum(e.get("status") == "ok" for e in report)
    n_skipped = sum(e.get("status") == "skipped" for e in report)
    log.info("%d written, %d skipped (output exists), %d failed%s", n_ok, n_skipped, failed,
             "" if interrupted is None else f", {not_done} not done")
    if interrupted is not None:
        log.error("interrupted by %s; no partial file was left. Run the same command again to do the "
                  "rest (existing outputs are skipped)", "Ctrl-C" if interrupted == 130 else "SIGTERM")
        return interrupted
    return 1 if failed else 0
