"""Architecture registry: plain dicts from name to class.

Adding an architecture = one file, one import, one dict entry. Tests iterate these dicts.
"""
from __future__ import annotations

from torch import nn

from .compact import SRVGGNetCompact
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
