"""`superres upscale`: the file job around the inference core (inference.py).

    superres upscale photo.jpg -o photo_x4.png
    superres upscale photos/ -o out/ --recursive --model psnr-x4 --tile 256 --report report.json

Inputs (files, folders, globs) -> output paths -> `upscale_file` (read, checks,
`Upscaler.upscale_image`, atomic write, report entry) for each: locally through `upscale_files`,
which overlaps one file's decoding and the previous file's encoding with the model's work, or on
Ray (cluster.py); one video input goes to video.py. `Upscaler`, `auto_tile_size` and `output_size` live in
inference.py and are re-exported here (imported on first access, so `superres upscale --help` and
option errors do not import torch).
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
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import runtime
from ._lazy import lazy_function
from .formats import FORMATS, IMAGE_EXTENSIONS, DEFAULT_PNG_LEVEL, DEFAULT_QUALITY, ImageError, normalize_format
from .fs import atomic_write, remove_stale_temp_files
from .models import MODELS, ModelNotFound, resolve_model_path
from .runtime import ALPHA_MODES, DEFAULT_OVERLAP

# images.py needs numpy and Pillow: loaded on first use, so option errors answer at once
probe_image = lazy_function("superres.images", "probe_image")
read_image = lazy_function("superres.images", "read_image")
write_image = lazy_function("superres.images", "write_image")

if TYPE_CHECKING:
    from .images import ImageData
    from .inference import Upscaler

_FROM_INFERENCE = ("Upscaler", "auto_tile_size", "output_size")


def __getattr__(name: str) -> Any:
    # `from superres.upscale import Upscaler` keeps working without making this module import torch
    if name in _FROM_INFERENCE:
        from . import inference
        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


log = logging.getLogger(__name__)

__all__ = ["Upscaler", "auto_tile_size", "output_size", "gather_inputs", "upscale_file", "upscale_files",
           "add_upscale_arguments", "run_upscale"]

# ---------------------------------------------------------------------------------------------
# the command

def upscaler_options(args: argparse.Namespace) -> dict[str, Any]:
    """`Upscaler.from_pretrained` keywords from the command line (the local loop, video, Ray workers)."""
    return {"name_or_path": args.model, "strength": args.strength, "device": args.device,
            "precision": args.precision, "tile": args.tile, "tile_overlap": args.tile_overlap,
            "hparams": dict(getattr(args, "hparams", None) or []) or None,
            "int8_calibration": getattr(args, "int8_calibration", None)}


def hparam(text: str) -> tuple[str, Any]:
    """`--hparams KEY=VALUE` (argparse type): VALUE in TOML syntax (64, true, "prelu"), or a bare word."""
    import tomllib

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. act_type=leakyrelu")
    try:
        return key.strip(), tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value.strip()


def _load_upscaler(args: argparse.Namespace) -> "Upscaler | None":
    """The model the options name, or None after logging why not (a usage error: exit 2)."""
    from .inference import Upscaler
    try:
        return Upscaler.from_pretrained(**upscaler_options(args))
    except (ModelNotFound, ValueError, runtime.RuntimeChoiceError) as e:
        log.error("%s", e)
        return None


def _run_video(args: argparse.Namespace) -> int:
    """One video file in, one video file out (superres.video); needs the [video] extra."""
    try:
        import av  # noqa: F401
    except ModuleNotFoundError:
        log.error("video input needs PyAV: pip install -c constraints.txt -e '.[video]'")
        return 2
    from .video import run_video
    up = _load_upscaler(args)
    if up is None:
        return 2
    src, dst = Path(args.inputs[0]), Path(args.output).expanduser()
    if dst.is_dir():
        dst = dst / f"{src.stem}{args.suffix}{src.suffix}"
    try:
        _check_writable(dst.parent)
    except _UsageError as e:
        log.error("%s", e)
        return 2
    return run_video(args, up, src, dst)


_GLOB_CHARS = set("*?[")
EXAMPLE = "superres upscale photo.jpg -o photo_x4.png"
DEFAULT_MAX_PIXELS = 50_000_000            # input: a 50 MP photo is already a large camera file
DEFAULT_MAX_OUTPUT_PIXELS = 400_000_000    # output: 1.2 GB of 8-bit RGB in memory (2.4 GB at 16 bits)


def _is_candidate(f: Path) -> bool:
    """A folder entry to try as an image: anything but a sub-folder that has an image extension.

    Broken links, pipes and unreadable files are kept so that reading them reports them; skipping them
    here would drop them silently.
    """
    return f.suffix.lower() in IMAGE_EXTENSIONS and not f.is_dir()


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


def _pixel_count(text: str) -> int:
    """'50000000', '50M', '0.5G', '2e6' -> a number of pixels; 0 = no limit."""
    t = text.strip().upper()
    factor = {"K": 10**3, "M": 10**6, "G": 10**9}.get(t[-1:], 1)
    value = _number(t[:-1] if factor > 1 else t, float) * factor
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more, got {text}")
    return int(value)


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.3g} megapixels"


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
    p.add_argument("--strength", type=_unit_float, default=None, metavar="0..1",
                   help="blend a GAN model toward its PSNR twin: 1 = GAN as trained, 0 = PSNR model")
    p.add_argument("--tile", type=int_in(0), default=None, metavar="N",
                   help="tile side in input pixels; 0 = whole image at once (default: from free memory)")
    p.add_argument("--tile-overlap", type=int_in(0), default=DEFAULT_OVERLAP, metavar="N",
                   help=f"input pixels shared by neighbouring tiles, blended (default {DEFAULT_OVERLAP})")
    p.add_argument("--device", default="auto", choices=runtime.DEVICES)
    p.add_argument("--precision", default="auto", choices=runtime.INFERENCE_PRECISIONS,
                   help="auto: bf16 + channels_last on CPUs with native bf16, fp16 on CUDA, else fp32. "
                        "int8 (CPU only, needs onnxruntime): ONNX Runtime's static int8 form of the model, "
                        "2.2-2.5x fp32's speed on an AVX2 CPU for <= 0.032 dB PSNR on Set14; shipped models "
                        "bring it, other weights need --int8-calibration")
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


# memory ------------------------------------------------------------------------------------------

def _is_out_of_memory(e: BaseException) -> bool:
    """MemoryError (numpy), torch's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(e, MemoryError):
        return True
    if not isinstance(e, RuntimeError):
        return False
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or "can't allocate memory" in str(e) \
        or "out of memory" in str(e).lower()


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that temp files are removed on the way out."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def _check_size(src: Path, width: int, height: int, scale: int, args: argparse.Namespace) -> None:
    """ImageError when the input or the result is over --max-pixels / --max-output-pixels."""
    n = width * height
    if args.max_pixels and n > args.max_pixels:
        raise ImageError(f"{src}: {width}x{height} is {_megapixels(n)}, over --max-pixels "
                         f"({_megapixels(args.max_pixels)}); raise --max-pixels (0 = no limit) if you "
                         "trust the file and have the memory")
    from .inference import output_size
    tw, th = output_size(width, height, scale, outscale=args.outscale, width=args.width, height=args.height)
    # the model's own output is held in full before a resize to the final size
    m = max(width * height * scale * scale, tw * th)
    if args.max_output_pixels and m > args.max_output_pixels:
        raise ImageError(f"{src}: the result of this {width}x{height} input would be {_megapixels(m)}, "
                         f"over --max-output-pixels ({_megapixels(args.max_output_pixels)}); raise it "
                         "(0 = no limit) if you have the memory, or upscale a crop")


