"""`superres serve`: a web page and an HTTP API in one process.

    superres serve                                  # http://127.0.0.1:8000 (loopback only)
    superres serve --model gan-x4 --model psnr-x4 --host 0.0.0.0 --port 8080

Design, in the order a request meets it:
- Limits before decoding: the body size (Content-Length, then the bytes actually read), the format
  and the pixel count from the image header, then Pillow's decompression-bomb guard. Each refusal
  is 413 (too large), 415 (not an image we read) or 422 (a bad field or a corrupt image), with a
  message naming the limit and its value.
- A model is chosen by name among the models loaded at start-up; a request's name is never used as
  a file path. Models load once.
- One worker thread owns the device and runs jobs one at a time, off the event loop, so health
  checks and the page stay responsive during a long job. The queue is bounded: when it is full the
  answer is 503 with Retry-After, never an unbounded backlog.
- `POST /v1/upscale` waits for its job and returns the image; `POST /v1/jobs` returns an id at once
  (progress by tiles, cancel between tiles, result kept until `--job-ttl` runs out).
- Shutdown (SIGTERM / Ctrl-C, via uvicorn's lifespan): queued jobs are cancelled, the running one
  stops at its next tile, the worker is joined.

Pixels are read and written with the same code as `superres upscale` (superres.images), so alpha,
16-bit, grayscale, ICC/EXIF and EXIF orientation behave the same. Nothing is written to disk.
"""

import argparse
import io
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..inference import runtime
from .upscale import ENGINE_NAMES, default_engine

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
# Formats a result can be written in (superres.images writes these) and their media types.
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "tiff": "image/tiff",
               "bmp": "image/bmp"}
_PIL_TO_FORMAT = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "TIFF": "tiff", "BMP": "bmp"}
DEFAULT_MAX_PIXELS = 4_000_000      # input pixels: a 2000x2000 photo, 64 MP out at x4
MAX_OUTSCALE = 8.0


