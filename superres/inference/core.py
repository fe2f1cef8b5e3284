"""The inference core: one forward path for upscale, eval, validation and training samples.

`upscale_tensor` is the tensor function: (B, C, H, W) on the model's device -> (B, C, H*s, W*s)
float32. It pads the input up to the model's input multiple (pixel-unshuffle nets need sides
divisible by 2 or 4) and crops the output back, runs the chosen precision (bf16/fp16 autocast,
channels_last) and recomputes in fp32 when the low-precision output has NaN/Inf.

The Upscaler (upscaler.py) wraps it for host-memory images. Also here: the device locks, the host
allocator policy and the automatic tile size, which the Upscaler and the apps share.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import threading
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..archs import activation_bytes, input_multiple
from ..archs.spec import hr_feature_bytes
from . import runtime

log = logging.getLogger(__name__)

__all__ = ["upscale_tensor", "tensor_to_uint8", "device_lock", "auto_tile_size", "configure_host_allocator",
           "host_allocator_configured"]


# ---------------------------------------------------------------------------------------------
# the tensor function

def upscale_tensor(model: nn.Module, x: torch.Tensor, *, amp_dtype: torch.dtype | None = None,
                   channels_last: bool = False, multiple: int | None = None) -> torch.Tensor:
    """(B, C, H, W) float in [0, 1] on the model's device -> (B, C, H*s, W*s) float32, unclamped.

    multiple: input sides are padded (edge pixels repeated) up to a multiple of it and the output is
    cropped back; None = the model's own (`archs.input_multiple`). amp_dtype: autocast dtype or None
    for fp32; a low-precision result with NaN/Inf is recomputed in fp32 (bf16/fp16 overflow in a
    deep residual trunk is rare but real). The caller keeps the model in eval mode.
    """
    if x.ndim != 4:
        raise ValueError(f"upscale_tensor: expected (B, C, H, W), got shape {tuple(x.shape)}")
    multiple = input_multiple(model) if multiple is None else multiple
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        # replicate works for any size (reflect needs pad < side); the padded outputs are cut off
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        y = _forward(model, x, amp_dtype)
    if y.ndim != 4 or y.shape[-2] % x.shape[-2] or y.shape[-1] % x.shape[-1]:
        raise ValueError(f"the model returned {tuple(y.shape)} for an input of {tuple(x.shape)}; "
                         "expected (B, C, H*s, W*s)")
    s = y.shape[-2] // x.shape[-2]
    return y[..., :h * s, :w * s] if pad_h or pad_w else y


def _forward(model: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    if amp_dtype is not None:
        with torch.autocast(x.device.type, dtype=amp_dtype):
            y = model(x).float()
        if torch.isfinite(y).all():
            return y
        log.warning("non-finite values in a %s forward; recomputing it in fp32", runtime.precision_name(amp_dtype))
    return model(x.float()).float()


def tensor_to_uint8(y: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) float in [0, 1] -> (H, W, C) uint8 on the host, clamped and rounded (the eval
    protocol's rounding: an SR image is scored as the file it would be saved as)."""
    return (y.float().clamp(0, 1) * 255.0).round().to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()


_LOCKS_GUARD = threading.Lock()
_DEVICE_LOCKS: dict[str, threading.Lock] = {}


def device_lock(device: torch.device) -> threading.Lock:
    """The one lock of `device` (per process): hold it around forwards that share that device."""
    key = str(device)
    with _LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(key, threading.Lock())


# ---------------------------------------------------------------------------------------------
# the host allocator

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
KEEP_FREED_MEMORY_ENV = "SUPERRES_KEEP_FREED_MEMORY"   # "0": leave glibc's malloc as it is
_ALLOCATOR_GUARD = threading.Lock()
_allocator_configured: bool | None = None   # None: not tried yet in this process


def _load_libc() -> Any:
    return ctypes.CDLL("libc.so.6")