@dataclass
class _FileJob:
    """One input file on its way through the stages of `upscale_file` (read, compute, write).

    The stages record a file's own errors in `entry` and the line to log in `note`, and never log
    themselves: in a folder run they run in three threads, and the main thread logs each file's
    outcome in input order (`_finish_job`), as the one-thread loop did.
    """
    src: Path
    dst: Path
    entry: dict[str, Any]
    seconds: float = 0.0                     # time spent in the stages, not waiting between them
    img: "ImageData | None" = None           # decoded input, until computed
    result: "ImageData | None" = None        # upscaled output, until written
    note: tuple[int, str, tuple, BaseException | None] | None = None   # level, format, args, exc_info

    @classmethod
    def of(cls, src: Path, dst: Path) -> "_FileJob":
        return cls(src, dst, {"input": str(src), "output": str(dst)})


class _FileErrors:
    """`with _FileErrors(job):` turns this file's errors into its report entry and log line, so that a
    bad file never stops the batch; Ctrl-C and SIGTERM (BaseExceptions) pass through. Also adds the
    block's time to job.seconds."""

    def __init__(self, job: _FileJob) -> None:
        self.job = job

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, kind: type | None, e: BaseException | None, tb: Any) -> bool:
        job = self.job
        job.seconds += time.perf_counter() - self.t0
        if e is None or not isinstance(e, Exception):
            return False
        src, entry = job.src, job.entry
        job.img = job.result = None   # an error ends this file's journey: free its pixels now
        if isinstance(e, (ImageError, OSError, ValueError)):
            entry.update(status="error", error=str(e) if str(src) in str(e) else f"{src}: {e}")
            job.note = (logging.ERROR, "%s", (entry["error"],), None)
        elif _is_out_of_memory(e):
            entry.update(status="error", error=f"{src}: out of memory ({type(e).__name__}); try a "
                         "smaller --tile, or a lower --max-pixels / --max-output-pixels to skip "
                         "such images")
            job.note = (logging.ERROR, "%s", (entry["error"],), None)
        else:   # unexpected: the traceback goes to the log with the line
            entry.update(status="error", error=f"{src}: {type(e).__name__}: {e}")
            job.note = (logging.ERROR, "%s: failed", (src,), e)
        return True