class RequestError(Exception):
    """A request the service refuses: HTTP status and a message for a person."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class JobCancelled(Exception):
    pass


@dataclass
class ServiceConfig:
    max_upload_mb: float = 50.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    queue: int = 16
    job_ttl: float = 3600.0
    # Finished jobs kept for GET .../result at most; the oldest go first beyond this.
    max_finished: int = 256
    # Seconds a request's whole body may take to arrive, whatever its framing (slow clients hold a
    # connection and a buffer; 408 after this).
    body_timeout: float = 60.0
    # Host header values accepted (lower case, without the port); None = any. `superres serve` on a
    # loopback address accepts only loopback names, so a web page that rebinds its own DNS name to
    # 127.0.0.1 cannot reach the service.
    allowed_hosts: tuple[str, ...] | None = None
    # Origins (scheme://host[:port]) besides the service's own allowed to POST / DELETE.
    allowed_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key, value, low in (("max_upload_mb", self.max_upload_mb, 0), ("max_pixels", self.max_pixels, 0),
                                ("queue", self.queue, 0), ("job_ttl", self.job_ttl, 0),
                                ("body_timeout", self.body_timeout, 0)):
            if not value > low:
                raise ValueError(f"{key} = {value!r}: must be > {low}")


# ---------------------------------------------------------------------------------------------
# models

@dataclass
class ModelSlot:
    label: str
    spec: str                 # what was given at start-up: a registry name or a path
    scale: int
    description: str
    has_twin: bool            # strength works (a GAN model with a PSNR twin, or a blend family)
    upscaler: Any             # superres.upscale.Upscaler at strength 1


class ModelPool:
    """The models loaded at start-up, by label, plus a few blends at other strengths.

    Only the worker thread calls `get`, so the blend cache needs no lock.
    """

    def __init__(self, specs: list[str] | None = None, *, device: str = "auto", precision: str = "auto",
                 tile: int | None = None, upscalers: dict[str, Any] | None = None,
                 blend_cache: int = 4, engine: str = "torch") -> None:
        from ..inference.models import MODELS, default_model_name

        self.options = {"device": device, "precision": precision, "tile": tile, "engine": engine}
        self.slots: dict[str, ModelSlot] = {}
        self._blends: OrderedDict[tuple[str, float], Any] = OrderedDict()
        self._blend_cache = blend_cache
        for label, up in (upscalers or {}).items():   # ready-made (tests, embedding)
            self.slots[label] = ModelSlot(label, label, up.scale, f"{label}: x{up.scale}", False, up)
        if specs is None and not upscalers:
            specs = [default_model_name()]
        for spec in specs or []:
            from ..inference.upscaler import Upscaler
            Upscaler.tune_host_allocator_before(self.options["device"], self.options["tile"])
            up = Upscaler.from_pretrained(spec, **self.options)
            up.tune_host_allocator()
            label = spec if spec in MODELS else Path(spec).stem
            entry = MODELS.get(spec)
            desc = entry.description if entry else f"weights file {Path(spec).name}"
            twin = bool(up.info.get("metadata", {}).get("psnr_twin")) or up.adaptive
            self.slots[label] = ModelSlot(label, spec, up.scale, desc, twin, up)
        if not self.slots:
            raise ValueError("no models to serve")
        self.default = next(iter(self.slots))

    @property
    def blends(self) -> bool:
        """Whether strength blends can be made: not in int8, whose files are of the models as trained
        (a blend would need calibration images at request time)."""
        return self.options["precision"] != "int8"

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": s.label, "scale": s.scale, "description": s.description,
                 "strength": s.has_twin and self.blends, "default": s.label == self.default,
                 # picks its strength per image unless one is given (photo-x4)
                 "adaptive": bool(getattr(s.upscaler, "adaptive", False))}
                for s in self.slots.values()]

    def check(self, label: str | None, strength: float | None) -> tuple[str, float | None]:
        """Validate a request's model and strength (422 naming the allowed values)."""
        label = label or self.default
        if label not in self.slots:
            raise RequestError(422, f"model {label!r} is not served here; allowed values: "
                                    f"{', '.join(self.slots)}")
        if strength is not None:
            if not 0.0 <= strength <= 1.0:
                raise RequestError(422, f"strength = {strength}: must be between 0 and 1")
            if strength != 1.0 and not self.slots[label].has_twin:
                raise RequestError(422, f"model {label!r} has no PSNR twin, so strength cannot blend "
                                        "it; leave strength out or use 1")
            strength = round(strength, 2)
            if strength == 1.0 and not getattr(self.slots[label].upscaler, "adaptive", False):
                strength = None   # the model as trained (for a blend family, 1 is its heavy end)
            elif not self.blends:
                raise RequestError(422, "strength cannot blend models served in int8 (--precision int8 "
                                        "quantizes the models as trained); leave strength out or use 1")
        return label, strength

    def get(self, label: str, strength: float | None) -> Any:
        slot = self.slots[label]
        if strength is None or getattr(slot.upscaler, "adaptive", False):
            return slot.upscaler   # an adaptive one runs any strength it is given
        key = (label, strength)
        if key not in self._blends:
            from ..inference.upscaler import Upscaler
            self._blends[key] = Upscaler.from_pretrained(slot.spec, strength=strength, **self.options)
            while len(self._blends) > self._blend_cache:
                self._blends.popitem(last=False)
        self._blends.move_to_end(key)
        return self._blends[key]


# ---------------------------------------------------------------------------------------------
# jobs

@dataclass
class Job:
    id: str
    data: bytes | None
    filename: str
    model: str
    strength: float | None
    outscale: float | None
    format: str | None
    quality: int
    state: str = "queued"               # queued, running, done, failed, cancelled
    progress: float = 0.0
    error: str | None = None
    error_status: int = 422
    result: bytes | None = None
    media_type: str | None = None
    result_name: str | None = None
    size: tuple[int, int] | None = None
    analysis: dict[str, Any] | None = None   # the input's noise, JPEG quality, detail (analysis.py)
    used_strength: float | None = None       # the blend it ran at (chosen per image, or asked for)
    used_end: str | None = None              # the end it started from: light, or clean (no JPEG history)
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "progress": round(self.progress, 4), "error": self.error,
                "model": self.model, "filename": self.filename,
                "width": self.size[0] if self.size else None, "height": self.size[1] if self.size else None,
                "analysis": self.analysis, "strength": self.used_strength, "end": self.used_end}


