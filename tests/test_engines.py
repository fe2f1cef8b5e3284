"""Engines (`--engine`): NNPACK's Winograd convs (winograd), ONNX Runtime and OpenVINO run the network
within 1 level of torch fp32; `auto` measures once per machine and architecture and remembers; ONNX
graphs are cached by weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from superres.apps.cli import main
from superres.archs import build_generator
from superres.inference import engines
from superres.inference.engines import (EngineError, WinogradConv2d, available_engines, choose_engine,
                                        engine_generator, winograd_available)
from superres.inference.upscaler import Upscaler


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERRES_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_generator("compact", num_feat=8, num_conv=2, upscale=4).eval()


def test_auto_measures_once_and_remembers(cache, monkeypatch):
    calls = []

    def probe(model, names):
        calls.append(names)
        return {n: {"seconds": {"torch": 0.3, "onnxruntime": 0.2, "openvino": 0.1}[n],
                    "max_diff_levels": 2 if n == "openvino" else 1} for n in names}

    monkeypatch.setattr(engines, "_probe", probe)
    monkeypatch.setattr(engines, "available_engines", lambda: ["torch", "onnxruntime", "openvino"])
    # openvino is faster but 2 levels off: auto takes the fastest of those within 1 level
    assert choose_engine(_tiny()) == "onnxruntime"
    assert choose_engine(_tiny(1)) == "onnxruntime" and len(calls) == 1   # other weights, same network
    stored = json.loads((cache / "engines.json").read_text())
    (entry,) = stored.values()
    assert entry["engine"] == "onnxruntime" and entry["probe"]["openvino"]["max_diff_levels"] == 2
    big = build_generator("compact", num_feat=16, num_conv=2, upscale=4)
    choose_engine(big)
    assert len(calls) == 2   # another architecture is measured


def test_engine_options_are_checked(tmp_path):
    with pytest.raises(EngineError, match="allowed values: auto, torch, winograd, onnxruntime, openvino"):
        Upscaler(_tiny(), {"scale": 4}, device="cpu", precision="fp32", engine="tensorrt")
    with pytest.raises(EngineError, match="runs fp32 on the CPU"):
        Upscaler(_tiny(), {"scale": 4}, device="cpu", precision="bf16", engine="onnxruntime")
    # auto with a low precision is torch; int8 keeps its own graph
    assert Upscaler(_tiny(), {"scale": 4}, device="cpu", precision="bf16", engine="auto").engine == "torch"
    src = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    with pytest.raises(SystemExit) as e:
        main(["upscale", str(src), "-o", str(tmp_path / "y.png"), "--engine", "tensorrt"])
    assert e.value.code == 2


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_an_engine_is_within_one_level_of_torch_and_its_graph_is_cached(engine, cache, monkeypatch):
    if engine not in available_engines():
        pytest.skip(f"{engine} is not installed")
    model = _tiny()
    x = (np.random.default_rng(0).random((20, 28, 3)) * 255).astype(np.uint8)
    ref = Upscaler(model, {"scale": 4}, device="cpu", precision="fp32", tile=0).upscale_pixels(x)
    up = Upscaler(model, {"scale": 4}, device="cpu", precision="fp32", tile=0, engine=engine)
    assert up.engine == engine and type(up.model).__name__ == "EngineGenerator"
    out = up.upscale_pixels(x)
    assert out.shape == ref.shape and np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    # tiles go through the engine too, and the graph is not exported again
    monkeypatch.setattr("superres.inference.onnx.export_onnx",
                        lambda *a, **k: pytest.fail("exported twice"))
    tiled = Upscaler(model, {"scale": 4}, device="cpu", precision="fp32", tile=12, engine=engine).upscale_pixels(x)
    assert np.abs(tiled.astype(int) - ref.astype(int)).max() <= 1
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1


@pytest.mark.slow
def test_a_blend_family_runs_each_blend_through_the_engine():
    if "onnxruntime" not in available_engines():
        pytest.skip("onnxruntime is not installed")
    from superres.inference.models import MODELS

    if not MODELS["photo-x4"].available:
        pytest.skip("photo-x4 is not shipped")
    x = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    torch_up = Upscaler.from_pretrained("photo-x4", precision="fp32", tile=0)
    ort_up = Upscaler.from_pretrained("photo-x4", precision="fp32", tile=0, engine="onnxruntime")
    assert ort_up.adaptive and ort_up.engine == "onnxruntime"
    for s in (0.0, 0.4):
        a, b = torch_up.upscale_pixels(x, strength=s), ort_up.upscale_pixels(x, strength=s)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert type(ort_up._model_at(0.4)).__name__ == "EngineGenerator"


def test_auto_measures_again_when_the_engines_on_offer_change(cache, monkeypatch):
    calls = []
    monkeypatch.setattr(engines, "_probe", lambda model, names: calls.append(names) or
                        {n: {"seconds": 1.0 if n == "torch" else 0.5, "max_diff_levels": 0} for n in names})
    monkeypatch.setattr(engines, "available_engines", lambda: ["torch", "onnxruntime"])
    assert choose_engine(_tiny()) == "onnxruntime"
    monkeypatch.setattr(engines, "available_engines", lambda: ["torch", "winograd", "onnxruntime"])
    choose_engine(_tiny())
    assert calls == [["torch", "onnxruntime"], ["torch", "winograd", "onnxruntime"]]


def test_auto_measures_again_on_a_cpu_of_the_same_name_with_another_isa(cache, monkeypatch):
    """Two VMs both called "AMD EPYC", one AVX2 only and one with AVX-512 BF16, sharing a home
    directory: the second must not take the first one's answer."""
    avx2 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n"
    avx512 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16\n"
    assert engines.cpu_identity(avx2)[0] == engines.cpu_identity(avx512)[0] == "AMD EPYC"
    assert "avx512_bf16" in engines.cpu_identity(avx512)[1]
    assert "avx512_bf16" not in engines.cpu_identity(avx2)[1]
    calls = []
    monkeypatch.setattr(engines, "_probe", lambda model, names: calls.append(names) or
                        {n: {"seconds": 1.0 if n == "torch" else 0.5, "max_diff_levels": 0} for n in names})
    monkeypatch.setattr(engines, "available_engines", lambda: ["torch", "onnxruntime"])
    for text in (avx2, avx2, avx512):
        monkeypatch.setattr(engines, "_read_cpuinfo", lambda text=text: text)
        choose_engine(_tiny())
    assert len(calls) == 2   # measured on the first machine once, then again on the second


