"""Network interpolation (ESRGAN): weights = alpha * A + (1 - alpha) * B for two state dicts of one
architecture, as `--strength` and `superres interpolate` use it.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from .weights import StateDict

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# network interpolation

def interpolate_state_dicts(a: StateDict, b: StateDict, alpha: float) -> StateDict:
    """(1 - alpha) * a + alpha * b for every floating-point tensor; alpha 0 gives a, 1 gives b.

    Integer tensors (counters, indices) cannot be blended and must be equal in both.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha = {alpha} must be in [0, 1] (0 = the first model, 1 = the second)")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise ValueError(f"the state dicts have different keys: only in the first {only_a[:5]}, "
                         f"only in the second {only_b[:5]}")
    out: StateDict = {}
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise ValueError(f"{key}: shape {tuple(ta.shape)} in the first, {tuple(tb.shape)} in the second")
        if ta.is_floating_point():
            # lerp is exact at both ends (returns a at 0 and b at 1), which the strength knob relies on;
            # fp32 arithmetic keeps bf16/fp16 weights from losing the small differences.
            blended = torch.lerp(ta.float(), tb.to(device=ta.device, dtype=torch.float32), alpha)
            out[key] = blended.to(ta.dtype)
        elif torch.equal(ta, tb.to(ta.device)):
            out[key] = ta.clone()
        else:
            raise ValueError(f"{key}: integer tensors differ between the models and cannot be blended")
    return out


def architecture_difference(arch_a: str, hparams_a: dict[str, Any], arch_b: str,
                            hparams_b: dict[str, Any]) -> str | None:
    """None if both describe the same network, else a sentence naming what differs."""
    if arch_a != arch_b:
        return f"architecture {arch_a!r} vs {arch_b!r}"
    diffs = [f"{k}={hparams_a.get(k)!r} vs {k}={hparams_b.get(k)!r}"
             for k in sorted(set(hparams_a) | set(hparams_b)) if hparams_a.get(k) != hparams_b.get(k)]
    return f"{arch_a} hyperparameters differ: {', '.join(diffs)}" if diffs else None
