"""Architecture registry.

Generators: name -> `GeneratorSpec` (class, scales, input multiple, detection, key-layout
conversions), each spec defined in the architecture's own file. Discriminators: name -> class.
Adding an architecture = one file, one import, one dict entry. Tests iterate these dicts.
"""
from __future__ import annotations

import inspect

from torch import nn

from . import compact, rrdbnet, srresnet
from .discriminators import PatchGANDiscriminator, UNetDiscriminatorSN, VGGStyleDiscriminator
from .spec import Ambiguous, GeneratorSpec, hr_feature_bytes

__all__ = ["GENERATORS", "GeneratorSpec", "Ambiguous", "generator_spec", "build_generator", "arch_name_of",
           "spec_of", "input_multiple", "activation_bytes", "DISCRIMINATORS", "build_discriminator",
           "discriminator_hparams", "discriminator_input_error"]

GENERATORS: dict[str, GeneratorSpec] = {spec.name: spec for spec in (srresnet.SPEC, rrdbnet.SPEC, compact.SPEC)}


def generator_spec(name: str) -> GeneratorSpec:
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; allowed values: {sorted(GENERATORS)}")
    return GENERATORS[name]


def build_generator(name: str, **hparams) -> nn.Module:
    """Build a generator by registry name with keyword hyperparameters."""
    return generator_spec(name).cls(**hparams)


def spec_of(model: nn.Module) -> GeneratorSpec | None:
    """The registry entry of `model`'s class, or None for a module we did not register."""
    return next((spec for spec in GENERATORS.values() if type(model) is spec.cls), None)


def arch_name_of(model: nn.Module) -> str:
    spec = spec_of(model)
    if spec is None:
        raise ValueError(f"{type(model).__name__} is not a registered generator; registered: "
                         f"{sorted(GENERATORS)}")
    return spec.name


def input_multiple(model: nn.Module, scale: int | None = None) -> int:
    """The side length `model`'s input must be a multiple of (pixel-unshuffle nets need 2 or 4).

    A module we did not register may declare it as an `input_multiple` attribute; without one it
    is taken to accept any size.
    """
    spec = spec_of(model)
    if spec is None:
        return int(getattr(model, "input_multiple", 1))
    return spec.input_multiple(int(scale if scale is not None else model.hparams["upscale"]))


def activation_bytes(model: nn.Module, scale: int | None = None, *, graph: bool = False) -> int:
    """A generous estimate of the activation bytes per LR pixel of a forward pass of `model` (its
    arch's GeneratorSpec.activation_bytes; with graph=True its graph_activation_bytes, for the net
    exported as one graph). A module we did not register may declare it as an
    `activation_bytes_per_lr_pixel` attribute (Int8Generator carries its fp32 graph's); without one
    it is estimated as a net with HR-size features."""
    hparams = getattr(model, "hparams", {}) or {}
    scale = int(scale if scale is not None else hparams.get("upscale", 4))
    spec = spec_of(model)
    if spec is not None:
        estimate = (spec.graph_activation_bytes if graph else None) or spec.activation_bytes
        return int(estimate(hparams, scale))
    declared = getattr(model, "activation_bytes_per_lr_pixel", None)
    return int(declared) if declared else hr_feature_bytes(hparams, scale)


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
