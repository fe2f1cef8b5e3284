"""The training loop on tiny models and random images: stage 1, stage 2, resume, degradation."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import superres.training.loop as train_mod
from superres.training import checkpoint as ckpt_lib
from superres.archs import build_generator
from superres.training.config import ConfigError, config_to_toml, load_config, save_config
from superres.training.loop import GanHealth, save_samples, train
from superres.inference.weights import save_weights

REPO = Path(__file__).resolve().parent.parent
STAGE1_KEYS = {"step", "gen", "ema", "opt_g", "sched_g", "rng", "sampler", "best", "best_track", "config_digest"}
LOSS_KEYS = ("l_pix", "l_adv", "l_fm", "l_percep", "loss_g", "loss_d", "d_real", "d_fake")


def make_images(folder: Path, n: int = 4, size: int = 40, seed: int = 0) -> Path:
    """Blocky random RGB images: structure a generator can learn, in a few KB."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = rng.random((size // 4 + 1, size // 4 + 1, 3))
        img = np.kron(base, np.ones((4, 4, 1)))[:size, :size]
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data") / "hr")


def tiny(images: Path, *items: str):
    base = [f"data.train_dirs=[{json.dumps(str(images))}]", "data.val_dirs=[]", "data.hr_patch=32",
            "data.batch_size=4", "model.hparams={num_feat=8, num_block=1}", "train.total_steps=3",
            "train.device=cpu", "train.precision=fp32", "train.deterministic=true", "train.channels_last=false",
            "log.log_every=1", "log.val_every=0", "log.ckpt_every=100", "log.progress=false",
            "log.tensorboard=false", "optim.warmup_steps=1"]
    return load_config(None, base + list(items))


GAN = ("losses.adversarial=0.1", "losses.feature_matching=1.0", "disc.arch=patchgan",
       "disc.hparams={num_feat=8}")


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses_of(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k in LOSS_KEYS or k in ("step", "lr_g", "lr_d")}
            for r in records(run_dir)]


def final_state(run_dir: Path) -> dict:
    return ckpt_lib.load_train_state(ckpt_lib.latest_checkpoint(run_dir / "checkpoints"))


def assert_states_equal(a: dict, b: dict, parts=("gen", "ema", "disc")) -> None:
    for part in parts:
        if part in a or part in b:
            assert a[part].keys() == b[part].keys()
            for k in a[part]:
                assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"


# ---------------------------------------------------------------------------------------------
# stage 1 and stage 2 runs

def test_psnr_run_three_steps(images, tmp_path):
    summary = train(tiny(images), tmp_path / "run")
    assert summary["step"] == 3
    recs = records(tmp_path / "run")
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(math.isfinite(r["l_pix"]) and "loss_d" not in r for r in recs)
    state = final_state(tmp_path / "run")
    # Stage 1 writes no discriminator, D optimizer or scaler state at all.
    assert set(state) == STAGE1_KEYS and state["step"] == 3
    assert state["sampler"] == {"next_index": 12}
    assert (tmp_path / "run" / "config.toml").is_file()
    assert not torch.are_deterministic_algorithms_enabled()  # train() restores the global switch


@pytest.mark.parametrize("gan_type,disc", [("vanilla", "patchgan"), ("lsgan", "unet"), ("hinge", "patchgan"),
                                           ("ragan", "unet")])
def test_gan_run_three_steps(images, tmp_path, gan_type, disc):
    cfg = tiny(images, "losses.adversarial=0.1", "losses.feature_matching=1.0", f"losses.gan_type={gan_type}",
               f"disc.arch={disc}", "disc.hparams={num_feat=8}", "optim.grad_clip_d=1.0")
    train(cfg, tmp_path / "run")
    for r in records(tmp_path / "run"):
        for k in ("l_pix", "l_adv", "l_fm", "loss_g", "loss_d", "d_real", "d_fake", "lr_d"):
            assert math.isfinite(r[k]), (k, r)
    state = final_state(tmp_path / "run")
    assert {"disc", "opt_d", "sched_d"} <= set(state) and state["step"] == 3


def test_gan_with_vgg128_and_perceptual(tmp_path, write_vgg19):
    data = make_images(tmp_path / "hr128", n=2, size=128)
    write_vgg19(tmp_path / "vgg19.pth")
    cfg = tiny(data, "data.hr_patch=128", "data.batch_size=2", "train.total_steps=2", "disc.arch=vgg128",
               "disc.hparams={num_feat=4}", "losses.adversarial=0.01", "losses.gan_type=ragan",
               "losses.perceptual=1.0", f"losses.vgg_weights={json.dumps(str(tmp_path / 'vgg19.pth'))}",
               "losses.vgg_layers={conv2_2=1.0}")
    train(cfg, tmp_path / "run")
    r = records(tmp_path / "run")[-1]
    assert math.isfinite(r["l_percep"]) and r["l_percep"] > 0 and math.isfinite(r["l_adv"])


