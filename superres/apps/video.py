"""Video upscaling through PyAV (FFmpeg bundled in the wheel; the `[video]` extra).

    superres upscale clip.mp4 -o clip_x4.mp4 --crf 18 --preset medium
    superres upscale clip.mp4 -o clip_x4.mp4 --resume        # after an interruption

How it works, and why:
- Frames stream through decode -> model -> encode; nothing holds the whole video. The output is
  encoded in segments of about `--segment-seconds` (default 10 s), each its own file in a hidden
  `.NAME.parts/` folder next to the output, renamed into place only when complete. An interrupted
  run (Ctrl-C, kill -9, power loss) therefore leaves complete segments and at most one temp file,
  and `--resume` re-encodes only from the first missing segment (frames before it are decoded,
  which is cheap, but not upscaled). The final file is written under a temp name and renamed, so a
  file with the output's name is always complete.
- Segments are joined by remuxing their packets; their encoders run without B-frames so that
  decoding timestamps stay increasing across a join (a few percent more bits at the same CRF).
- Timing is copied, not re-derived: every output frame carries its input frame's timestamp in the
  input's time base, so variable frame rate, start offset and duration are kept. Audio and
  subtitle streams are copied packet for packet (no re-encode), interleaved by time with the video.
  The display rotation and the colour range / matrix / primaries / transfer are carried over.
- Pixels go through the model as 8-bit RGB (a 10-bit source is reduced to 8 bits).
"""
from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..io.fs import atomic_write, atomic_write_with

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".ts", ".mts", ".m2ts", ".flv",
                    ".wmv", ".mpg", ".mpeg", ".3gp", ".ogv")
CODEC_DEFAULTS = {"libx264": "yuv420p", "libx265": "yuv420p", "libvpx-vp9": "yuv420p",
                  "libsvtav1": "yuv420p", "mpeg4": "yuv420p"}


class VideoError(Exception):
    """A video that cannot be upscaled as asked; the message names the file and the reason."""


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                "veryslow", "placebo")


@dataclass(frozen=True)
class VideoOptions:
    codec: str = "libx264"
    crf: float = 18.0
    preset: str = "medium"
    pix_fmt: str = "yuv420p"
    segment_seconds: float = 10.0
    batch: int = 4            # frames per forward (when they fit in one tile's area)

    def check(self) -> None:
        import av
        if self.codec not in av.codecs_available:
            raise VideoError(f"--codec {self.codec}: not an encoder in this FFmpeg build; for example "
                             f"{', '.join(c for c in CODEC_DEFAULTS if c in av.codecs_available)}")
        if not 0 <= self.crf <= 63:
            raise VideoError(f"--crf {self.crf:g}: must be between 0 and 63 (lower = better; 18 is "
                             "visually lossless for x264)")
        if not self.segment_seconds > 0:
            raise VideoError(f"--segment-seconds {self.segment_seconds:g}: must be > 0")
        if self.batch < 1:
            raise VideoError(f"--batch-frames {self.batch}: must be >= 1")
        try:
            av.VideoFormat(self.pix_fmt)
        except ValueError:
            raise VideoError(f"--pix-fmt {self.pix_fmt}: not a pixel format; e.g. yuv420p (the most "
                             "compatible), yuv444p, yuv420p10le") from None
        formats = {f.name for f in (av.Codec(self.codec, "w").video_formats or ())}
        if formats and self.pix_fmt not in formats:
            raise VideoError(f"--pix-fmt {self.pix_fmt}: {self.codec} cannot encode it; it takes "
                             f"{', '.join(sorted(formats)[:8])}")
        if self.codec in ("libx264", "libx265") and self.preset not in X264_PRESETS:
            raise VideoError(f"--preset {self.preset}: allowed values: {', '.join(X264_PRESETS)}")

    def encoder_options(self) -> dict[str, str]:
        opts = {"bf": "0"}   # no B-frames: decoding timestamps must increase across segment joins
        if self.codec in ("libx264", "libx265", "libsvtav1", "libvpx-vp9"):
            opts["crf"] = f"{self.crf:g}"
        if self.codec in ("libx264", "libx265"):
            opts["preset"] = self.preset
        if self.codec == "libvpx-vp9":
            opts["b"] = "0"   # constant quality mode needs the bitrate unset
        return opts


