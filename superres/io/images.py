"""Image files in and out, keeping what a photographer expects to keep.

An `ImageData` is the colour planes (H, W, C) with C = 1 (gray) or 3 (RGB), an optional alpha plane,
and the ICC profile and EXIF of the file. Pixels stay in the file's own depth (uint8 or uint16; float32
in [0, 1] from float TIFFs and the Python API) so that a 16-bit scan comes out 16-bit.

What PIL does not do for us, done here:
  * 16-bit RGB(A) and gray+alpha PNG: PIL opens them as 8-bit. The bit depth is read from the file's
    header (never guessed from pixel values) and the full 16 bits are recovered by decoding twice with
    PIL's own C decoders, once for the high and once for the low byte of every sample. 16-bit
    multi-sample TIFFs are decoded by tifffile.
  * Writing PNG at 8 and 16 bits with our own small encoder (numpy filters + zlib, in ~4 MB strips
    compressed on one thread per core and joined into one deflate stream), which also keeps a huge
    output from being copied into a PIL image. PIL cannot write 16-bit colour PNG,
    and its encoder (adaptive filters) would change the bytes of every 8-bit output we have written.
  * TIFF through tifffile (PIL cuts 16-bit colour TIFF to 8 bits), which keeps the descriptive EXIF
    tags (make, model, date, artist, copyright, ...); the EXIF sub-IFD is not written.
  * EXIF orientation applied to the pixels, and the orientation tag set to 1 by patching the EXIF bytes
    in place, so maker notes and their offsets survive untouched.
"""
from __future__ import annotations

import io
import logging
import os
import stat
import struct
import warnings
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .._lazy import lazy_module
from .formats import (
    DEFAULT_PNG_LEVEL,
    DEFAULT_QUALITY,
    UNSUPPORTED_EXTENSIONS,
    ImageError,
    format_from_path,
    normalize_format,
)
from .fs import atomic_write_with

log = logging.getLogger(__name__)

__all__ = ["ImageData", "probe_image", "read_image", "decode_image", "write_image", "encode_image",
           "image_from_pil", "image_to_pil", "image_from_array", "image_to_array", "resize_image",
           "resize_plane", "max_value", "convert_depth", "to_tensor", "from_tensor"]

torch = lazy_module("torch")   # only to_tensor/from_tensor need it; reading and writing files do not

_EXIF_PREFIX = b"Exif\x00\x00"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_STRIP_BYTES = 4 << 20     # rows per strip of the PNG encoder: ~4 MB of pixels
_ORIENTATION = 0x0112


@dataclass
class ImageData:
    pixels: np.ndarray                 # (H, W, C), C in {1, 3}; uint8, uint16 or float32 in [0, 1]
    alpha: np.ndarray | None = None    # (H, W), same dtype as pixels
    icc_profile: bytes | None = None
    exif: bytes | None = None          # TIFF-structured EXIF (no "Exif\0\0"), orientation already 1
    format: str | None = None          # PIL format name of the source ("PNG", "JPEG", ...)

    def __post_init__(self) -> None:
        p = self.pixels
        if p.ndim != 3 or p.shape[2] not in (1, 3):
            raise ValueError(f"ImageData.pixels must be (H, W, 1) or (H, W, 3), got {p.shape}")
        if p.dtype not in (np.uint8, np.uint16, np.float32):
            raise ValueError(f"ImageData.pixels dtype {p.dtype}; allowed: uint8, uint16, float32")
        if self.alpha is not None and (self.alpha.shape != p.shape[:2] or self.alpha.dtype != p.dtype):
            raise ValueError(f"alpha {self.alpha.shape} {self.alpha.dtype} does not match pixels "
                             f"{p.shape} {p.dtype}")

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]

    @property
    def bit_depth(self) -> int:
        return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(self.pixels.dtype, 32)


# ---------------------------------------------------------------------------------------------
# value conversions

def max_value(dtype: np.dtype | type) -> float:
    """The value that means full intensity: 255, 65535, or 1.0 for floats."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind == "u" else 1.0


def convert_depth(a: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Change depth with rounding; floats are clipped to [0, 1]."""
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    if a.dtype.kind == dtype.kind == "u" and a.dtype.itemsize == dtype.itemsize:
        return a.astype(dtype)   # byte order only
    f = a.astype(np.float32) / max_value(a.dtype)
    if dtype.kind == "f":
        return np.clip(f, 0.0, 1.0, out=f).astype(dtype, copy=False)
    f = np.clip(f, 0.0, 1.0, out=f)
    f *= max_value(dtype)
    f += 0.5
    return f.astype(dtype)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) uint8/uint16/float array -> (1, C, H, W) float32 tensor in [0, 1]."""
    a = arr[..., None] if arr.ndim == 2 else arr
    if a.ndim != 3:
        raise ValueError(f"to_tensor: expected (H, W) or (H, W, C), got {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if a.dtype.kind == "u":
        t = t / max_value(a.dtype)
    return t.permute(2, 0, 1).unsqueeze(0)


def from_tensor(t: torch.Tensor, dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) tensor in [0, 1] -> (H, W, C) array, clipped and rounded to `dtype`."""
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"from_tensor: expected a batch of one, got {tuple(t.shape)}")
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"from_tensor: expected (1, C, H, W) or (C, H, W), got {tuple(t.shape)}")
    a = t.detach().to("cpu", torch.float32).clamp(0, 1).permute(1, 2, 0).numpy()
    return convert_depth(a, dtype) if np.dtype(dtype).kind == "u" else a.astype(dtype)


