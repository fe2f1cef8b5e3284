"""The file job of `superres upscale`: one image file in, one out, through an Upscaler.

`upscale_file` reads, checks, runs `Upscaler.upscale_image`, writes atomically and returns the report
entry; `upscale_files` runs a list of them in this process, overlapping one file's decoding and the
previous file's encoding with the model's work. The Ray workers (cluster.py) call `upscale_file`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .._lazy import lazy_function
from ..io.formats import DEFAULT_PNG_LEVEL, DEFAULT_QUALITY, ImageError

if TYPE_CHECKING:
    from ..inference.upscaler import Upscaler
    from ..io.images import ImageData


log = logging.getLogger(__name__)

__all__ = ["FileJobOptions", "upscale_file", "upscale_files"]

# io.images needs numpy and Pillow: loaded on first use, so option errors answer at once
probe_image = lazy_function("superres.io.images", "probe_image")
read_image = lazy_function("superres.io.images", "read_image")
write_image = lazy_function("superres.io.images", "write_image")
analyze_image = lazy_function("superres.inference.analysis", "analyze_image")
describe_analysis = lazy_function("superres.inference.analysis", "describe")


# ---------------------------------------------------------------------------------------------
# the command

DEFAULT_MAX_PIXELS = 50_000_000            # input: a 50 MP photo is already a large camera file
DEFAULT_MAX_OUTPUT_PIXELS = 400_000_000    # output: 1.2 GB of 8-bit RGB in memory (2.4 GB at 16 bits)


@dataclass(frozen=True)
class FileJobOptions:
    """What the file job needs besides the model and the paths: output size, limits, encoding."""

    outscale: float | None = None        # None: the model's scale
    width: int | None = None             # one of width/height keeps the aspect ratio
    height: int | None = None
    alpha: str = "model"                 # "model" or "bicubic" (see runtime.ALPHA_MODES)
    max_pixels: int = DEFAULT_MAX_PIXELS             # 0 = no limit
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    quality: int = DEFAULT_QUALITY       # JPEG / WebP
    png_level: int = DEFAULT_PNG_LEVEL
    overwrite: bool = False              # False: an existing output is skipped
    no_progress: bool = False            # no per-tile progress bar

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "FileJobOptions":
        """The options `superres upscale` parsed (fields missing from args keep their defaults)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def upscaler_options(args: argparse.Namespace) -> dict[str, Any]:
    """`Upscaler.from_pretrained` keywords from the command line (the local loop, video, Ray workers)."""
    strength = args.denoise if getattr(args, "denoise", None) is not None else getattr(args, "strength", None)
    return {"name_or_path": args.model, "strength": strength, "device": args.device,
            "precision": args.precision, "tile": args.tile, "tile_overlap": args.tile_overlap,
            "hparams": dict(getattr(args, "hparams", None) or []) or None,
            "int8_calibration": getattr(args, "int8_calibration", None),
            "engine": getattr(args, "engine", None) or "torch"}


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.3g} megapixels"


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


def _check_size(src: Path, width: int, height: int, scale: int, args: FileJobOptions) -> None:
    """ImageError when the input or the result is over --max-pixels / --max-output-pixels."""
    n = width * height
    if args.max_pixels and n > args.max_pixels:
        raise ImageError(f"{src}: {width}x{height} is {_megapixels(n)}, over --max-pixels "
                         f"({_megapixels(args.max_pixels)}); raise --max-pixels (0 = no limit) if you "
                         "trust the file and have the memory")
    from ..inference.upscaler import output_size
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