# ---------------------------------------------------------------------------------------------
# the parts folder

def parts_dir(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.parts"


def _segment_path(parts: Path, k: int) -> Path:
    return parts / f"seg_{k:05d}.mkv"


def _manifest(src: Path, up: Any, opts: VideoOptions, seg_frames: int) -> dict[str, Any]:
    """What the segments depend on: a resume with anything else would mix two different results."""
    st = src.stat()
    digest = hashlib.sha256()
    for name, t in sorted(up.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().float().cpu().numpy().tobytes())
    return {"input": str(src.resolve()), "input_size": st.st_size, "input_mtime_ns": st.st_mtime_ns,
            "model": digest.hexdigest()[:16], "precision": up.precision, "tile": up.tile,
            # the overlap changes the tile seams (its default went from 16 to 8 pixels)
            "tile_overlap": up.tile_overlap, "adaptive": up.adaptive,
            "options": asdict(opts), "segment_frames": seg_frames}


def _prepare_parts(parts: Path, manifest: dict[str, Any], resume: bool) -> set[int]:
    """The indices of finished segments to reuse (empty unless resuming a matching run)."""
    mpath = parts / "manifest.json"
    if parts.exists():
        old = None
        try:
            old = json.loads(mpath.read_text())
        except (OSError, ValueError):
            pass
        if resume and old == manifest:
            done = {int(p.stem.split("_")[1]) for p in parts.glob("seg_*.mkv")}
            for tmp in parts.glob("*.tmp"):       # the segment being written when the run died
                tmp.unlink()
            log.info("resuming: %d finished segment(s) in %s", len(done), parts)
            return done
        if resume:
            raise VideoError(f"cannot resume from {parts}: it was made with other settings, model or "
                             "input; run without --resume to start over")
        log.warning("starting over: %s holds an interrupted run (pass --resume to continue it)", parts)
        shutil.rmtree(parts)
    elif resume:
        log.info("nothing to resume in %s; starting from the beginning", parts)
    parts.mkdir(parents=True)
    atomic_write(mpath, json.dumps(manifest, indent=2).encode())
    return set()


# ---------------------------------------------------------------------------------------------
# encoding one segment

class _SegmentWriter:
    """Encodes upscaled frames of one segment into `path.tmp`, renamed to `path` on close."""

    def __init__(self, path: Path, template: Any, size: tuple[int, int], opts: VideoOptions) -> None:
        import av
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.container = av.open(str(self.tmp), "w", format="matroska")
        rate = template.average_rate or template.guessed_rate or Fraction(25)
        self.stream = self.container.add_stream(opts.codec, rate=rate, options=opts.encoder_options())
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = opts.pix_fmt
        self.stream.time_base = template.time_base
        cc, src = self.stream.codec_context, template.codec_context
        for attr in ("color_range", "colorspace", "color_primaries", "color_trc"):
            try:
                setattr(cc, attr, getattr(src, attr))
            except (AttributeError, ValueError, TypeError):
                pass   # an attribute this PyAV/FFmpeg pair cannot set: the encoder's default
        self.range = getattr(src, "color_range", None)
        self.colorspace = getattr(src, "colorspace", None)

    def write(self, rgb: np.ndarray, pts: int, time_base: Fraction) -> None:
        import av
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        kwargs: dict[str, Any] = {"format": self.stream.pix_fmt}
        if self.range:
            kwargs["dst_color_range"] = self.range
        if self.colorspace:
            kwargs["dst_colorspace"] = self.colorspace
        try:
            frame = frame.reformat(**kwargs)
        except (ValueError, TypeError):
            frame = frame.reformat(format=self.stream.pix_fmt)
        frame.pts, frame.time_base = pts, time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)