# ---------------------------------------------------------------------------------------------
# formats

# ---------------------------------------------------------------------------------------------
# EXIF and orientation

def _exif_body(raw: bytes | None) -> bytes | None:
    if not raw:
        return None
    body = raw[len(_EXIF_PREFIX):] if raw.startswith(_EXIF_PREFIX) else raw
    return body if body[:4] in (b"II*\x00", b"MM\x00*") else None


def reset_exif_orientation(body: bytes) -> tuple[int, bytes]:
    """(orientation in IFD0, or 1; the EXIF with that tag set to 1). Patched in place, not rebuilt.

    When the orientation was not 1 the thumbnail (IFD1) is unlinked too: it still shows the stored,
    unturned picture, which viewers would show beside the turned one. Only IFD0's next-IFD pointer
    changes, so every other offset (maker notes) stays valid.
    """
    bo = "<" if body[:2] == b"II" else ">"
    try:
        ifd = struct.unpack_from(bo + "I", body, 4)[0]
        count = struct.unpack_from(bo + "H", body, ifd)[0]
        for i in range(count):
            at = ifd + 2 + 12 * i
            tag, typ, n = struct.unpack_from(bo + "HHI", body, at)
            if tag == _ORIENTATION and typ == 3 and n == 1:
                value = struct.unpack_from(bo + "H", body, at + 8)[0]
                patched = bytearray(body)
                struct.pack_into(bo + "H", patched, at + 8, 1)
                if value != 1 and len(patched) >= ifd + 6 + 12 * count:
                    struct.pack_into(bo + "I", patched, ifd + 2 + 12 * count, 0)   # no IFD1
                return (value if 1 <= value <= 8 else 1), bytes(patched)
    except struct.error:
        log.debug("EXIF IFD0 is truncated; orientation left alone")
    return 1, body


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels (H, W, ...) the way EXIF orientation 1..8 says they are to be shown."""
    ops = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
           5: lambda x: x.swapaxes(0, 1), 6: lambda x: np.rot90(x, -1),
           7: lambda x: x.swapaxes(0, 1)[::-1, ::-1], 8: lambda x: np.rot90(x, 1)}
    return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a


# ---------------------------------------------------------------------------------------------
# reading

def _check_regular_file(path: Path) -> None:
    """ImageError unless `path` is a regular file (or a link to one) that exists.

    Opening a FIFO or a device to read it would block or never end, so those are refused by type.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(f"{path}: broken symbolic link (it points to {os.readlink(path)}, "
                             "which does not exist)") from None
        raise ImageError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from e
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path}: is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise ImageError(f"{path}: not a regular file (a pipe, socket or device), not an image file")


def read_image(path: str | os.PathLike) -> ImageData:
    """Read an image file; EXIF orientation is applied. Raises ImageError naming the file."""
    path = Path(path)
    _check_regular_file(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from e
    return decode_image(data, str(path))


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, before any pixel is decoded."""
    width: int
    height: int
    frames: int       # > 1 for animated GIF / WebP / PNG (APNG)
    format: str


def probe_image(path: str | os.PathLike) -> ImageInfo:
    """Size, frame count and format from the file's header, without decoding pixels.

    For refusing an image that is too large before its pixels cost any memory. A PNG's size is read
    from its IHDR whatever it is; other formats over twice PIL's Image.MAX_IMAGE_PIXELS are refused
    by PIL's own decompression-bomb check. Raises ImageError naming the file.
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes), not an image")
        f = open(path, "rb")
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from e
    try:
        with f:
            head = f.read(64)
            refuse_unsupported(str(path), head)
            if head[:4] in (b"II*\0", b"MM\0*"):
                info = probe_tiff(path, str(path))
                if info is not None:
                    return info
            if head.startswith(_PNG_SIGNATURE) and len(head) >= 33 and head[12:16] == b"IHDR":
                # read here rather than by PIL, whose bomb check would refuse to tell the size
                if zlib.crc32(head[12:29]) != struct.unpack_from(">I", head, 29)[0]:
                    raise ImageError(f"{path}: corrupt PNG (CRC mismatch in the b'IHDR' chunk)")
                w, h = struct.unpack_from(">II", head, 16)
                f.seek(0)
                start = f.read(1 << 20)   # an APNG's acTL chunk comes before its first IDAT
                at = start.find(b"acTL")
                frames = struct.unpack_from(">I", start, at + 4)[0] if 0 < at <= len(start) - 8 else 1
                return ImageInfo(w, h, max(1, frames), "PNG")
            f.seek(0)
            with warnings.catch_warnings():
                # between PIL's limit and twice it PIL only warns; the caller compares the size itself
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(f) as im:
                    return ImageInfo(im.width, im.height, int(getattr(im, "n_frames", 1) or 1),
                                     im.format or "?")
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: {e}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file in any format PIL knows "
                         f"(it starts with {head[:12]!r})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        raise ImageError(f"{path}: corrupt or truncated image ({e})") from e


