"""`--precision int8`: ONNX Runtime static int8 (superres/int8.py) through the inference core.

A tiny MSRResNet is quantized once per module (a few seconds: export + calibration); the shipped
int8 files are checked against their weights and against fp32 on a small crop.
"""
from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from superres.inference import runtime  # noqa: E402
from superres.archs import build_generator  # noqa: E402
from superres.apps.cli import main  # noqa: E402
from superres.inference.upscaler import Upscaler  # noqa: E402
from superres.inference.int8 import Int8Error, Int8Generator, int8_path, load_int8  # noqa: E402
from superres.inference.models import MODELS  # noqa: E402
from superres.inference.weights import save_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [name for name, entry in MODELS.items() if entry.available]
# every shipped model brings an int8 file: the MSRResNet ones calibrated on bicubic LR, realnet-x4
# (for real photos) on LR made by the realistic degradation
SHIPPED_INT8 = SHIPPED


def _tiny(scale: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_generator("msrresnet", upscale=scale, num_feat=8, num_block=1)
    # PyTorch's default init instead of the 0.1-scaled one: the residual the net adds to its bilinear
    # skip is then large enough that losing it in quantization would show
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    return model.eval()


def _image(h: int = 20, w: int = 24) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [np.sin(xx / 3 + k) * np.cos(yy / 4 - k) for k in range(3)]
    return ((np.stack(planes, axis=2) * 0.4 + 0.5) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_pair():
    model = _tiny()
    calib = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return (Upscaler(model, device="cpu", precision="fp32", tile=0),
            Upscaler(model, device="cpu", precision="int8", int8_calibration=calib, tile=0))


def test_int8_output_is_close_to_fp32_and_keeps_the_networks_part(tiny_pair):
    fp32, int8 = tiny_pair
    assert isinstance(int8.model, Int8Generator) and int8.precision == "int8" and int8.amp_dtype is None
    img = _image()
    a, b = fp32.upscale(img).astype(int), int8.upscale(img).astype(int)
    assert a.shape == b.shape == (40, 48, 3)
    diff = np.abs(a - b)
    assert diff.max() <= 4 and diff.mean() < 1.0
    # The network's own contribution (fp32 output minus its bilinear skip) is ~15 levels here; int8
    # must keep it, not collapse to the skip
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    skip = (F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False).clamp(0, 1) * 255).round()
    skip = skip[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(a - skip).mean() > 10 * diff.mean()


def test_int8_tiles_and_batches_like_the_whole_image(tiny_pair):
    _, int8 = tiny_pair
    img = _image(32, 32)
    whole = int8.upscale(img)
    tiler = copy.copy(int8)                    # the same int8 module, run tile by tile
    tiler.tile, tiler.tile_overlap = 16, 8
    assert tiler.count_tiles(32, 32) > 1
    # activation ranges are fixed by calibration, not by the input, so a tile computes what the
    # whole image does wherever its overlap covers the receptive field: only the seams' blend differs
    assert np.abs(whole.astype(int) - tiler.upscale(img)).max() <= 2
    frames = int8.upscale_frames([img, img[::-1].copy()])          # one batch of two through ORT
    assert np.abs(frames[0].astype(int) - whole).max() <= 1


def test_the_int8_graph_runs_on_the_engine_asked_for(tiny_pair, tmp_path, monkeypatch):
    """ONNX Runtime by default (also for the library's `torch`), OpenVINO when asked, the measured
    choice under auto (OpenVINO only within 1 level of ONNX Runtime), never an fp32 engine."""
    from superres.inference import engines

    monkeypatch.setenv("SUPERRES_CACHE_DIR", str(tmp_path / "cache"))
    _, int8 = tiny_pair
    assert int8.engine == "onnxruntime" and int8.model.engine == "onnxruntime"
    assert int8.model.on("onnxruntime") is int8.model
    with pytest.raises(runtime.RuntimeChoiceError, match="'winograd' runs fp32"):
        Upscaler(_tiny(), device="cpu", precision="int8", int8_calibration=torch.rand(2, 3, 8, 8), engine="winograd")
    img = _image()
    ort_out = int8.upscale(img).astype(int)
    if "openvino" in engines.available_engines():
        ov = copy.copy(int8)
        ov.model = int8.model.on("openvino")
        assert ov.model.engine == "openvino" and ov.model.metadata == int8.model.metadata
        assert torch.equal(ov.model.onnx_sha256, int8.model.onnx_sha256)
        # the same integer graph; the runtimes requantize in their own order, a few levels apart
        assert np.abs(ov.upscale(img).astype(int) - ort_out).max() <= 4
    # auto: the probe's answer, remembered
    calls = []

    def probe(model, makers):
        calls.append(sorted(makers))
        return {"onnxruntime": {"seconds": 0.3, "max_diff_levels": 0},
                "openvino": {"seconds": 0.1, "max_diff_levels": 1}}

    monkeypatch.setattr(engines, "_probe_generators", probe)
    monkeypatch.setattr(engines, "available_engines", lambda: ["torch", "onnxruntime", "openvino"])
    monkeypatch.setattr(Int8Generator, "on", lambda self, engine: self)   # no OpenVINO needed here
    calib = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for _ in range(2):
        Upscaler(_tiny(), device="cpu", precision="int8", int8_calibration=calib, engine="auto")
    assert calls == [["onnxruntime", "openvino"]]
    assert engines.choose_int8_engine(_tiny(), lambda n: None) == "openvino"
    monkeypatch.setattr(engines, "_probe_generators", lambda model, makers: {
        "onnxruntime": {"seconds": 0.3, "max_diff_levels": 0}, "openvino": {"seconds": 0.1, "max_diff_levels": 3}})
    monkeypatch.setenv("SUPERRES_CACHE_DIR", str(tmp_path / "cache2"))
    assert engines.choose_int8_engine(_tiny(), lambda n: None) == "onnxruntime"   # faster but 3 levels off


def test_int8_is_cpu_only(monkeypatch):
    with pytest.raises(runtime.RuntimeChoiceError, match="CPU only"):
        runtime.check_int8(torch.device("cuda"))
    # the Upscaler refuses before quantizing anything
    monkeypatch.setattr(runtime, "pick_device", lambda name: torch.device("cuda"))
    with pytest.raises(runtime.RuntimeChoiceError, match="CPU only"):
        Upscaler(_tiny(), precision="int8", int8_calibration=torch.rand(1, 3, 8, 8))


def test_int8_option_validation():
    with pytest.raises(Int8Error, match="needs calibration images"):
        Upscaler(_tiny(), device="cpu", precision="int8")          # no shipped file, no calibration
    with pytest.raises(Int8Error, match="--strength blend"):
        Upscaler(_tiny(), {"path": "x.safetensors", "strength": 0.5}, device="cpu", precision="int8")
    with pytest.raises(runtime.RuntimeChoiceError, match="only used with precision 'int8'"):
        Upscaler(_tiny(), device="cpu", precision="fp32", int8_calibration=torch.rand(1, 3, 8, 8))
    with pytest.raises(runtime.RuntimeChoiceError, match="inference only"):
        runtime.pick_precision("int8", torch.device("cpu"))
    with pytest.raises(runtime.RuntimeChoiceError, match="allowed values: auto, fp32, bf16, fp16, int8"):
        Upscaler(_tiny(), device="cpu", precision="int4")
    assert "int8" not in runtime.PRECISIONS        # training's choices (train.precision) stay autocast ones


def test_which_shipped_models_bring_an_int8_file():
    assert [n for n in SHIPPED if int8_path(MODELS[n].path).is_file()] == SHIPPED_INT8


@pytest.mark.parametrize("name", SHIPPED_INT8)
def test_shipped_int8_files_match_their_weights_and_hold_int8_convs(name):
    import onnx

    from superres.inference.weights import load_generator

    model, _ = load_generator(MODELS[name].path)
    gen = load_int8(MODELS[name].path, model)
    assert gen.metadata["source"] == MODELS[name].filename
    calibration = gen.metadata["calibration"]
    assert "T91" in calibration and "BSD200" in calibration
    # a model for real photos is calibrated on the inputs it is for, the others on clean LR
    real = MODELS[name].inputs == "real"
    assert ("degradation 'realistic'" in calibration) == real and ("MATLAB bicubic" in calibration) == (not real)
    proto = onnx.load(str(int8_path(MODELS[name].path)))
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    int8_weights = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    # every conv reads its weight through a DequantizeLinear of an int8 initializer
    dq = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    torch_convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(torch_convs)
    assert all(dq.get(c.input[1]) in int8_weights for c in convs)


def _photo_folder(folder: Path, count: int, side: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        img = np.clip(_image(side, side).astype(int) + rng.integers(-20, 21, (side, side, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_calibration_patches_follow_the_named_degradation(tmp_path):
    from superres.data.resize import imresize
    from superres.data.calibration import calibration_patches

    folder = _photo_folder(tmp_path / "train", 3)
    kw = dict(count=3, lr_size=8, seed=0)
    bicubic = calibration_patches([folder], 4, **kw)
    assert bicubic.shape == (3, 3, 8, 8)
    # bicubic patches are MATLAB-bicubic downscales of 32x32 HR crops: one of the images' crops
    # reproduces exactly (whichever image and place the seed drew, the values are imresize's)
    crops = [np.asarray(Image.open(f)) for f in sorted(folder.iterdir())]
    lrs = [imresize(np.ascontiguousarray(c[y:y + 32, x:x + 32]), 0.25)
           for c in crops for y in range(9) for x in range(9)]
    got = (bicubic[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert any(np.array_equal(got, lr) for lr in lrs)
    real = calibration_patches([folder], 4, degrade="realistic", **kw)
    assert torch.equal(real, calibration_patches([folder], 4, degrade="realistic", **kw))   # seeded
    assert real.shape == bicubic.shape and not torch.equal(real, bicubic)
    with pytest.raises(ValueError, match="allowed values: bicubic, realistic, camera"):
        calibration_patches([folder], 4, degrade="jpeg", **kw)


def test_a_stale_int8_file_is_refused(tmp_path):
    weights = tmp_path / "psnr-x2.safetensors"
    save_weights(weights, build_generator("msrresnet", upscale=2, num_feat=8, num_block=1))
    shutil.copy(int8_path(MODELS["psnr-x2"].path), int8_path(weights))
    with pytest.raises(Int8Error, match="made from other weights"):
        Upscaler.from_pretrained(str(weights), device="cpu", precision="int8")


@pytest.mark.parametrize("name", ["psnr-x4", "realnet-x4"])
def test_shipped_x4_models_in_int8_are_close_to_fp32(name):
    if name not in SHIPPED:
        pytest.skip(f"{name} is not shipped in this build")
    lr = np.asarray(Image.open(REPO / "examples/chelsea.png").convert("RGB"))[100:132, 140:172]
    fp32 = Upscaler.from_pretrained(name, device="cpu", precision="fp32", tile=0).upscale(lr).astype(int)
    int8 = Upscaler.from_pretrained(name, device="cpu", precision="int8", tile=0).upscale(lr).astype(int)
    diff = np.abs(fp32 - int8)
    assert 0 < diff.mean() < 1.0 and np.percentile(diff, 99.9) <= 8


@pytest.mark.skipif("psnr-x2" not in SHIPPED, reason="psnr-x2 is not shipped in this build")
def test_upscale_command_with_int8(tmp_path, caplog):
    src = tmp_path / "in.png"
    Image.fromarray(_image()).save(src)
    assert main(["upscale", str(src), "-o", str(tmp_path / "int8.png"), "--model", "psnr-x2", "--device", "cpu",
                 "--precision", "int8", "--tile", "0"]) == 0
    assert main(["upscale", str(src), "-o", str(tmp_path / "fp32.png"), "--model", "psnr-x2", "--device", "cpu",
                 "--precision", "fp32", "--tile", "0"]) == 0
    a = np.asarray(Image.open(tmp_path / "fp32.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "int8.png")).astype(int)
    assert a.shape == b.shape == (40, 48, 3) and 0 < np.abs(a - b).mean() < 1.0
    with caplog.at_level(logging.ERROR):
        assert main(["upscale", str(src), "-o", str(tmp_path / "x.png"), "--model", "psnr-x2", "--device", "cpu",
                     "--int8-calibration", str(tmp_path)]) == 2
    assert "only used with precision 'int8'" in caplog.text


@pytest.mark.skipif("gan-x2" not in SHIPPED, reason="gan-x2 is not shipped in this build")
def test_service_in_int8_offers_no_strength_blends():
    from superres.apps.serve import ModelPool, RequestError

    pool = ModelPool(["gan-x2"], device="cpu", precision="int8", tile=0)
    assert pool.slots["gan-x2"].has_twin and pool.slots["gan-x2"].upscaler.precision == "int8"
    assert pool.describe()[0]["strength"] is False      # the page shows no strength slider
    assert pool.check("gan-x2", 1.0) == ("gan-x2", None)
    with pytest.raises(RequestError, match="cannot blend models served in int8") as e:
        pool.check("gan-x2", 0.5)
    assert e.value.status == 422