# ---------------------------------------------------------------------------------------------
# the job

def _rgb(frame: Any) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _frame_count(stream: Any, container: Any) -> int | None:
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.average_rate:
        return int(round(float(stream.duration * stream.time_base * stream.average_rate)))
    if container.duration and stream.average_rate:
        return int(round(container.duration / 1_000_000 * float(stream.average_rate)))
    return None


class _Nearest:
    """Stands in for an Upscaler in `preflight`: nearest-neighbour frames of the right size, no model."""

    adaptive = False
    precision, tile, tile_overlap = "fp32", None, 0

    def __init__(self, scale: int) -> None:
        import torch
        self.scale, self.model = scale, torch.nn.Identity()

    def upscale_frames(self, frames: list[np.ndarray], **_: Any) -> list[np.ndarray]:
        return [np.repeat(np.repeat(f, self.scale, axis=0), self.scale, axis=1) for f in frames]


def preflight(src: str | os.PathLike, dst: str | os.PathLike, scale: int, opts: VideoOptions) -> None:
    """Everything a run does except the model, on the input's first frames, into a temp file of the
    output's container: a codec, pixel format, preset or container that cannot work (libx264 in
    .webm, an audio track .avi cannot take, a file that does not decode) fails here, in a second,
    instead of after all the compute. VideoError says what to change."""
    import tempfile

    src, dst = Path(src), Path(dst)
    opts.check()
    with tempfile.TemporaryDirectory(prefix="superres-video-check-") as tmp:
        trial = Path(tmp) / f"trial{dst.suffix}"
        try:
            upscale_video(src, trial, _Nearest(scale), opts, progress=False, max_frames=2)
        except VideoError:
            raise
        except Exception as e:   # FFmpeg's own words, with what to change
            msg = re.sub(r"'?\S*trial\S*?'?(?=[\s)]|$)", dst.name, str(e))
            raise VideoError(f"{src} -> {dst.name} cannot work with --codec {opts.codec} --pix-fmt "
                             f"{opts.pix_fmt} ({type(e).__name__}: {msg}); try an .mkv or .mp4 output, "
                             "or a codec the container takes (e.g. libvpx-vp9 for .webm)") from None