def decode_image(data: bytes, name: str = "<bytes>") -> ImageData:
    """Decode the bytes of an image file (for servers that never touch the disk)."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes), not an image")
    refuse_unsupported(name, data[:64])
    img = _decode_png16(data, name)
    if img is None and data[:4] in (b"II*\0", b"MM\0*"):
        img = _decode_tiff_samples(data, name)
    return img if img is not None else _decode_with_pil(data, name)


def unsupported_kind(name: str, head: bytes) -> str | None:
    """The name of a format we cannot read, from the file's extension or its first bytes."""
    kind = UNSUPPORTED_EXTENSIONS.get(Path(name).suffix.lower())
    if kind is None and head[4:8] == b"ftyp":
        brand = head[8:12]
        kind = "AVIF" if brand in (b"avif", b"avis") else "HEIC" if brand in (b"heic", b"heix", b"mif1",
                                                                             b"msf1", b"hevc") else None
    if kind is None and head.lstrip().startswith((b"<svg", b"<?xml")) and b"svg" in head.lower():
        kind = "SVG (vector)"
    return kind


def probe_tiff(source: "Path | io.BytesIO", name: str) -> "ImageInfo | None":
    """Size of a TIFF whose samples PIL cannot read (float), or the refusal of signed / 32-bit
    integer samples (as `_decode_tiff_samples`); None for the TIFFs PIL reads."""
    import tifffile

    try:
        with tifffile.TiffFile(source) as tif:
            page = tif.pages.first
            dtype = page.dtype
            height, width = page.imagelength, page.imagewidth
    except Exception:
        return None
    if dtype is None or dtype.kind == "b" or dtype in (np.uint8, np.uint16):
        return None
    if dtype.kind in "iu":
        raise _integer_samples_error(name, dtype)
    return ImageInfo(int(width), int(height), 1, "TIFF")


def _integer_samples_error(name: str, dtype: np.dtype) -> ImageError:
    """A TIFF of signed or 32-bit integer samples: no value of theirs means full intensity."""
    kind = "signed" if dtype.kind == "i" else "unsigned"
    return ImageError(f"{name}: {dtype.itemsize * 8}-bit {kind} integer samples are not supported (no value "
                      "means full intensity); convert it to 8- or 16-bit unsigned, or to float in [0, 1]")


def refuse_unsupported(name: str, head: bytes) -> None:
    kind = unsupported_kind(name, head)
    if kind is not None:
        raise ImageError(f"{name}: {kind} images are not supported; convert it to PNG, JPEG or TIFF "
                         "first (e.g. `magick INPUT out.png`)")


