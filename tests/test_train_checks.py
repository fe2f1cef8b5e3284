"""Training refuses bad setups before it starts, skips a bad image, and says "disk full" in words."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from superres.apps.cli import main

CONFIG = """
[model]
arch = "msrresnet"
scale = 4
hparams = { num_feat = 8, num_block = 1 }
[data]
train_dirs = ["imgs"]
hr_patch = 32
batch_size = 2
val_dirs = ["val"]
[train]
total_steps = 4
device = "cpu"
precision = "fp32"
[log]
log_every = 2
val_every = 4
ckpt_every = 2
tensorboard = false
"""


@pytest.fixture()
def setup(tmp_path):
    rng = np.random.default_rng(0)
    for folder, n, side in (("imgs", 3, 48), ("val", 1, 48), ("small", 2, 20)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (side, side, 3)).astype(np.uint8)).save(tmp_path / folder / f"{i}.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "badval").mkdir()
    (tmp_path / "badval" / "x.png").write_bytes(b"garbage")
    (tmp_path / "c.toml").write_text(CONFIG)
    return tmp_path


def _train(tmp, *sets):
    args = ["train", str(tmp / "c.toml"), "--run-dir", str(tmp / "run"), "--overwrite"]
    for s in sets:
        args += ["--set", s]
    return main(args)


@pytest.mark.parametrize("override, words", [
    ("model.hparams={num_feat=8,num_block=1,bogus=3}", "unknown hyperparameter 'bogus'; allowed: num_in_ch"),
    ("model.hparams={num_feat=-8,num_block=1}", "num_feat = -8: must be a positive integer"),
    ("model.hparams={num_feat=0,num_block=1}", "num_feat = 0: must be a positive integer"),
])
def test_bad_hyperparameters_are_config_errors(setup, caplog, override, words):
    assert _train(setup, override) == 2
    assert words in caplog.text and "Traceback" not in caplog.text
    assert not (setup / "run").exists()


@pytest.mark.parametrize("val, words", [("empty", "empty holds no images"),
                                        ("badval", "x.png: not an image file")])
def test_validation_folders_are_checked_before_the_first_step(setup, caplog, monkeypatch, val, words):
    steps = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda *a, **k: steps.append(1))
    assert _train(setup, f'data.val_dirs=["{setup / val}"]') == 2
    assert words in caplog.text and not steps


def test_images_all_smaller_than_the_patch_are_a_config_error(setup, caplog):
    assert _train(setup, f'data.train_dirs=["{setup / "small"}"]') == 2
    assert "no usable training images" in caplog.text and "lower data.hr_patch" in caplog.text


def test_one_corrupt_training_image_is_skipped_with_a_warning(setup, caplog):
    (setup / "imgs" / "bad.png").write_bytes(b"not a png")
    caplog.set_level(logging.WARNING)
    assert _train(setup) == 0
    assert any("skipping" in r.getMessage() and "bad.png" in r.getMessage() for r in caplog.records)


def test_a_full_disk_at_a_checkpoint_is_said_in_words(setup, caplog, monkeypatch):
    import superres.training.checkpoint as ckpt

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0; iostream error")

    monkeypatch.setattr(ckpt.torch, "save", full)
    assert _train(setup) == 1
    assert "could not write the checkpoint" in caplog.text and "the disk is full" in caplog.text
    assert "Traceback" not in caplog.text
