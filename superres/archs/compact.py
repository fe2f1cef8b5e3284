"""SRVGGNetCompact (Real-ESRGAN's small model): a plain conv stack at LR resolution + pixel shuffle.

Keys: body.N.weight/bias, convs and activations in one sequence (body.0 conv, body.1 PReLU, ...),
identical to Real-ESRGAN's realesr-general / animevideo checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import check_scale

_ACTS = ("prelu", "relu", "leakyrelu")


def _act(kind: str, num_feat: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(0.1, inplace=True)


class SRVGGNetCompact(nn.Module):
    def __init__(self, *, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_conv: int = 16, upscale: int = 4, act_type: str = "prelu") -> None:
        super().__init__()
        check_scale("compact", upscale, (1, 2, 3, 4))
        if act_type not in _ACTS:
            raise ValueError(f"compact: act_type={act_type!r}; allowed values: {list(_ACTS)}")
        self.hparams = dict(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                            num_conv=num_conv, upscale=upscale, act_type=act_type)
        self.upscale = upscale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _act(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _act(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x                                          # (B, C, H, W)
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)                        # (B, C, H*s, W*s)
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")