def _decode_tiff_samples(data: bytes, name: str) -> ImageData | None:
    """A TIFF whose samples are not unsigned 8/16-bit: float is decoded (by tifffile) into float32
    in [0, 1]; signed or 32-bit integers are refused (PIL drops their negative samples or wraps
    their range, and no scale of theirs means "full intensity"). None: PIL's own TIFF path."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            dtype = page.dtype
            if dtype is None or dtype.kind == "b" or dtype in (np.uint8, np.uint16):
                return None
            if dtype.kind in "iu":
                raise _integer_samples_error(name, dtype)
            if dtype.kind != "f" or page.photometric not in (tifffile.PHOTOMETRIC.MINISBLACK,
                                                              tifffile.PHOTOMETRIC.RGB):
                return None
            arr = page.asarray()
            if page.axes.startswith("S"):
                arr = np.moveaxis(arr, 0, -1)
            colours = 3 if page.photometric == tifffile.PHOTOMETRIC.RGB else 1
            extras = tuple(page.extrasamples)
    except ImageError:
        raise
    except Exception:   # tifffile cannot parse it: PIL's error message is the one to give
        return None
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        arr = arr[..., None]
    if not np.isfinite(arr).all():
        raise ImageError(f"{name}: float TIFF with NaN or infinite samples")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        log.warning("%s: float samples span %.3g..%.3g; values outside 0..1 are clipped", name, lo, hi)
    arr = np.clip(arr, 0.0, 1.0)
    alpha = arr[..., colours] if extras and extras[0] in (1, 2) and arr.shape[2] > colours else None
    return ImageData(np.ascontiguousarray(arr[..., :colours]),
                     alpha=None if alpha is None else np.ascontiguousarray(alpha), format="TIFF")


def _decode_with_pil(data: bytes, name: str) -> ImageData:
    try:
        with Image.open(io.BytesIO(data)) as im:
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:
                log.warning("%s: animated %s with %d frames; only the first frame is upscaled",
                            name, im.format, frames)
            im.load()
            img = image_from_pil(im)
            fmt = im.format
            if fmt == "TIFF":
                img = _tiff16_planes(data, im, img)
                # A TIFF's orientation is one of its own tags; of its other tags only the descriptive
                # ones are EXIF (the rest describe the file layout)
                tags = im.getexif()
                orientation, exif = int(tags.get(_ORIENTATION, 1)), _descriptive_exif(tags)
            else:
                exif = _exif_body(im.info.get("exif"))
                orientation, exif = reset_exif_orientation(exif) if exif else (1, None)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file in any format PIL knows "
                         f"(it starts with {data[:12]!r})") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        raise ImageError(f"{name}: corrupt or truncated image ({e})") from e
    img.format, img.exif = fmt, exif
    if orientation != 1:
        img.pixels = _orient(img.pixels, orientation)
        img.alpha = None if img.alpha is None else _orient(img.alpha, orientation)
    return img


def image_from_pil(im: Image.Image) -> ImageData:
    """A PIL image of any mode -> ImageData; palette, CMYK, 1-bit etc. become gray or RGB (+ alpha).

    PIL holds no 16-bit RGB, so what comes from PIL is 8-bit colour, 16-bit gray ('I;16', 'I')
    or float gray ('F'). Orientation is not touched: a PIL image is taken as it is shown.
    """
    icc = im.info.get("icc_profile") or None
    transparency = im.info.get("transparency")
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
        transparency = None
    elif mode == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc)
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
        im = im.convert("RGB")   # RGBX, YCbCr, LAB, HSV: the profile, if any, no longer applies
        icc = icc if mode == "RGBX" else None
    mode = im.mode
    arr = np.asarray(im)
    if mode == "I":
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    elif mode.startswith("I;16"):
        arr = arr.astype(np.uint16)            # also turns I;16B big-endian into native order
    elif mode == "F":
        arr = arr.astype(np.float32)
    arr = arr[..., None] if arr.ndim == 2 else arr
    pixels, alpha = (arr[..., :-1], arr[..., -1]) if mode in ("LA", "RGBA") else (arr, None)
    if alpha is None and transparency is not None and mode in ("L", "RGB", "I") + _I16_MODES:
        alpha = _alpha_from_key(pixels, transparency)
    return ImageData(np.ascontiguousarray(pixels),
                     None if alpha is None else np.ascontiguousarray(alpha), icc)


_I16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _alpha_from_key(pixels: np.ndarray, key) -> np.ndarray | None:
    """tRNS-style transparency: one colour value marks fully transparent pixels."""
    key = np.atleast_1d(np.asarray(key, dtype=np.int64))
    if key.size != pixels.shape[2]:
        return None
    clear = (pixels == key.astype(pixels.dtype)).all(axis=2)
    return np.where(clear, 0, max_value(pixels.dtype)).astype(pixels.dtype)


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, None]:
    """CMYK -> sRGB through the file's profile when it has one; PIL's naive formula otherwise."""
    if icc:
        from PIL import ImageCms

        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                             outputMode="RGB"), None
        except (ImageCms.PyCMSError, OSError, ValueError) as e:
            log.warning("CMYK profile could not be used (%s); converting without it", e)
    return im.convert("RGB"), None


# 16-bit colour PNG --------------------------------------------------------------------------

def _png_chunks(data: bytes, name: str) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], len(_PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise ImageError(f"{name}: truncated PNG (the file ends before its IEND chunk)")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        body_end = pos + 8 + length
        if body_end + 4 > len(data):
            raise ImageError(f"{name}: truncated PNG (the file ends inside a {ctype!r} chunk)")
        body = data[pos + 8:body_end]
        if zlib.crc32(ctype + body) != struct.unpack_from(">I", data, body_end)[0]:
            raise ImageError(f"{name}: corrupt PNG (CRC mismatch in the {ctype!r} chunk)")
        chunks.append((ctype, body))
        if ctype == b"IEND":
            return chunks
        pos = body_end + 4


def _decode_png16(data: bytes, name: str) -> ImageData | None:
    """16-bit gray+alpha, RGB and RGBA PNG in full depth; None for every other file."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return None
    w, h, depth, ctype, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if depth != 16 or ctype not in (2, 4, 6):
        return None   # PIL reads these right, 16-bit gray included ('I;16')
    limit = Image.MAX_IMAGE_PIXELS
    if limit and w * h > 2 * limit:
        raise ImageError(f"{name}: {w}x{h} pixels is over PIL's decompression-bomb limit "
                         f"({2 * limit}); raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted")
    chunks = _png_chunks(data, name)
    idat = b"".join(body for t, body in chunks if t == b"IDAT")
    extra = {t: body for t, body in chunks if t in (b"iCCP", b"eXIf", b"tRNS")}

    def decode(mode: str, rawmode: str) -> np.ndarray:
        try:
            return np.asarray(Image.frombytes(mode, (w, h), idat, "zip", rawmode, interlace))
        except (ValueError, OSError) as e:
            raise ImageError(f"{name}: corrupt PNG image data ({e})") from e

    if ctype == 4:
        # 16-bit gray+alpha has 4 bytes a pixel, like 8-bit RGBA, so that decoder undoes the PNG
        # filters on exactly the right byte distance and hands back the raw big-endian samples.
        arr = decode("RGBA", "RGBA").view(">u2").astype(np.uint16)
    else:
        mode = "RGB" if ctype == 2 else "RGBA"
        hi = decode(mode, f"{mode};16B").astype(np.uint16)   # PIL's 8-bit result: the high bytes
        lo = decode(mode, f"{mode};16L")                     # same data read as little-endian
        arr = (hi << 8) | lo
    pixels, alpha = (arr[..., :-1], arr[..., -1]) if ctype in (4, 6) else (arr, None)
    if ctype == 2 and len(extra.get(b"tRNS", b"")) == 6:
        alpha = _alpha_from_key(pixels, struct.unpack(">3H", extra[b"tRNS"]))
    icc = None
    if b"iCCP" in extra:
        _, _, compressed = extra[b"iCCP"].partition(b"\x00")
        try:
            icc = zlib.decompress(compressed[1:])
        except zlib.error:
            log.warning("%s: unreadable ICC profile ignored", name)
    orientation, exif = 1, _exif_body(extra.get(b"eXIf"))
    if exif:
        orientation, exif = reset_exif_orientation(exif)
    pixels, alpha = _orient(pixels, orientation), None if alpha is None else _orient(alpha, orientation)
    return ImageData(np.ascontiguousarray(pixels), None if alpha is None else np.ascontiguousarray(alpha),
                     icc, exif, "PNG")