def upscale_video(src: str | os.PathLike, dst: str | os.PathLike, up: Any, opts: VideoOptions | None = None,
                  *, resume: bool = False, progress: bool = True,
                  on_frame: Callable[[int, int | None], None] | None = None,
                  max_frames: int | None = None) -> dict[str, Any]:
    """Upscale every frame of `src` with `up` (an Upscaler) into `dst`; copy audio and subtitles.

    Returns {"frames", "segments", "reused_segments", "width", "height", "seconds"}. on_frame(done,
    total) is called after each upscaled frame (total may be None when the container does not say).
    """
    import av
    from tqdm import tqdm

    src, dst = Path(src), Path(dst)
    opts = opts or VideoOptions()
    opts.check()
    try:
        inp = av.open(str(src))
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{src}: cannot be opened as a video ({e})") from None
    with inp:
        if not inp.streams.video:
            raise VideoError(f"{src}: has no video stream")
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        seg_frames = max(1, int(round(opts.segment_seconds * float(rate))))
        total = _frame_count(vin, inp)
        size = (vin.codec_context.width * up.scale, vin.codec_context.height * up.scale)
        if size[0] % 2 or size[1] % 2:
            raise VideoError(f"{src}: the output would be {size[0]}x{size[1]}; {opts.pix_fmt} needs even sides")
        parts = parts_dir(dst)
        done_segments = _prepare_parts(parts, _manifest(src, up, opts, seg_frames), resume)
        writer: _SegmentWriter | None = None
        rotation = 0
        frames = upscaled = 0
        pending: list[Any] = []   # decoded frames waiting for a batch; never across a segment end
        # an adaptive model (photo-x4) picks one blend for the whole video, from its first frame,
        # so the look does not jump between batches (and a resumed run picks the same); always from
        # the light end: video codecs leave no 8x8 JPEG grid, so "no JPEG history" says nothing here
        strength: float | None = None

        def flush() -> None:
            nonlocal upscaled
            if not pending:
                return
            outs = up.upscale_frames([_rgb(f) for f in pending], strength=strength)
            for f, sr in zip(pending, outs):
                writer.write(sr, f.pts, f.time_base)
                upscaled += 1
                bar.update(1)
                if on_frame is not None:
                    on_frame(upscaled + skipped, total)
            pending.clear()

        skipped = 0
        bar = tqdm(total=total, desc=src.name, unit="frame", disable=not progress, file=sys.stderr,
                   smoothing=0.1)
        try:
            for n, frame in enumerate(inp.decode(vin)):
                if max_frames is not None and n >= max_frames:
                    break
                frames = n + 1
                if n == 0:
                    rotation = int(getattr(frame, "rotation", 0) or 0)
                    if up.adaptive:
                        strength = up.choose_strength(_rgb(frame))
                        log.info("%s: strength %g for every frame (chosen from the first)", src, strength)
                k = n // seg_frames
                if k in done_segments:
                    skipped += 1
                    bar.update(1)
                    continue
                if writer is not None and writer.path != _segment_path(parts, k):
                    flush()
                    writer.close()
                    writer = None
                if writer is None:
                    writer = _SegmentWriter(_segment_path(parts, k), vin, size, opts)
                pending.append(frame)
                if len(pending) >= opts.batch:
                    flush()
            if writer is not None:
                flush()
                writer.close()
                writer = None
        except av.FFmpegError as e:   # a truncated or corrupt stream, found while decoding
            raise VideoError(f"{src}: stops decoding after frame {frames} ({e}); the file is truncated "
                             "or corrupt") from None
        finally:
            bar.close()
            if writer is not None:
                # Interrupted inside a segment: close what we have (it stays a .tmp and is redone).
                try:
                    writer.container.close()
                except Exception:   # the run is failing already; the .tmp is discarded on resume
                    pass
        if frames == 0:
            raise VideoError(f"{src}: the video stream has no frames that decode (an empty or truncated file)")
        segments = math.ceil(frames / seg_frames) if frames else 0
        _join(src, dst, parts, segments, rotation)
    shutil.rmtree(parts, ignore_errors=True)
    return {"frames": frames, "segments": segments, "reused_segments": len(done_segments & set(range(segments))),
            "upscaled_frames": upscaled, "width": size[0], "height": size[1], "strength": strength}


def _packets(container: Any, streams: list[Any]) -> Iterator[Any]:
    for packet in container.demux(streams):
        if packet.dts is None and packet.size == 0:
            continue   # the demuxer's end-of-stream marker
        yield packet


def _join(src: Path, dst: Path, parts: Path, segments: int, rotation: int) -> None:
    """Remux the segments' video and the input's audio/subtitle packets into dst, atomically."""
    import av

    missing = [k for k in range(segments) if not _segment_path(parts, k).is_file()]
    if missing:
        raise VideoError(f"segments {missing[:5]} are missing from {parts}; rerun with --resume")
    fmt = None if dst.suffix else "mp4"
    inp = av.open(str(src))
    segs = [av.open(str(_segment_path(parts, k))) for k in range(segments)]

    # the temp file keeps dst's extension: PyAV picks the container format by it
    def mux(tmp: Path) -> None:
        with av.open(str(tmp), "w", format=fmt) as out:
            vout = out.add_stream_from_template(segs[0].streams.video[0])
            if rotation:
                vout.set_display_rotation(rotation)
            copied = {}
            for s in inp.streams:
                if s.type in ("audio", "subtitle"):
                    try:
                        copied[s.index] = out.add_stream_from_template(s)
                    except (ValueError, av.FFmpegError) as e:
                        log.warning("%s: stream %d (%s %s) cannot go into %s and is left out (%s)", src,
                                    s.index, s.type, s.codec_context.name, dst.suffix, e)

            def video() -> Iterator[Any]:
                for seg in segs:
                    yield from _packets(seg, [seg.streams.video[0]])

            def others() -> Iterator[Any]:
                if copied:
                    yield from _packets(inp, [inp.streams[i] for i in copied])

            def when(packet: Any) -> float:
                t = packet.dts if packet.dts is not None else packet.pts
                return float(t * packet.time_base) if t is not None else -math.inf

            # Interleave by time so the muxer never has to buffer one whole stream in memory.
            for packet in heapq.merge(video(), others(), key=when):
                packet.stream = vout if packet.stream.type == "video" else copied[packet.stream.index]
                out.mux(packet)

    try:
        atomic_write_with(dst, mux, keep_suffix=True)
    finally:
        inp.close()
        for seg in segs:
            seg.close()


