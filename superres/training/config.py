"""Training configuration: typed dataclasses with defaults, a TOML file over them, `--set` overrides.

    cfg = load_config("configs/tiny_cpu.toml", ["losses.adversarial=5e-3", "train.total_steps=100"])
    save_config(cfg, run_dir / "config.toml")

Unknown keys and bad values are errors that name the key and the allowed values.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.degrade import DegradeConfig, DegradeConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


# optim.schedule values, each a branch of lr_lambda below
LR_SCHEDULES = ("cosine", "multistep", "constant")
# Metrics validate() computes, hence the ones log.best_metric may pick
VALIDATION_METRICS = ("psnr", "ssim", "niqe")


class ConfigError(ValueError):
    """A configuration key or value that is not allowed; the message names it."""


@dataclass
class ModelConfig:
    arch: str = "msrresnet"
    scale: int = 4
    # Passed to the architecture as keyword arguments (besides upscale), e.g. {num_block = 16}.
    hparams: dict[str, Any] = field(default_factory=dict)
    # Start the generator from these weights (e.g. the stage-1 PSNR model for GAN fine-tuning).
    pretrained: str = ""


@dataclass
class DiscriminatorConfig:
    arch: str = "vgg128"
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    train_dirs: list[str] = field(default_factory=lambda: ["../shared/data/train/T91",
                                                           "../shared/data/train/BSD200"])
    # Paired mode: LR folders matched to train_dirs by file name (empty = make LR by degradation).
    lr_dirs: list[str] = field(default_factory=list)
    hr_patch: int = 128
    batch_size: int = 16  # the GLOBAL batch: DDP splits it evenly over the ranks
    num_workers: int = 0
    degradation: str = "bicubic"
    # With degradation = "realistic": the fraction of batches made with the milder `camera` preset
    # instead (one light blur, sensor noise, JPEG 50-90), so the model also sees inputs that have
    # little to remove and learns to keep their detail. 0 = realistic only.
    camera_fraction: float = 0.0
    # With degradation = "realistic": the fraction of batches made by plain MATLAB bicubic (the
    # clean benchmark LR), for models that must keep every detail of a clean photo. Drawn with
    # camera_fraction from one number per batch: clean below clean_fraction, camera above it up to
    # clean_fraction + camera_fraction, realistic for the rest.
    clean_fraction: float = 0.0
    val_dirs: list[str] = field(default_factory=lambda: ["../shared/data/benchmarks/Set5",
                                                         "../shared/data/benchmarks/Set14"])
    val_max_images: int = 0  # 0 = all
    # How validation makes its LR: "bicubic" (the paper protocol) or a seeded draw of "realistic" /
    # "camera", the same LR `superres eval --degrade NAME --seed val_seed` makes, so a real-world
    # model is validated (and its best.safetensors chosen) on the inputs it is trained for.
    val_degradation: str = "bicubic"
    val_seed: int = 0
    # N > 1: every N-th image (by sorted name) of each training folder is left out of training and
    # validated as "<folder>-holdout": a validation set from the training data's own distribution
    # (BSD200's holdout tracks the BSD100 test set without looking at it). 0 = train on everything.
    holdout: int = 0


@dataclass
class LossConfig:
    pixel: str = "l1"
    pixel_weight: float = 1.0
    perceptual: float = 0.0
    vgg_weights: str = ""
    vgg_layers: dict[str, float] = field(default_factory=lambda: {"conv5_4": 1.0})
    vgg_before_activation: bool = True
    adversarial: float = 0.0
    gan_type: str = "vanilla"
    feature_matching: float = 0.0
    # Texture (local Gram matrix) loss on VGG19 features: losses.vgg_weights when given, otherwise
    # a VGG19 with fixed random weights (texture_seed), so it works offline.
    texture: float = 0.0
    texture_layers: dict[str, float] = field(default_factory=lambda: {"relu1_1": 1.0, "relu2_1": 1.0,
                                                                      "relu3_1": 1.0})
    texture_patch: int = 16
    texture_seed: int = 0
    # LDL artifact loss: L1 on the pixels where the generator is locally erratic and worse than
    # its EMA copy (the GAN's halos and noise), leaving GAN detail elsewhere alone. 1.0 in the paper.
    artifact: float = 0.0
    artifact_window: int = 7
    # Unsharp-masked HR targets for the pixel, perceptual, texture and artifact losses (Real-ESRGAN
    # trains on them: without them a real-world model's L1 optimum is a soft average). The weight
    # of the added high-pass (0 = off; 0.5 in the paper); the discriminator still sees the plain HR.
    sharpen_target: float = 0.0
    sharpen_sigma: float = 8.0
    sharpen_threshold: float = 10 / 255
    # Detail loss: L1 between the high-pass residuals x - G_sigma(x) of SR and target (the residual
    # `superres eval`'s hf-corr compares), added to the pixel loss (0 = off). The pixel loss spends
    # a small net's capacity mostly on the low frequencies, where the error is; this weights the fine
    # detail of the target (a distillation teacher's texture) on its own.
    detail: float = 0.0
    detail_sigma: float = 1.0
    # R1 gradient penalty on D's real inputs, weight gamma/2 as in the paper (0 = off). Computed
    # every r1_every-th D step and scaled by r1_every (StyleGAN2's lazy regularisation).
    r1: float = 0.0
    r1_every: int = 4


@dataclass
class OptimConfig:
    lr_g: float = 2e-4
    lr_d: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.5
    min_lr_ratio: float = 0.01
    grad_clip: float = 0.0  # 0 = off
    grad_clip_d: float = 0.0  # the discriminator's max gradient norm; 0 = off


@dataclass
class TrainConfig:
    total_steps: int = 1000
    seed: int = 0
    ema_decay: float = 0.999
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    deterministic: bool = False
    # GAN phase: for the first d_warmup_steps only D is trained (G frozen, as BasicSR's
    # net_d_init_iters), then D trains every step and G every d_steps_per_g-th step.
    d_warmup_steps: int = 0
    d_steps_per_g: int = 1


@dataclass
class LogConfig:
    log_every: int = 50
    val_every: int = 1000
    ckpt_every: int = 500
    keep_last: int = 3
    sample_images: int = 3
    best_metric: str = "psnr"
    # > 0: a validation whose mean PSNR is below this is never exported as best.safetensors. With
    # best_metric = "niqe" this is the fidelity floor of a GAN selection rule: NIQE alone rewards
    # amplified artifacts, so it only ranks the checkpoints that stay faithful.
    best_min_psnr: float = 0.0
    val_niqe: bool = False  # also compute NIQE (no-reference) on the validation SR images
    tensorboard: bool = True
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)


def allowed_choices() -> dict[str, tuple[str, ...]]:
    """Every key with a closed set of values -> the values, read from the module that implements
    them, so an error lists what really exists and nothing has to register itself beforehand."""
    from ..data.datasets import PatchDataset
    from ..data.degrade import DEGRADATIONS
    from ..inference import runtime
    from .losses import GAN_LOSSES, PIXEL_LOSSES

    return {
        "losses.pixel": PIXEL_LOSSES,
        "losses.gan_type": tuple(GAN_LOSSES),
        "optim.schedule": LR_SCHEDULES,
        "train.device": runtime.DEVICES,
        "train.precision": runtime.PRECISIONS,
        "log.best_metric": VALIDATION_METRICS,
        "data.degradation": PatchDataset.DEGRADATIONS,
        "data.val_degradation": DEGRADATIONS,
    }


# ---------------------------------------------------------------------------------------------
# loading

def _section_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check `value` against the field's declared type; allow int -> float."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, list):
            return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        return value
    raise ConfigError(f"{key}: expected {getattr(typ, '__name__', typ)}, got {value!r}")


def _apply(cfg: Config, data: dict[str, Any], where: str) -> None:
    for section, values in data.items():
        if section not in {f.name for f in dataclasses.fields(Config)}:
            raise ConfigError(f"{where}: unknown section [{section}]; allowed: "
                              f"{[f.name for f in dataclasses.fields(Config)]}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        obj = getattr(cfg, section)
        types = _section_types(type(obj))
        for key, value in values.items():
            if key not in types:
                raise ConfigError(f"{where}: unknown key {section}.{key}; allowed keys in [{section}]: "
                                  f"{sorted(types)}")
            setattr(obj, key, _coerce(f"{section}.{key}", value, types[key]))


def _parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. losses.adversarial=5e-3")
    try:  # TOML value syntax: numbers, true/false, "strings", [lists], {tables}
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    return parts[0], parts[1], value


# The values that name files or folders. A relative one in a config file is relative to that file's
# folder, so `superres train /elsewhere/configs/x.toml` reads the same data from any working folder;
# one given with --set (or a default) is relative to the working folder, as on any command line.
PATH_KEYS: dict[str, tuple[str, ...]] = {"data": ("train_dirs", "lr_dirs", "val_dirs"),
                                         "model": ("pretrained",), "losses": ("vgg_weights",)}


def _absolute(value: Any, base: Path) -> Any:
    """`value` (a path string or a list of them) made absolute against `base`; "" stays "" (unset)."""
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if isinstance(value, str) and value:
        return os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    return value  # a wrong type: _apply names the key


def _resolve_paths_in_file(data: dict[str, Any], folder: Path) -> None:
    for section, keys in PATH_KEYS.items():
        table = data.get(section)
        if isinstance(table, dict):
            for key in keys:
                if key in table:
                    table[key] = _absolute(table[key], folder)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None, *,
                resolve_paths: bool = True) -> Config:
    """The defaults, then the TOML file at `path`, then the `--set` overrides; validated.

    resolve_paths: make every path absolute (see PATH_KEYS), so the config means the same files
    wherever it is used and the run folder's copy records exactly what was read. False keeps the
    strings as written (export reads a run's config.toml as a record and compares its digest).
    """
    cfg = Config()
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        with open(path, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{path}: not valid TOML: {e}") from e
        if resolve_paths:
            _resolve_paths_in_file(data, path.absolute().parent)
        _apply(cfg, data, str(path))
    for item in overrides or []:
        section, key, value = _parse_override(item)
        _apply(cfg, {section: {key: value}}, "--set")
    if resolve_paths:  # what is still relative came from --set or a default: the working folder's
        for section, keys in PATH_KEYS.items():
            for key in keys:
                obj = getattr(cfg, section)
                setattr(obj, key, _absolute(getattr(obj, key), Path.cwd()))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every section's checks, in this order; the first failure raises a ConfigError naming the key.

    The list is explicit (no module registers checks at import), so the result never depends on
    what happens to have been imported.
    """
    from ..data.degrade import check_degrade_config

    _check_choices(cfg)
    _check_model(cfg)
    _check_data(cfg)
    _check_train(cfg)
    _check_losses(cfg)
    _check_discriminator(cfg)
    try:
        check_degrade_config(cfg.degrade)
    except DegradeConfigError as e:
        raise ConfigError(str(e)) from e


def _check_choices(cfg: Config) -> None:
    for dotted, allowed in allowed_choices().items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{dotted} = {value!r} is not allowed; allowed values: {list(allowed)}")


def _check_model(cfg: Config) -> None:
    from ..archs import GENERATORS

    if cfg.model.arch not in GENERATORS:
        raise ConfigError(f"model.arch = {cfg.model.arch!r}; allowed values: {sorted(GENERATORS)}")
    if cfg.model.scale not in GENERATORS[cfg.model.arch].scales:
        raise ConfigError(f"model.scale = {cfg.model.scale} is not supported by {cfg.model.arch}; "
                          f"allowed values: {list(GENERATORS[cfg.model.arch].scales)}")
    if "upscale" in cfg.model.hparams:
        raise ConfigError("model.hparams.upscale: set model.scale instead")
    _check_hparams(f"model.hparams ({cfg.model.arch})", GENERATORS[cfg.model.arch].cls, cfg.model.hparams,
                   cfg.model.scale)


def _check_hparams(where: str, cls: type, hparams: dict, scale: int) -> None:
    """Names the constructor does not take, and sizes below 1, as a ConfigError naming the key; then
    the network is built on the meta device (no memory), so any other refusal of the values is a
    ConfigError too, not a traceback at the start of the run."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    allowed = [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key, value in hparams.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown hyperparameter {key!r}; allowed: {', '.join(allowed)}")
        default = params[key].default
        if isinstance(value, int) and not isinstance(value, bool) and value < 1 \
                and not (isinstance(default, int) and default < 1):
            raise ConfigError(f"{where}.{key} = {value}: must be a positive integer")
    import torch

    try:
        with torch.device("meta"):
            cls(**({**hparams, "upscale": scale} if "upscale" in allowed else hparams))
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{where}: {hparams} cannot build the network ({e})") from None


def _check_data(cfg: Config) -> None:
    if cfg.data.hr_patch % cfg.model.scale:
        raise ConfigError(f"data.hr_patch = {cfg.data.hr_patch} must be a multiple of model.scale "
                          f"= {cfg.model.scale}")
    if cfg.data.holdout < 0 or cfg.data.holdout == 1:
        raise ConfigError(f"data.holdout = {cfg.data.holdout}: allowed values are 0 (no holdout) or "
                          "an integer N >= 2 (every N-th image of each training folder is held out)")
    if not 0.0 <= cfg.data.camera_fraction <= 1.0:
        raise ConfigError(f"data.camera_fraction = {cfg.data.camera_fraction} must be in [0, 1]")
    if cfg.data.camera_fraction > 0 and cfg.data.degradation != "realistic":
        raise ConfigError(f"data.camera_fraction = {cfg.data.camera_fraction} needs data.degradation = "
                          f"'realistic' (it replaces that fraction of its batches); got {cfg.data.degradation!r}")
    if not 0.0 <= cfg.data.clean_fraction <= 1.0:
        raise ConfigError(f"data.clean_fraction = {cfg.data.clean_fraction} must be in [0, 1]")
    if cfg.data.clean_fraction > 0 and cfg.data.degradation != "realistic":
        raise ConfigError(f"data.clean_fraction = {cfg.data.clean_fraction} needs data.degradation = "
                          f"'realistic' (it replaces that fraction of its batches); got {cfg.data.degradation!r}")
    if cfg.data.clean_fraction + cfg.data.camera_fraction > 1.0:
        raise ConfigError(f"data.clean_fraction + data.camera_fraction = {cfg.data.clean_fraction} + "
                          f"{cfg.data.camera_fraction} must be at most 1")
    if not cfg.data.train_dirs:
        raise ConfigError("data.train_dirs is empty: give at least one folder of HR images")
    if cfg.data.lr_dirs and len(cfg.data.lr_dirs) != len(cfg.data.train_dirs):
        raise ConfigError(f"data.lr_dirs has {len(cfg.data.lr_dirs)} entries but data.train_dirs has "
                          f"{len(cfg.data.train_dirs)}: give one LR folder per HR folder")


def _check_train(cfg: Config) -> None:
    positive = {"data.batch_size": cfg.data.batch_size, "data.hr_patch": cfg.data.hr_patch,
                "train.total_steps": cfg.train.total_steps, "optim.lr_g": cfg.optim.lr_g,
                "optim.lr_d": cfg.optim.lr_d, "train.d_steps_per_g": cfg.train.d_steps_per_g,
                "log.log_every": cfg.log.log_every, "log.ckpt_every": cfg.log.ckpt_every}
    for key, value in positive.items():
        # `not value > 0` also refuses NaN, which compares false with everything
        if not value > 0 or not math.isfinite(value):
            raise ConfigError(f"{key} = {value} must be a finite number > 0")
    if cfg.log.val_every < 0:
        raise ConfigError(f"log.val_every = {cfg.log.val_every} must be >= 0 (0 = no validation)")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers = {cfg.data.num_workers} must be >= 0 (0 = load in the main process)")
    if cfg.log.best_min_psnr < 0:
        raise ConfigError(f"log.best_min_psnr = {cfg.log.best_min_psnr} must be >= 0 (0 = no floor)")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay = {cfg.train.ema_decay} must be in [0, 1)")


def uses_discriminator(cfg: Config) -> bool:
    """Stage 2: an adversarial or feature-matching weight; pixel-only runs build no discriminator."""
    return cfg.losses.adversarial > 0 or cfg.losses.feature_matching > 0


def _check_vgg_layers(key: str, layers: dict, before_activation: bool) -> None:
    """losses.<key> maps VGG19 layer names to numeric weights."""
    from .losses import resolve_vgg_layer

    for name, weight in layers.items():
        try:
            resolve_vgg_layer(name, before_activation)
        except ValueError as e:
            raise ConfigError(f"losses.{key}: {e}") from None
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise ConfigError(f"losses.{key}.{name} = {weight!r}: expected a number")


def _check_losses(cfg: Config) -> None:
    lo = cfg.losses
    for key in ("pixel_weight", "perceptual", "adversarial", "feature_matching", "texture", "artifact",
                "r1", "sharpen_target", "sharpen_threshold", "detail"):
        if getattr(lo, key) < 0:
            raise ConfigError(f"losses.{key} = {getattr(lo, key)} must be >= 0")
    if lo.perceptual > 0:
        if not lo.vgg_weights:
            raise ConfigError("losses.perceptual > 0 needs losses.vgg_weights: a torchvision-format VGG19 "
                              "state dict; none is downloaded. Give its path (.pth or .safetensors), or "
                              "set losses.perceptual = 0 and use losses.feature_matching instead")
        _check_vgg_layers("vgg_layers", lo.vgg_layers, lo.vgg_before_activation)
    if lo.texture > 0:
        if not lo.texture_layers:
            raise ConfigError("losses.texture_layers is empty: give at least one VGG19 layer, e.g. relu2_1")
        _check_vgg_layers("texture_layers", lo.texture_layers, False)
        if lo.texture_patch < 2:
            raise ConfigError(f"losses.texture_patch = {lo.texture_patch} must be >= 2 (pixels)")
        if lo.vgg_weights and not Path(lo.vgg_weights).is_file():
            raise ConfigError(f"losses.vgg_weights = {lo.vgg_weights!r}: no such file")
    if lo.artifact > 0 and (lo.artifact_window < 3 or lo.artifact_window % 2 == 0):
        raise ConfigError(f"losses.artifact_window = {lo.artifact_window}: expected an odd number >= 3")
    if lo.sharpen_target > 0 and lo.sharpen_sigma <= 0:
        raise ConfigError(f"losses.sharpen_sigma = {lo.sharpen_sigma} must be > 0 (pixels)")
    if lo.detail > 0 and lo.detail_sigma <= 0:
        raise ConfigError(f"losses.detail_sigma = {lo.detail_sigma} must be > 0 (pixels)")
    if lo.r1_every < 1:
        raise ConfigError(f"losses.r1_every = {lo.r1_every} must be >= 1 (D steps)")
    if cfg.train.d_warmup_steps < 0:
        raise ConfigError(f"train.d_warmup_steps = {cfg.train.d_warmup_steps} must be >= 0")


def _check_discriminator(cfg: Config) -> None:
    """The discriminator must exist and accept data.hr_patch (vgg128 takes only 128x128, ...)."""
    from ..archs import DISCRIMINATORS, discriminator_input_error

    if cfg.disc.arch not in DISCRIMINATORS:
        raise ConfigError(f"disc.arch = {cfg.disc.arch!r}; allowed values: {sorted(DISCRIMINATORS)}")
    if not uses_discriminator(cfg):
        return
    try:
        why = discriminator_input_error(cfg.disc.arch, cfg.disc.hparams, cfg.data.hr_patch)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"disc.hparams = {cfg.disc.hparams}: {e}") from None
    if why:
        raise ConfigError(f"data.hr_patch = {cfg.data.hr_patch} does not fit disc.arch = "
                          f"{cfg.disc.arch!r}: {why}. Change data.hr_patch or disc.arch")
    if cfg.optim.lr_d <= 0:
        raise ConfigError(f"optim.lr_d = {cfg.optim.lr_d} must be > 0")


# ---------------------------------------------------------------------------------------------
# saving

def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_toml(cfg: Config) -> str:
    """The config as TOML text that `load_config` reads back to an equal Config."""
    import tomli_w

    return tomli_w.dumps(config_to_dict(cfg))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    from ..io.fs import atomic_write

    atomic_write(path, config_to_toml(cfg).encode())


def config_digest(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]
