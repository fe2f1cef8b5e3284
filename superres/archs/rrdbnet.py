"""RRDBNet: the ESRGAN generator (Wang et al. 2018), Residual-in-Residual Dense Blocks.

State-dict keys match BasicSR / Real-ESRGAN: conv_first, body.N.rdb{1,2,3}.conv{1..5}, conv_body,
conv_up1, conv_up2, conv_hr, conv_last. Scales 2 and 1 use pixel-unshuffle on the input, as
Real-ESRGAN does, so the trunk always runs at 1/4 of the output resolution.

Two older community layouts convert to these names (see `SPEC.conversions`): the ESRGAN repo's
RRDBNet_arch.py (`RRDB_trunk.N.RDBk`, `trunk_conv`, `upconv1`, `HRconv`) and its first, sequential
architecture (`model.0`, `model.1.sub.N.RDBk.convM.0`, ..., `model.10`), both x4 only.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import in_row_strips, scaled_kaiming_
from .spec import (
    GeneratorSpec,
    Hparams,
    StateDict,
    count_indexed,
    hr_feature_bytes,
    scale_and_channels,
    strip_tail_bytes,
)

SCALES = (1, 2, 4)
# Pixel-unshuffle factor of the input per scale: the trunk always runs at 1/4 of the output size.
UNSHUFFLE = {4: 1, 2: 2, 1: 4}


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        scaled_kaiming_(self, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x  # residual scaling 0.2 (ESRGAN) keeps the deep trunk stable


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, *, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32, upscale: int = 4) -> None:
        super().__init__()
        SPEC.check_scale(upscale)
        self.hparams = dict(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat,
                            num_block=num_block, num_grow_ch=num_grow_ch, upscale=upscale)
        self.upscale = upscale
        self.unshuffle = UNSHUFFLE[upscale]
        first_in = num_in_ch * self.unshuffle ** 2
        self.conv_first = nn.Conv2d(first_in, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W); H, W must be divisible by the unshuffle factor for scales 1 and 2
        if self.unshuffle > 1:
            h, w = x.shape[-2:]
            if h % self.unshuffle or w % self.unshuffle:
                raise ValueError(f"rrdbnet x{self.upscale}: input {h}x{w} must be divisible by "
                                 f"{self.unshuffle}")
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)                       # (B, F, H/u, W/u)
        feat = feat + self.conv_body(self.body(feat))
        # The tail as MSRResNet's (srresnet.py), in row strips in eager inference: its 64-channel
        # maps at 2x and 4x are the memory, the body's maps are LR-size. Halos in rows of each
        # pass's input: conv_up1 reads 1 row of the 2x map (1 of feat); conv_up2, conv_hr and
        # conv_last read 3 rows of the 4x map, 2 of the 2x map.
        nf = feat.shape[1]
        feat = in_row_strips(self._up1, feat, scale=2, halo=1, channels=nf * 4)
        return in_row_strips(lambda t: self._hr(self._up2(t)), feat, scale=2, halo=2, channels=nf * 4)

    def _up1(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")))

    def _up2(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))

    def _hr(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.lrelu(self.conv_hr(x)))


# ---------------------------------------------------------------------------------------------
# facts for the registry: detection from key names, community layouts

def detect(state: StateDict, given: Hparams | None = None) -> Hparams | None:
    """Hyperparameters from our key names and shapes; None when the keys are not an RRDBNet.

    conv_first sees num_in_ch * unshuffle^2 channels, so 4 and 16 input channels fit two scales
    (x4 RGBA or x2 gray; x2 RGBA or x1 gray): then `upscale` is Ambiguous unless `given` has it.
    """
    if "conv_first.weight" not in state or "body.0.rdb1.conv1.weight" not in state:
        return None
    given = given or {}
    num_feat, first_in = (int(n) for n in state["conv_first.weight"].shape[:2])
    hp: Hparams = dict(num_out_ch=int(state["conv_last.weight"].shape[0]), num_feat=num_feat,
                       num_block=count_indexed(state, r"body\.(\d+)\.rdb1\."),
                       num_grow_ch=int(state["body.0.rdb1.conv1.weight"].shape[0]))
    return {**hp, **scale_and_channels(SPEC, first_in, {sc: u * u for sc, u in UNSHUFFLE.items()}, given,
                                       "num_in_ch", f"conv_first has {first_in} input channels")}


def convert_esrgan_trunk(state: StateDict) -> StateDict | None:
    """ESRGAN's RRDBNet_arch.py names (RRDB_ESRGAN_x4.pth) -> ours; None for other layouts."""
    if "RRDB_trunk.0.RDB1.conv1.weight" not in state:
        return None
    renames = {"trunk_conv.": "conv_body.", "upconv1.": "conv_up1.", "upconv2.": "conv_up2.",
               "HRconv.": "conv_hr."}
    out: StateDict = {}
    for key, value in state.items():
        new = re.sub(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", lambda m: f"body.{m[1]}.rdb{m[2]}.", key)
        for old, ours in renames.items():
            if new.startswith(old):
                new = ours + new[len(old):]
        out[new] = value
    return out


# The first ESRGAN architecture was one nn.Sequential `model`; B.sequential flattened its parts:
# 0 conv_first, 1 a shortcut block whose `sub` holds the RRDBs then the trunk conv, then for x4
# (upsample, conv, lrelu) twice, the HR conv, its lrelu, and the last conv.
_OLD_ARCH_TAIL = {"model.3.": "conv_up1.", "model.6.": "conv_up2.", "model.8.": "conv_hr.",
                  "model.10.": "conv_last.", "model.0.": "conv_first."}


def convert_esrgan_old_arch(state: StateDict) -> StateDict | None:
    """ESRGAN's original sequential layout (RRDB_ESRGAN_x4_old_arch.pth) -> ours; None otherwise."""
    if "model.0.weight" not in state or "model.1.sub.0.RDB1.conv1.0.weight" not in state:
        return None
    num_block = count_indexed(state, r"model\.1\.sub\.(\d+)\.RDB1\.")
    if "model.10.weight" not in state or "model.11.weight" in state or "model.13.weight" in state:
        raise ValueError("old ESRGAN layout (model.N keys) with other than two upsampling steps: only the "
                         "x4 layout (model.3, model.6, model.8, model.10) matches RRDBNet; its x2/x8 "
                         "networks upsample differently")
    trunk = f"model.1.sub.{num_block}."
    out: StateDict = {}
    for key, value in state.items():
        if m := re.match(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif key.startswith(trunk):
            out["conv_body." + key[len(trunk):]] = value
        elif prefix := next((p for p in _OLD_ARCH_TAIL if key.startswith(p)), None):
            out[_OLD_ARCH_TAIL[prefix] + key[len(prefix):]] = value
        else:
            # an unknown key must not be dropped silently: the strict load would not see it
            raise ValueError(f"old ESRGAN layout: unexpected key {key!r}")
    return out


SPEC = GeneratorSpec(
    name="rrdbnet", cls=RRDBNet, scales=SCALES, input_multiple=lambda scale: UNSHUFFLE[scale],
    detect=detect, activation_bytes=strip_tail_bytes,
    # exported (ONNX, int8) the tail runs whole: HR-size maps
    graph_activation_bytes=hr_feature_bytes,
    conversions={"esrgan-trunk": convert_esrgan_trunk, "esrgan-old-arch": convert_esrgan_old_arch},
)
