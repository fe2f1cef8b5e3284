"""The shipped models: they load from an installed package, and they meet their quality floors."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from superres import load_model
from superres.archs import build_generator
from superres.evaluation.protocol import bicubic_upscaler, evaluate_pairs, generator_upscaler, load_pairs
from superres.inference.models import MODELS, default_model_name
from superres.inference.upscaler import Upscaler
from superres.inference.weights import load_generator

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SET5 = DATA / "benchmarks" / "Set5"
NIQE_PARAMS = DATA / "niqe_pris_params.npz"
needs_data = pytest.mark.skipif(not SET5.is_dir() or not NIQE_PARAMS.is_file(),
                                reason=f"benchmark data not found at {DATA} (only the project's CI has it)")
needs_models = pytest.mark.skipif(not (MODELS["psnr-x4"].available and MODELS["gan-x4"].available),
                                  reason="psnr-x4 / gan-x4 weights are not in superres/pretrained")


needs_x2 = pytest.mark.skipif(not (MODELS["psnr-x2"].available and MODELS["gan-x2"].available),
                              reason="psnr-x2 / gan-x2 weights are not in superres/pretrained")


@needs_models
def test_shipped_files_carry_their_model_card():
    shipped = [name for name, e in MODELS.items() if e.available]
    assert {"psnr-x4", "gan-x4"} <= set(shipped)
    for name in shipped:
        entry = MODELS[name]
        assert entry.path.stat().st_size <= 20 * 2**20
        _, info = load_generator(entry.path)
        meta = info["metadata"]
        assert info["scale"] == entry.scale and meta["format"] == "superres"
        for key in ("arch", "hparams", "description", "config", "step", "train_command", "data", "hardware"):
            assert meta.get(key), f"{name}: metadata {key!r} is empty"
        if name.startswith("gan-"):  # --strength blends toward the PSNR model of the same scale
            assert meta["psnr_twin"] == name.replace("gan-", "psnr-")
        if name == "real-x4":        # ... and the real-world GAN toward its L1 stage
            assert meta["psnr_twin"] == "realnet-x4"
        # The recorded recipe must rerun from a checkout: repo-relative paths, not the training machine's.
        cfg = tomllib.loads(meta["config"])
        paths = cfg["data"]["train_dirs"] + cfg["data"]["val_dirs"] + [cfg["model"]["pretrained"]]
        assert not [p for p in paths if Path(p).is_absolute()], f"{name}: absolute paths in its config"
    # photos first: the adaptive photo family is the default, else the first real-world model
    real = [n for n in ("photo-x4", "realnet-x4", "real-x4") if MODELS[n].available]
    assert default_model_name() == (real[0] if real else "gan-x4")


@needs_models
@needs_data
def test_psnr_x4_meets_its_floor_and_gan_x4_looks_sharper_than_bicubic():
    pairs = load_pairs(SET5, 4)
    psnr_model = load_model("psnr-x4", precision="fp32")
    res = evaluate_pairs(generator_upscaler(psnr_model.model), pairs, 4, metrics=("psnr", "ssim"))
    # VDSR's published Set5 x4 figure, the floor this model was trained to clear
    assert res["psnr"] >= 31.35, res["psnr"]
    gan = load_model("gan-x4", precision="fp32")
    gan_res = evaluate_pairs(generator_upscaler(gan.model), pairs, 4, metrics=("psnr", "niqe"),
                             niqe_params=NIQE_PARAMS)
    bic_res = evaluate_pairs(bicubic_upscaler(4), pairs, 4, metrics=("psnr", "niqe"), niqe_params=NIQE_PARAMS)
    # measured at export: gan-x4 5.88 vs bicubic 8.45 on Set5 (and 5.32 vs 7.61 on Set14)
    assert gan_res["niqe"] < bic_res["niqe"] - 0.5, (gan_res["niqe"], bic_res["niqe"])
    assert gan_res["psnr"] > bic_res["psnr"]


@needs_x2
@needs_data
def test_psnr_x2_meets_vdsr_and_gan_x2_looks_sharper_than_bicubic():
    pairs = load_pairs(SET5, 2)
    res = evaluate_pairs(generator_upscaler(load_model("psnr-x2", precision="fp32").model), pairs, 2,
                         metrics=("psnr",))
    # VDSR's published Set5 x2 figure (37.53); measured at export: 37.62
    assert res["psnr"] >= 37.53, res["psnr"]
    gan_res = evaluate_pairs(generator_upscaler(load_model("gan-x2", precision="fp32").model), pairs, 2,
                             metrics=("psnr", "niqe"), niqe_params=NIQE_PARAMS)
    bic_res = evaluate_pairs(bicubic_upscaler(2), pairs, 2, metrics=("psnr", "niqe"), niqe_params=NIQE_PARAMS)
    # measured at export: gan-x2 5.10 vs bicubic 6.44 on Set5 (4.77 vs 5.41 on Set14)
    assert gan_res["niqe"] < bic_res["niqe"] - 0.5, (gan_res["niqe"], bic_res["niqe"])
    assert gan_res["psnr"] > bic_res["psnr"] + 2, (gan_res["psnr"], bic_res["psnr"])


@needs_models
def test_strength_blends_toward_the_psnr_twin():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    gan = load_model("gan-x4", precision="fp32", tile=0).upscale(img)
    psnr = load_model("psnr-x4", precision="fp32", tile=0).upscale(img)
    zero = load_model("gan-x4", strength=0.0, precision="fp32", tile=0).upscale(img)
    np.testing.assert_array_equal(zero, psnr)
    # 0.25 rather than 0.5, so a blend with the ends swapped would fail too
    quarter = load_model("gan-x4", strength=0.25, precision="fp32", tile=0)
    gan_sd = load_model("gan-x4", precision="fp32").model.state_dict()
    psnr_sd = load_model("psnr-x4", precision="fp32").model.state_dict()
    for k, v in quarter.model.state_dict().items():
        torch.testing.assert_close(v, 0.25 * gan_sd[k] + 0.75 * psnr_sd[k], rtol=0, atol=1e-6)
    blended = build_generator("msrresnet", **quarter.info["hparams"])
    blended.load_state_dict({k: torch.lerp(psnr_sd[k], gan_sd[k], 0.25) for k in gan_sd})
    expected = Upscaler(blended, {"scale": 4}, precision="fp32", tile=0).upscale(img)
    np.testing.assert_array_equal(quarter.upscale(img), expected)
    assert quarter.info["strength"] == 0.25 and quarter.name == "gan-x4@0.25"
    assert not np.array_equal(expected, gan) and not np.array_equal(expected, psnr)


@needs_models
def test_default_model_loads_from_the_installed_package(tmp_path):
    """Build the wheel, unpack it away from the source tree and load the default model from it:
    fails when the weights are not declared as package data."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(REPO)], check=True, cwd=tmp_path)
    wheel = next(wheel_dir.glob("superres-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = ("import superres, numpy as np; m = superres.load_model(); "
            "print(superres.__file__); print(m.name); "
            "print(m.upscale(np.zeros((8, 8, 3), np.uint8)).shape)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site),
                         "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True).stdout.split()
    assert Path(out[0]).is_relative_to(site), out
    assert out[1] == default_model_name() and out[2] == "(32,"


# the photo family has its own floors (test_default_model.py)
REAL_MODELS = [name for name, e in MODELS.items() if e.inputs == "real" and not name.startswith("photo-")]


@pytest.mark.parametrize("name", REAL_MODELS)
@needs_data
def test_shipped_real_world_models_beat_bicubic_on_degraded_set5(name):
    if not MODELS[name].available:
        pytest.skip(f"{name} is not shipped in superres/pretrained yet")
    model = load_model(name, precision="fp32").model
    clean_model = load_model("psnr-x4", precision="fp32").model
    scores = {}
    for track in ("realistic", "camera"):
        pairs = load_pairs(SET5, 4, degrade=track, seed=0)
        scores[track] = {
            "ours": evaluate_pairs(generator_upscaler(model), pairs, 4, metrics=("psnr", "ssim")),
            "bicubic": evaluate_pairs(bicubic_upscaler(4), pairs, 4, metrics=("psnr", "ssim")),
            "psnr-x4": evaluate_pairs(generator_upscaler(clean_model), pairs, 4, metrics=("psnr",))}
    real, cam = scores["realistic"], scores["camera"]
    # Measured at export, Set5 seed 0 (bicubic 22.57 / 0.5769 realistic, 27.20 camera; psnr-x4 22.54
    # and 25.14): realnet-x4 22.93 / 0.6045 and 26.29; real-x4 22.74 / 0.5736 and 25.56. The GAN
    # model spends some of realnet-x4's margin on sharpness, and SSIM with it.
    margin = {"realnet-x4": 0.2, "real-x4": 0.1}[name]
    assert real["ours"]["psnr"] > real["bicubic"]["psnr"] + margin, real
    assert real["ours"]["psnr"] > real["psnr-x4"]["psnr"], real
    if name == "realnet-x4":
        assert real["ours"]["ssim"] > real["bicubic"]["ssim"], real
    # On the milder camera track both trail bicubic (they smooth away detail that is not noise) but
    # are ahead of the clean-input models, which sharpen the noise.
    cam_margin = {"realnet-x4": 0.5, "real-x4": 0.2}[name]
    assert cam["ours"]["psnr"] > cam["psnr-x4"]["psnr"] + cam_margin, cam
