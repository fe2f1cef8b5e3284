"""Losses against hand-computed values, the GAN sign convention, and the VGG19 perceptual loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from superres.training import losses as L

# ---------------------------------------------------------------------------------------------
# pixel


def test_pixel_losses_hand_computed():
    sr = torch.tensor([0.0, 0.5, 1.0, 0.25])
    hr = torch.tensor([0.1, 0.5, 0.7, 0.75])
    # differences: -0.1, 0, 0.3, -0.5
    assert L.pixel_loss("l1", sr, hr).item() == pytest.approx((0.1 + 0 + 0.3 + 0.5) / 4)
    assert L.pixel_loss("mse", sr, hr).item() == pytest.approx((0.01 + 0 + 0.09 + 0.25) / 4)
    expected = sum(math.sqrt(d * d + 1e-6) for d in (0.1, 0.0, 0.3, 0.5)) / 4
    assert L.pixel_loss("charbonnier", sr, hr).item() == pytest.approx(expected, rel=1e-6)


def test_detail_loss_sees_only_the_high_frequencies():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 24, 24)
    assert L.detail_loss(x, x).item() == 0.0
    # a constant offset has no high-pass residual, and a smooth ramp next to none (only where the
    # blur reflects it at the edges)
    assert L.detail_loss(x + 0.3, x).item() < 1e-6
    ramp = torch.linspace(0, 0.2, 24).view(1, 1, 1, 24)
    assert L.detail_loss(x + ramp, x).item() < 0.01 * ramp.mean().item()
    # fine noise is all high-pass: the loss is most of the noise's mean absolute value
    noise = 0.1 * torch.randn_like(x)
    assert 0.5 * noise.abs().mean() < L.detail_loss(x + noise, x) < 1.2 * noise.abs().mean()
    # the hand-computed definition
    want = F.l1_loss(x - L.gaussian_blur(x, 2.0), (x + noise) - L.gaussian_blur(x + noise, 2.0))
    assert L.detail_loss(x, x + noise, 2.0).item() == pytest.approx(want.item())


def test_pixel_loss_unknown_kind_names_allowed():
    with pytest.raises(ValueError, match="charbonnier"):
        L.pixel_loss("l3", torch.zeros(1), torch.zeros(1))


# ---------------------------------------------------------------------------------------------
# adversarial: values

def sp(x: float) -> float:  # softplus
    return math.log1p(math.exp(x))


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def test_vanilla_values():
    assert L.vanilla_d_loss(t(0.0), t(0.0)).item() == pytest.approx(2 * math.log(2))
    # -log sigmoid(2) - log(1 - sigmoid(-1)) = softplus(-2) + softplus(-1)
    assert L.vanilla_d_loss(t(2.0), t(-1.0)).item() == pytest.approx(sp(-2) + sp(-1), rel=1e-6)
    assert L.vanilla_g_loss(t(0.0)).item() == pytest.approx(math.log(2))
    assert L.vanilla_g_loss(t(1.0, 3.0)).item() == pytest.approx((sp(-1) + sp(-3)) / 2, rel=1e-6)


def test_lsgan_values():
    assert L.lsgan_d_loss(t(1.0), t(0.0)).item() == 0.0
    assert L.lsgan_d_loss(t(0.0, 2.0), t(1.0, -1.0)).item() == pytest.approx(1.0 + 1.0)
    assert L.lsgan_g_loss(t(0.0, 3.0)).item() == pytest.approx((1 + 4) / 2)


def test_hinge_values():
    assert L.hinge_d_loss(t(0.5), t(-0.5)).item() == pytest.approx(0.5 + 0.5)
    assert L.hinge_d_loss(t(2.0), t(-3.0)).item() == 0.0  # both margins met
    assert L.hinge_g_loss(t(2.0, 4.0)).item() == pytest.approx(-3.0)


def test_ragan_values():
    real, fake = t(1.0, 3.0), t(0.0, 2.0)  # means 2 and 1
    d = 0.5 * ((sp(-(1 - 1)) + sp(-(3 - 1))) / 2 + (sp(0 - 2) + sp(2 - 2)) / 2)
    g = 0.5 * ((sp(1 - 1) + sp(3 - 1)) / 2 + (sp(-(0 - 2)) + sp(-(2 - 2))) / 2)
    assert L.ragan_d_loss(real, fake).item() == pytest.approx(d, rel=1e-6)
    assert L.ragan_g_loss(fake, real).item() == pytest.approx(g, rel=1e-6)
    with pytest.raises(ValueError, match="real"):
        L.ragan_g_loss(fake, None)


# (D loss, G loss) at all-zero logits: D is undecided. vanilla: 2 * -log(1/2) and -log(1/2);
# lsgan: (0 - 1)^2 + 0^2 and (0 - 1)^2; hinge: relu(1) + relu(1) and -0; ragan: half of 2 * log 2.
_AT_ZERO = {"vanilla": (2 * math.log(2), math.log(2)), "lsgan": (1.0, 1.0), "hinge": (2.0, 0.0),
            "ragan": (math.log(2), math.log(2))}


@pytest.mark.parametrize("gan_type", sorted(L.GAN_LOSSES))
def test_logit_maps_average_over_all_elements(gan_type):
    g_loss, d_loss = L.GAN_LOSSES[gan_type]
    assert set(_AT_ZERO) == set(L.GAN_LOSSES)
    zeros = torch.zeros(2, 1, 3, 3)
    d0, g0 = _AT_ZERO[gan_type]
    # a mean, not a sum: an 18-element map of zeros scores what a single zero logit does
    assert d_loss(zeros, zeros).item() == pytest.approx(d0, abs=1e-6)
    assert g_loss(zeros, zeros).item() == pytest.approx(g0, abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(2, 1, 3, 3, generator=gen) + 1, torch.randn(2, 1, 3, 3, generator=gen) - 1
    d, g = d_loss(real, fake), g_loss(fake, real)
    # every element counts once whatever the map's shape (per-pixel U-Net maps, PatchGAN grids)
    flat_r, flat_f = real.reshape(-1, 1), fake.reshape(-1, 1)
    torch.testing.assert_close(d_loss(flat_r, flat_f), d)
    torch.testing.assert_close(g_loss(flat_f, flat_r), g)
    # and a batch repeated twice has the same mean
    torch.testing.assert_close(d_loss(real.repeat(2, 1, 1, 1), fake.repeat(2, 1, 1, 1)), d)
    # moving one element moves the loss by that element's share: 1/18 of its own change
    bumped = fake.clone()
    bumped[0, 0, 0, 0] += 0.5
    single = g_loss(bumped[0:1, :, 0:1, 0:1], real) - g_loss(fake[0:1, :, 0:1, 0:1], real)
    if gan_type != "ragan":   # ragan's terms couple every element through the means
        torch.testing.assert_close(g_loss(bumped, real) - g, single / 18, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# adversarial: the sign convention, higher logit = more real

@pytest.mark.parametrize("gan_type", sorted(L.GAN_LOSSES))
def test_sign_convention(gan_type):
    g_loss, d_loss = L.GAN_LOSSES[gan_type]
    hi, lo = t(3.0, 2.5, 4.0), t(-3.0, -2.0, -4.0)
    # D is doing well when real logits are high and fake logits low.
    assert d_loss(hi, lo) < d_loss(lo, hi)
    # G is doing well when its fakes get high logits (against the same real logits).
    real = t(0.5, 0.0, -0.5)
    assert g_loss(hi, real) < g_loss(lo, real)


@pytest.mark.parametrize("gan_type", sorted(L.GAN_LOSSES))
def test_gradients_push_the_right_way(gan_type):
    g_loss, d_loss = L.GAN_LOSSES[gan_type]
    real = t(0.3, -0.2, 0.1).requires_grad_()
    fake = t(0.1, 0.4, -0.3).requires_grad_()
    d_loss(real, fake).backward()
    assert real.grad.sum() < 0 and fake.grad.sum() > 0  # descent raises real, lowers fake
    fake_g = t(0.1, 0.4, -0.3).requires_grad_()
    g_loss(fake_g, t(0.3, -0.2, 0.1)).backward()
    assert fake_g.grad.sum() < 0  # descent raises the fake logits


def test_feature_matching_hand_computed_and_detached():
    fake = [t(1.0, 2.0).requires_grad_(), t(0.0).requires_grad_()]
    real = [t(0.0, 0.0).requires_grad_(), t(3.0).requires_grad_()]
    loss = L.feature_matching_loss(fake, real)
    assert loss.item() == pytest.approx(((1 + 2) / 2 + 3) / 2)
    loss.backward()
    assert fake[0].grad is not None and real[0].grad is None
    with pytest.raises(ValueError):
        L.feature_matching_loss(fake, real[:1])


# ---------------------------------------------------------------------------------------------
# perceptual

def test_vgg19_layout_matches_torchvision_indices():
    assert len(L.VGG19_LAYERS) == 37
    expected = {"conv1_1": 0, "relu1_1": 1, "conv1_2": 2, "pool1": 4, "conv2_1": 5, "conv3_1": 10,
                "conv3_4": 16, "conv4_1": 19, "conv4_4": 25, "conv5_1": 28, "conv5_4": 34, "relu5_4": 35,
                "pool5": 36}
    assert {k: L.VGG19_LAYERS.index(k) for k in expected} == expected
    feats = L.vgg19_features()
    convs = [i for i, m in enumerate(feats) if isinstance(m, torch.nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert feats[34].weight.shape == (512, 512, 3, 3) and feats[10].weight.shape == (256, 128, 3, 3)


def test_layer_before_or_after_activation():
    assert L.resolve_vgg_layer("conv5_4", before_activation=True) == "conv5_4"
    assert L.resolve_vgg_layer("conv5_4", before_activation=False) == "relu5_4"
    assert L.resolve_vgg_layer("relu2_2", before_activation=True) == "relu2_2"
    with pytest.raises(ValueError, match="allowed values"):
        L.resolve_vgg_layer("conv6_1", True)


@pytest.mark.parametrize("name,full", [("vgg19.pth", True), ("vgg19_features.safetensors", False)])
def test_perceptual_loads_torchvision_layout(tmp_path, name, full, write_vgg19):
    ref = write_vgg19(tmp_path / name, full=full)
    loss = L.VGGPerceptualLoss.from_file(tmp_path / name, {"conv2_2": 1.0}, before_activation=True)
    assert len(loss.features) == 8  # only as deep as conv2_2 (index 7)
    for k, v in loss.features.state_dict().items():
        assert torch.equal(v, ref[k])
    assert not any(p.requires_grad for p in loss.parameters())


def test_perceptual_value_hand_computed(tmp_path, write_vgg19):
    write_vgg19(tmp_path / "vgg.pth")
    loss = L.VGGPerceptualLoss.from_file(tmp_path / "vgg.pth", {"conv1_1": 0.5, "conv1_2": 2.0},
                                         before_activation=False)
    torch.manual_seed(1)
    sr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    mean = torch.tensor(L.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(L.IMAGENET_STD).view(1, 3, 1, 1)
    w1, b1 = loss.features[0].weight, loss.features[0].bias
    w2, b2 = loss.features[2].weight, loss.features[2].bias

    def feats(x):
        r1 = F.relu(F.conv2d((x - mean) / std, w1, b1, padding=1))
        return r1, F.relu(F.conv2d(r1, w2, b2, padding=1))

    (a1, a2), (h1, h2) = feats(sr), feats(hr)
    expected = 0.5 * (a1 - h1).abs().mean() + 2.0 * (a2 - h2).abs().mean()
    assert loss(sr, hr).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss(hr, hr).item() == 0.0


def test_perceptual_rejects_other_state_dicts(tmp_path):
    torch.save({"conv_first.weight": torch.zeros(1)}, tmp_path / "gen.pth")
    with pytest.raises(ValueError, match="VGG19"):
        L.VGGPerceptualLoss.from_file(tmp_path / "gen.pth", {"conv1_1": 1.0})
    torch.save({"features.0.weight": torch.zeros(64, 3, 5, 5), "features.0.bias": torch.zeros(64)},
               tmp_path / "wrong_shape.pth")
    with pytest.raises(ValueError, match="VGG19"):
        L.VGGPerceptualLoss.from_file(tmp_path / "wrong_shape.pth", {"conv1_1": 1.0})


# ---------------------------------------------------------------------------------------------
# texture (local Gram) loss

def test_patch_gram_hand_computed():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 5, 9)  # 2x4 windows of 2x2; the last row and column are dropped
    g = L.patch_gram(f, 2)
    assert g.shape == (2 * 2 * 4, 3, 3)
    win = f[1, :, 2:4, 4:6].reshape(3, 4)  # image 1, window row 1, column 2
    assert torch.allclose(g[1 * 8 + 1 * 4 + 2], win @ win.T / 4, atol=1e-6)
    assert torch.allclose(g, g.transpose(1, 2))


def test_texture_loss_ignores_position_but_not_texture():
    """Shifting a texture inside its window keeps the local Gram matrices; smoothing it does not."""
    loss = L.TextureLoss({"relu1_1": 1.0, "relu2_1": 1.0}, patch=16, seed=0)
    torch.manual_seed(0)
    tile = torch.rand(1, 3, 4, 4)
    hr = tile.repeat(1, 1, 8, 8)  # a periodic texture, 32x32
    shifted = torch.roll(hr, shifts=(2, 1), dims=(2, 3))
    smooth = torch.full_like(hr, hr.mean().item())
    assert loss(hr, hr).item() == 0.0
    shift_loss, smooth_loss = loss(shifted, hr).item(), loss(smooth, hr).item()
    assert smooth_loss > 20 * shift_loss  # the shift only changes the windows' borders (zero padding)
    assert L.pixel_loss("l1", shifted, hr) > 0.5 * L.pixel_loss("l1", smooth, hr)  # pixels disagree


def test_texture_loss_random_weights_are_seeded_and_frozen():
    a = L.TextureLoss({"relu2_1": 1.0}, seed=3)
    b = L.TextureLoss({"relu2_1": 1.0}, seed=3)
    c = L.TextureLoss({"relu2_1": 1.0}, seed=4)
    assert len(a.features) == 7  # as deep as relu2_1 (index 6)
    for k, v in a.features.state_dict().items():
        assert torch.equal(v, b.features.state_dict()[k])
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert not any(p.requires_grad for p in a.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    a.train()
    assert not a.training
    a(x, torch.rand(2, 3, 32, 32)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_texture_loss_loads_a_vgg19_file(tmp_path, write_vgg19):
    ref = write_vgg19(tmp_path / "vgg.pth")
    loss = L.TextureLoss({"relu1_1": 1.0}, patch=4, weights_path=tmp_path / "vgg.pth")
    assert torch.equal(loss.features[0].weight, ref["0.weight"])
    sr, hr = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    mean = torch.tensor(L.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(L.IMAGENET_STD).view(1, 3, 1, 1)

    def grams(x):
        f = F.relu(F.conv2d((x - mean) / std, ref["0.weight"], ref["0.bias"], padding=1))[0]
        wins = [f[:, i:i + 4, j:j + 4].reshape(64, 16) for i in (0, 4) for j in (0, 4)]
        return torch.stack([w @ w.T / 16 for w in wins])

    expected = F.mse_loss(grams(sr), grams(hr))
    assert loss(sr, hr).item() == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        L.TextureLoss({"relu9_1": 1.0})


def test_r1_penalty_of_a_linear_discriminator_is_its_squared_weight_norm():
    """D(x) = <w, x> has input gradient w for every image: R1 = |w|^2, and dR1/dw = 2w."""
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4, requires_grad=True)
    x = torch.rand(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).flatten(1).sum(1, keepdim=True)
    r1 = L.r1_penalty(logits, x)
    assert r1.item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)
    r1.backward()  # the graph was kept: the penalty trains D's weights
    assert torch.allclose(w.grad, 2 * w.detach(), atol=1e-5)


def test_r1_penalty_is_zero_for_a_flat_discriminator():
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    logits = (x * 0).sum((1, 2, 3)) + 1.0
    assert L.r1_penalty(logits, x).item() == 0.0


# ---------------------------------------------------------------------------------------------
# LDL artifact loss

def test_local_variance_brute_force():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 9, 10)
    v = L.local_variance(x, 3)
    xp = F.pad(x, (1, 1, 1, 1), mode="reflect")[0, 0]
    for i, j in [(0, 0), (4, 5), (8, 9), (3, 0)]:
        win = xp[i:i + 3, j:j + 3]
        assert v[0, 0, i, j].item() == pytest.approx(win.var(unbiased=False).item(), abs=1e-6)
    assert torch.allclose(L.local_variance(torch.full((1, 1, 8, 8), 0.3), 7), torch.zeros(1, 1, 8, 8), atol=1e-6)


def test_artifact_map_only_where_the_ema_is_closer():
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 16, 16)
    noise = 0.2 * torch.randn(2, 3, 16, 16)
    sr = hr + noise * (torch.arange(16) < 8).float()  # erratic on the left half only
    ema_good, ema_bad = hr.clone(), hr + 0.5  # the EMA either matches HR or is far worse everywhere
    w = L.artifact_map(sr, hr, ema_good)
    assert w.shape == (2, 1, 16, 16) and not w.requires_grad
    assert (w[..., :6] > 0).all()  # erratic and worse than the EMA: an artifact
    assert (w[..., 11:] == 0).all()  # the 7-wide window around these columns sees no residual at all
    assert (L.artifact_map(sr, hr, ema_bad) == 0).all()  # the EMA is worse: nothing is an artifact
    assert L.artifact_loss(hr, hr, ema_good).item() == 0.0
    sr.requires_grad_(True)
    loss = L.artifact_loss(sr, hr, ema_good)
    loss.backward()
    assert loss.item() > 0 and sr.grad[..., :6].abs().sum() > 0 and (sr.grad[..., 11:] == 0).all()


# ---------------------------------------------------------------------------------------------
# unsharp-masked targets (Real-ESRGAN)

def _np_blur_1d(v, sigma):
    """Reference: the same Gaussian along one axis, written with numpy (reflect padding)."""
    import numpy as np
    r = math.ceil(3 * sigma)
    t = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(v, r, mode="reflect"), k, mode="valid")


def test_unsharp_mask_leaves_flat_areas_and_faint_noise_alone():
    flat = torch.full((1, 3, 64, 64), 0.4)
    assert torch.equal(L.unsharp_mask(flat), flat)
    # +-4/255 grain is under the 10/255 threshold: a noisy flat patch comes back as it was
    g = torch.Generator().manual_seed(0)
    noisy = flat + (torch.randint(0, 2, flat.shape, generator=g).float() * 2 - 1) * 4 / 255
    assert torch.allclose(L.unsharp_mask(noisy), noisy, atol=1e-6)


def test_unsharp_mask_of_an_edge_matches_a_numpy_reference():
    import numpy as np
    cols = np.where(np.arange(96) < 48, 0.2, 0.7)
    img = torch.tensor(cols, dtype=torch.float32).expand(1, 1, 64, 96).contiguous()
    out = L.unsharp_mask(img, weight=0.5, sigma=3.0, threshold=10 / 255)[0, 0]
    # the image only varies along columns, so the 2-D blur is the 1-D blur of one row
    blur = _np_blur_1d(cols, 3.0)
    res = cols - blur
    soft = _np_blur_1d((np.abs(res) > 10 / 255).astype(float), 3.0)
    want = soft * np.clip(cols + 0.5 * res, 0, 1) + (1 - soft) * cols
    assert torch.allclose(out[32], torch.tensor(want, dtype=torch.float32), atol=1e-5)
    assert torch.allclose(out[0], out[63])  # no change down the rows
    # an edge gets the over- and undershoot that makes it look crisper; far from it, nothing moves
    assert out[32, 47] < 0.2 - 0.02 and out[32, 48] > 0.7 + 0.02
    assert out[32, 0] == pytest.approx(0.2, abs=1e-6) and out[32, 95] == pytest.approx(0.7, abs=1e-6)


def test_unsharp_mask_stays_in_range_and_blur_keeps_the_mean():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, 3, 40, 40, generator=g)
    out = L.unsharp_mask(img, weight=2.0, sigma=2.0)
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, img)
    # a patch narrower than the kernel (sigma 8 -> 49 taps on 20 px) still blurs without error
    small = torch.rand(1, 3, 20, 20, generator=g)
    assert L.gaussian_blur(small, 8.0).shape == small.shape
    assert torch.allclose(L.gaussian_blur(torch.full((1, 1, 20, 20), 0.3), 8.0), torch.tensor(0.3))
