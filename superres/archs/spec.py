"""What the rest of the package may know about a generator architecture, in one record per file.

Each architecture file (rrdbnet.py, srresnet.py, compact.py) defines one `GeneratorSpec` next to its
class, and the registry in `archs/__init__.py` only collects them. Nothing outside an architecture's
own file hard-codes its scales, its input multiple or its key names.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]
Hparams = dict[str, Any]

# Channel counts an image model can have: gray, gray + alpha, RGB, RGBA. Detection uses it to tell
# apart layouts that differ only in how a tensor's first dimension factors (RRDBNet's pixel-unshuffle
# multiplies the input channels by 4 or 16; a compact net's last conv has out * scale^2 channels).
IMAGE_CHANNELS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Ambiguous:
    """A hyperparameter the weights cannot reveal: the values that fit them, and why.

    `detect` puts one of these in place of a value rather than guessing; the loader then takes the
    value from our file metadata or an explicit option, or raises an error naming the key.
    """
    choices: tuple[Any, ...]
    why: str
    # set when this value follows from another key (RRDBNet's num_in_ch from upscale): passing that
    # one is enough, so errors ask only for it
    follows: str | None = None


# A conversion takes a state dict and returns it in the architecture's own key names, or None when
# the state dict is not in that layout (so the loader can try the next one).
Conversion = Callable[[StateDict], "StateDict | None"]


def hr_feature_bytes(hparams: "Hparams", scale: int) -> int:
    """Activation bytes per LR pixel of a net that upsamples its features and convolves at HR size
    (MSRResNet, RRDBNet): num_feat float32 channels at scale^2 output pixels per LR pixel, with a
    few such maps alive at once (input and output of a conv, a pixel-shuffle or interpolation
    copy); generous, since it sizes tiles to memory."""
    return int(hparams.get("num_feat", 64)) * scale * scale * 4 * 6


def strip_tail_bytes(hparams: "Hparams", scale: int) -> int:
    """The same nets in eager inference, their tail in row strips (blocks.in_row_strips): num_feat
    float32 channels times 6 + scale^2 per LR pixel (a few LR-size maps in the body; at x4 the whole
    x2 map, scale^2 / 4 of them; the output image and its skip), with the strips' fixed 2-3 x
    blocks.STRIP_BYTES spread over a tile of ~512. Measured (benchmarks/forward_memory.py: one
    thread, freed memory kept, peak over the loaded and warmed-up model): psnr-x4 (MSRResNet) at a
    528 tile 1025 MiB (3.9 KB per LR pixel, against 5.6 here; its whole tail at 272 took 934 MiB);
    psnr-x2 at 784 1182 MiB (2.0 KB, against 2.6); an RRDBNet x4 at 544 1597 MiB (5.7 KB; whole
    tail at 272 1460 MiB), where the body's dense blocks hold more LR-size maps. Never more than
    the whole tail (hr_feature_bytes), which at x1 is the smaller."""
    return min(4 * int(hparams.get("num_feat", 64)) * (6 + scale * scale), hr_feature_bytes(hparams, scale))


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    cls: type[nn.Module]
    scales: tuple[int, ...]
    # Input sides must be a multiple of input_multiple(scale) (pixel-unshuffle nets); callers pad.
    input_multiple: Callable[[int], int]
    # detect(state, given) -> hyperparameters from the arch's own key names and shapes (values the
    # keys cannot tell are Ambiguous unless `given` has them); None when the keys are not this arch.
    detect: Callable[[StateDict, "Hparams | None"], "Hparams | None"]
    # Community key layouts this arch accepts, by name; each maps to our key names exactly, so the
    # converted state dict loads with strict=True.
    conversions: dict[str, Conversion] = field(default_factory=dict)
    # activation_bytes(hparams, scale): a generous estimate of the bytes of activations alive at once
    # per LR pixel in a forward pass; the inference core sizes its automatic tile by it
    activation_bytes: Callable[["Hparams", int], int] = hr_feature_bytes
    # the same for the net exported as one graph (ONNX, int8), where eager-only savings such as
    # MSRResNet's tail in row strips do not apply; None: activation_bytes
    graph_activation_bytes: Callable[["Hparams", int], int] | None = None

    def check_scale(self, scale: int) -> None:
        if scale not in self.scales:
            raise ValueError(f"{self.name}: upscale={scale} is not supported; allowed values: "
                             f"{list(self.scales)}")


def count_indexed(state: StateDict, pattern: str) -> int:
    """1 + the largest N captured by `pattern` (group 1) over the keys; 0 when none matches."""
    idx = {int(m[1]) for k in state if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def factor_channels(total: int, factors: dict[int, int]) -> list[tuple[int, int]]:
    """(scale, channels) pairs with channels * factors[scale] == total and channels an image count."""
    return [(s, total // f) for s, f in factors.items()
            if total % f == 0 and total // f in IMAGE_CHANNELS]


def scale_and_channels(spec: "GeneratorSpec", total: int, factors: dict[int, int], given: "Hparams",
                       channel_key: str, counted: str) -> "Hparams":
    """{"upscale", channel_key} for a conv whose `total` channels are image channels x factors[scale]
    (a pixel-shuffle output, a pixel-unshuffle input): the given upscale, else the one pair that
    fits, else both Ambiguous (the channel count follows the scale). `counted` says what `total`
    counts, for the messages ("the last conv has 48 outputs")."""
    side = "input" if "in" in channel_key else "output"
    if "upscale" in given:
        scale = int(given["upscale"])
        spec.check_scale(scale)
        if total % factors[scale]:
            raise ValueError(f"{spec.name}: {counted}, which upscale={scale} (x{factors[scale]} channels) "
                             "cannot produce")
        return {"upscale": scale, channel_key: total // factors[scale]}
    fits = factor_channels(total, factors)
    if not fits:
        raise ValueError(f"{spec.name}: {counted}, which is no image channel count times one of "
                         f"{sorted(set(factors.values()))}")
    if len(fits) == 1:
        (scale, channels), = fits
        return {"upscale": scale, channel_key: channels}
    why = f"{counted}: " + " or ".join(f"upscale={s} with {c}-channel {side}" for s, c in fits)
    return {"upscale": Ambiguous(tuple(s for s, _ in fits), why),
            channel_key: Ambiguous(tuple(c for _, c in fits), why, follows="upscale")}