def _read_stage(job: _FileJob, up: "Upscaler", args: argparse.Namespace,
                input_paths: set[Path] | frozenset) -> _FileJob:
    """Checks and decoding: job.img, or a finished entry (skipped / error)."""
    src, dst, entry = job.src, job.dst, job.entry
    with _FileErrors(job):
        if dst.resolve() in input_paths:
            raise ImageError(f"{src}: the output {dst} would overwrite an input; choose another -o "
                             "or a --suffix")
        if _skip_existing(job, args):
            return job
        info = probe_image(src)
        _check_size(src, info.width, info.height, up.scale, args)
        img = read_image(src)
        entry["input_size"] = [img.width, img.height]
        _check_size(src, img.width, img.height, up.scale, args)   # EXIF may have turned it
        job.img = img
    return job


def _skip_existing(job: _FileJob, args: argparse.Namespace) -> bool:
    if job.dst.exists() and not args.overwrite:
        job.img = None
        job.entry["status"] = "skipped"
        job.note = (logging.INFO, "%s exists, skipped (--overwrite replaces it)", (job.dst,), None)
        return True
    return False


def _compute_stage(job: _FileJob, up: "Upscaler", args: argparse.Namespace) -> None:
    """job.img -> job.result through the model, with a per-file progress bar of tiles."""
    from tqdm import tqdm

    img, job.img = job.img, None
    with _FileErrors(job):
        tiles = tqdm(total=up.count_tiles(img.height, img.width) * (2 if img.alpha is not None
                                                                    and args.alpha == "model" else 1),
                     desc=job.src.name, unit="tile", leave=False, file=sys.stderr,
                     disable=args.no_progress)
        with tiles:
            job.result = up.upscale_image(img, outscale=args.outscale, width=args.width,
                                          height=args.height, alpha=args.alpha,
                                          on_tile=lambda done, total: tiles.update(1))


def _write_stage(job: _FileJob, args: argparse.Namespace, fmt: str | None) -> _FileJob:
    """Encode and write job.result atomically (temp file + rename)."""
    result, job.result = job.result, None
    with _FileErrors(job):
        try:
            job.dst.parent.mkdir(parents=True, exist_ok=True)
            write_image(job.dst, result, format=fmt, quality=args.quality, png_level=args.png_level)
        except OSError as e:
            raise ImageError(f"{job.src}: could not write the output {e.filename or job.dst} "
                             f"({e.strerror or e})") from None
        job.entry.update(status="ok", output_size=[result.width, result.height])
    return job


def _finish_job(job: _FileJob) -> dict[str, Any]:
    """Log the file's outcome (in the calling thread, so in input order) and close its entry."""
    if job.note is not None:
        level, fmt, fmt_args, exc = job.note
        log.log(level, fmt, *fmt_args, exc_info=exc)
    job.entry["seconds"] = round(job.seconds, 4)
    return job.entry


def upscale_file(up: "Upscaler", src: Path, dst: Path, args: argparse.Namespace, fmt: str | None,
                 input_paths: set[Path] | frozenset = frozenset()) -> dict[str, Any]:
    """One input file -> one output file, with every check of `superres upscale`; the report entry
    ({"input", "output", "status": ok|skipped|error, ...}). Errors of this file are returned, not
    raised, so a batch goes on; Ctrl-C and SIGTERM are raised. The Ray workers (superres.cluster)
    call this; the local loop (`upscale_files`) runs the same stages overlapped, so both behave the
    same file by file."""
    job = _read_stage(_FileJob.of(src, dst), up, args, input_paths)
    if job.img is not None:
        _compute_stage(job, up, args)
    if job.result is not None:
        _write_stage(job, args, fmt)
    return _finish_job(job)


