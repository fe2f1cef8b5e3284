"""Inference: the tensor core (core), tiling, the Upscaler, weights loading and interpolation, the
shipped-model registry (models), the device and precision policy (runtime), ONNX export and the int8
runtime. Imports only archs/, io/ and data/.

`superres.inference.Upscaler`, `upscale_tensor` and the other names below are re-exported here and
imported on first use, so `import superres.inference.runtime` (or `superres --help`) does not import
torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Upscaler": "upscaler", "output_size": "upscaler",
    "upscale_tensor": "core", "tensor_to_uint8": "core", "device_lock": "core", "auto_tile_size": "core",
    "configure_host_allocator": "core", "host_allocator_configured": "core", "release_host_memory": "core",
    "ALPHA_MODES": "runtime", "DEFAULT_OVERLAP": "runtime",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
