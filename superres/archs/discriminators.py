"""Discriminators: VGG-style (SRGAN/ESRGAN), U-Net with spectral norm (Real-ESRGAN), PatchGAN.

All return raw logits, higher = more real (see losses.py). `forward(x, return_features=True)`
also returns the intermediate feature maps, which the feature-matching loss compares.

Key names match the public checkpoints: BasicSR's VGGStyleDiscriminator (conv0_0 ... linear2) and
Real-ESRGAN's UNetDiscriminatorSN (conv0 ... conv9, spectral norm as weight_orig/weight_u/weight_v
from torch.nn.utils.spectral_norm), so their discriminator weights load with strict=True.

Each class has `input_size_error(size, **hparams)`: None if a size x size patch fits, else why not.
The config validator calls it, so a wrong data.hr_patch fails before training starts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm as _sn

Output = torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]


class VGGStyleDiscriminator(nn.Module):
    """Five stride-2 stages (conv3x3 + conv4x4/2, BN, LeakyReLU 0.2; six for 256) and two linear
    layers: one logit per image. The linear layer fixes the input size."""

    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128) -> None:
        super().__init__()
        if input_size not in (128, 256):
            raise ValueError(f"VGGStyleDiscriminator: input_size={input_size}; allowed values: [128, 256]")
        self.hparams = dict(num_in_ch=num_in_ch, num_feat=num_feat, input_size=input_size)
        self.input_size = input_size
        f = num_feat
        self.conv0_0 = nn.Conv2d(num_in_ch, f, 3, 1, 1, bias=True)
        self.conv0_1 = nn.Conv2d(f, f, 4, 2, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(f, affine=True)
        # stage i: conv{i}_0 (3x3, widens) + bn, conv{i}_1 (4x4 stride 2) + bn
        widths = [(f, 2 * f), (2 * f, 4 * f), (4 * f, 8 * f), (8 * f, 8 * f)]
        if input_size == 256:
            widths.append((8 * f, 8 * f))
        for i, (cin, cout) in enumerate(widths, start=1):
            setattr(self, f"conv{i}_0", nn.Conv2d(cin, cout, 3, 1, 1, bias=False))
            setattr(self, f"bn{i}_0", nn.BatchNorm2d(cout, affine=True))
            setattr(self, f"conv{i}_1", nn.Conv2d(cout, cout, 4, 2, 1, bias=False))
            setattr(self, f"bn{i}_1", nn.BatchNorm2d(cout, affine=True))
        self.num_stages = len(widths)
        self.linear1 = nn.Linear(8 * f * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    @staticmethod
    def input_size_error(size: int, *, input_size: int = 128, **_) -> str | None:
        if size != input_size:
            return f"the VGG-style discriminator takes exactly {input_size}x{input_size} patches"
        return None

    def forward(self, x: torch.Tensor, return_features: bool = False) -> Output:
        # x: (B, C, S, S) with S = input_size
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"VGGStyleDiscriminator: input {tuple(x.shape[-2:])}, expected "
                             f"{self.input_size}x{self.input_size}")
        feats = []
        feat = self.lrelu(self.conv0_0(x))
        feat = self.lrelu(self.bn0_1(self.conv0_1(feat)))           # (B, F, S/2, S/2)
        feats.append(feat)
        for i in range(1, self.num_stages + 1):
            feat = self.lrelu(getattr(self, f"bn{i}_0")(getattr(self, f"conv{i}_0")(feat)))
            feat = self.lrelu(getattr(self, f"bn{i}_1")(getattr(self, f"conv{i}_1")(feat)))
            feats.append(feat)                                      # (B, F', S/2^(i+1), ...)
        feat = self.lrelu(self.linear1(feat.flatten(1)))            # (B, 100)
        out = self.linear2(feat)                                    # (B, 1)
        return (out, feats) if return_features else out


class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator: a logit per pixel, so it judges local texture as well as
    global structure; spectral norm keeps it Lipschitz-bounded and training stable."""

    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        self.hparams = dict(num_in_ch=num_in_ch, num_feat=num_feat, skip_connection=skip_connection)
        self.skip_connection = skip_connection
        f = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        # down
        self.conv1 = _sn(nn.Conv2d(f, 2 * f, 4, 2, 1, bias=False))
        self.conv2 = _sn(nn.Conv2d(2 * f, 4 * f, 4, 2, 1, bias=False))
        self.conv3 = _sn(nn.Conv2d(4 * f, 8 * f, 4, 2, 1, bias=False))
        # up
        self.conv4 = _sn(nn.Conv2d(8 * f, 4 * f, 3, 1, 1, bias=False))
        self.conv5 = _sn(nn.Conv2d(4 * f, 2 * f, 3, 1, 1, bias=False))
        self.conv6 = _sn(nn.Conv2d(2 * f, f, 3, 1, 1, bias=False))
        # head
        self.conv7 = _sn(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv8 = _sn(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    @staticmethod
    def input_size_error(size: int, **_) -> str | None:
        if size % 8:
            return "the U-Net discriminator halves the size three times: patches must be a multiple of 8"
        return None

    def forward(self, x: torch.Tensor, return_features: bool = False) -> Output:
        # x: (B, C, H, W), H and W multiples of 8
        def lrelu(t: torch.Tensor) -> torch.Tensor:
            return F.leaky_relu(t, 0.2)

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

        x0 = lrelu(self.conv0(x))                    # (B, F, H, W)
        x1 = lrelu(self.conv1(x0))                   # (B, 2F, H/2, W/2)
        x2 = lrelu(self.conv2(x1))                   # (B, 4F, H/4, W/4)
        x3 = lrelu(self.conv3(x2))                   # (B, 8F, H/8, W/8)
        x4 = lrelu(self.conv4(up(x3)))               # (B, 4F, H/4, W/4)
        if self.skip_connection:
            x4 = x4 + x2
        x5 = lrelu(self.conv5(up(x4)))               # (B, 2F, H/2, W/2)
        if self.skip_connection:
            x5 = x5 + x1
        x6 = lrelu(self.conv6(up(x5)))               # (B, F, H, W)
        if self.skip_connection:
            x6 = x6 + x0
        x7 = lrelu(self.conv7(x6))
        x8 = lrelu(self.conv8(x7))
        out = self.conv9(x8)                         # (B, 1, H, W)
        return (out, [x1, x2, x3, x4, x5, x6, x7, x8]) if return_features else out


class PatchGANDiscriminator(nn.Module):
    """pix2pix's N-layer PatchGAN: a logit per overlapping patch (70x70 receptive field with 3
    layers). BatchNorm by default; with spectral_norm=True the convs are spectrally normalised and
    BatchNorm is left out (it would undo the Lipschitz bound and couples samples in a batch)."""

    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64, num_layers: int = 3,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        self.hparams = dict(num_in_ch=num_in_ch, num_feat=num_feat, num_layers=num_layers,
                            spectral_norm=spectral_norm)

        def conv(cin: int, cout: int, stride: int, bias: bool) -> nn.Module:
            c = nn.Conv2d(cin, cout, 4, stride, 1, bias=bias)
            nn.init.normal_(c.weight, 0.0, 0.02)  # pix2pix's init
            if c.bias is not None:
                nn.init.zeros_(c.bias)
            return _sn(c) if spectral_norm else c

        def norm(ch: int) -> nn.Module:
            if spectral_norm:
                return nn.Identity()
            bn = nn.BatchNorm2d(ch)
            nn.init.normal_(bn.weight, 1.0, 0.02)
            return bn

        blocks: list[nn.Module] = [nn.Sequential(conv(num_in_ch, num_feat, 2, True), nn.LeakyReLU(0.2))]
        ch = num_feat
        for n in range(1, num_layers + 1):
            out_ch = num_feat * min(2 ** n, 8)
            stride = 2 if n < num_layers else 1  # the last block keeps the size (pix2pix)
            blocks.append(nn.Sequential(conv(ch, out_ch, stride, spectral_norm), norm(out_ch), nn.LeakyReLU(0.2)))
            ch = out_ch
        self.body = nn.ModuleList(blocks)
        self.head = conv(ch, 1, 1, True)

    @staticmethod
    def output_size(size: int, num_layers: int = 3) -> int:
        """Side of the logit map for a size x size input: each 4x4 stride-2 conv (padding 1) halves it
        (rounding down), each 4x4 stride-1 conv takes one off."""
        for _ in range(num_layers):
            size //= 2
        return size - 2

    @staticmethod
    def input_size_error(size: int, *, num_layers: int = 3, **_) -> str | None:
        if PatchGANDiscriminator.output_size(size, num_layers) < 1:
            smallest = next(s for s in range(1, 2 ** 12) if PatchGANDiscriminator.output_size(s, num_layers) >= 1)
            return f"a {num_layers}-layer PatchGAN needs patches of at least {smallest} pixels"
        return None

    def forward(self, x: torch.Tensor, return_features: bool = False) -> Output:
        # x: (B, C, H, W) -> (B, 1, output_size(H), output_size(W))
        feats = []
        for block in self.body:
            x = block(x)
            feats.append(x)
        out = self.head(x)
        return (out, feats) if return_features else out
