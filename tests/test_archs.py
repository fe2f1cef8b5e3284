"""Generators: shapes for every arch and scale, public key layouts, weights files and detection."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from superres.archs import GENERATORS, build_generator
from superres.archs.rrdbnet import convert_esrgan_trunk
from superres.weights import WeightsError, detect_arch, load_generator, read_state_dict, save_weights

TINY = {"msrresnet": dict(num_feat=8, num_block=2), "rrdbnet": dict(num_feat=8, num_block=1, num_grow_ch=4),
        "compact": dict(num_feat=8, num_conv=2)}


@pytest.mark.parametrize("arch,scale", [(a, s) for a in GENERATORS for s in GENERATORS[a].scales])
def test_every_arch_and_scale_upscales_by_its_factor(arch, scale):
    model = build_generator(arch, upscale=scale, **TINY[arch]).eval()
    assert model.hparams["upscale"] == scale and model.hparams["num_feat"] == 8
    with torch.no_grad():
        y = model(torch.rand(2, 3, 12, 16))
    assert y.shape == (2, 3, 12 * scale, 16 * scale)


def test_hyperparameters_are_keyword_only():
    with pytest.raises(TypeError):
        GENERATORS["msrresnet"].cls(3, 3, 64)   # noqa: the positional call must fail


def _public_rrdbnet_x4(num_feat=8, num_block=2, grow=4):
    """The key names and shapes of ESRGAN / Real-ESRGAN's RRDBNet x4 checkpoints, written out."""
    sd = {"conv_first.weight": (num_feat, 3, 3, 3), "conv_first.bias": (num_feat,)}
    for b in range(num_block):
        for r in (1, 2, 3):
            for c in range(1, 6):
                cin = num_feat + (c - 1) * grow
                cout = grow if c < 5 else num_feat
                sd[f"body.{b}.rdb{r}.conv{c}.weight"] = (cout, cin, 3, 3)
                sd[f"body.{b}.rdb{r}.conv{c}.bias"] = (cout,)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = (num_feat, num_feat, 3, 3), (num_feat,)
    sd["conv_last.weight"], sd["conv_last.bias"] = (3, num_feat, 3, 3), (3,)
    return {k: torch.randn(v) * 0.01 for k, v in sd.items()}


def _public_msrresnet_x4(num_feat=8, num_block=2):
    sd = {"conv_first.weight": (num_feat, 3, 3, 3), "conv_first.bias": (num_feat,)}
    for b in range(num_block):
        for c in (1, 2):
            sd[f"body.{b}.conv{c}.weight"], sd[f"body.{b}.conv{c}.bias"] = (num_feat, num_feat, 3, 3), (num_feat,)
    for name in ("upconv1", "upconv2"):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = (4 * num_feat, num_feat, 3, 3), (4 * num_feat,)
    sd["conv_hr.weight"], sd["conv_hr.bias"] = (num_feat, num_feat, 3, 3), (num_feat,)
    sd["conv_last.weight"], sd["conv_last.bias"] = (3, num_feat, 3, 3), (3,)
    return {k: torch.randn(v) * 0.01 for k, v in sd.items()}


def _public_compact_x4(num_feat=8, num_conv=2):
    """Real-ESRGAN's SRVGGNetCompact: convs and PReLUs in one `body` sequence."""
    sd = {"body.0.weight": (num_feat, 3, 3, 3), "body.0.bias": (num_feat,), "body.1.weight": (num_feat,)}
    i = 2
    for _ in range(num_conv):
        sd[f"body.{i}.weight"], sd[f"body.{i}.bias"] = (num_feat, num_feat, 3, 3), (num_feat,)
        sd[f"body.{i + 1}.weight"] = (num_feat,)
        i += 2
    sd[f"body.{i}.weight"], sd[f"body.{i}.bias"] = (48, num_feat, 3, 3), (48,)
    return {k: torch.randn(v) * 0.01 for k, v in sd.items()}


@pytest.mark.parametrize("arch,make,hp", [
    ("rrdbnet", _public_rrdbnet_x4, dict(num_feat=8, num_block=2, num_grow_ch=4)),
    ("msrresnet", _public_msrresnet_x4, dict(num_feat=8, num_block=2)),
    ("compact", _public_compact_x4, dict(num_feat=8, num_conv=2, act_type="prelu")),
])
def test_public_key_layouts_load_strictly_and_are_detected(arch, make, hp, tmp_path):
    sd = make()
    model = build_generator(arch, upscale=4, **hp)
    model.load_state_dict(sd, strict=True)   # the names and shapes of the public checkpoints
    found_arch, found_hp = detect_arch(sd)
    assert found_arch == arch and found_hp["upscale"] == 4 and found_hp["num_feat"] == 8
    # a BasicSR-style .pth (EMA weights under params_ema, DataParallel prefix) loads the same
    path = tmp_path / "net.pth"
    torch.save({"params_ema": {f"module.{k}": v for k, v in sd.items()}, "iter": 5}, path)
    loaded, info = load_generator(path)
    assert info["arch"] == arch
    for k, v in sd.items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_old_esrgan_names_are_converted():
    sd = _public_rrdbnet_x4(num_block=1)
    old = {}
    for k, v in sd.items():
        k2 = k.replace("body.0.rdb", "RRDB_trunk.0.RDB").replace("conv_body", "trunk_conv")
        k2 = k2.replace("conv_up1", "upconv1").replace("conv_up2", "upconv2").replace("conv_hr", "HRconv")
        old[k2] = v
    assert set(convert_esrgan_trunk(old)) == set(sd)


def test_safetensors_round_trip_keeps_weights_and_metadata(tmp_path):
    model = build_generator("msrresnet", upscale=3, **TINY["msrresnet"])
    path = tmp_path / "m.safetensors"
    save_weights(path, model, extra_metadata={"description": "test model", "metrics": {"psnr": 30.0}})
    loaded, info = load_generator(path)
    assert info["arch"] == "msrresnet" and info["scale"] == 3 and info["hparams"] == model.hparams
    assert info["metadata"]["description"] == "test model"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert not list(tmp_path.glob("*.tmp")), "the atomic write left its temp file behind"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask   # not mkstemp's 0600


def test_unknown_weights_say_what_was_found(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(WeightsError, match="encoder.weight"):
        load_generator(path)


def test_pth_is_loaded_without_unpickling_code(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"params": Evil()}, path)
    with pytest.raises(WeightsError, match=r"(?s)weights_only=True.*GLOBAL print.*Only plain tensor checkpoints"):
        read_state_dict(path)
    assert "pwned" not in capsys.readouterr().out


def test_one_pixel_image_upscales(tmp_path):
    from superres.upscale import Upscaler

    model = build_generator("msrresnet", upscale=4, **TINY["msrresnet"])
    up = Upscaler(model, {"arch": "msrresnet", "scale": 4}, precision="fp32", tile=0)
    out = up.upscale(np.full((1, 1, 3), 128, np.uint8))
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
