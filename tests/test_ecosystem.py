"""Our weights in the wider ecosystem: spandrel (the loader behind chaiNNer and ComfyUI) must
recognise the compact-net files we ship and compute exactly what we compute.

spandrel declares a dependency on torchvision, which must never be installed here (it would pull
a CUDA torch), so `.ci/run` installs spandrel with --no-deps, and this test gives spandrel a stub
`torchvision` for the two unrelated architectures (LaMa, RestoreFormer) that import it at load.
"""
from __future__ import annotations

import enum
import importlib.util
import sys
import types

import pytest
import torch

from superres.archs import build_generator
from superres.inference.models import MODELS
from superres.inference.weights import load_generator, save_weights

if importlib.util.find_spec("spandrel") is None:
    pytest.skip("spandrel is not installed (.ci/run installs it with --no-deps: it requires "
                "torchvision, which this project never installs)", allow_module_level=True)


@pytest.fixture()
def spandrel(monkeypatch):
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        tr = types.ModuleType("torchvision.transforms")
        fn = types.ModuleType("torchvision.transforms.functional")

        class InterpolationMode(enum.Enum):
            NEAREST = "nearest"
            BILINEAR = "bilinear"

        def unavailable(*args, **kwargs):
            raise RuntimeError("torchvision stub: not available in this test")

        fn.InterpolationMode, fn.rotate, fn.normalize = InterpolationMode, unavailable, unavailable
        tv.transforms, tr.functional = tr, fn
        for name, mod in (("torchvision", tv), ("torchvision.transforms", tr),
                          ("torchvision.transforms.functional", fn)):
            monkeypatch.setitem(sys.modules, name, mod)
    import spandrel as sp
    return sp


def _same_output(descriptor, model: torch.nn.Module, size: int = 12) -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(descriptor.model.eval()(x), model.eval()(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 4])
def test_compact_weights_load_in_spandrel(tmp_path, spandrel, scale):
    model = build_generator("compact", num_feat=16, num_conv=3, upscale=scale, act_type="prelu")
    path = tmp_path / "compact.safetensors"
    save_weights(path, model)
    desc = spandrel.ModelLoader().load_from_file(str(path))
    assert desc.architecture.id == "Compact"
    assert (desc.scale, desc.input_channels, desc.output_channels) == (scale, 3, 3)
    _same_output(desc, model)


def test_shipped_compact_models_load_in_spandrel(spandrel):
    shipped = [e for e in MODELS.values() if e.available and load_generator(e.path)[1]["arch"] == "compact"]
    if not shipped:
        pytest.skip("no shipped model uses the compact architecture")
    for entry in shipped:
        ours, info = load_generator(entry.path)
        desc = spandrel.ModelLoader().load_from_file(str(entry.path))
        assert desc.architecture.id == "Compact", entry.name
        assert desc.scale == info["scale"] == entry.scale
        _same_output(desc, ours)
