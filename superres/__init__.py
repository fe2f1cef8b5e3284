"""superres: GAN-based single-image super-resolution (SRGAN / ESRGAN family).

Public API:
    load_model(name_or_path)  -> an Upscaler with .upscale(image)
    build_generator(name, **hparams)
"""
from __future__ import annotations

from ._version import __version__


def build_generator(name, **hparams):
    """Build a generator by architecture name; see superres.archs.build_generator."""
    # imported here, not at the top: importing the package must not import torch (see _lazy.py)
    from .archs import build_generator as build

    return build(name, **hparams)


def load_model(name_or_path=None, **kwargs):
    """Load a shipped model by name (e.g. "psnr-x4") or a weights file; see superres.inference.Upscaler."""
    from .inference.upscaler import Upscaler

    return Upscaler.from_pretrained(name_or_path, **kwargs)


__all__ = ["load_model", "build_generator", "__version__"]