def _read_stage(job: _FileJob, up: "Upscaler", args: FileJobOptions,
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
        # what the input needs (noise, JPEG quality, detail): reported, and read by --strength auto
        entry["analysis"] = analyze_image(img.pixels, jpeg_tables=_jpeg_tables(src, img))
        job.img = img
    return job


def _jpeg_tables(src: Path, img: "ImageData") -> Any:
    """A JPEG file's quantization tables (its quality), or None; read from the header only."""
    if getattr(img, "format", None) != "JPEG":
        return None
    from PIL import Image

    try:
        with Image.open(src) as im:
            return getattr(im, "quantization", None)
    except (OSError, SyntaxError, ValueError):
        return None   # decoded once already: a header that cannot be read twice only loses the quality


def _skip_existing(job: _FileJob, args: FileJobOptions) -> bool:
    if job.dst.exists() and not args.overwrite:
        job.img = None
        job.entry["status"] = "skipped"
        job.note = (logging.INFO, "%s exists, skipped (--overwrite replaces it)", (job.dst,), None)
        return True
    return False


def _compute_stage(job: _FileJob, up: "Upscaler", args: FileJobOptions) -> None:
    """job.img -> job.result through the model, with a per-file progress bar of tiles."""
    from tqdm import tqdm

    img, job.img = job.img, None
    with _FileErrors(job):
        measures = job.entry.get("analysis") or None
        strength = up.choose_strength(measures=measures) if up.adaptive else up.choose_strength()
        end = up.choose_end(measures=measures) if up.has_clean_end else None
        if strength is not None:
            job.entry["strength"] = strength
        if end is not None:
            job.entry["end"] = end
        tiles = tqdm(total=up.count_tiles(img.height, img.width) * (2 if img.alpha is not None
                                                                    and args.alpha == "model" else 1),
                     desc=job.src.name, unit="tile", leave=False, file=sys.stderr,
                     disable=args.no_progress)
        with tiles:
            job.result = up.upscale_image(img, outscale=args.outscale, width=args.width,
                                          height=args.height, alpha=args.alpha, strength=strength, end=end,
                                          on_tile=lambda done, total: tiles.update(1))


def _write_stage(job: _FileJob, args: FileJobOptions, fmt: str | None,
                 threads: int | None = None) -> _FileJob:
    """Encode and write job.result atomically (temp file + rename), on `threads` (write_image)."""
    result, job.result = job.result, None
    with _FileErrors(job):
        try:
            job.dst.parent.mkdir(parents=True, exist_ok=True)
            write_image(job.dst, result, format=fmt, quality=args.quality, png_level=args.png_level,
                        threads=threads)
        except OSError as e:
            raise ImageError(f"{job.src}: could not write the output {e.filename or job.dst} "
                             f"({e.strerror or e})") from None
        job.entry.update(status="ok", output_size=[result.width, result.height])
        line = describe_analysis(job.entry.get("analysis") or {}, job.entry.get("strength"), job.entry.get("end"))
        job.note = (logging.INFO, "%s -> %s (%s)", (job.src, job.dst, line), None)
    return job


def _finish_job(job: _FileJob) -> dict[str, Any]:
    """Log the file's outcome (in the calling thread, so in input order) and close its entry."""
    if job.note is not None:
        level, fmt, fmt_args, exc = job.note
        log.log(level, fmt, *fmt_args, exc_info=exc)
    job.entry["seconds"] = round(job.seconds, 4)
    return job.entry


def upscale_file(up: "Upscaler", src: Path, dst: Path, args: FileJobOptions, fmt: str | None,
                 input_paths: set[Path] | frozenset = frozenset(),
                 encode_threads: int | None = None) -> dict[str, Any]:
    """One input file -> one output file, with every check of `superres upscale`; the report entry
    ({"input", "output", "status": ok|skipped|error, ...}). Errors of this file are returned, not
    raised, so a batch goes on; Ctrl-C and SIGTERM are raised. The Ray workers (superres.cluster)
    call this; the local loop (`upscale_files`) runs the same stages overlapped, so both behave the
    same file by file. encode_threads: threads of the PNG writer (None: one per core); a Ray
    worker that shares the machine with other workers passes its own thread count."""
    job = _read_stage(_FileJob.of(src, dst), up, args, input_paths)
    if job.img is not None:
        _compute_stage(job, up, args)
    if job.result is not None:
        _write_stage(job, args, fmt, encode_threads)
    return _finish_job(job)


def upscale_files(up: "Upscaler", pairs: list[tuple[Path, Path]], args: FileJobOptions,
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
                # while the model works on the next file, the encoder keeps to one thread (two
                # made a 4-photo folder 5-19% slower on 2 cores); the last file gets every core
                writing = writer.submit(_write_stage, job, args, fmt, 1 if next_read is not None else None)
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
