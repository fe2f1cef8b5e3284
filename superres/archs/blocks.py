"""The few building blocks several architectures share."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def scaled_kaiming_(module: nn.Module, scale: float = 0.1) -> None:
    """Kaiming-normal init scaled down, as ESRGAN/BasicSR do for residual nets.

    Scaling the residual branches by ~0.1 at init keeps deep residual stacks close to identity,
    which is what lets them train stably without batch norm.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            m.weight.data.mul_(scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def conv3x3(in_ch: int, out_ch: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=bias)


def hparams_of(module: nn.Module) -> dict:
    return dict(getattr(module, "hparams", {}))


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


# Inference runs the upsampling tails of MSRResNet and RRDBNet in row strips whose largest map is at
# most this big. The tail is where their memory is: maps with num_feat channels at 4x or 16x the LR
# pixels (a 64-channel map of a 512x512 tile at x4 is 1 GB), while the bodies hold a few maps at LR
# size. Strips let the CPU take 528 tiles within the memory that 256 ones needed, and so recompute
# less tile overlap; 128 MB keeps the recomputed strip halo near 2% of the tail's work there.
STRIP_BYTES = 128 << 20


def strips_allowed() -> bool:
    """Whether a forward may split its work into row strips: inference in eager mode only. Training
    needs the whole graph for backward, and a traced or exported graph (ONNX, torch.compile) would
    freeze one image's strip count into it."""
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling())


def in_row_strips(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, scale: int, halo: int,
                  channels: int, max_bytes: int | None = None) -> torch.Tensor:
    """fn(x) computed over row strips of x, so that fn's big intermediates exist one strip at a time.

    fn: (B, C, h, W) -> (B, C', h * scale, W * scale), pointwise in rows up to a receptive field of
    `halo` rows of x (convs with zero padding): each strip reads `halo` rows beyond its own on each
    side that has a neighbour and keeps only its own rows of the result, which are then the rows of
    fn(x) (up to float rounding of different conv blockings). channels: fn's largest intermediate in
    channels per pixel of x (a conv to 4 * num_feat before a x2 pixel shuffle: 4 * num_feat); strips
    get as many rows as fit in max_bytes (default STRIP_BYTES; at least 4 * halo, so the recomputed
    halo stays a small part of the work). Outside eager inference (strips_allowed) and when one
    strip would do, this is fn(x) itself.
    """
    h = x.shape[2]
    bytes_per_row = max(1, x.shape[3] * channels * x.element_size())
    rows = max(4 * halo, (STRIP_BYTES if max_bytes is None else max_bytes) // bytes_per_row)
    if rows >= h or not strips_allowed():
        return fn(x)
    out = None
    for a in range(0, h, rows):
        b = min(h, a + rows)
        a0, b0 = max(0, a - halo), min(h, b + halo)
        y = fn(x[:, :, a0:b0])
        if out is None:   # shaped like fn's result: dtype (autocast) and memory format (channels_last)
            out = torch.empty((y.shape[0], y.shape[1], h * scale, y.shape[3]), dtype=y.dtype,
                              device=y.device, memory_format=_memory_format(y))
        out[:, :, a * scale:b * scale] = y[:, :, (a - a0) * scale:(a - a0 + b - a) * scale]
        del y
    return out


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if (t.dim() == 4 and not t.is_contiguous()
                                   and t.is_contiguous(memory_format=torch.channels_last)) \
        else torch.contiguous_format
