"""Architecture registry: plain dicts from name to class.

Adding an architecture = one file, one import, one dict entry. Tests iterate these dicts.
"""
from __future__ import annotations

import inspect

from torch import nn

from .compact import SRVGGNetCompact
from .discriminators import PatchGANDiscriminator, UNetDiscriminatorSN, VGGStyleDiscriminator
from .rrdbnet import RRDBNet
from .srresnet import MSRResNet

GENERATORS: dict[str, type[nn.Module]] = {
    "msrresnet": MSRResNet,
    "rrdbnet": RRDBNet,
    "compact": SRVGGNetCompact,
}

# Scales each generator supports (used by tests and config validation).
GENERATOR_SCALES: dict[str, tuple[int, ...]] = {
    "msrresnet": (2, 3, 4),
    "rrdbnet": (1, 2, 4),
    "compact": (1, 2, 3, 4),
}


def build_generator(name: str, **hparams) -> nn.Module:
    """Build a generator by registry name with keyword hyperparameters."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; allowed values: {sorted(GENERATORS)}")
    return GENERATORS[name](**hparams)


def arch_name_of(model: nn.Module) -> str:
    for name, cls in GENERATORS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered generator")


DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "vgg128": VGGStyleDiscriminator,
    "vgg256": VGGStyleDiscriminator,
    "unet": UNetDiscriminatorSN,
    "patchgan": PatchGANDiscriminator,
}

# Hyperparameters a registry name implies (BasicSR's two VGG discriminator sizes share one class).
DISCRIMINATOR_PRESETS: dict[str, dict] = {
    "vgg128": {"input_size": 128},
    "vgg256": {"input_size": 256},
}


def discriminator_hparams(name: str, hparams: dict) -> dict:
    """The preset for `name` with `hparams` on top; a preset value cannot be changed."""
    if name not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {name!r}; allowed values: {sorted(DISCRIMINATORS)}")
    allowed = [k for k, prm in inspect.signature(DISCRIMINATORS[name]).parameters.items()
               if prm.kind is prm.KEYWORD_ONLY]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(f"discriminator {name!r} has no hyperparameter {unknown}; allowed: {allowed}")
    preset = DISCRIMINATOR_PRESETS.get(name, {})
    for k, v in preset.items():
        if k in hparams and hparams[k] != v:
            raise ValueError(f"discriminator {name!r} has {k}={v}; got {k}={hparams[k]!r}")
    return {**preset, **hparams}


def build_discriminator(name: str, **hparams) -> nn.Module:
    """Build a discriminator by registry name with keyword hyperparameters."""
    return DISCRIMINATORS[name](**discriminator_hparams(name, hparams))


def discriminator_input_error(name: str, hparams: dict, size: int) -> str | None:
    """None if `name` accepts size x size patches, else a sentence saying what it needs."""
    return DISCRIMINATORS[name].input_size_error(size, **discriminator_hparams(name, hparams))
