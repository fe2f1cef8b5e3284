"""Training losses: pixel, adversarial (small functions), perceptual (VGG19) and feature matching.

Sign convention, for every discriminator and every GAN loss here: the discriminator outputs raw
logits and a HIGHER logit means "more real". A discriminator loss is low when real logits are high
and fake logits are low; a generator loss is low when fake logits are high.

Each GAN type is a pair of functions, `<type>_g_loss(fake, real)` and `<type>_d_loss(real, fake)`,
listed in GAN_LOSSES under the name `losses.gan_type` uses. `real` is only read by the relativistic
loss; the generator side gets it detached (only the generator's output carries gradients there).
Logits may be (B, 1) scores or (B, 1, H, W) maps (U-Net, PatchGAN): every mean is over all elements.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# pixel losses

CHARBONNIER_EPS2 = 1e-6
PIXEL_LOSSES = ("l1", "mse", "charbonnier")


def pixel_loss(kind: str, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """l1: mean |sr - hr|; mse: mean (sr - hr)^2; charbonnier: mean sqrt((sr - hr)^2 + eps^2)."""
    if kind == "l1":
        return (sr - hr).abs().mean()
    if kind == "mse":
        return ((sr - hr) ** 2).mean()
    if kind == "charbonnier":
        return torch.sqrt((sr - hr) ** 2 + CHARBONNIER_EPS2).mean()
    raise ValueError(f"unknown pixel loss {kind!r}; allowed values: {list(PIXEL_LOSSES)}")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, kernel 2*ceil(3 sigma)+1 taps, reflect-padded (as far as the image
    allows: a patch narrower than the kernel is padded by replication beyond its reflection).

    Not degrade.filter2d: that takes a 2-D kernel per sample (for anisotropic blurs), which at
    sigma 8 is 49x49 taps per pixel against 2x49 here, on every generator step."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    y = F.pad(x, (radius, radius, 0, 0), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode=mode)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def detail_loss(sr: torch.Tensor, target: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """L1 between the high-pass residuals x - G_sigma(x) of SR and target: the fine detail alone
    (`superres eval`'s hf-corr correlates the same residual, sigma 1, with the HR's)."""
    return F.l1_loss(sr - gaussian_blur(sr, sigma), target - gaussian_blur(target, sigma))


def unsharp_mask(img: torch.Tensor, weight: float = 0.5, sigma: float = 8.0,
                 threshold: float = 10 / 255) -> torch.Tensor:
    """Real-ESRGAN's sharpened training target, for images in [0, 1], (B, C, H, W).

    img + weight * (img - blur(img)), applied only where the high-pass is above `threshold` (so
    flat areas and fine noise are left alone), with that mask itself blurred so the sharpened
    region has no edge of its own; clipped to [0, 1]. The paper's figures: weight 0.5, a 51-tap
    kernel (OpenCV's sigma for it is 8.0), threshold 10/255.
    """
    blurred = gaussian_blur(img, sigma)
    residual = img - blurred
    mask = (residual.abs() > threshold).to(img.dtype)
    soft = gaussian_blur(mask, sigma)
    sharp = (img + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * img


# ---------------------------------------------------------------------------------------------
# adversarial losses; softplus(-x) = -log(sigmoid(x)) and softplus(x) = -log(1 - sigmoid(x)),
# written that way because it stays finite for large logits.

def vanilla_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Goodfellow et al. (SRGAN): -log D(real) - log(1 - D(fake)), D = sigmoid(logit)."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def vanilla_g_loss(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """The non-saturating generator loss: -log D(fake)."""
    return F.softplus(-fake).mean()


def lsgan_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Mao et al.: least squares towards 1 for real, 0 for fake."""
    return ((real - 1) ** 2).mean() + (fake ** 2).mean()


def lsgan_g_loss(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    return ((fake - 1) ** 2).mean()


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Geometric GAN / SAGAN hinge: D stops pushing once real > 1 and fake < -1."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def hinge_g_loss(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    return -fake.mean()


def ragan_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Relativistic average GAN (Jolicoeur-Martineau; ESRGAN): is real more real than the average
    fake, is fake less real than the average real. Halved, as ESRGAN's code does, so the
    published loss weights (e.g. 5e-3) mean the same here."""
    return 0.5 * (F.softplus(-(real - fake.mean())).mean() + F.softplus(fake - real.mean()).mean())


def ragan_g_loss(fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """The D loss with the roles swapped; `real` must be given (and detached by the caller)."""
    if real is None:
        raise ValueError("ragan_g_loss needs the discriminator's logits on the real batch")
    return 0.5 * (F.softplus(real - fake.mean()).mean() + F.softplus(-(fake - real.mean())).mean())


GLoss = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
DLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# losses.gan_type -> (generator loss, discriminator loss)
GAN_LOSSES: dict[str, tuple[GLoss, DLoss]] = {
    "vanilla": (vanilla_g_loss, vanilla_d_loss),
    "lsgan": (lsgan_g_loss, lsgan_d_loss),
    "hinge": (hinge_g_loss, hinge_d_loss),
    "ragan": (ragan_g_loss, ragan_d_loss),
}

# GAN types whose generator loss reads the real logits (the loop runs D on HR only when needed).
RELATIVISTIC = {"ragan"}


def feature_matching_loss(fake_feats: list[torch.Tensor], real_feats: list[torch.Tensor]) -> torch.Tensor:
    """Mean over D's layers of L1(features(SR), features(HR)); HR features are targets (detached).

    Unlike a perceptual loss it needs no pretrained network, so GAN training works fully offline.
    """
    if len(fake_feats) != len(real_feats) or not fake_feats:
        raise ValueError(f"feature matching: {len(fake_feats)} fake vs {len(real_feats)} real feature maps")
    total = sum(F.l1_loss(f.float(), r.detach().float()) for f, r in zip(fake_feats, real_feats))
    return total / len(fake_feats)


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean over the batch of |grad_x D(x)|^2 on real images.

    Unregularised GAN training circles its equilibrium instead of converging to it; penalising D's
    slope on the real data damps that circling. `real` must have requires_grad set before D ran
    on it. The graph is kept so the penalty itself trains D.
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


# ---------------------------------------------------------------------------------------------
# perceptual loss on VGG19 features

# torchvision's vgg19().features, in order: the list index is the torchvision module index, so a
# torchvision state dict's `features.N.weight` is the weight of VGG19_LAYERS[N].
VGG19_LAYERS: list[str] = [
    "conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2", "pool2",
    "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3", "conv3_4", "relu3_4", "pool3",
    "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3", "relu4_3", "conv4_4", "relu4_4", "pool4",
    "conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3", "conv5_4", "relu5_4", "pool5",
]
_VGG19_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features(up_to: int = len(VGG19_LAYERS) - 1) -> nn.Sequential:
    """torchvision's VGG19 `features` (modules 0..up_to) as a plain Sequential, randomly initialised.

    ReLUs are not in-place: a conv output taken as a feature must not be overwritten by the ReLU.
    """
    layers: list[nn.Module] = []
    in_ch = 3
    for name in VGG19_LAYERS[:up_to + 1]:
        if name.startswith("conv"):
            out_ch = _VGG19_CHANNELS[int(name[4])]
            layers.append(nn.Conv2d(in_ch, out_ch, 3, 1, 1))
            in_ch = out_ch
        elif name.startswith("relu"):
            layers.append(nn.ReLU(inplace=False))
        else:
            layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def resolve_vgg_layer(name: str, before_activation: bool) -> str:
    """`convX_Y` means the conv output when before_activation, else its ReLU; `reluX_Y` is literal."""
    if name not in VGG19_LAYERS or name.startswith("pool"):
        allowed = [n for n in VGG19_LAYERS if not n.startswith("pool")]
        raise ValueError(f"unknown VGG19 layer {name!r}; allowed values: {allowed}")
    if name.startswith("conv") and not before_activation:
        return "relu" + name[4:]
    return name


def convert_vgg19_state_dict(state: dict[str, torch.Tensor], up_to: int, where: str) -> dict[str, torch.Tensor]:
    """A torchvision VGG19 state dict (full, with classifier.*, or features-only, with or without the
    `features.` prefix) -> the keys of vgg19_features(up_to)."""
    feats = {}
    for k, v in state.items():
        if k.startswith("classifier."):
            continue
        k = k.removeprefix("features.")
        idx, _, param = k.partition(".")
        if not idx.isdigit() or param not in ("weight", "bias"):
            raise ValueError(f"{where}: unexpected key {k!r}: not a torchvision VGG19 state dict")
        if int(idx) <= up_to:
            feats[k] = v
    return feats


def load_vgg19_features(path: str | os.PathLike, up_to: int) -> nn.Sequential:
    """vgg19_features(up_to) with the weights of a torchvision-format VGG19 file (.pth/.safetensors)."""
    from ..inference.weights import read_state_dict

    features = vgg19_features(up_to)
    state, _ = read_state_dict(path)
    try:
        features.load_state_dict(convert_vgg19_state_dict(state, up_to, str(path)), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: not a torchvision VGG19 state dict: {e}") from e
    return features.requires_grad_(False).eval()  # a fixed feature extractor


class VGGPerceptualLoss(nn.Module):
    """sum_l w_l * L1(phi_l(SR), phi_l(HR)) on ImageNet-normalised [0, 1] RGB (Johnson et al.;
    SRGAN takes features after activation, ESRGAN before: sharper, better-balanced brightness)."""

    def __init__(self, layer_weights: dict[str, float], *, before_activation: bool = True) -> None:
        super().__init__()
        if not layer_weights:
            raise ValueError("VGG perceptual loss: no layers given")
        self.layer_weights = {resolve_vgg_layer(k, before_activation): float(w) for k, w in layer_weights.items()}
        self.indices = {VGG19_LAYERS.index(k): k for k in self.layer_weights}
        self.features = vgg19_features(max(self.indices))  # only as deep as the deepest layer used
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike, layer_weights: dict[str, float], *,
                  before_activation: bool = True) -> "VGGPerceptualLoss":
        loss = cls(layer_weights, before_activation=before_activation)
        loss.features = load_vgg19_features(path, len(loss.features) - 1)
        log.info("perceptual loss: VGG19 %s from %s", loss.layer_weights, path)
        return loss

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        return super().train(False)  # a fixed feature extractor: never in training mode

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.indices:
                out[self.indices[i]] = x
        return out

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        f_sr = self.extract(sr)
        with torch.no_grad():
            f_hr = self.extract(hr)
        return sum(w * F.l1_loss(f_sr[k].float(), f_hr[k].float()) for k, w in self.layer_weights.items())


# ---------------------------------------------------------------------------------------------
# texture loss: local Gram matrices of VGG19 features (EnhanceNet's "T" loss)


def random_vgg19_features(up_to: int, seed: int) -> nn.Sequential:
    """vgg19_features(up_to) with He-normal weights drawn from `seed` (zero biases).

    The fallback when no ImageNet VGG19 file exists (offline): the Gram matrices of a random
    ReLU network's early layers still describe local texture (He, Wang and Hopcroft 2016 synthesise
    textures with them; Liu et al. 2021 train SR with random-network losses). He-normal keeps the
    activations' scale from layer to layer, so the per-layer weights stay comparable; the seed
    makes the loss network the same on every rank, resume and machine.
    """
    features = vgg19_features(up_to)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in features:
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                m.bias.zero_()
    return features


def patch_gram(feat: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N * P, C, C): the Gram matrix of every non-overlapping patch x patch window
    (the remainder at the right/bottom edge is dropped), normalised by the window's pixel count."""
    n, c, h, w = feat.shape
    p = min(patch, h, w)
    gh, gw = h // p, w // p
    f = feat[:, :, :gh * p, :gw * p].reshape(n, c, gh, p, gw, p)
    f = f.permute(0, 2, 4, 1, 3, 5).reshape(n * gh * gw, c, p * p)
    return f @ f.transpose(1, 2) / (p * p)


class TextureLoss(nn.Module):
    """sum_l w_l * MSE(Gram_l(SR), Gram_l(HR)) over local windows (Sajjadi et al., EnhanceNet).

    Unlike a pixel or feature loss it does not ask for the HR pixels' exact positions, only for the
    same local texture statistics, so it rewards detail that the pixel loss averages away. The
    window is `patch` pixels of the *input* image: a layer at 1/2^k resolution uses patch / 2^k.
    """

    def __init__(self, layer_weights: dict[str, float], *, patch: int = 16, seed: int = 0,
                 weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        if not layer_weights:
            raise ValueError("texture loss: no layers given")
        if patch < 2:
            raise ValueError(f"texture loss: patch must be >= 2, got {patch}")
        self.layer_weights = {resolve_vgg_layer(k, False): float(w) for k, w in layer_weights.items()}
        self.indices = {VGG19_LAYERS.index(k): k for k in self.layer_weights}
        up_to = max(self.indices)
        self.patch = patch
        if weights_path:
            self.features = load_vgg19_features(weights_path, up_to)
            self.source = str(weights_path)
        else:
            self.features = random_vgg19_features(up_to, seed)
            self.source = f"random (seed {seed})"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()
        log.info("texture loss: VGG19 %s, %s, %d-pixel windows", self.layer_weights, self.source, patch)

    def train(self, mode: bool = True) -> "TextureLoss":
        return super().train(False)

    def grams(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.mean) / self.std
        out = {}
        pooled = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                pooled += 1
            if i in self.indices:
                out[self.indices[i]] = patch_gram(x.float(), max(1, self.patch >> pooled))
        return out

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        g_sr = self.grams(sr)
        with torch.no_grad():
            g_hr = self.grams(hr)
        return sum(w * F.mse_loss(g_sr[k], g_hr[k]) for k, w in self.layer_weights.items())


# ---------------------------------------------------------------------------------------------
# artifact loss (LDL: Liang, Zeng and Zhang, "Details or Artifacts", CVPR 2022)


def local_variance(x: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Per-pixel variance over a window x window neighbourhood (reflect-padded), same size as x."""
    pad = window // 2
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    mean = F.avg_pool2d(xp, window, stride=1)
    return (F.avg_pool2d(xp * xp, window, stride=1) - mean * mean).clamp_min(0)


def artifact_map(sr: torch.Tensor, hr: torch.Tensor, sr_ema: torch.Tensor, window: int = 7) -> torch.Tensor:
    """LDL's per-pixel artifact weight, (B, 1, H, W), no gradient.

    GAN detail and GAN artifacts both differ from HR; what tells them apart is that artifacts are
    locally erratic (high local variance of the residual) and unstable from step to step: where the
    slowly moving EMA generator is closer to HR than the current one, the current one's deviation
    is treated as an artifact; elsewhere the weight is 0 and GAN detail is left alone.
    """
    with torch.no_grad():
        res = (hr - sr).abs().sum(1, keepdim=True).float()
        res_ema = (hr - sr_ema).abs().sum(1, keepdim=True).float()
        patch_w = res.var(dim=(1, 2, 3), keepdim=True) ** 0.2
        weight = patch_w * local_variance(res, window)
        return weight.masked_fill(res < res_ema, 0.0)


def artifact_loss(sr: torch.Tensor, hr: torch.Tensor, sr_ema: torch.Tensor, window: int = 7) -> torch.Tensor:
    """L1 between SR and HR, weighted by artifact_map: pulls only the artifact pixels back to HR."""
    w = artifact_map(sr, hr, sr_ema, window)
    return F.l1_loss(w * sr.float(), w * hr.float())
