"""The few building blocks several architectures share."""
from __future__ import annotations

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