class Service:
    """The job table, the bounded queue and the one worker thread that owns the device."""

    def __init__(self, pool: ModelPool, cfg: ServiceConfig | None = None) -> None:
        self.pool, self.cfg = pool, cfg or ServiceConfig()
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=self.cfg.queue)
        self._worker = threading.Thread(target=self._run, name="superres-worker", daemon=True)
        self._started = False
        self._closing = False
        self.running: Job | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._worker.start()
            self._started = True

    def begin_shutdown(self) -> None:
        """Refuse new jobs and cancel every queued and running one now (the running one stops at its
        next tile), so that requests waiting on them are answered (503) at once instead of after
        the server's grace period. Called on SIGTERM / Ctrl-C, before connections are drained."""
        with self._lock:
            self._closing = True
            for job in self.jobs.values():
                if job.state in ("queued", "running"):
                    job.cancel.set()
        while True:   # queued jobs are finished here, not when the worker would reach them
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put_nowait(None)
                break
            self._finish(job, "cancelled")

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel what is queued, stop the running job at its next tile, join the worker."""
        self.begin_shutdown()
        if self._started:
            while True:   # make room for the stop marker even when the queue is full
                try:
                    self._queue.put_nowait(None)
                    break
                except queue.Full:
                    self._drop_one_queued()
            self._worker.join(timeout)
            self._started = False

    def _drop_one_queued(self) -> None:
        try:
            job = self._queue.get_nowait()
        except queue.Empty:
            return
        if job is not None:
            self._finish(job, "cancelled")

    # -- requests -------------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        self.expire()
        with self._lock:
            if self._closing:
                raise RequestError(503, "the server is shutting down; try again when it is back",
                                   {"Retry-After": "10"})
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise RequestError(503, f"the queue is full ({self.cfg.queue} jobs waiting, --queue); "
                                        "try again shortly", {"Retry-After": "5"}) from None
            self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job:
        self.expire()
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(404, f"no job {job_id!r} (finished jobs expire after {self.cfg.job_ttl:g} s)")
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        job.cancel.set()
        with self._lock:
            if job.state in ("done", "failed", "cancelled"):
                self.jobs.pop(job_id, None)   # deleting a finished job frees its result
        return job

    def forget(self, job_id: str) -> None:
        with self._lock:
            self.jobs.pop(job_id, None)

    def expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            finished = [j for j in self.jobs.values() if j.finished is not None]
            for job in finished:
                if now - job.finished > self.cfg.job_ttl:
                    del self.jobs[job.id]
            finished = sorted((j for j in self.jobs.values() if j.finished is not None), key=lambda j: j.finished)
            for job in finished[:max(0, len(finished) - self.cfg.max_finished)]:
                del self.jobs[job.id]

    def queued(self) -> int:
        return self._queue.qsize()

    # -- the worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancel.is_set():
                self._finish(job, "cancelled")
                continue
            self.running = job
            try:
                self._process(job)
                self._finish(job, "done")
            except JobCancelled:
                self._finish(job, "cancelled")
            except RequestError as e:
                job.error, job.error_status = e.message, e.status
                self._finish(job, "failed")
            except MemoryError:
                job.error, job.error_status = "not enough memory for this image; try a smaller one", 413
                self._finish(job, "failed")
            except Exception as e:   # a worker that dies would hang every later request
                log.exception("job %s failed", job.id)
                job.error, job.error_status = f"internal error: {type(e).__name__}: {e}", 500
                self._finish(job, "failed")
            finally:
                self.running = None
                if self._queue.empty():
                    # idle: hand the last image's peak heap back (CPU tiles keep freed memory for
                    # reuse within a job, which would otherwise hold it until the process exits)
                    from ..inference.core import release_host_memory

                    release_host_memory()

    def _finish(self, job: Job, state: str) -> None:
        job.state, job.finished, job.data = state, time.monotonic(), None
        job.done.set()

    def _process(self, job: Job) -> None:
        from ..inference.analysis import analyze_image
        from ..io.images import ImageError, decode_image, encode_image

        job.state = "running"
        up = self.pool.get(job.model, job.strength)
        try:
            img = decode_image(job.data, job.filename)
        except ImageError as e:
            raise RequestError(422, str(e)) from None
        tables = None
        if img.format == "JPEG":
            from PIL import Image

            with Image.open(io.BytesIO(job.data)) as im:   # decoded once already: the header is sound
                tables = getattr(im, "quantization", None)
        job.analysis = analyze_image(img.pixels, jpeg_tables=tables)
        if getattr(up, "adaptive", False):
            job.used_strength = job.strength if job.strength is not None \
                else up.choose_strength(measures=job.analysis)
            # an asked-for strength blends the light and heavy ends, as `--denoise` does
            if up.has_clean_end:
                job.used_end = "light" if job.strength is not None else up.choose_end(measures=job.analysis)
        else:
            job.used_strength = up.choose_strength()
        total = max(1, up.count_tiles(img.height, img.width))

        def on_tile(done: int, _total: int) -> None:
            job.progress = min(0.99, done / total)
            if job.cancel.is_set():
                raise JobCancelled()

        out = up.upscale_image(img, outscale=job.outscale, on_tile=on_tile, strength=job.used_strength,
                               end=job.used_end)
        if job.cancel.is_set():
            raise JobCancelled()
        fmt = job.format or _PIL_TO_FORMAT.get(img.format or "", "png")
        job.result = encode_image(out, fmt, quality=job.quality)
        job.media_type = MEDIA_TYPES[fmt]
        job.result_name = f"{Path(job.filename).stem or 'image'}_x{job.outscale or up.scale:g}.{_ext(fmt)}"
        job.size = (out.width, out.height)
        job.progress = 1.0


def _offline_docs(app: Any) -> None:
    """/docs from local files (the swagger-ui-bundle package), never a CDN: a page that loads its
    script from the network is blank offline and trusts a third party with the service's origin.
    Without the package, /docs is a plain list of the endpoints from the OpenAPI schema."""
    from fastapi.responses import HTMLResponse

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ModuleNotFoundError:
        swagger_ui_path = None
    if swagger_ui_path is not None:
        from fastapi.openapi.docs import get_swagger_ui_html
        from fastapi.staticfiles import StaticFiles

        app.mount("/static/swagger", StaticFiles(directory=str(swagger_ui_path)), name="swagger")

        @app.get("/docs", include_in_schema=False)
        async def docs():
            return get_swagger_ui_html(openapi_url=app.openapi_url, title="superres - API",
                                       swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                                       swagger_css_url="/static/swagger/swagger-ui.css",
                                       swagger_favicon_url="/static/swagger/favicon-32x32.png")
        return

    @app.get("/docs", include_in_schema=False)
    async def plain_docs():
        import html

        rows = [f"<li><code>{html.escape(m.upper())} {html.escape(path)}</code> {html.escape(op.get('summary', ''))}</li>"
                for path, ops in app.openapi()["paths"].items() for m, op in ops.items()]
        return HTMLResponse("<!doctype html><meta charset=utf-8><title>superres - API</title><h1>superres API</h1>"
                            f"<p>OpenAPI schema: <a href='{app.openapi_url}'>{app.openapi_url}</a></p>"
                            f"<ul>{''.join(rows)}</ul>")


def result_headers(job: Job) -> dict[str, str]:
    """The result's headers: its file name, and what the input analysis found and chose (ASCII)."""
    from ..inference.analysis import describe

    headers = {"Content-Disposition": content_disposition(job.result_name or "result")}
    if job.analysis is not None:
        headers["X-Superres-Analysis"] = describe(job.analysis)
    if job.used_strength is not None:
        headers["X-Superres-Strength"] = f"{job.used_strength:g}"
    if job.used_end is not None:
        headers["X-Superres-End"] = job.used_end
    return headers


