"""Discriminators: output shapes, features, public key names, and the size check at config time."""
from __future__ import annotations

import pytest
import torch

from superres.archs import (DISCRIMINATORS, build_discriminator, discriminator_hparams,
                            discriminator_input_error)
from superres.training.config import ConfigError, load_config

# A patch size each registry entry accepts, and the logit shape it gives for it.
SIZES = {"vgg128": 128, "vgg256": 256, "unet": 32, "patchgan": 32}
OUT = {"vgg128": (2, 1), "vgg256": (2, 1), "unet": (2, 1, 32, 32), "patchgan": (2, 1, 2, 2)}


def bn(name: str) -> list[str]:
    return [f"{name}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def sn(name: str) -> list[str]:
    return [f"{name}.weight_orig", f"{name}.weight_u", f"{name}.weight_v"]


VGG128_KEYS = (
    ["conv0_0.weight", "conv0_0.bias", "conv0_1.weight", *bn("bn0_1"),
     "conv1_0.weight", *bn("bn1_0"), "conv1_1.weight", *bn("bn1_1"),
     "conv2_0.weight", *bn("bn2_0"), "conv2_1.weight", *bn("bn2_1"),
     "conv3_0.weight", *bn("bn3_0"), "conv3_1.weight", *bn("bn3_1"),
     "conv4_0.weight", *bn("bn4_0"), "conv4_1.weight", *bn("bn4_1"),
     "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"])

UNET_KEYS = (["conv0.weight", "conv0.bias"]
             + sn("conv1") + sn("conv2") + sn("conv3") + sn("conv4") + sn("conv5") + sn("conv6")
             + sn("conv7") + sn("conv8") + ["conv9.weight", "conv9.bias"])


def test_registry_covers_the_table():
    assert set(DISCRIMINATORS) == set(SIZES)


@pytest.mark.parametrize("name", sorted(DISCRIMINATORS))
def test_output_shapes_and_features(name):
    torch.manual_seed(0)
    d = build_discriminator(name, num_feat=8)
    s = SIZES[name]
    x = torch.rand(2, 3, s, s)
    out = d(x)
    assert out.shape == OUT[name]
    logits, feats = d(x, return_features=True)
    assert logits.shape == OUT[name]
    d.eval()  # in train mode BN statistics and the spectral-norm power iteration move on every call
    assert torch.equal(d(x, return_features=True)[0], d(x))
    assert len(feats) >= 3 and all(f.shape[0] == 2 and f.requires_grad for f in feats)
    assert d.hparams["num_feat"] == 8
    assert discriminator_input_error(name, {"num_feat": 8}, s) is None


def test_vgg128_keys_and_shapes():
    d = build_discriminator("vgg128")
    sd = d.state_dict()
    assert list(sd) == VGG128_KEYS
    assert sd["linear1.weight"].shape == (100, 64 * 8 * 4 * 4)
    assert sd["conv0_1.weight"].shape == (64, 64, 4, 4) and sd["conv3_0.weight"].shape == (512, 256, 3, 3)
    d.load_state_dict(sd, strict=True)


def test_vgg256_adds_a_fifth_stage():
    d = build_discriminator("vgg256", num_feat=8)
    extra = ["conv5_0.weight", *bn("bn5_0"), "conv5_1.weight", *bn("bn5_1")]
    assert list(d.state_dict()) == VGG128_KEYS[:-4] + extra + VGG128_KEYS[-4:]
    assert d.hparams["input_size"] == 256


def test_vgg_rejects_other_sizes():
    d = build_discriminator("vgg128", num_feat=8)
    with pytest.raises(ValueError, match="128x128"):
        d(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="input_size=256"):
        discriminator_hparams("vgg128", {"input_size": 256})


def test_unet_keys_spectral_norm():
    d = build_discriminator("unet")
    sd = d.state_dict()
    assert list(sd) == UNET_KEYS
    assert sd["conv1.weight_orig"].shape == (128, 64, 4, 4)
    assert sd["conv4.weight_orig"].shape == (256, 512, 3, 3) and sd["conv9.weight"].shape == (1, 64, 3, 3)
    assert sd["conv1.weight_u"].shape == (128,) and sd["conv1.weight_v"].shape == (64 * 16,)
    d.load_state_dict(sd, strict=True)


def test_patchgan_spectral_norm_has_no_batchnorm():
    d = build_discriminator("patchgan", num_feat=8, spectral_norm=True)
    keys = list(d.state_dict())
    assert not any("running_mean" in k for k in keys)
    assert "body.0.0.weight_orig" in keys and "head.weight_orig" in keys
    plain = build_discriminator("patchgan", num_feat=8)
    assert any("running_mean" in k for k in plain.state_dict())
    # 70x70 PatchGAN on 256 gives pix2pix's 30x30 map
    assert plain.output_size(256, 3) == 30 and plain(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_unknown_hparam_is_an_error():
    with pytest.raises(ValueError, match="allowed"):
        build_discriminator("unet", num_layers=3)


# ---------------------------------------------------------------------------------------------
# the size check runs when the config is loaded

def gan(*items: str) -> list[str]:
    return ["losses.adversarial=0.01", *items]


@pytest.mark.parametrize("arch,patch,needs", [("vgg128", 96, "exactly 128x128"),
                                              ("vgg256", 128, "exactly 256x256"),
                                              ("unet", 36, "multiple of 8"),
                                              ("patchgan", 16, "at least 24")])
def test_config_rejects_patch_that_does_not_fit(arch, patch, needs):
    with pytest.raises(ConfigError, match=needs) as e:
        load_config(None, gan(f"disc.arch={arch}", f"data.hr_patch={patch}"))
    assert f"data.hr_patch = {patch}" in str(e.value) and arch in str(e.value)


def test_size_check_only_when_a_discriminator_is_used():
    # stage 1 builds no discriminator, so the default vgg128 does not constrain its patch
    cfg = load_config(None, ["data.hr_patch=64"])
    assert cfg.disc.arch == "vgg128"
    with pytest.raises(ConfigError, match="128"):
        load_config(None, ["data.hr_patch=64", "losses.feature_matching=1.0"])
    assert load_config(None, gan("disc.arch=unet", "data.hr_patch=64")).disc.arch == "unet"


def test_config_rejects_unknown_discriminator():
    with pytest.raises(ConfigError, match=r"disc.arch = 'resnet'.*allowed values: \['patchgan'"):
        load_config(None, gan("disc.arch=resnet"))
    with pytest.raises(ConfigError, match="disc.hparams"):
        load_config(None, gan("disc.arch=unet", "disc.hparams={depth=3}"))
