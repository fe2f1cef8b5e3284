"""Config loading: errors that name the key, the value and the allowed values; shipped configs load."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from superres.training.config import Config, ConfigError, config_digest, config_to_toml, load_config, uses_discriminator

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))


def test_defaults_are_valid_stage_1():
    cfg = load_config()
    # stage 1 is L1 on MSRResNet x4 with bicubic LR, validated on Set5/Set14: no discriminator
    assert (cfg.model.arch, cfg.model.scale, cfg.model.hparams) == ("msrresnet", 4, {})
    assert (cfg.losses.pixel, cfg.losses.pixel_weight) == ("l1", 1.0)
    assert cfg.losses.adversarial == 0 and cfg.losses.feature_matching == 0 and cfg.losses.perceptual == 0
    assert not uses_discriminator(cfg)
    assert cfg.data.degradation == "bicubic"
    assert [Path(d).name for d in cfg.data.val_dirs] == ["Set5", "Set14"]
    # load_config(None) is the dataclass defaults, with relative paths made absolute (from the cwd)
    assert load_config(resolve_paths=False) == Config()
    assert cfg.data.train_dirs == [str(Path(d).resolve()) for d in Config().data.train_dirs]


_BAD_JPEG = "degrade.jpeg_quality=[0.0, 500.0]"
_BAD_JPEG_ERROR = ("degrade.jpeg_quality = [0.0, 500.0]: expected [low, high] with "
                   "1.0 <= low <= high <= 100.0")


def test_validation_in_a_fresh_interpreter_checks_every_section():
    """Nothing but superres.config imported: the degrade checks must run all the same."""
    code = "\n".join(["from superres.training.config import ConfigError, load_config",
                      "try:",
                      f"    load_config(None, [{_BAD_JPEG!r}])",
                      "    print('accepted')",
                      "except ConfigError as e:",
                      "    print('rejected:', e)"])
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"rejected: {_BAD_JPEG_ERROR}"


def test_validation_after_importing_everything_gives_the_same_verdict():
    import superres.data.degrade  # noqa: F401  (it used to register its check on import)
    import superres.training.loop  # noqa: F401

    with pytest.raises(ConfigError) as e:
        load_config(None, [_BAD_JPEG])
    assert str(e.value) == _BAD_JPEG_ERROR


def test_choice_lists_come_from_their_registries():
    from superres.inference import runtime
    from superres.archs import GENERATORS
    from superres.training.config import allowed_choices
    from superres.training.losses import GAN_LOSSES

    choices = allowed_choices()
    assert choices["losses.gan_type"] == tuple(GAN_LOSSES)
    assert choices["train.precision"] == runtime.PRECISIONS
    with pytest.raises(ConfigError, match=r"model\.scale = 3 is not supported by rrdbnet; allowed values: "
                                          r"\[1, 2, 4\]"):
        load_config(None, ["model.arch=rrdbnet", "model.scale=3", "data.hr_patch=96"])
    assert GENERATORS["rrdbnet"].scales == (1, 2, 4)


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError, match=r"unknown key losses\.adversarail.*'adversarial'"):
        load_config(None, ["losses.adversarail=0.1"])


def test_unknown_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[trainer]\nsteps = 3\n")
    with pytest.raises(ConfigError, match=r"unknown section \[trainer\].*'train'"):
        load_config(p)


@pytest.mark.parametrize("key,value,allowed", [
    ("losses.gan_type", "wgan", "['vanilla', 'lsgan', 'hinge', 'ragan']"),
    ("losses.pixel", "l2", "['l1', 'mse', 'charbonnier']"),
    ("optim.schedule", "linear", "['cosine', 'multistep', 'constant']"),
])
def test_bad_choice_names_allowed_values(key, value, allowed):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={value}"])
    assert f"{key} = '{value}'" in str(e.value) and allowed in str(e.value)


@pytest.mark.parametrize("item,expected", [("train.total_steps=\"many\"", "train.total_steps: expected int"),
                                           ("losses.adversarial=true", "losses.adversarial: expected float"),
                                           ("train.deterministic=1", "train.deterministic: expected bool"),
                                           ("optim.betas=[0.9, \"x\"]", r"optim.betas\[1\]: expected float")])
def test_wrong_type(item, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [item])


def test_int_is_accepted_for_float():
    assert load_config(None, ["losses.adversarial=1"]).losses.adversarial == 1.0


def test_negative_loss_weight():
    with pytest.raises(ConfigError, match="losses.feature_matching = -1.0 must be >= 0"):
        load_config(None, ["losses.feature_matching=-1"])


def test_perceptual_needs_vgg_weights():
    with pytest.raises(ConfigError, match="losses.perceptual > 0 needs losses.vgg_weights: a torchvision-format "
                                          "VGG19 state dict; none is downloaded"):
        load_config(None, ["losses.perceptual=1.0"])
    cfg = load_config(None, ["losses.perceptual=1.0", "losses.vgg_weights=vgg19.pth"])
    assert cfg.losses.vgg_layers == {"conv5_4": 1.0} and cfg.losses.vgg_before_activation


def test_vgg_layer_names_are_checked():
    with pytest.raises(ConfigError, match="losses.vgg_layers: unknown VGG19 layer 'conv5_5'"):
        load_config(None, ["losses.perceptual=1", "losses.vgg_weights=v.pth", "losses.vgg_layers={conv5_5=1.0}"])


def test_d_steps_per_g_positive():
    with pytest.raises(ConfigError, match="train.d_steps_per_g = 0 must be a finite number > 0"):
        load_config(None, ["train.d_steps_per_g=0"])


def test_round_trip_through_toml(tmp_path):
    cfg = load_config(None, ["losses.adversarial=0.005", "disc.arch=unet", "disc.hparams={num_feat=32}",
                             "losses.vgg_layers={conv1_2=0.1, conv5_4=1.0}", "log.val_niqe=true"])
    p = tmp_path / "c.toml"
    p.write_text(config_to_toml(cfg))
    again = load_config(p)
    assert again == cfg and config_digest(again) == config_digest(cfg)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load_and_say_how_to_run(path):
    cfg = load_config(path)
    # the comment block before the first table line (a comment may mention "[degrade]")
    header = re.split(r"^\[", path.read_text(), maxsplit=1, flags=re.M)[0]
    assert f"configs/{path.name}" in header and "superres train" in header
    if path.stem in ("srgan_x4", "esrgan_x4", "realesrgan_x4"):
        assert uses_discriminator(cfg)
    if path.stem == "realesrgan_x4":
        assert cfg.data.degradation == "realistic" and cfg.disc.arch == "unet"
    if path.stem == "esrgan_x4":
        assert cfg.model.arch == "rrdbnet" and cfg.losses.gan_type == "ragan"


def test_shipped_configs_are_present():
    names = {p.stem for p in CONFIGS}
    assert {"tiny_cpu", "srresnet_x4_psnr", "srgan_x4", "esrgan_x4", "realesrgan_x4"} <= names


def test_texture_loss_keys_are_checked():
    cfg = load_config(None, ["losses.texture=1.0"])
    assert cfg.losses.texture_layers == {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0}
    assert cfg.losses.vgg_weights == ""  # random VGG19: no file needed
    with pytest.raises(ConfigError, match="losses.texture_layers: unknown VGG19 layer 'relu6_1'"):
        load_config(None, ["losses.texture=1", "losses.texture_layers={relu6_1=1.0}"])
    with pytest.raises(ConfigError, match="losses.texture_patch = 1 must be >= 2"):
        load_config(None, ["losses.texture=1", "losses.texture_patch=1"])
    with pytest.raises(ConfigError, match="losses.texture = -1.0 must be >= 0"):
        load_config(None, ["losses.texture=-1.0"])


def test_paths_in_a_config_file_are_relative_to_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    (folder / "c.toml").write_text('[model]\npretrained = "../weights/stage1.safetensors"\n'
                                   f'[data]\ntrain_dirs = ["../data/hr", "{tmp_path / "abs"}"]\n'
                                   'val_dirs = ["val"]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config("../project/configs/c.toml", ['data.lr_dirs=["lr", "../lr2"]'])
    assert cfg.data.train_dirs == [str(tmp_path / "project" / "data" / "hr"), str(tmp_path / "abs")]
    assert cfg.data.val_dirs == [str(folder / "val")]
    assert cfg.model.pretrained == str(tmp_path / "project" / "weights" / "stage1.safetensors")
    # --set is a command-line value: relative to the working folder
    assert cfg.data.lr_dirs == [str(elsewhere / "lr"), str(tmp_path / "lr2")]
    assert cfg.losses.vgg_weights == ""  # unset stays unset
    # the saved copy holds absolute paths, so it reads the same data from wherever it is loaded
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text(config_to_toml(cfg))
    again = load_config(tmp_path / "run" / "config.toml")
    assert again == cfg and config_digest(again) == config_digest(cfg)
    raw = load_config("../project/configs/c.toml", resolve_paths=False)
    assert raw.data.train_dirs == ["../data/hr", str(tmp_path / "abs")]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_point_at_the_shared_data_from_any_folder(path, tmp_path, monkeypatch):
    data = path.parent.parent.parent / "shared" / "data"
    if not data.is_dir():
        pytest.skip(f"no shared data at {data}")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    for d in cfg.data.train_dirs + cfg.data.lr_dirs + cfg.data.val_dirs:
        if any(part.startswith("distill") for part in Path(d).parts):
            continue   # a teacher cache made by benchmarks/distill_cache.py (see the config), not shared data
        assert Path(d).is_dir(), d
    if cfg.model.pretrained:
        pre = Path(cfg.model.pretrained)
        # a shipped model, a run of the user's, or a checkpoint committed beside its training log
        assert pre.parent.name in ("pretrained", "runs") or ("training_logs" in pre.parts and pre.is_file()), pre
