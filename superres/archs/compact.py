"""SRVGGNetCompact (Real-ESRGAN's small model): a plain conv stack at LR resolution + pixel shuffle.

Keys: body.N.weight/bias, convs and activations in one sequence (body.0 conv, body.1 PReLU, ...),
identical to Real-ESRGAN's realesr-general / animevideo checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import Ambiguous, GeneratorSpec, Hparams, StateDict, count_indexed, scale_and_channels

SCALES = (1, 2, 3, 4)
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
        SPEC.check_scale(upscale)
        if act_type not in _ACTS:
            raise ValueError(f"compact: act_type={act_type!r}; allowed values: {list(_ACTS)}")
        if num_in_ch != num_out_ch and num_in_ch != 1:
            # the output adds the nearest-upsampled input, which only fits (or broadcasts from one
            # channel to) num_out_ch channels: 3 -> 1 would silently return 3 channels
            raise ValueError(f"compact: num_in_ch={num_in_ch} with num_out_ch={num_out_ch}; the input skip "
                             "needs num_in_ch == num_out_ch or num_in_ch == 1")
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


def detect(state: StateDict, given: Hparams | None = None) -> Hparams | None:
    """Hyperparameters from our key names and shapes; None when the keys are not a compact net.

    Only PReLU has weights, so relu and leakyrelu look the same: act_type is then Ambiguous unless
    `given` has it. The last conv has num_out_ch * scale^2 outputs, which for 4 and 16 fits two
    (channels, scale) pairs: then `upscale` is Ambiguous unless given.
    """
    if "body.0.weight" not in state or "conv_first.weight" in state or state["body.0.weight"].ndim != 4:
        return None
    given = given or {}
    n_layers = count_indexed(state, r"body\.(\d+)\.")
    convs = [i for i in range(n_layers) if getattr(state.get(f"body.{i}.weight"), "ndim", 0) == 4]
    num_feat, num_in = (int(n) for n in state["body.0.weight"].shape[:2])
    last_out = int(state[f"body.{convs[-1]}.weight"].shape[0])
    hp: Hparams = dict(num_in_ch=num_in, num_feat=num_feat, num_conv=len(convs) - 2)
    has_prelu = getattr(state.get("body.1.weight"), "ndim", 0) == 1
    if "act_type" in given:
        hp["act_type"] = given["act_type"]
    elif has_prelu:
        hp["act_type"] = "prelu"
    else:
        hp["act_type"] = Ambiguous(("relu", "leakyrelu"), "activations without weights (relu and "
                                   "leakyrelu) leave no trace in the state dict")
    return {**hp, **scale_and_channels(SPEC, last_out, {sc: sc * sc for sc in SCALES}, given, "num_out_ch",
                                       f"the last conv has {last_out} outputs")}


def activation_bytes(hparams: Hparams, scale: int) -> int:
    """Every conv runs at LR size: num_feat channels per LR pixel, and the last conv's
    num_out_ch * scale^2 channels, which are also the HR image it shuffles into; float32, a few maps
    of each alive at once (a conv's input and output, the PReLU's, the pixel shuffle's copy, the
    upsampled input added to it). About a ninth of an MSRResNet's per-pixel memory at x4 (64
    features), so its automatic CPU tile is three times as wide."""
    return 4 * 6 * (int(hparams.get("num_feat", 64)) + int(hparams.get("num_out_ch", 3)) * scale * scale)


SPEC = GeneratorSpec(name="compact", cls=SRVGGNetCompact, scales=SCALES, input_multiple=lambda scale: 1,
                     detect=detect, activation_bytes=activation_bytes)