needs_nnpack = pytest.mark.skipif(not winograd_available(), reason="this torch build or CPU has no NNPACK")


@needs_nnpack
def test_winograd_swaps_only_3x3_stride_1_convs_and_keeps_the_state():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.PReLU(8),
                                torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2)).eval()
    fast = engine_generator(model, "winograd")
    assert [type(m).__name__ for m in fast] == ["WinogradConv2d", "PReLU", "Conv2d", "Conv2d", "Conv2d"]
    assert type(model[0]) is torch.nn.Conv2d   # the original is left alone
    assert fast.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), model.state_dict().values()))
    x = torch.rand(2, 3, 19, 23)   # odd sides, a batch of two
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-4)
    # with gradients (training) the conv is nn.Conv2d's own, bit for bit
    conv = fast[0]
    w = conv.weight.detach().clone().requires_grad_(True)
    conv.weight = torch.nn.Parameter(w)
    y = conv(x)
    assert y.requires_grad and torch.equal(y, torch.nn.functional.conv2d(x, w, conv.bias, padding=1))
    with pytest.raises(EngineError, match="no 3x3 stride-1 convolution"):
        engine_generator(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), "winograd")


@needs_nnpack
def test_winograd_is_within_one_level_of_torch_whole_and_tiled():
    model = _tiny()
    x = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
    ref = Upscaler(model, {"scale": 4}, device="cpu", precision="fp32", tile=0).upscale_pixels(x)
    up = Upscaler(model, {"scale": 4}, device="cpu", precision="fp32", tile=0, engine="winograd")
    assert up.engine == "winograd" and isinstance(up.model.body[0], WinogradConv2d)
    out = up.upscale_pixels(x)
    assert out.shape == ref.shape and np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    tiled = Upscaler(model, {"scale": 4}, device="cpu", precision="fp32", tile=16,
                     engine="winograd").upscale_pixels(x)
    assert np.abs(tiled.astype(int) - ref.astype(int)).max() <= 1
    assert np.array_equal(up.upscale_pixels(x), out)   # the same bytes again


@needs_nnpack
def test_a_blend_family_runs_each_blend_through_winograd():
    from superres.inference.models import MODELS

    if not MODELS["photo-x4"].available:
        pytest.skip("photo-x4 is not shipped")
    x = (np.random.default_rng(1).random((24, 24, 3)) * 255).astype(np.uint8)
    torch_up = Upscaler.from_pretrained("photo-x4", precision="fp32", tile=0)
    fast_up = Upscaler.from_pretrained("photo-x4", precision="fp32", tile=0, engine="winograd")
    for s in (0.0, 0.4):
        a, b = torch_up.upscale_pixels(x, strength=s), fast_up.upscale_pixels(x, strength=s)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert isinstance(fast_up._model_at(0.4).body[0], WinogradConv2d)


def test_the_command_line_offers_the_library_engines():
    from superres.apps.upscale import ENGINE_NAMES

    assert ENGINE_NAMES == engines.ENGINES   # kept apart so that --help imports no torch