def test_missing_vgg_file_fails_before_training(images, tmp_path):
    cfg = tiny(images, "losses.perceptual=1.0", "losses.vgg_weights=nowhere/vgg19.pth")
    with pytest.raises(ConfigError, match="nowhere/vgg19.pth is not a file.*none is downloaded"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def cli_train(*argv: str) -> int:
    """`superres train ARGV` in this process (the exit code); logs go to caplog."""
    import argparse

    import superres.apps.train as train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_train_arguments(parser)
    return train_cli.run_train(parser.parse_args(list(argv)))


def test_missing_inputs_are_one_clear_error_and_no_run_folder(images, tmp_path, caplog):
    cfg = tiny(images, "train.total_steps=1")
    cfg.data.train_dirs = [str(images), str(tmp_path / "no-such-folder"), str(tmp_path)]  # tmp_path: no images
    cfg.data.val_dirs = [str(tmp_path / "Set5")]
    cfg.model.pretrained = str(tmp_path / "stage1.safetensors")
    save_config(cfg, tmp_path / "cfg.toml")
    assert cli_train(str(tmp_path / "cfg.toml"), "--run-dir", str(tmp_path / "run")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    for wanted in (f"data.train_dirs: {tmp_path / 'no-such-folder'} is not a folder",
                   f"data.train_dirs: {tmp_path} holds no images", f"data.val_dirs: {tmp_path / 'Set5'}",
                   f"model.pretrained: {tmp_path / 'stage1.safetensors'} is not a file",
                   "relative to that file's folder"):
        assert wanted in errors[0]
    assert not (tmp_path / "run").exists()


def test_config_paths_resolve_against_the_config_folder_from_anywhere(tmp_path, monkeypatch):
    """The defect: run from another folder, the config's data paths resolved against the working
    folder and the run crashed with a traceback."""
    make_images(tmp_path / "project" / "data" / "hr")
    (tmp_path / "project" / "configs").mkdir()
    cfg = tiny(tmp_path / "project" / "data" / "hr", "train.total_steps=1")
    cfg.data.train_dirs = ["../data/hr"]
    (tmp_path / "project" / "configs" / "c.toml").write_text(config_to_toml(cfg))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli_train("../project/configs/c.toml", "--run-dir", "run") == 0
    saved = load_config(tmp_path / "elsewhere" / "run" / "config.toml")
    assert saved.data.train_dirs == [str(tmp_path / "project" / "data" / "hr")]


def test_setup_error_after_the_folder_is_made_leaves_no_folder(images, tmp_path):
    torch.manual_seed(5)
    save_weights(tmp_path / "wide.safetensors", build_generator("msrresnet", upscale=4, num_feat=16, num_block=1))
    cfg = tiny(images, "train.total_steps=1", f"model.pretrained={json.dumps(str(tmp_path / 'wide.safetensors'))}")
    save_config(cfg, tmp_path / "cfg.toml")
    assert cli_train(str(tmp_path / "cfg.toml"), "--run-dir", str(tmp_path / "run")) == 2  # num_feat differs
    assert not (tmp_path / "run").exists()


def test_rerun_into_a_run_folder_needs_resume_or_overwrite(images, tmp_path, caplog):
    run = tmp_path / "run"
    train(tiny(images, "train.total_steps=4", "log.ckpt_every=2", "log.keep_last=5"), run)
    before = (run / "metrics.jsonl").read_text()
    cfg = tiny(images, "train.total_steps=3")
    refused = r"already holds a run .*latest checkpoint is step 4.*--resume auto.*--overwrite"
    with pytest.raises(ConfigError, match=refused):
        train(cfg, run)
    assert (run / "metrics.jsonl").read_text() == before
    assert [p.name for p in ckpt_lib.list_checkpoints(run / "checkpoints")] == ["ckpt_00000002.pt", "ckpt_00000004.pt"]
    with pytest.raises(ConfigError, match="give one"):
        train(cfg, run, resume="auto", overwrite=True)
    (run / "notes.txt").write_text("mine")
    train(cfg, run, overwrite=True)
    assert [r["step"] for r in records(run)] == [1, 2, 3]
    assert [p.name for p in ckpt_lib.list_checkpoints(run / "checkpoints")] == ["ckpt_00000003.pt"]
    assert (run / "notes.txt").read_text() == "mine"  # only what train writes is deleted
    # a folder with only config.toml (a run that failed in setup) is not a run worth refusing for
    empty = tmp_path / "failed-setup"
    empty.mkdir()
    save_config(cfg, empty / "config.toml")
    train(cfg, empty)
    assert cli_train(str(empty / "config.toml"), "--run-dir", str(run)) == 2
    assert "already holds a run" in caplog.text
    assert cli_train(str(empty / "config.toml"), "--run-dir", str(run), "--resume",
                     str(tmp_path / "nope.pt")) == 2
    assert "--resume " + str(tmp_path / "nope.pt") + ": no such checkpoint file" in caplog.text


def test_d_warmup_and_update_ratio(images, tmp_path):
    """Warm-up: steps 1-2 train only D (G untouched); then G on every 2nd step, D on every step."""
    cfg = tiny(images, *GAN, "train.total_steps=6", "train.d_warmup_steps=2", "train.d_steps_per_g=2")
    torch.manual_seed(cfg.train.seed)
    initial = build_generator("msrresnet", upscale=4, num_feat=8, num_block=1).state_dict()
    train(cfg, tmp_path / "run")
    recs = records(tmp_path / "run")
    assert [("l_pix" in r) for r in recs] == [False, False, True, False, True, False]
    assert all("loss_d" in r for r in recs)
    cfg.train.total_steps = 2
    train(cfg, tmp_path / "warm")
    after_warmup = final_state(tmp_path / "warm")["gen"]
    assert all(torch.equal(initial[k], after_warmup[k]) for k in initial)


def test_stage_two_from_stage_one_checkpoint(images, tmp_path):
    """A stage-1 checkpoint (no D, no opt_d, no scaler) resumes into a GAN config with a fresh D."""
    train(tiny(images, "train.total_steps=2", "optim.schedule=constant"), tmp_path / "run")
    assert set(final_state(tmp_path / "run")) == STAGE1_KEYS
    train(tiny(images, *GAN, "train.total_steps=4", "optim.schedule=constant"), tmp_path / "run", resume="auto")
    state = final_state(tmp_path / "run")
    assert state["step"] == 4 and "disc" in state
    assert [r["step"] for r in records(tmp_path / "run")] == [1, 2, 3, 4]


def test_pretrained_generator(images, tmp_path):
    torch.manual_seed(5)
    src = build_generator("msrresnet", upscale=4, num_feat=8, num_block=1)
    save_weights(tmp_path / "stage1.safetensors", src)
    cfg = tiny(images, *GAN, "train.total_steps=1", "train.d_warmup_steps=1",
               f"model.pretrained={json.dumps(str(tmp_path / 'stage1.safetensors'))}")
    train(cfg, tmp_path / "run")
    gen = final_state(tmp_path / "run")["gen"]
    assert all(torch.equal(gen[k], v) for k, v in src.state_dict().items())  # warm-up: G untouched
    cfg.model.pretrained = str(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="model.pretrained"):
        train(cfg, tmp_path / "run2")


def test_pretrained_generator_of_another_scale(images, tmp_path):
    """x4 -> x2 MSRResNet: everything but the second upsampling conv is copied; other sizes fail."""
    torch.manual_seed(5)
    src = build_generator("msrresnet", upscale=4, num_feat=8, num_block=1)
    save_weights(tmp_path / "x4.safetensors", src)
    cfg = tiny(images, *GAN, "model.scale=2", "train.total_steps=1", "train.d_warmup_steps=1",
               f"model.pretrained={json.dumps(str(tmp_path / 'x4.safetensors'))}")
    train(cfg, tmp_path / "run")
    gen = final_state(tmp_path / "run")["gen"]
    assert "upconv2.weight" not in gen
    assert set(gen) == set(src.state_dict()) - {"upconv2.weight", "upconv2.bias"}
    assert all(torch.equal(gen[k], src.state_dict()[k]) for k in gen)
    save_weights(tmp_path / "wide.safetensors", build_generator("msrresnet", upscale=4, num_feat=16, num_block=1))
    cfg.model.pretrained = str(tmp_path / "wide.safetensors")
    with pytest.raises(ConfigError, match="only the scale may differ"):
        train(cfg, tmp_path / "run2")


def test_non_finite_loss_stops_without_saving(images, tmp_path, monkeypatch):
    real = train_mod.pixel_loss
    calls = []

    def nan_on_third(kind, sr, hr):
        calls.append(1)
        out = real(kind, sr, hr)
        return out * float("nan") if len(calls) == 3 else out

    monkeypatch.setattr(train_mod, "pixel_loss", nan_on_third)
    with pytest.raises(FloatingPointError, match="step 3"):
        train(tiny(images, "train.total_steps=5", "log.ckpt_every=1", "log.keep_last=5"), tmp_path / "run")
    # the last good state stays the latest; the NaN-poisoned step 3 is never written
    assert final_state(tmp_path / "run")["step"] == 2


def test_non_finite_loss_between_logs_is_found_before_anything_is_written(images, tmp_path, monkeypatch):
    """Losses are read at the log interval: a NaN in step 3 of 4 unlogged steps still names step 3,
    and the final checkpoint of the poisoned run is not written."""
    real = train_mod.pixel_loss
    calls = []

    def nan_on_third(kind, sr, hr):
        calls.append(1)
        out = real(kind, sr, hr)
        return out * float("nan") if len(calls) == 3 else out

    monkeypatch.setattr(train_mod, "pixel_loss", nan_on_third)
    with pytest.raises(FloatingPointError, match="step 3"):
        train(tiny(images, "train.total_steps=6", "log.log_every=4"), tmp_path / "run")
    assert ckpt_lib.latest_checkpoint(tmp_path / "run" / "checkpoints") is None
    assert not (tmp_path / "run" / "metrics.jsonl").read_text()


def test_losses_are_read_once_per_log_interval(images, tmp_path, monkeypatch):
    """Reading a loss waits for the device: 6 steps logged every 3 read them twice, plus once
    before the final checkpoint (which must not save weights a NaN produced)."""
    reads = []
    original = train_mod.LossMeter.settle

    def counting_settle(self):
        reads.append(len(self.pending))
        original(self)

    monkeypatch.setattr(train_mod.LossMeter, "settle", counting_settle)
    train(tiny(images, *GAN, "train.total_steps=6", "log.log_every=3"), tmp_path / "run")
    assert reads == [3, 3, 0]
    recs = records(tmp_path / "run")
    assert [r["step"] for r in recs] == [3, 6] and all("loss_d" in r and "l_pix" in r for r in recs)


def test_loss_meter_means_and_first_bad_step():
    meter = train_mod.LossMeter(check_finite=True)
    meter.add(0, {"a": torch.tensor(0.1), "b": torch.tensor(2.0)})
    meter.add(1, {"a": torch.tensor(0.2)})  # a key absent on a step (D-only steps have no l_pix)
    sums, counts = meter.drain()
    assert sums == {"a": float(torch.tensor(0.1)) + float(torch.tensor(0.2)), "b": 2.0}
    assert counts == {"a": 2, "b": 1}
    assert meter.drain() == ({}, {})
    meter.add(2, {"a": torch.tensor(1.0)})
    meter.add(3, {"a": torch.tensor(float("inf"))})
    meter.add(4, {"a": torch.tensor(float("nan"))})
    with pytest.raises(FloatingPointError, match="step 4: non-finite loss"):
        meter.settle()
    assert meter.poisoned
    unchecked = train_mod.LossMeter(check_finite=False)  # fp16: the GradScaler skips such steps
    unchecked.add(0, {"a": torch.tensor(float("inf"))})
    assert unchecked.drain() == ({"a": float("inf")}, {"a": 1})


# ---------------------------------------------------------------------------------------------
# resume

KILL_SCRIPT = """
import os, signal, sys
import superres.training.loop as T
from superres.training.config import load_config

calls = 0
real_ema_update = T.ema_update

def ema_update_then_die(*args, **kwargs):
    global calls
    real_ema_update(*args, **kwargs)
    calls += 1
    if calls == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no handler: like a lost machine

T.ema_update = ema_update_then_die
T.train(load_config(sys.argv[1]), sys.argv[2])
"""


def test_sigkill_and_resume_is_bitwise_identical(images, tmp_path):
    """6 steps straight == killed with SIGKILL in step 5 (checkpoint at 3), then --resume auto."""
    cfg = tiny(images, *GAN, "train.total_steps=6", "train.d_warmup_steps=1", "log.ckpt_every=3",
               "log.keep_last=5")
    train(cfg, tmp_path / "straight")

    save_config(cfg, tmp_path / "cfg.toml")
    # CPU kernels split reductions by the intra-op thread count, so float results depend on it: the
    # child must use the same count as this process (the env below would otherwise drop OMP_NUM_THREADS
    # and let the child take every core). train() warns when a resume changes the count.
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    # G trains from step 2 on (one warm-up step), so its 4th EMA update happens in step 5.
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "cfg.toml"),
                           str(tmp_path / "killed"), "4"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert ckpt_lib.latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "ckpt_00000003.pt"
    assert [r["step"] for r in records(tmp_path / "killed")] == [1, 2, 3, 4]

    train(cfg, tmp_path / "killed", resume="auto")
    assert losses_of(tmp_path / "killed") == losses_of(tmp_path / "straight")
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "killed")
    assert a["step"] == b["step"] == 6
    assert_states_equal(a, b)
    for opt in ("opt_g", "opt_d"):
        for i, s in a[opt]["state"].items():
            assert torch.equal(s["exp_avg_sq"], b[opt]["state"][i]["exp_avg_sq"])
    # the checkpoint itself is the same file: a second resume from it must not drift either
    for part in ("torch", "numpy", "python"):
        assert torch.equal(torch.as_tensor(a["rng"][part]), torch.as_tensor(b["rng"][part])), f"rng.{part} differs"
    assert a["rng"]["numpy_pos"] == b["rng"]["numpy_pos"]