def upscale_files(up: "Upscaler", pairs: list[tuple[Path, Path]], args: argparse.Namespace,
                  fmt: str | None, input_paths: set[Path] | frozenset,
                  on_entry: Callable[[dict[str, Any]], None]) -> None:
    """`upscale_file` for each (input, output) pair, with decoding and encoding off the model's path:
    while file i is computed in this thread, one thread decodes file i+1 and another encodes and
    writes file i-1 (torch, zlib and Pillow's codecs release the GIL). At most one decoded input
    waits and one result is being written, so memory is bounded by two images beside the one in
    the model.

    on_entry(entry) is called in input order, from this thread, once a file is done (written,
    skipped or failed); log lines come in the same order, as with the one-thread loop. Outputs are
    byte for byte what `upscale_file` writes. Ctrl-C / SIGTERM (raised in this thread): a read in
    progress is abandoned, a write in progress is let finish (it is atomic: the file appears whole
    or not at all) and, if it succeeded, reported before the exception goes on.
    """
    if not pairs:
        return
    jobs = [_FileJob.of(src, dst) for src, dst in pairs]
    # two inputs may map to one output (a.jpg, a.png with --format png): the later one is skipped
    # when the earlier was written, so it must look for the output only after that write
    seen: set[str] = set()
    repeats = []
    for job in jobs:
        key = os.path.abspath(job.dst)
        repeats.append(key in seen)
        seen.add(key)
    reader = ThreadPoolExecutor(1, thread_name_prefix="superres-read")
    writer = ThreadPoolExecutor(1, thread_name_prefix="superres-write")
    next_read: Future | None = reader.submit(_read_stage, jobs[0], up, args, input_paths)
    writing: Future | None = None   # the write of the last file that reached the model
    behind: list[_FileJob] = []     # files done (skipped, failed) since then, reported after it

    def settle() -> None:
        nonlocal writing
        if writing is not None:
            done, writing = writing, None
            try:
                finished = done.result()
            except BaseException:
                behind.clear()   # an interrupt in that write: files after it are not reported either
                raise
            on_entry(_finish_job(finished))
        while behind:
            on_entry(_finish_job(behind.pop(0)))

    try:
        for i in range(len(jobs)):
            job = next_read.result()
            next_read = reader.submit(_read_stage, jobs[i + 1], up, args, input_paths) \
                if i + 1 < len(jobs) else None
            if repeats[i] and job.img is not None:
                settle()
                _skip_existing(job, args)
            if job.img is not None:
                _compute_stage(job, up, args)
            if job.result is not None:
                settle()   # one result in the writer at a time: memory stays bounded
                writing = writer.submit(_write_stage, job, args, fmt)
            elif writing is not None:
                behind.append(job)   # its line and entry must not overtake the write in flight
            else:
                on_entry(_finish_job(job))
        settle()
    finally:
        if next_read is not None:
            next_read.cancel()
        reader.shutdown(wait=False, cancel_futures=True)   # reading writes nothing: no need to wait
        try:
            settle()   # only after an interrupt: the write in flight completes (atomically) first,
            #            then it and the files finished behind it are reported
        finally:
            writer.shutdown(wait=True)


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
    from .cluster import run_on_ray
    report = [{"input": e.split(": ")[0], "status": "error", "error": e} for e in errors]
    try:
        report += run_on_ray(args, plan, fmt, input_paths)
    except KeyboardInterrupt:
        log.error("interrupted; finished outputs are kept: run the same command again to do the rest")
        return 130
    failed = sum(e["status"] == "error" for e in report)
    return _finish(args, report, failed, None, 0)


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
    by_folder: dict[Path, set[str]] = {}
    for _, _, dst in plan:
        by_folder.setdefault(dst.parent, set()).add(dst.name)
    for folder, names in by_folder.items():
        removed = remove_stale_temp_files(folder, names)
        if removed:
            log.info("removed %d temp file(s) left in %s by an interrupted run", len(removed), folder)
    input_paths = {f.resolve() for f, _ in items}
    if args.ray:
        return _run_on_ray(args, [(src, dst) for src, _, dst in plan], fmt, input_paths, errors)
    up = _load_upscaler(args)
    if up is None:
        return 2
    log.info("model %s (%s x%d) on %s, %s", up.name, up.info.get("arch"), up.scale, up.device,
             up.precision)
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
        upscale_files(up, [(src, dst) for src, _, dst in plan], args, fmt, input_paths, on_entry)
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