def _ext(fmt: str) -> str:
    return {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt)


# ---------------------------------------------------------------------------------------------
# checks before anything is decoded

def check_upload(data: bytes, filename: str, cfg: ServiceConfig) -> tuple[int, int]:
    """Size, format and pixel count from the header: (width, height) or a RequestError."""
    from PIL import Image, UnidentifiedImageError

    limit = int(cfg.max_upload_mb * 1024 * 1024)
    if len(data) > limit:
        raise RequestError(413, f"the file is {len(data) / 2**20:.1f} MB; the limit is "
                                f"{cfg.max_upload_mb:g} MB (--max-upload-mb)")
    if not data:
        raise RequestError(422, f"{filename}: empty file (0 bytes), not an image")
    from ..io.images import ImageError, probe_tiff

    try:
        tiff = probe_tiff(io.BytesIO(data), filename) if data[:4] in (b"II*\0", b"MM\0*") else None
    except ImageError as e:   # signed / 32-bit integer samples
        raise RequestError(415, str(e)) from None
    try:
        if tiff is not None:   # float samples, which PIL cannot open
            width, height, fmt = tiff.width, tiff.height, "TIFF"
        else:
            with Image.open(io.BytesIO(data)) as im:   # reads the header only
                width, height, fmt = im.width, im.height, im.format
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"{filename}: {e}") from None
    except UnidentifiedImageError:
        from ..io.images import refuse_unsupported

        try:
            refuse_unsupported(filename, data[:64])
        except ImageError as e:   # AVIF, HEIC, SVG ...: said as the command line says it
            raise RequestError(415, str(e)) from None
        raise RequestError(415, f"{filename} is not an image in a format we read (PNG, JPEG, WebP, TIFF, "
                                "BMP, GIF)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise RequestError(422, f"{filename}: corrupt or truncated image ({e})") from None
    if width * height > cfg.max_pixels:
        raise RequestError(413, f"{filename} is {width}x{height} = {width * height:,} pixels; the limit is "
                                f"{cfg.max_pixels:,} pixels (--max-pixels)")
    if fmt not in ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF", "MPO"):
        raise RequestError(415, f"{filename} is a {fmt} image; we read PNG, JPEG, WebP, TIFF, BMP and GIF")
    return width, height


def parse_fields(pool: ModelPool, *, model: str | None, outscale: str | None, strength: str | None,
                 format: str | None, quality: str | None) -> dict[str, Any]:
    """The form fields of an upscale request, checked (422 naming the field, value and range)."""
    def number(name: str, raw: str | None, low: float, high: float) -> float | None:
        if raw in (None, ""):
            return None
        try:
            value = float(raw)
        except ValueError:
            raise RequestError(422, f"{name} = {raw!r}: not a number") from None
        if not low <= value <= high:
            raise RequestError(422, f"{name} = {raw}: must be between {low:g} and {high:g}")
        return value

    label, s = pool.check(model, number("strength", strength, 0.0, 1.0))
    out = number("outscale", outscale, 0.0, MAX_OUTSCALE)
    if out is not None and out <= 0:
        raise RequestError(422, f"outscale = {outscale}: must be greater than 0")
    q = number("quality", quality, 1, 100)
    fmt = None
    if format not in (None, ""):
        fmt = {"jpg": "jpeg", "tif": "tiff"}.get(format.lower().lstrip("."), format.lower().lstrip("."))
        if fmt not in MEDIA_TYPES:
            raise RequestError(422, f"format = {format!r}; allowed values: {', '.join(MEDIA_TYPES)}")
    return {"model": label, "strength": s, "outscale": out, "format": fmt,
            "quality": int(q) if q is not None else 95}


# ---------------------------------------------------------------------------------------------
# the app

def content_disposition(name: str) -> str:
    """An attachment header for any file name: an ASCII fallback and the exact name in RFC 5987's
    `filename*` (HTTP headers are Latin-1; a name like фото.png made the server answer 500)."""
    from urllib.parse import quote

    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name) or "result"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