SIGNAL_SCRIPT = """
import os, signal, sys
import superres.training.loop as T
from superres.apps.cli import main

calls = 0
real_ema_update = T.ema_update

def ema_update_then_signal(*args, **kwargs):
    global calls
    real_ema_update(*args, **kwargs)
    calls += 1
    if calls == 3:
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # as `kill` or Ctrl-C would, mid-step 3

T.ema_update = ema_update_then_signal
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signame,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_saves_says_interrupted_and_exits_non_zero(images, tmp_path, signame, code):
    cfg = tiny(images, "train.total_steps=5")
    save_config(cfg, tmp_path / "cfg.toml")
    run = tmp_path / "run"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT, signame, "train", str(tmp_path / "cfg.toml"),
                           "--run-dir", str(run), "--set", "log.log_every=1"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert f"interrupted by {signame} at step 3 of 5" in proc.stderr
    assert "finished" not in proc.stderr
    assert ckpt_lib.latest_checkpoint(run / "checkpoints").name == "ckpt_00000003.pt"
    # the printed command, run as it is, finishes the run
    command = proc.stderr.split("Resume with:\n")[1].splitlines()[0].split()
    assert command[:2] == ["superres", "train"] and command[-2:] == ["--resume", "auto"]
    assert ["--set", "log.log_every=1"] == command[command.index("--set"):command.index("--set") + 2]
    done = subprocess.run([sys.executable, "-m", "superres", *command[1:]], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "finished at step 5" in done.stderr
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5]


def test_resume_explicit_path(images, tmp_path):
    cfg = tiny(images, "train.total_steps=4", "log.ckpt_every=2", "log.keep_last=5")
    train(cfg, tmp_path / "a")
    path = tmp_path / "a" / "checkpoints" / "ckpt_00000002.pt"
    summary = train(cfg, tmp_path / "b", resume=str(path))
    assert summary["step"] == 4
    assert_states_equal(final_state(tmp_path / "a"), final_state(tmp_path / "b"), parts=("gen", "ema"))


def test_resume_follows_the_configs_learning_rate(images, tmp_path, caplog):
    """A lower optim.lr_g on resume is what a user does when training stalls: the restored optimizer
    and schedule must take it (they used to keep the checkpoint's), with the schedule's shape kept."""
    import logging

    cfg = tiny(images, "train.total_steps=4", "log.ckpt_every=2", "optim.lr_g=1e-3", "optim.schedule=cosine",
               "optim.min_lr_ratio=0.5")
    train(cfg, tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoints" / "ckpt_00000002.pt"
    seen = []
    real = train_mod.restore_checkpoint

    def spy(rs, resume):
        out = real(rs, resume)
        seen.append((rs.sched_g.base_lrs[0], rs.opt_g.param_groups[0]["lr"], rs.sched_g.lr_lambdas[0](rs.step)))
        return out

    with caplog.at_level(logging.INFO, logger="superres.training.loop"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "restore_checkpoint", spy)
        train(tiny(images, "train.total_steps=4", "log.ckpt_every=2", "optim.lr_g=1e-4", "optim.schedule=cosine",
                   "optim.min_lr_ratio=0.5"), tmp_path / "b", resume=str(ckpt))
    (base, lr, factor), = seen
    assert base == 1e-4 and 0.5 < factor < 1.0 and lr == pytest.approx(1e-4 * factor)
    assert "optim.lr_g = 0.0001 from the config (the checkpoint had 0.001)" in caplog.text
    # the lr logged for the steps after the resume is the new one
    assert all(r["lr_g"] <= 1e-4 for r in records(tmp_path / "b") if "lr_g" in r)


def test_rng_state_round_trip_mid_stream(caplog):
    """numpy's state is its key *and* position (and cached Gaussian): restoring with position 624
    replays another stream once numpy has drawn anything."""
    import random

    np.random.seed(3)
    np.random.random(10)
    np.random.standard_normal()
    state = train_mod.rng_state()
    draw = lambda: (np.random.random(5), np.random.standard_normal(), random.random(), torch.rand(2))  # noqa: E731
    want = draw()
    np.random.seed(99), random.seed(99), torch.manual_seed(99)
    train_mod.set_rng_state(state)
    for w, g in zip(want, draw()):
        assert np.array_equal(np.asarray(w), np.asarray(g))
    assert "CPU thread" not in caplog.text
    train_mod.set_rng_state({**state, "cpu_threads": torch.get_num_threads() + 1})  # another thread count
    assert "not be bitwise identical" in caplog.text
    legacy = {k: state[k] for k in ("torch", "python", "numpy")}  # checkpoints before numpy_pos
    train_mod.set_rng_state(legacy)


# ---------------------------------------------------------------------------------------------
# data-parallel

# A D without BatchNorm: BatchNorm sees each rank's half batch (SyncBatchNorm is CUDA-only).
GAN_SN = ("losses.adversarial=0.1", "losses.feature_matching=1.0", "disc.arch=patchgan",
          "disc.hparams={num_feat=8, spectral_norm=true}")


@pytest.mark.parametrize("extra", [(), GAN_SN], ids=["psnr", "gan"])
def test_ddp_two_cpu_processes_match_one_process(images, tmp_path, extra):
    """torchrun with 2 gloo processes x batch 2 == 1 process x batch 4: same samples, averaged
    gradients, so the same weights up to float summation order."""
    cfg = tiny(images, *extra, "train.total_steps=3", "train.deterministic=false", "log.ckpt_every=3")
    save_config(cfg, tmp_path / "cfg.toml")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "superres", "train", str(tmp_path / "cfg.toml"), "--run-dir", str(tmp_path / "ddp")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-8000:]
    train(cfg, tmp_path / "single")
    a, b = final_state(tmp_path / "single"), final_state(tmp_path / "ddp")
    assert a["step"] == b["step"] == 3 and a["sampler"] == b["sampler"] == {"next_index": 12}
    for part in ("gen", "ema", "disc"):
        if part in a or part in b:
            assert a[part].keys() == b[part].keys()
            for k in a[part]:
                torch.testing.assert_close(b[part][k], a[part][k], rtol=1e-4, atol=1e-5, msg=f"{part}.{k}")
    # rank 0 logs the mean over both ranks: the same losses as one process
    for ra, rb in zip(losses_of(tmp_path / "single"), losses_of(tmp_path / "ddp"), strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-5), (k, ra, rb)


# ---------------------------------------------------------------------------------------------
# realistic degradation

def test_realistic_degradation_runs_and_resumes(images, tmp_path):
    items = ("data.degradation=realistic", "optim.schedule=constant", "data.batch_size=2",
             "log.ckpt_every=1", "log.keep_last=5")
    train(tiny(images, *items, "train.total_steps=2"), tmp_path / "straight")
    state = final_state(tmp_path / "straight")
    assert len(state["degrader_rng"]) == 1 and state["degrader_rng"][0].dtype == torch.uint8
    train(tiny(images, *items, "train.total_steps=1"), tmp_path / "resumed")
    train(tiny(images, *items, "train.total_steps=2"), tmp_path / "resumed", resume="auto")
    assert losses_of(tmp_path / "resumed") == losses_of(tmp_path / "straight")



def test_camera_fraction_mixes_the_presets_per_batch():
    from superres.data.degrade import camera_degrade

    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calls = []

    def realistic(x, generator):
        calls.append(1)
        return x[:, :, ::4, ::4]

    # fraction 1: every batch is exactly the camera preset, drawn after the one choice draw
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = train_mod.MixedDegrader(realistic, 1.0, 4)(hr, g1)
    torch.rand((), generator=g2)
    assert torch.equal(out, camera_degrade(hr, 4, g2)) and calls == []
    # fraction 0.3: about 30% camera batches, the rest through the realistic pipeline
    mixed = train_mod.MixedDegrader(realistic, 0.3, 4)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        assert mixed(hr, g).shape == (2, 3, 8, 8)
    assert 120 <= len(calls) <= 160, len(calls)


def test_clean_fraction_gives_the_benchmark_lr_and_shares_the_draw_with_camera():
    from superres.data.resize import degrade_bicubic, imresize

    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    hr = torch.round(hr * 255) / 255
    kinds = []

    def realistic(x, generator):
        kinds.append("realistic")
        return x[:, :, ::4, ::4]

    out = train_mod.MixedDegrader(realistic, 0.0, 4, clean_fraction=1.0)(hr, torch.Generator().manual_seed(3))
    assert torch.equal(out, degrade_bicubic(hr, 4)) and kinds == []
    # the clean LR is MATLAB's bicubic of the 8-bit image
    u8 = (hr[0] * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal((out[0] * 255).round().byte().permute(1, 2, 0).numpy(), imresize(u8, 1 / 4))
    mixed = train_mod.MixedDegrader(realistic, 0.3, 4, clean_fraction=0.4)
    mixed.camera = lambda x, s, g: (kinds.append("camera"), x[:, :, ::4, ::4])[1]
    mixed.clean = lambda x, s: (kinds.append("clean"), x[:, :, ::4, ::4])[1]
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        mixed(hr, g)
    counts = {k: kinds.count(k) for k in ("clean", "camera", "realistic")}
    assert 95 <= counts["clean"] <= 145 and 65 <= counts["camera"] <= 115 and 65 <= counts["realistic"] <= 115, counts


def test_clean_fraction_is_checked(images):
    with pytest.raises(ConfigError, match="data.clean_fraction = -0.1 must be in"):
        tiny(images, "data.degradation=realistic", "data.clean_fraction=-0.1")
    with pytest.raises(ConfigError, match="data.clean_fraction = 0.5 needs data.degradation = 'realistic'"):
        tiny(images, "data.clean_fraction=0.5")
    with pytest.raises(ConfigError, match=r"clean_fraction \+ data.camera_fraction = 0.6 \+ 0.5 must be at most 1"):
        tiny(images, "data.degradation=realistic", "data.clean_fraction=0.6", "data.camera_fraction=0.5")


def test_camera_fraction_trains_resumes_and_is_checked(images, tmp_path):
    items = ("data.degradation=realistic", "data.camera_fraction=0.5", "optim.schedule=constant",
             "data.batch_size=2", "log.ckpt_every=1", "log.keep_last=5")
    train(tiny(images, *items, "train.total_steps=3"), tmp_path / "straight")
    train(tiny(images, *items, "train.total_steps=1"), tmp_path / "resumed")
    train(tiny(images, *items, "train.total_steps=3"), tmp_path / "resumed", resume="auto")
    assert losses_of(tmp_path / "resumed") == losses_of(tmp_path / "straight")
    with pytest.raises(ConfigError, match="data.camera_fraction = 1.5 must be in"):
        tiny(images, "data.degradation=realistic", "data.camera_fraction=1.5")
    with pytest.raises(ConfigError, match="needs data.degradation = 'realistic'.*got 'bicubic'"):
        tiny(images, "data.camera_fraction=0.2")


# ---------------------------------------------------------------------------------------------
# pieces

def test_gan_health_warnings():
    h = GanHealth(patience=3)
    base = {"loss_d": 1.3, "sr_std": 0.2, "hr_std": 0.25, "l_adv": 0.7}
    assert all(h.check({"step": i, **base}) == [] for i in range(5))
    won = [h.check({"step": 10 + i, **base, "loss_d": 0.001}) for i in range(5)]
    assert [len(w) for w in won] == [0, 0, 1, 0, 0]  # once per episode
    assert "discriminator wins" in won[2][0]
    collapse = [h.check({"step": 20 + i, **base, "sr_std": 0.01}) for i in range(3)]
    assert "collapsed" in collapse[2][0]
    assert any("exploded" in w for w in h.check({"step": 30, **base, "l_adv": 50.0}))
    assert any("exploded" in w for w in GanHealth().check({"step": 1, "l_adv": float("nan")}))


def test_save_samples(tmp_path):
    folder = make_images(tmp_path / "val", n=3, size=36)
    model = build_generator("msrresnet", upscale=4, num_feat=8, num_block=1)
    paths = save_samples(model, folder, 4, 2, tmp_path / "samples", 7, torch.device("cpu"))
    assert [p.name for p in paths] == ["step00000007_0.png", "step00000007_1.png"]
    with Image.open(paths[0]) as im:
        assert im.size == (3 * 36, 36)  # [LR nearest | SR | HR], 36 = 9 LR pixels x 4


def test_validation_with_evaluate(images, tmp_path):
    val = make_images(tmp_path / "Set2" / "HR", n=2, size=32, seed=1)
    cfg = tiny(images, "train.total_steps=2", "log.val_every=2", "log.val_niqe=false",
               f"data.val_dirs=[{json.dumps(str(val.parent))}]", "log.sample_images=1")
    summary = train(cfg, tmp_path / "run")
    val_rec = [r for r in records(tmp_path / "run") if "val/psnr" in r]
    assert len(val_rec) == 1 and math.isfinite(val_rec[0]["val/Set2/psnr"])
    assert summary["best"] == val_rec[0]["val/psnr"]
    assert (tmp_path / "run" / "best.safetensors").is_file()
    assert len(list((tmp_path / "run" / "samples").glob("*.png"))) == 1


def test_tensorboard_when_installed(images, tmp_path):
    pytest.importorskip("tensorboard")
    train(tiny(images, "train.total_steps=1", "log.tensorboard=true"), tmp_path / "run")
    assert list((tmp_path / "run" / "tb").glob("events.*"))


def tensorboard_scalar_steps(tb_dir: Path) -> dict[str, list[int]]:
    """Each scalar tag's steps as TensorBoard shows them: event files in name (= time) order, and a
    SessionLog.START at step N (SummaryWriter's purge_step) hides the earlier events at steps >= N."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    seen: list[tuple[str, int]] = []
    for path in sorted(tb_dir.glob("events.*")):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                seen = [(tag, step) for tag, step in seen if step < event.step]
            for value in event.summary.value:
                seen.append((value.tag, event.step))
    steps: dict[str, list[int]] = {}
    for tag, step in seen:
        steps.setdefault(tag, []).append(step)
    return steps


def test_resume_logs_each_step_once(images, tmp_path):
    """Resuming at step 2 of a 4-step run redoes steps 3-4: TensorBoard and metrics.jsonl must show
    them once, with the resumed run's values."""
    pytest.importorskip("tensorboard")
    cfg = tiny(images, "train.total_steps=4", "log.ckpt_every=2", "log.keep_last=5", "log.tensorboard=true")
    run = tmp_path / "run"
    train(cfg, run)
    train(cfg, run, resume=str(run / "checkpoints" / "ckpt_00000002.pt"))
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4]
    steps = tensorboard_scalar_steps(run / "tb")
    assert steps["train/l_pix"] == [1, 2, 3, 4]
    assert all(sorted(set(s)) == s for s in steps.values()), steps


def test_texture_loss_trains_without_a_discriminator(images, tmp_path):
    cfg = tiny(images, "losses.texture=1.0", "losses.texture_layers={relu1_1=1.0, relu2_1=0.5}",
               "losses.texture_patch=8")
    train(cfg, tmp_path / "run")
    recs = records(tmp_path / "run")
    assert all(math.isfinite(r["l_tex"]) and r["l_tex"] > 0 and "loss_d" not in r for r in recs)
    for r in recs:
        assert r["loss_g"] == pytest.approx(r["l_pix"] + r["l_tex"], rel=1e-4)
    assert "disc" not in final_state(tmp_path / "run")


def test_artifact_loss_in_the_gan_step(images, tmp_path):
    cfg = tiny(images, *GAN, "losses.artifact=1.0", "train.total_steps=4")
    train(cfg, tmp_path / "run")
    recs = records(tmp_path / "run")
    assert all(math.isfinite(r["l_art"]) and r["l_art"] >= 0 for r in recs)
    assert any(r["l_art"] > 0 for r in recs[1:])  # once G and its EMA differ, some pixels are flagged
    with pytest.raises(ConfigError, match="losses.artifact_window = 4: expected an odd number"):
        tiny(images, "losses.artifact=1.0", "losses.artifact_window=4")


def test_r1_penalty_in_the_discriminator_step(images, tmp_path):
    cfg = tiny(images, *GAN, "losses.r1=10.0", "losses.r1_every=2", "train.total_steps=4")
    train(cfg, tmp_path / "r1")
    recs = records(tmp_path / "r1")
    # D steps 0 and 2 carry the penalty; they are logged as steps 1 and 3
    assert [r["step"] for r in recs if "l_r1" in r] == [1, 3]
    assert all(math.isfinite(r["l_r1"]) and r["l_r1"] > 0 for r in recs if "l_r1" in r)
    train(tiny(images, *GAN, "train.total_steps=4"), tmp_path / "plain")
    with_r1, plain = final_state(tmp_path / "r1")["disc"], final_state(tmp_path / "plain")["disc"]
    assert any(not torch.equal(with_r1[k], plain[k]) for k in plain)  # the penalty moved D
    with pytest.raises(ConfigError, match="losses.r1_every = 0 must be >= 1"):
        tiny(images, "losses.r1=1.0", "losses.r1_every=0")
    with pytest.raises(ConfigError, match="losses.r1 = -1.0 must be >= 0"):
        tiny(images, "losses.r1=-1.0")


def test_gan_health_streaks_survive_a_resume(tmp_path):
    """Two low-loss_d logs before the kill and one after still make the 3-log streak."""
    base = {"loss_d": 1.3, "sr_std": 0.2, "hr_std": 0.25, "l_adv": 0.7}
    path = tmp_path / "metrics.jsonl"
    recs = [{"step": 1, **base}, {"step": 2, **base, "loss_d": 0.001}, {"step": 3, **base, "loss_d": 0.001},
            {"step": 3, "val/psnr": 20.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 4, "loss_d"')  # cut by the kill
    resumed = GanHealth(patience=3)
    resumed.replay(path)
    warnings = resumed.check({"step": 4, **base, "loss_d": 0.001})
    assert len(warnings) == 1 and "discriminator wins" in warnings[0]
    fresh = GanHealth(patience=3)
    assert fresh.check({"step": 4, **base, "loss_d": 0.001}) == []


def test_holdout_images_are_validated_and_never_trained_on(tmp_path, monkeypatch):
    folder = make_images(tmp_path / "Train", n=5, size=32, seed=2)  # 0..4.png: holdout=2 keeps 0, 2, 4
    seen: list[str] = []
    original = train_mod.PatchDataset.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.extend(item.name for item in self.items)

    monkeypatch.setattr(train_mod.PatchDataset, "__init__", spy)
    cfg = tiny(folder, "data.holdout=2", "train.total_steps=2", "log.val_every=2", "log.val_niqe=false",
               "log.sample_images=1")
    train(cfg, tmp_path / "run")
    assert sorted(seen) == ["0.png", "2.png", "4.png"]
    val_rec = [r for r in records(tmp_path / "run") if "val/psnr" in r]
    assert len(val_rec) == 1 and math.isfinite(val_rec[0]["val/Train-holdout/psnr"])
    assert val_rec[0]["val/psnr"] == val_rec[0]["val/Train-holdout/psnr"]  # the only validation set
    assert not (tmp_path / "run" / "samples").exists()  # samples come from val_dirs, empty here
    with pytest.raises(ConfigError, match="data.holdout = 1: allowed values"):
        tiny(folder, "data.holdout=1")


def test_validation_on_a_degraded_track_matches_eval_and_names_it(tmp_path):
    from superres.evaluation.protocol import evaluate_generator
    from superres.inference.weights import load_generator

    train_dir = make_images(tmp_path / "Train", n=4, size=40, seed=1)
    val_dir = make_images(tmp_path / "Val", n=2, size=48, seed=5)
    cfg = tiny(train_dir, f"data.val_dirs=[{json.dumps(str(val_dir))}]", "train.total_steps=2",
               "log.val_every=2", "log.val_niqe=false", "log.sample_images=1",
               "data.val_degradation=realistic", "data.val_seed=3")
    train(cfg, tmp_path / "run")
    rec = next(r for r in records(tmp_path / "run") if "val/psnr" in r)
    assert set(k for k in rec if k.startswith("val/Val")) == {"val/Val-realistic/psnr", "val/Val-realistic/ssim"}
    # best.safetensors is the EMA generator that was validated: `superres eval`'s function on the
    # same track (same seed) gives the same number, and the bicubic track another one
    model, _ = load_generator(tmp_path / "run" / "best.safetensors")
    same = evaluate_generator(model, val_dir, 4, degrade="realistic", seed=3)["psnr"]
    assert same == pytest.approx(rec["val/Val-realistic/psnr"], abs=1e-9)
    assert evaluate_generator(model, val_dir, 4)["psnr"] != pytest.approx(same, abs=1e-3)
    assert evaluate_generator(model, val_dir, 4, degrade="realistic", seed=4)["psnr"] != pytest.approx(same, abs=1e-3)
    # the sample strip's LR panel is the degraded LR (nearest-upscaled), not the bicubic one
    strip = np.asarray(Image.open(next((tmp_path / "run" / "samples").glob("*.png"))))
    hr = np.asarray(Image.open(val_dir / "0.png").convert("RGB"))[:48, :48]
    from superres.data.degrade import degrade_image, image_seed
    from superres.data.resize import imresize
    lr = degrade_image(hr, "realistic", 4, image_seed(3, "0.png"))
    assert np.array_equal(strip[:, :48][::4, ::4], lr)
    assert not np.array_equal(lr, imresize(hr, 1 / 4))
    with pytest.raises(ConfigError, match=r"data.val_degradation = 'jpeg' is not allowed; allowed values: "
                                          r"\['bicubic', 'realistic', 'camera'\]"):
        tiny(train_dir, "data.val_degradation=jpeg")


def test_best_min_psnr_keeps_unfaithful_validations_out_of_best(tmp_path):
    images = make_images(tmp_path / "Train", n=4, size=40, seed=1)
    val = f"data.val_dirs=[{json.dumps(str(images))}]"
    common = ("train.total_steps=4", "log.val_every=2", "log.val_niqe=false", "log.sample_images=0")
    train(tiny(images, val, *common), tmp_path / "free")
    vals = [r["val/psnr"] for r in records(tmp_path / "free") if "val/psnr" in r]
    assert len(vals) == 2 and (tmp_path / "free" / "best.safetensors").is_file()
    # a floor above every validation: nothing may become best; a floor below: same as none
    train(tiny(images, val, *common, f"log.best_min_psnr={max(vals) + 1}"), tmp_path / "high")
    assert not (tmp_path / "high" / "best.safetensors").exists()
    train(tiny(images, val, *common, f"log.best_min_psnr={min(vals) - 1}"), tmp_path / "low")
    from superres.inference.weights import read_state_dict
    (free, free_meta), (low, low_meta) = (read_state_dict(tmp_path / d / "best.safetensors")
                                          for d in ("free", "low"))
    assert free_meta["step"] == low_meta["step"] and free.keys() == low.keys()
    assert all(torch.equal(free[k], low[k]) for k in free)
    with pytest.raises(ConfigError, match="log.best_min_psnr = -1.0 must be >= 0"):
        tiny(images, "log.best_min_psnr=-1")


def test_resume_with_another_validation_track_starts_best_over(tmp_path, monkeypatch):
    from superres.inference.weights import read_state_dict

    images = make_images(tmp_path / "Train", n=4, size=40, seed=1)
    common = (f"data.val_dirs=[{json.dumps(str(images))}]", "log.val_every=2", "log.val_niqe=false",
              "log.sample_images=0", "log.ckpt_every=2")
    run = tmp_path / "run"
    train(tiny(images, *common, "train.total_steps=2"), run)
    assert read_state_dict(run / "best.safetensors")[1]["step"] == "2"
    # the realistic track scores far lower than the clean one: the bicubic best would shut it out
    # for the rest of the run; a changed track starts the best over
    train(tiny(images, *common, "train.total_steps=4", "data.val_degradation=realistic"), run, resume="auto")
    _, meta = read_state_dict(run / "best.safetensors")
    assert meta["step"] == "4" and "val/psnr" in meta
    rec = [r for r in records(run) if "val/psnr" in r]
    assert "val/Train-realistic/psnr" in rec[-1] and rec[-1]["val/psnr"] < rec[0]["val/psnr"]
    assert final_state(run)["best_track"] == "psnr on realistic seed 0 LR of [Train]"
    # a checkpoint from before best_track existed validated on bicubic LR
    old = tmp_path / "old"
    train(tiny(images, *common, "train.total_steps=2"), old)
    ckpt = ckpt_lib.latest_checkpoint(old / "checkpoints")
    state = ckpt_lib.load_train_state(ckpt)
    del state["best_track"]
    ckpt_lib.save_train_state(ckpt, state)
    train(tiny(images, *common, "train.total_steps=4"), old, resume="auto")  # same track: best kept
    assert final_state(old)["best"] >= state["best"]
    # the same track again keeps its best: a worse validation does not replace it
    real_validate = train_mod.validate

    def worse(*args, **kwargs):
        out = real_validate(*args, **kwargs)
        return {k: v - 5.0 if k.endswith("psnr") else v for k, v in out.items()}

    monkeypatch.setattr(train_mod, "validate", worse)
    train(tiny(images, *common, "train.total_steps=6", "data.val_degradation=realistic"), run, resume="auto")
    assert [r["step"] for r in records(run) if "val/psnr" in r] == [2, 4, 6]
    assert read_state_dict(run / "best.safetensors")[1]["step"] == "4"


def test_the_detail_loss_is_logged_and_adds_to_the_generator_loss(images, tmp_path):
    plain = tiny(images, "train.total_steps=2")
    detail = tiny(images, "train.total_steps=2", "losses.detail=2.0")
    train(plain, tmp_path / "plain")
    train(detail, tmp_path / "detail")
    p, d = records(tmp_path / "plain"), records(tmp_path / "detail")
    assert "l_det" not in p[0] and d[0]["l_det"] > 0
    # same seed, same first batch and weights: the first step's loss is the pixel loss plus 2x detail
    assert d[0]["l_pix"] == pytest.approx(p[0]["l_pix"], rel=1e-5)
    assert d[0]["loss_g"] == pytest.approx(d[0]["l_pix"] + 2.0 * d[0]["l_det"], rel=1e-5)
    with pytest.raises(ConfigError, match="losses.detail = -1.0 must be >= 0"):
        tiny(images, "losses.detail=-1")
    with pytest.raises(ConfigError, match="losses.detail_sigma = 0.0 must be > 0"):
        tiny(images, "losses.detail=0.5", "losses.detail_sigma=0")


def test_sharpened_targets_reach_the_pixel_loss_but_not_the_discriminator(images, tmp_path, monkeypatch):
    calls = []
    real_usm = train_mod.unsharp_mask

    def spy(hr, weight, sigma, threshold):
        calls.append((hr.shape, weight, sigma, threshold))
        return real_usm(hr, weight, sigma, threshold)

    monkeypatch.setattr(train_mod, "unsharp_mask", spy)
    plain = tiny(images, *GAN, "train.total_steps=2")
    sharp = tiny(images, *GAN, "train.total_steps=2", "losses.sharpen_target=1.5", "losses.sharpen_sigma=2.0")
    train(plain, tmp_path / "plain")
    assert calls == []
    train(sharp, tmp_path / "sharp")
    assert len(calls) == 2 and all(c[1:] == (1.5, 2.0, 10 / 255) for c in calls)
    p, s = records(tmp_path / "plain"), records(tmp_path / "sharp")
    # same seed, same first batch and weights: only the target of the pixel loss differs
    assert s[0]["l_pix"] != pytest.approx(p[0]["l_pix"], rel=1e-3)
    assert s[0]["hr_std"] == pytest.approx(p[0]["hr_std"], rel=1e-6)  # D's real stays the plain HR
    with pytest.raises(ConfigError, match="losses.sharpen_sigma = 0.0 must be > 0"):
        tiny(images, "losses.sharpen_target=0.5", "losses.sharpen_sigma=0")