def configure_host_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of giving it back to the OS; True if done.

    By default glibc serves every block over its mmap threshold (at most 32 MB) with a fresh mmap
    and unmaps it on free, and trims the top of its heap past 128 KB: the activations of a CPU tile
    are such blocks (a 64-channel conv output of a 512x512 tile at x4 is 1 GB), so every conv of
    every tile page-faults its output in anew: psnr-x4 on a 2000x1500 input in 512 tiles took 54 M
    faults and 212 of its 499 CPU seconds in the kernel. With mmap off (M_MMAP_MAX 0) and no
    trimming (M_TRIM_THRESHOLD -1) the heap is reused and tiles after the first fault almost nothing
    (benchmarks/tile_faults.py, README "Performance"). The price: the process keeps its peak heap
    until it exits, and blocks of very different sizes fragment it, which is why Upscaler only
    asks for this with tiles within CPU_TILE_BYTES.

    Once per process (the setting is process-wide); only on Linux with glibc, and not when the
    environment has SUPERRES_KEEP_FREED_MEMORY=0. Anywhere else it does nothing and says False.
    """
    global _allocator_configured
    with _ALLOCATOR_GUARD:
        if _allocator_configured is None:
            _allocator_configured = _apply_mallopt()
        return _allocator_configured


def host_allocator_configured() -> bool:
    """Whether `configure_host_allocator` changed malloc in this process."""
    return bool(_allocator_configured)


def release_host_memory() -> bool:
    """Give the free part of the heap back to the OS now (glibc's malloc_trim); True if it ran.

    With configure_host_allocator's settings glibc never trims by itself, so a long-lived process
    keeps the peak of its biggest image for good. A server calls this when it has nothing queued:
    the next job then faults its first tile's pages in once, and reuses them for its other tiles.
    Does nothing (False) where the allocator was not configured, or without glibc.
    """
    if not _allocator_configured:
        return False
    try:
        trim = _load_libc().malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def _apply_mallopt() -> bool:
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1").strip() == "0":
        log.debug("%s=0: glibc malloc left as it is", KEEP_FREED_MEMORY_ENV)
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False   # mallopt and these parameters are glibc's; other C libraries differ
    try:
        mallopt = _load_libc().mallopt
    except (OSError, AttributeError) as e:
        log.debug("glibc's mallopt is not reachable (%s); malloc left as it is", e)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt answers 1 on success. Either setting alone still helps (a heap without mmap is reused
    # below its top), so a refusal of one is logged, not undone.
    refused = [name for name, param, value in (("M_MMAP_MAX", _M_MMAP_MAX, 0),
                                               ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, -1))
               if mallopt(param, value) != 1]
    if refused:
        log.debug("mallopt refused %s; malloc only partly changed", ", ".join(refused))
    return not refused


# ---------------------------------------------------------------------------------------------
# host-memory images, tile by tile

MAX_AUTO_TILE = 512      # accelerators: bigger tiles buy no speed and only cost memory
# CPU: tiles are sized by memory, not side. The budget is what a psnr-x4 (MSRResNet, 64 features,
# x4) tile of 256 was estimated to need while its tail ran whole at HR size, measured (1 thread,
# 2000x1500 in; README "Performance"): with freed memory kept for reuse (configure_host_allocator)
# a 256 tile cost 6.66 us of CPU per output pixel and peaked at 2251 MiB; a 512 tile 5.91 us (less
# overlap recomputed) but glibc's heap then fragmented to a 10901 MiB peak; a 512 tile with glibc's
# defaults 10.40 us and 4351 MiB. A net with less memory per pixel gets a wider tile in the same
# budget, and so recomputes less overlap: realnet-x4 (compact, every conv at LR size) gets 768, and
# MSRResNet, whose tail now runs in row strips (archs/srresnet.py), 528 at x4 and 784 at x2.
CPU_TILE_BYTES = 256 * 256 * hr_feature_bytes({"num_feat": 64}, 4)
MAX_AUTO_TILE_CPU = 1024   # a side cap for the smallest nets: past it the overlap saved is < 2%


def _available_host_memory() -> int:
    """Bytes of memory available to us (MemAvailable, else a conservative 2 GiB)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 30


def auto_tile_size(model: nn.Module, scale: int, device: torch.device, cap: int | None = None) -> int:
    """The largest square tile (LR pixels, multiple of 16) whose forward fits in ~half the free memory
    and, on the CPU, in CPU_TILE_BYTES; at most `cap` (default: MAX_AUTO_TILE_CPU on the CPU,
    MAX_AUTO_TILE elsewhere)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = _available_host_memory()
    budget = free * 0.5
    if cap is None:
        cap = MAX_AUTO_TILE_CPU if device.type == "cpu" else MAX_AUTO_TILE
        if device.type == "cpu":
            budget = min(budget, CPU_TILE_BYTES)
    side = int((budget / activation_bytes(model, scale)) ** 0.5)
    return max(32, min(cap, side // 16 * 16))


def _fits_cpu_budget(model: nn.Module, scale: int, tile: int | None) -> bool:
    """Whether a CPU tile setting stays within CPU_TILE_BYTES (None: the automatic tile, which does)."""
    if tile is None:
        return True
    return 0 < tile and tile * tile * activation_bytes(model, scale) <= CPU_TILE_BYTES