# ---------------------------------------------------------------------------------------------
# the guard: limits and checks every request passes, whatever its framing

SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]
# The page and /docs are one file each with inline script and style, and show blob: URLs (the result)
PAGE_CSP = (b"default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
            b"script-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
            b"form-action 'self'")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# a refused request's connection is closed: the server would otherwise read (and drop) the rest of
# a body it has refused, however large
CLOSE = {"Connection": "close"}


def _host_name(value: str) -> str:
    """'Example.com:8000' -> 'example.com', '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """ASGI middleware: the Host and Origin checks, the body's size and time limits, and the
    security headers, for every request before FastAPI sees it.

    The body limit counts the bytes as they arrive, so a chunked upload without Content-Length is
    refused after at most the limit (413), and a body that stops arriving is refused after
    `body_timeout` seconds (408). Starlette's form parser is told to keep parts up to the limit in
    memory, so an upload never reaches the disk.
    """

    def __init__(self, app: Any, cfg: ServiceConfig) -> None:
        self.app, self.cfg = app, cfg
        # room for the form's other fields beside the file
        self.limit = int(cfg.max_upload_mb * 1024 * 1024) + 64 * 1024
        from starlette.formparsers import MultiPartParser

        # a class attribute: a file part under it stays in a SpooledTemporaryFile's memory
        MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, self.limit)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            from starlette.responses import JSONResponse

            status, message = refusal
            return await JSONResponse({"detail": message}, status_code=status, headers=CLOSE)(
                scope, receive, self._secure(send))
        await self.app(scope, self._limited(receive), self._secure(send))

    def _refusal(self, scope: dict, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if self.cfg.allowed_hosts is not None and _host_name(host) not in self.cfg.allowed_hosts:
            return 421, (f"Host {host!r} is not served here (allowed: {', '.join(self.cfg.allowed_hosts)}; "
                         "superres serve --allow-host NAME adds one)")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is not None and origin != "null":
                own = f"{scope.get('scheme', 'http')}://{host}".lower()
                if origin.lower() != own and origin not in self.cfg.allowed_origins:
                    return 403, (f"cross-origin request from {origin} refused; the service answers its own "
                                 "page (superres serve --allow-origin URL adds one)")
            elif origin == "null":
                return 403, "a request from an opaque origin (a file or sandboxed page) is refused"
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.limit:
            return 413, (f"the request is {int(length) / 2**20:.1f} MB; the limit is "
                         f"{self.cfg.max_upload_mb:g} MB (--max-upload-mb)")
        return None

    def _limited(self, receive: Any) -> Any:
        import asyncio

        from starlette.exceptions import HTTPException

        cfg, limit = self.cfg, self.limit
        deadline = time.monotonic() + cfg.body_timeout
        state = {"bytes": 0, "done": False}

        async def limited_receive() -> dict:
            if state["done"]:
                return await receive()   # e.g. waiting for the client to disconnect
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {cfg.body_timeout:g} s",
                                    headers=CLOSE) from None
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if state["bytes"] > limit:
                    raise HTTPException(413, f"the request is over the {cfg.max_upload_mb:g} MB limit "
                                             "(--max-upload-mb); it was refused after that much",
                                        headers=CLOSE)
                state["done"] = not message.get("more_body", False)
            return message

        return limited_receive

    @staticmethod
    def _secure(send: Any) -> Any:
        async def secure_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if ctype.startswith(b"text/html") and b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", PAGE_CSP))
                message = {**message, "headers": headers}
            await send(message)
        return secure_send


def create_app(pool: ModelPool, cfg: ServiceConfig | None = None):
    """The FastAPI application: API under /v1, the page at /, OpenAPI at /docs."""
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    cfg = cfg or ServiceConfig()
    service = Service(pool, cfg)

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        log.info("serving %s (queue %d, max %s pixels, max upload %g MB)", ", ".join(pool.slots),
                 cfg.queue, f"{cfg.max_pixels:,}", cfg.max_upload_mb)
        try:
            yield
        finally:
            log.info("shutting down: cancelling %d queued job(s)", service.queued())
            await run_in_threadpool(service.shutdown)

    app = FastAPI(title="superres", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Super-resolution: upscale images with GAN / PSNR models.")
    app.state.service = service
    app.add_middleware(Guard, cfg=cfg)
    _offline_docs(app)

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, exc: RequestError):
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    async def make_job(file: UploadFile, model, outscale, strength, format, quality) -> Job:
        fields = parse_fields(pool, model=model, outscale=outscale, strength=strength, format=format,
                              quality=quality)
        data = await file.read(int(cfg.max_upload_mb * 1024 * 1024) + 1)
        name = Path(file.filename or "image").name
        check_upload(data, name, cfg)
        return Job(id=uuid.uuid4().hex, data=data, filename=name, **fields)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "queued": service.queued(), "busy": service.running is not None,
                "models": list(pool.slots)}

    @app.get("/v1/models")
    async def models():
        return {"models": pool.describe(), "limits": {"max_upload_mb": cfg.max_upload_mb,
                                                      "max_pixels": cfg.max_pixels,
                                                      "max_outscale": MAX_OUTSCALE}}

    @app.post("/v1/upscale", responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}})
    async def upscale(file: UploadFile = File(...), model: str | None = Form(None),
                      outscale: str | None = Form(None), strength: str | None = Form(None),
                      format: str | None = Form(None), quality: str | None = Form(None)):
        """Upscale one image and return it (waits for its turn on the device)."""
        job = service.submit(await make_job(file, model, outscale, strength, format, quality))
        try:
            await run_in_threadpool(job.done.wait)
        finally:
            service.forget(job.id)
        if job.state != "done":
            raise RequestError(job.error_status if job.state == "failed" else 503,
                               job.error or "the job was cancelled (the server is shutting down)")
        return Response(job.result, media_type=job.media_type, headers=result_headers(job))

    @app.post("/v1/jobs", status_code=202)
    async def create_job(file: UploadFile = File(...), model: str | None = Form(None),
                         outscale: str | None = Form(None), strength: str | None = Form(None),
                         format: str | None = Form(None), quality: str | None = Form(None)):
        """Queue an upscale; poll GET /v1/jobs/{id}, then fetch /v1/jobs/{id}/result."""
        job = service.submit(await make_job(file, model, outscale, strength, format, quality))
        return job.public()

    @app.get("/v1/jobs/{job_id}")
    async def job_status(job_id: str):
        return service.get(job_id).public()

    @app.get("/v1/jobs/{job_id}/result")
    async def job_result(job_id: str):
        job = service.get(job_id)
        if job.state == "failed":
            raise RequestError(job.error_status, job.error or "failed")
        if job.state != "done":
            raise RequestError(409, f"job {job_id} is {job.state}, not done; poll GET /v1/jobs/{job_id}")
        return Response(job.result, media_type=job.media_type, headers=result_headers(job))

    @app.delete("/v1/jobs/{job_id}")
    async def job_cancel(job_id: str):
        """Cancel a queued or running job (a running one stops at its next tile), or delete a
        finished one and its result."""
        return service.cancel(job_id).public()

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    return app


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("superres")
    except Exception:   # not installed (running from a checkout)
        return "0"


# ---------------------------------------------------------------------------------------------
# CLI

def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model", action="append", default=None, metavar="NAME|PATH",
                   help="model to serve (repeatable; the first is the default): a shipped name or a "
                        "weights file. Default: the shipped default model")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload in MB (default 50)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest input in pixels, checked from the header (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--queue", type=int, default=16, help="jobs that may wait; more get 503 (default 16)")
    p.add_argument("--job-ttl", type=float, default=3600.0,
                   help="seconds a finished job's result is kept (default 3600)")
    p.add_argument("--body-timeout", type=float, default=60.0, metavar="S",
                   help="seconds a request body may take to arrive, whatever its framing (default 60)")
    p.add_argument("--allow-host", action="append", default=None, metavar="NAME",
                   help="a Host name to answer besides the defaults (repeatable): on a loopback --host only "
                        "localhost, 127.0.0.1 and ::1 are answered, so a web page that rebinds its DNS "
                        "name to this machine gets 421; on another --host any name is answered unless "
                        "this is given")
    p.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                   help="a web origin (scheme://host[:port]) besides the service's own that may post jobs "
                        "(repeatable); by default only the service's own page may")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
    p.add_argument("--engine", default=default_engine(), choices=ENGINE_NAMES,
                   help="as `superres upscale --engine` (default auto)")
    p.add_argument("--precision", default="auto", choices=runtime.INFERENCE_PRECISIONS,
                   help="auto, fp32, bf16, fp16 or int8 (CPU, shipped models) (default auto)")
    p.add_argument("--tile", type=int, default=None, help="LR tile side (default: from free memory)")


def run_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as e:
        log.error("superres serve needs %s: pip install -c constraints.txt -e '.[serve]'", e.name)
        return 2
    if not 0 < args.port < 65536:
        log.error("--port %d: must be between 1 and 65535", args.port)
        return 2
    try:
        cfg = ServiceConfig(max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, queue=args.queue,
                            job_ttl=args.job_ttl, body_timeout=args.body_timeout,
                            allowed_hosts=allowed_hosts(args.host, args.allow_host),
                            allowed_origins=tuple(o.rstrip("/") for o in args.allow_origin))
    except ValueError as e:
        log.error("--%s", str(e).replace("_", "-"))
        return 2
    from ..inference.models import ModelNotFound
    from ..inference.weights import WeightsError
    try:
        pool = ModelPool(args.model, device=args.device, precision=args.precision, tile=args.tile,
                         engine=args.engine)
    except (ModelNotFound, WeightsError, ValueError) as e:
        log.error("%s", e)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this machine can use the service", args.host)
    app = create_app(pool, cfg)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # before uvicorn drains connections: waiting requests get their 503 now, not after the
            # grace period (and none is cut off by it)
            app.state.service.begin_shutdown()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                          timeout_graceful_shutdown=30)).run()
    return 0


def allowed_hosts(host: str, extra: list[str] | None) -> tuple[str, ...] | None:
    """The Host names `superres serve --host HOST` answers: loopback names for a loopback HOST (and
    --allow-host names); any (None) for another HOST unless --allow-host names some."""
    extra = [_host_name(h) for h in extra or []]
    if _host_name(host) in LOOPBACK_NAMES:
        return (*LOOPBACK_NAMES, *extra)
    return (_host_name(host), *extra) if extra else None