# TIFF ---------------------------------------------------------------------------------------

# IFD0 tags that describe the picture rather than the file layout: what a TIFF carries of EXIF. The
# EXIF sub-IFD (exposure, lens, GPS) is not written: tifffile refuses the pointer tag 34665.
_TIFF_EXIF_TAGS = (270, 271, 272, 305, 306, 315, 33432)   # description, make, model, software,
                                                          # date/time, artist, copyright


def _descriptive_exif(tags: Image.Exif) -> bytes | None:
    """The EXIF (TIFF-structured, no "Exif\\0\\0") holding the descriptive tags of a TIFF's IFD0."""
    kept = Image.Exif()
    for tag in _TIFF_EXIF_TAGS:
        if isinstance(tags.get(tag), str):
            kept[tag] = tags[tag]
    # tifffile stores the array's shape as JSON in ImageDescription: a layout note, not a description,
    # and wrong for an output of another size
    if kept.get(270, "").lstrip().startswith('{"shape":'):
        del kept[270]
    return _exif_body(kept.tobytes()) if len(kept) else None


def _tiff16_planes(data: bytes, im: Image.Image, img: ImageData) -> ImageData:
    """`img` with the full 16-bit samples of a 16-bit multi-sample TIFF, which PIL cuts to 8 bits.

    tifffile (with imagecodecs for LZW, JPEG, ...) decodes those; every other TIFF is PIL's.
    """
    bits = im.tag_v2.get(258)   # BitsPerSample, one value per sample
    bits = bits if isinstance(bits, tuple) else (bits,)
    if len(bits) < 2 or 16 not in bits:
        return img
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        if page.photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
            return img   # PIL's 8-bit conversion of palette, YCbCr, CMYK... is the better result
        arr = page.asarray()
        if page.axes.startswith("S"):
            arr = np.moveaxis(arr, 0, -1)   # planar (separate) layout -> samples last
        colours = 3 if page.photometric == tifffile.PHOTOMETRIC.RGB else 1
        extras = tuple(page.extrasamples)
    arr = arr.astype(np.uint16, copy=False)
    pixels = arr[..., :colours]
    # extra sample 1 is premultiplied (associated) alpha, 2 straight alpha, 0 unspecified (not alpha)
    alpha = arr[..., colours] if extras and extras[0] in (1, 2) else None
    if alpha is not None and extras[0] == 1:
        scale = np.where(alpha > 0, 65535.0 / np.maximum(alpha, 1), 0.0)[..., None]
        pixels = np.clip(np.round(pixels * scale), 0, 65535).astype(np.uint16)
    return replace(img, pixels=np.ascontiguousarray(pixels),
                   alpha=None if alpha is None else np.ascontiguousarray(alpha))


# ---------------------------------------------------------------------------------------------
# writing

def write_image(path: str | os.PathLike, img: ImageData, *, format: str | None = None,
                quality: int = DEFAULT_QUALITY, png_level: int = DEFAULT_PNG_LEVEL,
                threads: int | None = None) -> None:
    """Write atomically (temp file + rename): an interrupted write leaves no partial file.

    threads: how many threads the PNG writer may compress on (None: one per core). A caller that
    encodes while a model computes passes 1: a second encoder thread would only take a core from
    the model's threads, which wait for each other at every layer. The bytes do not depend on it.

    Raises ImageError for what cannot be encoded and OSError (whose filename is `path`, never the temp
    file) for what cannot be written.
    """
    fmt = normalize_format(format) if format else format_from_path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            _encode(f, img, fmt, quality, png_level, threads)

    # parents=False: a missing output folder is the caller's mistake to report, not to paper over
    atomic_write_with(path, write, parents=False)


def encode_image(img: ImageData, format: str, *, quality: int = DEFAULT_QUALITY,
                 png_level: int = DEFAULT_PNG_LEVEL, threads: int | None = None) -> bytes:
    """The bytes of an image file in `format` ("png", "jpg", ...); threads as in write_image."""
    buf = io.BytesIO()
    _encode(buf, img, normalize_format(format), quality, png_level, threads)
    return buf.getvalue()


def _encode(f: BinaryIO, img: ImageData, fmt: str, quality: int, png_level: int = DEFAULT_PNG_LEVEL,
            threads: int | None = None) -> None:
    if not 1 <= quality <= 100:
        raise ImageError(f"quality={quality}; allowed values: 1..100")
    if not 0 <= png_level <= 9:
        raise ImageError(f"png_level={png_level}; allowed values: 0..9")
    if img.width == 0 or img.height == 0:
        raise ImageError(f"cannot write an empty {img.width}x{img.height} image")
    icc = img.icc_profile if img.icc_profile and _icc_fits(img.icc_profile, _written_channels(img, fmt)) \
        else None
    if img.icc_profile and icc is None:
        log.debug("ICC profile dropped: its colour space does not match the %s output", fmt)
    if fmt == "PNG":
        _write_png(f, img, icc, level=png_level, threads=threads)
    elif fmt == "TIFF":
        _write_tiff(f, img, icc)
    else:
        _write_with_pil(f, img, fmt, quality, icc)