# ---------------------------------------------------------------------------------------------
# flicker

def temporal_difference(frames: list[np.ndarray]) -> float:
    """Mean absolute difference between consecutive frames (8-bit levels): on a static-camera clip
    all of it is noise or shimmer."""
    diffs = [np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() for a, b in zip(frames, frames[1:])]
    return float(np.mean(diffs)) if diffs else 0.0


# ---------------------------------------------------------------------------------------------
# CLI (wired into `superres upscale`)

def add_video_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video (an input with a video extension, e.g. .mp4 .mkv .mov .webm)")
    g.add_argument("--codec", default="libx264", help="video encoder (default libx264; libx265, libvpx-vp9, "
                                                      "libsvtav1 ...)")
    g.add_argument("--crf", type=float, default=18.0, help="constant quality, lower = better (default 18)")
    g.add_argument("--preset", default="medium", help="x264/x265 speed preset (default medium)")
    g.add_argument("--pix-fmt", default="yuv420p", help="output pixel format (default yuv420p)")
    g.add_argument("--segment-seconds", type=float, default=10.0,
                   help="encode in segments of this length; --resume restarts at the first missing one")
    g.add_argument("--batch-frames", type=int, default=4, metavar="N",
                   help="frames per forward when they fit in one tile's area together (default 4; "
                        "1 = frame by frame through the tiles)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted video from its last finished segment")


def _drop_empty_parts(parts: Path) -> None:
    """Remove a parts folder that holds no finished segment (nothing a --resume could reuse)."""
    if parts.is_dir() and not any(parts.glob("seg_*.mkv")):
        shutil.rmtree(parts, ignore_errors=True)


def run_video(args: argparse.Namespace, up: Any, src: Path, dst: Path) -> int:
    """One video input -> one video output; exit code."""
    if dst.exists() and not args.overwrite:
        log.info("%s exists, skipped (--overwrite replaces it)", dst)
        return 0
    if args.outscale or args.width or args.height:
        log.error("--outscale/--width/--height are not supported for video; the output is x%d", up.scale)
        return 2
    if not is_video(dst):
        log.error("%s: a video output needs a video extension (%s)", dst, ", ".join(VIDEO_EXTENSIONS[:6]))
        return 2
    opts = VideoOptions(codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt,
                        segment_seconds=args.segment_seconds, batch=args.batch_frames)
    try:
        preflight(src, dst, up.scale, opts)   # options, codec and container before any compute
    except VideoError as e:
        log.error("%s", e)
        return 2
    try:
        res = upscale_video(src, dst, up, opts, resume=args.resume, progress=not args.no_progress)
    except VideoError as e:
        log.error("%s", e)
        _drop_empty_parts(parts_dir(dst))
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; finished segments are kept in %s: rerun with --resume to continue",
                  parts_dir(dst))
        return 130
    log.info("%s: %d frames -> %s (%dx%d; %d of %d segments reused)", src, res["frames"], dst, res["width"],
             res["height"], res["reused_segments"], res["segments"])
    return 0
