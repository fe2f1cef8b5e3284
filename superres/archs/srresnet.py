"""MSRResNet: SRResNet (Ledig et al., SRGAN paper) without batch norm, as in BasicSR.

State-dict keys match BasicSR's MSRResNet: conv_first, body.N.conv{1,2}, upconv1, [upconv2],
conv_hr, conv_last, so public MSRResNet checkpoints load with strict=True.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import conv3x3, in_row_strips, scaled_kaiming_
from .spec import GeneratorSpec, Hparams, StateDict, count_indexed, hr_feature_bytes, strip_tail_bytes

SCALES = (2, 3, 4)


class ResidualBlockNoBN(nn.Module):
    def __init__(self, num_feat: int = 64, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = conv3x3(num_feat, num_feat)
        self.conv2 = conv3x3(num_feat, num_feat)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.conv2(self.relu(self.conv1(x)))
        # no multiply at 1.0: it would only allocate one more map
        return x + res if self.res_scale == 1.0 else x + res * self.res_scale


class MSRResNet(nn.Module):
    """Residual blocks -> pixel-shuffle upsampling -> two convs, plus a bilinear skip of the input.

    The bilinear skip means the network only learns the residual over bilinear upsampling, which
    speeds up early training noticeably.
    """

    def __init__(self, *, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_block: int = 16, upscale: int = 4) -> None:
        super().__init__()
        SPEC.check_scale(upscale)
        self.hparams = dict(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                            num_block=num_block, upscale=upscale)
        self.upscale = upscale
        self.conv_first = conv3x3(num_in_ch, num_feat)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)])
        if upscale in (2, 3):
            self.upconv1 = conv3x3(num_feat, num_feat * upscale * upscale)
            self.pixel_shuffle = nn.PixelShuffle(upscale)
        else:  # x4 as two x2 steps, like the original
            self.upconv1 = conv3x3(num_feat, num_feat * 4)
            self.upconv2 = conv3x3(num_feat, num_feat * 4)
            self.pixel_shuffle = nn.PixelShuffle(2)
        self.conv_hr = conv3x3(num_feat, num_feat)
        self.conv_last = conv3x3(num_feat, num_out_ch)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)
        scaled_kaiming_(self, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W)
        out = self._tail(self.body(self.lrelu(self.conv_first(x))))   # (B, C, H*s, W*s)
        base = F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return out + base

    def _up1(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrelu(self.pixel_shuffle(self.upconv1(x)))

    def _up2(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrelu(self.pixel_shuffle(self.upconv2(x)))

    def _hr(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.lrelu(self.conv_hr(x)))

    def _tail(self, feat: torch.Tensor) -> torch.Tensor:
        """Upsampling, conv_hr and conv_last; in eager inference strip by strip
        (archs.blocks.in_row_strips), the same result in the memory of a few LR-size maps plus
        blocks.STRIP_BYTES per strip map.

        Halos in rows of each strip's input: upconv1 reads 1; conv_hr then conv_last read 2 rows
        at the output, which at a x2 or larger shuffle is 1 row of the input, plus 1 for the
        upconv before them. x4 runs in two passes (to the x2 map, then on to x4), so no x4 map,
        whole or in strips, ever holds num_feat channels for the whole tile.
        """
        nf = feat.shape[1]
        if self.upscale == 4:
            feat = in_row_strips(self._up1, feat, scale=2, halo=1, channels=nf * 4)
            return in_row_strips(lambda t: self._hr(self._up2(t)), feat, scale=2, halo=2, channels=nf * 4)
        s = self.upscale
        return in_row_strips(lambda t: self._hr(self._up1(t)), feat, scale=s, halo=2, channels=nf * s * s)


def detect(state: StateDict, given: Hparams | None = None) -> Hparams | None:
    """Hyperparameters from our key names and shapes; None when the keys are not an MSRResNet.

    Every one is visible: x4 has upconv2, x2/x3 have upconv1 with num_feat * scale^2 outputs.
    """
    if not {"conv_first.weight", "body.0.conv1.weight", "upconv1.weight"} <= state.keys():
        return None
    num_feat, num_in = (int(n) for n in state["conv_first.weight"].shape[:2])
    if "upconv2.weight" in state:
        scale = 4
    else:
        up_out = int(state["upconv1.weight"].shape[0])
        scale = next((s for s in SCALES if s != 4 and up_out == num_feat * s * s), 0)
        if not scale:
            raise ValueError(f"msrresnet: upconv1 has {up_out} outputs for num_feat={num_feat}; "
                             f"expected num_feat * scale^2 for a scale in {[s for s in SCALES if s != 4]}")
    return dict(num_in_ch=num_in, num_out_ch=int(state["conv_last.weight"].shape[0]), num_feat=num_feat,
                num_block=count_indexed(state, r"body\.(\d+)\.conv1\."), upscale=scale)


SPEC = GeneratorSpec(name="msrresnet", cls=MSRResNet, scales=SCALES, input_multiple=lambda scale: 1,
                     detect=detect, activation_bytes=strip_tail_bytes,
                     # exported (ONNX, int8) the tail runs whole: HR-size maps, as before strips
                     graph_activation_bytes=hr_feature_bytes)