def _written_channels(img: ImageData, fmt: str) -> int:
    return 3 if fmt == "WEBP" else img.channels   # WebP has no gray mode


def _icc_fits(icc: bytes, channels: int) -> bool:
    """The profile's colour space (ICC header bytes 16..20) must match the pixels it describes."""
    return icc[16:20] == (b"GRAY" if channels == 1 else b"RGB ")


def _planes(img: ImageData, y0: int, y1: int, dtype: np.dtype | type, *,
            gray_to_rgb: bool = False) -> np.ndarray:
    """Rows y0:y1 as one (n, W, C[+1]) array in `dtype`: colour planes then alpha."""
    px = convert_depth(img.pixels[y0:y1], dtype)
    if gray_to_rgb and px.shape[2] == 1:
        px = np.repeat(px, 3, axis=2)
    if img.alpha is None:
        return np.ascontiguousarray(px)
    # filled in place: np.concatenate would return native byte order and so write little-endian
    # samples into a 16-bit PNG, which must be big-endian
    out = np.empty(px.shape[:2] + (px.shape[2] + 1,), np.dtype(dtype))
    out[..., :-1] = px
    out[..., -1] = convert_depth(img.alpha[y0:y1], dtype)
    return out


_JPEG_MAX_APP1 = 65533   # a JPEG segment's payload: 65535 minus its 2-byte length field


def _write_with_pil(f: BinaryIO, img: ImageData, fmt: str, quality: int, icc: bytes | None) -> None:
    if img.bit_depth != 8:
        log.info("%s holds 8 bits per channel; the %d-bit image is rounded to 8", fmt, img.bit_depth)
    if img.alpha is not None and fmt == "JPEG":
        log.warning("JPEG has no alpha channel; the alpha plane is dropped (write PNG or WebP to keep it)")
        img = replace(img, alpha=None)
    rgb = fmt == "WEBP" or (fmt == "BMP" and img.alpha is not None)   # no gray(+alpha) there
    arr = _planes(img, 0, img.height, np.uint8, gray_to_rgb=rgb)
    if fmt == "BMP" and img.alpha is not None:
        _write_bmp_rgba(f, arr)
        return
    im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    opts: dict = {}
    if fmt in ("JPEG", "WEBP"):
        opts["quality"] = quality
        if icc:
            opts["icc_profile"] = icc
        if img.exif:
            exif = _EXIF_PREFIX + img.exif
            if fmt == "JPEG" and len(exif) > _JPEG_MAX_APP1:
                log.warning("the EXIF (%d KB) does not fit in a JPEG's 64 KB APP1 segment; it is dropped "
                            "(write PNG, TIFF or WebP to keep it)", len(exif) // 1024)
            else:
                opts["exif"] = exif
    if fmt == "JPEG" and quality >= 90:
        opts["subsampling"] = 0   # 4:4:4: chroma subsampling would blur the detail we just made
    im.save(f, format=fmt, **opts)


def _write_bmp_rgba(f: BinaryIO, rgba: np.ndarray) -> None:
    """32-bit BMP with a BITMAPV4 header and an alpha mask (BI_BITFIELDS).

    PIL saves RGBA as a plain 40-byte-header BI_RGB BMP, whose fourth byte every reader (PIL
    included) ignores, so the alpha plane was silently lost.
    """
    h, w = rgba.shape[:2]
    size = w * h * 4
    f.write(b"BM" + struct.pack("<IHHI", 14 + 108 + size, 0, 0, 14 + 108))
    f.write(struct.pack("<IiiHHIIiiII", 108, w, -h, 1, 32, 3, size, 2835, 2835, 0, 0))   # top-down
    f.write(struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000))
    f.write(struct.pack("<I", 0x73524742) + bytes(36 + 12))   # 'sRGB'; endpoints and gammas unused
    f.write(np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]).tobytes())


# PNG ----------------------------------------------------------------------------------------

def _png_chunk(f: BinaryIO, ctype: bytes, body: bytes) -> None:
    f.write(struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body)))


def _png_filter(raw: np.ndarray, prev: np.ndarray, bpp: int, kind: int) -> np.ndarray:
    """PNG filter `kind` (0 none, 1 sub, 2 up, 3 average, 4 paeth) of byte rows `raw` (n, L).

    Encoding reads only unfiltered neighbours, so it vectorises over the whole strip.
    """
    r = raw.astype(np.int16)
    up = np.vstack([prev[None].astype(np.int16), r[:-1]])
    left = np.zeros_like(r)
    left[:, bpp:] = r[:, :-bpp]
    if kind == 0:
        pred = np.zeros_like(r)
    elif kind == 1:
        pred = left
    elif kind == 2:
        pred = up
    elif kind == 3:
        pred = (left + up) >> 1
    else:
        upleft = np.zeros_like(r)
        upleft[:, bpp:] = up[:, :-bpp]
        pa, pb, pc = np.abs(up - upleft), np.abs(left - upleft), np.abs(left + up - 2 * upleft)
        pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    return ((r - pred) & 0xFF).astype(np.uint8)


