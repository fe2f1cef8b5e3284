"""Image file formats by name and suffix, and the error for an image we cannot read or write.

Kept apart from images.py (which needs numpy and Pillow) so that the command line can build its
options and check them without importing either: `superres upscale --quality 0` answers at once.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FORMATS", "IMAGE_EXTENSIONS", "UNSUPPORTED_EXTENSIONS", "SIXTEEN_BIT_FORMATS", "DEFAULT_QUALITY", "DEFAULT_PNG_LEVEL",
           "ImageError", "normalize_format", "format_from_path"]

# file suffix -> PIL format name; these are the formats we write
FORMATS: dict[str, str] = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
                           ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
# file suffixes taken as images when a folder is read (upscale inputs, training and benchmark folders):
# what we write, plus formats PIL reads that nobody asks us to write
IMAGE_EXTENSIONS: frozenset[str] = frozenset(FORMATS) | {".gif", ".ppm", ".pgm", ".pbm", ".jfif", ".jpe",
                                                          ".apng"}
# formats a folder may hold that we cannot read here: taken as inputs anyway, so that each gets a
# report line saying so instead of being skipped in silence
UNSUPPORTED_EXTENSIONS: dict[str, str] = {
    ".avif": "AVIF", ".heic": "HEIC", ".heif": "HEIF", ".svg": "SVG (vector)", ".svgz": "SVG (vector)",
    ".jxl": "JPEG XL", ".dng": "camera raw (DNG)", ".cr2": "camera raw (CR2)", ".cr3": "camera raw (CR3)",
    ".nef": "camera raw (NEF)", ".arw": "camera raw (ARW)", ".orf": "camera raw (ORF)", ".raf": "camera raw (RAF)",
    ".rw2": "camera raw (RW2)", ".psd": "Photoshop (PSD)"}
SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")
DEFAULT_QUALITY = 95
# zlib level of our PNG writer (Paeth filter). Measured on three x2-upscaled photos (2.5 MP in all):
# level 6 took 0.81 s for 4.05 MB, level 3 0.37 s for 4.21 MB (+4%), level 1 0.26 s for 4.31 MB.
# Every level is lossless; 3 halves the encode time for 4% more bytes.
DEFAULT_PNG_LEVEL = 3


class ImageError(ValueError):
    """A file that is not a readable image, or an image that cannot be written as asked."""


def normalize_format(name: str) -> str:
    """"jpg", ".JPEG", "tif", "PNG" ... -> the PIL format name."""
    key = "." + name.lower().lstrip(".")
    if key not in FORMATS:
        raise ImageError(f"unknown image format {name!r}; allowed: "
                         f"{sorted({k.lstrip('.') for k in FORMATS})}")
    return FORMATS[key]


def format_from_path(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix
    if not suffix:
        raise ImageError(f"{path}: no file extension to tell the image format; add one "
                         f"({', '.join(sorted(FORMATS))}) or give the format")
    try:
        return normalize_format(suffix)
    except ImageError:
        raise ImageError(f"{path}: cannot write {suffix!r} files; allowed extensions: "
                         f"{', '.join(sorted(FORMATS))}") from None
