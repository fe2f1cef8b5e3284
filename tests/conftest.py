"""Fixtures shared by the test files."""
from __future__ import annotations

import pytest
import torch

from superres.archs import build_generator
from superres.inference.weights import save_weights


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny x4 MSRResNet weights file (8 features, 1 block): fast, and enough for file-level tests."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_weights(path, build_generator("msrresnet", num_feat=8, num_block=1, upscale=4))
    return path