def _write_png(f: BinaryIO, img: ImageData, icc: bytes | None, *, filter_kind: int = 4,
               level: int = DEFAULT_PNG_LEVEL, threads: int | None = None) -> None:
    depth = 8 if img.bit_depth == 8 else 16
    dtype = np.uint8 if depth == 8 else np.dtype(">u2")
    channels = img.channels + (img.alpha is not None)
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bpp = channels * depth // 8
    f.write(_PNG_SIGNATURE)
    _png_chunk(f, b"IHDR", struct.pack(">IIBBBBB", img.width, img.height, depth, color_type, 0, 0, 0))
    if icc:
        _png_chunk(f, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if img.exif:
        _png_chunk(f, b"eXIf", img.exif)
    rows = max(1, _PNG_STRIP_BYTES // (img.width * bpp))
    starts = range(0, img.height, rows)

    def strip(y0: int) -> tuple[memoryview, bytes]:
        # The filters' `prev` row is read from the pixels, not carried over from the previous strip,
        # so the strips are independent and can run on any thread (zlib and numpy release the GIL).
        raw = _planes(img, max(y0 - 1, 0), min(y0 + rows, img.height), dtype).view(np.uint8)
        raw = raw.reshape(raw.shape[0], -1)
        prev, raw = (raw[0], raw[1:]) if y0 else (np.zeros(raw.shape[1], np.uint8), raw)
        lines = np.empty((raw.shape[0], raw.shape[1] + 1), np.uint8)
        lines[:, 0] = filter_kind
        lines[:, 1:] = _png_filter(raw, prev, bpp, filter_kind)
        # Raw deflate, one stream per strip: a sync flush ends a strip on a byte boundary without a
        # final block, so the strips concatenate into one valid deflate stream (pigz's layout). Each
        # strip starts with an empty dictionary, which costs well under 1% of the size at ~4 MB.
        comp = zlib.compressobj(level, zlib.DEFLATED, -15)
        end = zlib.Z_FINISH if y0 == starts[-1] else zlib.Z_SYNC_FLUSH
        return lines.data, comp.compress(lines.data) + comp.flush(end)

    # zlib stream = 2-byte header (deflate, 32 KB window, check bits) + the strips in order + the
    # Adler-32 of every filtered byte. Strip boundaries depend only on the image's width and depth,
    # so the file's bytes are the same for any number of threads.
    pending, size, adler = [b"\x78\x01"], 2, 1
    threads = _png_threads(len(starts)) if threads is None else max(1, min(threads, len(starts)))
    with ThreadPoolExecutor(threads, thread_name_prefix="png") as pool:
        window: deque = deque()
        for i, y0 in enumerate(starts):
            window.append(pool.submit(strip, y0))
            # a few strips in flight at most (memory stays flat), taken in order
            while window and (len(window) > 2 * threads or i == len(starts) - 1):
                data, body = window.popleft().result()
                adler = zlib.adler32(data, adler)
                pending.append(body)
                size += len(body)
                if size >= 1 << 20:
                    _png_chunk(f, b"IDAT", b"".join(pending))
                    pending, size = [], 0
    pending.append(struct.pack(">I", adler))
    _png_chunk(f, b"IDAT", b"".join(pending))
    _png_chunk(f, b"IEND", b"")


def _png_threads(strips: int) -> int:
    """Threads for the PNG encoder: one per core this process may use, at most one per strip."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:          # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, strips, 8))


# TIFF ---------------------------------------------------------------------------------------

def _write_tiff(f: BinaryIO, img: ImageData, icc: bytes | None) -> None:
    """TIFF by tifffile, 8 or 16 bits a sample, deflate + horizontal predictor, straight alpha.

    16-bit gray+alpha is written as RGBA: it is valid TIFF as gray+alpha, but PIL and several
    viewers cannot read that combination.
    """
    import tifffile

    depth = 8 if img.bit_depth == 8 else 16
    as_rgb = depth == 16 and img.channels == 1 and img.alpha is not None
    arr = _planes(img, 0, img.height, np.uint8 if depth == 8 else np.uint16, gray_to_rgb=as_rgb)
    extratags = []
    if img.exif:
        tags = Image.Exif()
        tags.load(_EXIF_PREFIX + img.exif)
        for tag in _TIFF_EXIF_TAGS:
            value = tags.get(tag)
            if isinstance(value, str) and value.isascii():   # TIFF ASCII fields are 7-bit
                extratags.append((tag, "s", 0, value, True))
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr if arr.shape[2] > 1 else arr[..., 0],
                     photometric="rgb" if arr.shape[2] >= 3 else "minisblack",
                     planarconfig="contig" if arr.shape[2] > 1 else None,
                     extrasamples=("unassalpha",) if img.alpha is not None else None,
                     compression="zlib", compressionargs={"level": 6}, predictor=True,
                     resolution=(72, 72), resolutionunit="inch", iccprofile=icc,
                     metadata=None, software=False, extratags=extratags)
    data = buf.getvalue()
    if img.exif:
        data = _with_exif_sub_ifds(data, img.exif)
    f.write(data)


# The TIFF tags that point to EXIF's own directories: camera settings (exposure, lens, dates) and GPS.
_SUB_IFD_POINTERS = (0x8769, 0x8825)


def _with_exif_sub_ifds(tiff: bytes, exif_body: bytes) -> bytes:
    """A classic TIFF with the EXIF and GPS directories of `exif_body` attached to its first IFD.

    tifffile writes the image and the first IFD's own tags but refuses the pointer tags 34665 and
    34853, so the directories are appended after it: each sub-IFD goes to the end of the file
    (serialised by Pillow at its final offset), then a copy of the first IFD with the pointer
    entries added, and the header is pointed at that copy. The entries of the first IFD are moved
    unchanged, so every offset they hold stays valid; the old copy is left as unused bytes.
    """
    from PIL import TiffImagePlugin

    order = tiff[:2]
    end = "<" if order == b"II" else ">"
    if order not in (b"II", b"MM") or struct.unpack(end + "H", tiff[2:4])[0] != 42:
        return tiff   # BigTIFF or not a TIFF: leave it as tifffile wrote it
    tags = Image.Exif()
    tags.load(_EXIF_PREFIX + exif_body)
    subs = {}
    for pointer in _SUB_IFD_POINTERS:
        sub = tags.get_ifd(pointer)
        if sub:
            ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=order + tiff[2:4] + b"\0\0\0\0")
            for tag, value in sub.items():
                ifd[tag] = value
            subs[pointer] = ifd
    if not subs:
        return tiff
    first = struct.unpack(end + "I", tiff[4:8])[0]
    count = struct.unpack(end + "H", tiff[first:first + 2])[0]
    entries = {struct.unpack(end + "H", tiff[at:at + 2])[0]: tiff[at:at + 12]
               for at in range(first + 2, first + 2 + 12 * count, 12)}
    next_ifd = tiff[first + 2 + 12 * count:first + 6 + 12 * count]
    out = bytearray(tiff)
    for pointer, ifd in subs.items():
        out += b"\0" * (len(out) % 2)   # IFDs start on a word boundary
        entries[pointer] = struct.pack(end + "HHII", pointer, 4, 1, len(out))   # type 4 = LONG
        out += ifd.tobytes(len(out))
    out += b"\0" * (len(out) % 2)
    new_first = len(out)
    out += struct.pack(end + "H", len(entries)) + b"".join(entries[t] for t in sorted(entries)) + next_ifd
    out[4:8] = struct.pack(end + "I", new_first)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# PIL images and numpy arrays (the Python API)

def image_to_pil(img: ImageData, mode: str | None = None) -> Image.Image:
    """ImageData -> PIL image; `mode` asks for the input's mode back where PIL can hold the result."""
    gray, dt = img.channels == 1, img.pixels.dtype
    if gray and img.alpha is None and dt == np.uint16 and mode in (None, "I") + _I16_MODES:
        if mode == "I":
            return Image.fromarray(img.pixels[..., 0].astype(np.int32))
        return Image.frombytes("I;16", (img.width, img.height), img.pixels.astype("<u2").tobytes())
    if gray and img.alpha is None and dt == np.float32 and mode in (None, "F"):
        return _with_info(Image.fromarray(img.pixels[..., 0]), img)
    arr = _planes(img, 0, img.height, np.uint8)
    return _with_info(Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr), img)


def _with_info(im: Image.Image, img: ImageData) -> Image.Image:
    if img.icc_profile:
        im.info["icc_profile"] = img.icc_profile
    return im


def image_from_array(arr: np.ndarray) -> ImageData:
    """(H, W) or (H, W, C) array, C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA -> ImageData.

    uint8 and uint16 are kept; float arrays are read as [0, 1] (float64 is computed as float32).
    """
    if arr.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise TypeError(f"image arrays must be uint8, uint16 or float in [0, 1]; got {arr.dtype}")
    a = arr.astype(np.float32) if arr.dtype == np.float64 else arr
    a = a[..., None] if a.ndim == 2 else a
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image arrays must be (H, W) or (H, W, C) with C in 1..4; got {arr.shape}")
    if a.shape[2] in (2, 4):
        return ImageData(np.ascontiguousarray(a[..., :-1]), np.ascontiguousarray(a[..., -1]))
    return ImageData(np.ascontiguousarray(a))


def image_to_array(img: ImageData, like: np.ndarray) -> np.ndarray:
    """ImageData -> an array with the layout and dtype of `like` (the array that came in)."""
    out = img.pixels if img.alpha is None else np.concatenate([img.pixels, img.alpha[..., None]], 2)
    out = out[..., 0] if like.ndim == 2 else out
    return out.astype(like.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# resizing (after the network, for --outscale / --width / --height)

def resize_plane(plane: np.ndarray, width: int, height: int,
                 resample: Image.Resampling = Image.Resampling.LANCZOS) -> np.ndarray:
    """(H, W) or (H, W, C) -> same layout and dtype at width x height (PIL filters, antialiased)."""
    a = plane[..., None] if plane.ndim == 2 else plane
    if a.dtype == np.uint8 and a.shape[2] in (1, 3):
        im = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
        out = np.asarray(im.resize((width, height), resample))
        out = out[..., None] if out.ndim == 2 else out
    else:   # 16-bit and float one channel at a time in float32, since PIL has no 16-bit RGB
        chans = [np.asarray(Image.fromarray(a[..., c].astype(np.float32) / max_value(a.dtype))
                            .resize((width, height), resample)) for c in range(a.shape[2])]
        out = convert_depth(np.stack(chans, axis=2), a.dtype)
    return out[..., 0] if plane.ndim == 2 else out


def resize_image(img: ImageData, width: int, height: int,
                 resample: Image.Resampling = Image.Resampling.LANCZOS) -> ImageData:
    if (width, height) == (img.width, img.height):
        return img
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    return replace(img, pixels=resize_plane(img.pixels, width, height, resample),
                   alpha=None if img.alpha is None else resize_plane(img.alpha, width, height, resample))
