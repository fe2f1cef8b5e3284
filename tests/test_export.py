"""superres.export: run folder -> .safetensors (+ ONNX) round trips, and network interpolation."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from superres.archs import build_generator
from superres.training.checkpoint import checkpoint_path, save_train_state
from superres.apps.cli import main as cli_main
from superres.training.config import config_digest, load_config, save_config
from superres.training.export import ExportError, export_run, interpolate_files, last_validation_record
from superres.inference.interpolate import interpolate_state_dicts
from superres.inference.weights import load_generator, save_weights

TINY = ["model.arch=msrresnet", "model.scale=4", "model.hparams={num_feat = 8, num_block = 1}"]


def _tiny(seed: int, **hparams):
    torch.manual_seed(seed)
    hp = {"num_feat": 8, "num_block": 1, "upscale": 4, **hparams}
    return build_generator("msrresnet", **hp).eval()


def _perturbed(model, seed: int):
    """A copy whose weights differ from `model`'s everywhere (biases start at zero)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as `superres train` leaves it, made by hand: config, two checkpoints, metrics."""
    run = tmp_path / "run"
    cfg = load_config(None, TINY)
    save_config(cfg, run / "config.toml")
    gen, ema = _tiny(0), _perturbed(_tiny(0), 1)
    opt = torch.optim.Adam(gen.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (10, 20):
        state = {"step": step, "gen": gen.state_dict(), "ema": ema.state_dict(),
                 "opt_g": opt.state_dict(), "sched_g": sched.state_dict(),
                 "rng": {"torch": torch.get_rng_state()}, "sampler": {"next_index": step * 16},
                 "best": 25.5, "config_digest": config_digest(cfg)}
        save_train_state(checkpoint_path(run / "checkpoints", step), state)
    records = [{"step": 10, "l_pix": 0.1}, {"step": 10, "val/psnr": 24.0, "val/ssim": 0.70},
               {"step": 20, "val/psnr": 25.5, "val/ssim": 0.75}, {"step": 20, "l_pix": 0.05}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run, cfg, gen, ema


def _same_outputs(a, b) -> bool:
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_export_run_folder_round_trip(run_dir, tmp_path):
    run, cfg, gen, ema = run_dir
    out = tmp_path / "model.safetensors"
    export_run(run, out, description="tiny test model")
    model, info = load_generator(out)
    assert info["arch"] == "msrresnet"
    assert info["hparams"] == {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1,
                               "upscale": 4}
    assert _same_outputs(model, ema)  # the EMA weights by default, bit-exact
    assert not _same_outputs(model, gen)
    meta = info["metadata"]
    assert meta["scale"] == "4"
    assert meta["description"] == "tiny test model"
    assert meta["weights"] == "ema"
    assert json.loads(meta["step"]) == 20  # the latest checkpoint
    assert meta["config_digest"] == config_digest(cfg)
    assert meta["config"] == (run / "config.toml").read_text()
    assert json.loads(meta["metrics"]) == {"step": 20, "val/psnr": 25.5, "val/ssim": 0.75}
    assert json.loads(meta["best"]) == {"value": 25.5, "metric": "val/psnr"}


def test_export_checkpoint_file_gen_weights(run_dir, tmp_path):
    run, cfg, gen, ema = run_dir
    out = tmp_path / "gen.safetensors"
    export_run(checkpoint_path(run / "checkpoints", 10), out, weights="gen")
    model, info = load_generator(out)
    assert _same_outputs(model, gen)
    assert info["metadata"]["weights"] == "gen"
    assert json.loads(info["metadata"]["step"]) == 10
    # the validation record of that step, not the run's last one
    assert json.loads(info["metadata"]["metrics"])["val/psnr"] == 24.0


def test_export_bare_checkpoint_detects_arch(run_dir, tmp_path):
    run, _, _, ema = run_dir
    bare = tmp_path / "loose.pt"
    bare.write_bytes(checkpoint_path(run / "checkpoints", 20).read_bytes())
    out = tmp_path / "loose.safetensors"
    export_run(bare, out)
    model, info = load_generator(out)
    assert info["hparams"]["num_feat"] == 8 and info["hparams"]["num_block"] == 1
    assert _same_outputs(model, ema)
    assert "config" not in info["metadata"]


def test_export_checkpoint_copied_out_of_its_run_with_run_dir(run_dir, tmp_path, caplog):
    run, _, _, ema = run_dir
    bare = tmp_path / "loose.pt"
    bare.write_bytes(checkpoint_path(run / "checkpoints", 20).read_bytes())
    with caplog.at_level("WARNING"):
        export_run(bare, tmp_path / "plain.safetensors")
    assert "outside its run folder" in caplog.text and "--run-dir" in caplog.text
    out = tmp_path / "with_run.safetensors"
    export_run(bare, out, run_dir=run)
    model, info = load_generator(out)
    assert _same_outputs(model, ema)
    assert info["metadata"]["config"] == (run / "config.toml").read_text()
    assert json.loads(info["metadata"]["step"]) == 20
    with pytest.raises(ExportError, match="no config.toml"):
        export_run(bare, tmp_path / "x.safetensors", run_dir=tmp_path)
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "config.toml").write_text((run / "config.toml").read_text().replace("seed = 0", "seed = 5"))
    caplog.clear()
    with caplog.at_level("WARNING"):
        export_run(bare, tmp_path / "y.safetensors", run_dir=other)
    assert "digest differs" in caplog.text


def test_export_errors_name_the_problem(run_dir, tmp_path):
    run, *_ = run_dir
    with pytest.raises(ExportError, match="best.safetensors"):
        export_run(run, tmp_path / "x.safetensors", best=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match="no checkpoints"):
        export_run(empty, tmp_path / "x.safetensors")
    with pytest.raises(ExportError, match="no such"):
        export_run(tmp_path / "missing", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_export_best_safetensors(run_dir, tmp_path):
    run, _, _, ema = run_dir
    save_weights(run / "best.safetensors", ema, extra_metadata={"step": 10, "val/psnr": 24.0})
    out = tmp_path / "best.safetensors"
    export_run(run, out, best=True)
    model, info = load_generator(out)
    assert _same_outputs(model, ema)
    meta = info["metadata"]
    assert json.loads(meta["step"]) == 10
    assert json.loads(meta["best"]) == {"metric": "val/psnr", "value": 24.0}
    assert json.loads(meta["metrics"])["step"] == 10


def test_last_validation_record_skips_a_half_written_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 5, "val/psnr": 20.0}\n{"step": 6, "l_pix": 0.1}\n{"step": 7, "val/ps')
    assert last_validation_record(path) == {"step": 5, "val/psnr": 20.0}
    assert last_validation_record(path, max_step=4) is None
    assert last_validation_record(tmp_path / "none.jsonl") is None


def test_export_cli(run_dir, tmp_path):
    run, *_ = run_dir
    out = tmp_path / "cli.safetensors"
    assert cli_main(["export", str(run), "-o", str(out), "--description", "from the CLI"]) == 0
    assert load_generator(out)[1]["metadata"]["description"] == "from the CLI"
    assert cli_main(["export", str(tmp_path / "missing"), "-o", str(out)]) == 2


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None
                    or importlib.util.find_spec("onnxscript") is None,
                    reason="ONNX export needs onnxscript and onnxruntime (pip install -e '.[onnx]')")
def test_onnx_round_trip(run_dir, tmp_path):
    import onnxruntime as ort

    run, _, _, ema = run_dir
    onnx_path = tmp_path / "model.onnx"
    report = export_run(run, tmp_path / "model.safetensors", onnx_path=onnx_path)
    assert report["onnx"]["max_abs_diff"] < 1e-4
    # our own check input differs from the trace; try one more size and batch here
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 9, 15, generator=torch.Generator().manual_seed(5))
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        want = ema(x)
    assert got.shape == (3, 3, 36, 60)
    assert torch.allclose(got, want, atol=1e-4)
    assert session.get_modelmeta().custom_metadata_map["arch"] == "msrresnet"


KILL_DURING_ONNX = """
import os, signal, sys
import superres.training.export as E

E._require_onnx_tools = lambda: None  # the kill comes first: the tools need not be installed

def export_onnx_then_die(model, path, metadata=None):
    with open(path, "wb") as f:
        f.write(b"half an onnx file")
    os.kill(os.getpid(), signal.SIGKILL)  # killed during the slow export and onnxruntime check

E.export_onnx = export_onnx_then_die
E.export_run(sys.argv[1], sys.argv[2], onnx_path=sys.argv[3])
"""


def test_export_with_onnx_writes_both_files_or_neither(run_dir, tmp_path, monkeypatch, caplog):
    import subprocess
    import sys
    from pathlib import Path

    run = run_dir[0]
    out, onnx = tmp_path / "out" / "model.safetensors", tmp_path / "out" / "model.onnx"
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_ONNX, str(run), str(out), str(onnx)],
                          env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert not out.exists() and not onnx.exists()
    assert len(list(out.parent.glob(".model.*.tmp"))) == 2  # a SIGKILL runs no cleanup

    # a failed ONNX check: neither file, no temp left (the killed run's are named and removed), and
    # an earlier export stays as it was
    import superres.training.export as export_mod

    save_weights(out, _tiny(7))
    before = out.read_bytes()

    def failing_check(model, path, metadata=None):
        raise ExportError("ONNX output differs from PyTorch")

    monkeypatch.setattr(export_mod, "_require_onnx_tools", lambda: None)
    monkeypatch.setattr(export_mod, "export_onnx", failing_check)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_run(run, out, onnx_path=onnx)
    assert out.read_bytes() == before and not onnx.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.safetensors"]
    assert "an earlier export to " + str(onnx) + " was interrupted" in caplog.text
    assert "model.onnx was never written" in caplog.text


# ---------------------------------------------------------------------------------------------
# interpolation

def test_interpolate_state_dicts_ends_and_middle():
    a, b = _tiny(0).state_dict(), _perturbed(_tiny(0), 1).state_dict()
    at0, at1, half = (interpolate_state_dicts(a, b, t) for t in (0.0, 1.0, 0.5))
    for k in a:
        assert torch.equal(at0[k], a[k])
        assert torch.equal(at1[k], b[k])
        torch.testing.assert_close(half[k], (a[k] + b[k]) / 2, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="alpha"):
        interpolate_state_dicts(a, b, 1.5)


def test_interpolate_state_dicts_rejects_other_layouts():
    a = _tiny(0).state_dict()
    with pytest.raises(ValueError, match="conv_first.weight"):
        interpolate_state_dicts(a, _tiny(0, num_feat=16).state_dict(), 0.5)
    with pytest.raises(ValueError, match="only in the second"):
        interpolate_state_dicts(a, _tiny(0, num_block=2).state_dict(), 0.5)


def test_interpolate_files(tmp_path):
    ma, mb = _tiny(0), _perturbed(_tiny(0), 1)
    save_weights(tmp_path / "a.safetensors", ma, extra_metadata={"description": "psnr"})
    save_weights(tmp_path / "b.safetensors", mb, extra_metadata={"description": "gan"})
    out = tmp_path / "c.safetensors"
    assert cli_main(["interpolate", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                     "--alpha", "0.7", "-o", str(out)]) == 0
    mc, info = load_generator(out)
    for k, v in mc.state_dict().items():
        torch.testing.assert_close(v, 0.3 * ma.state_dict()[k] + 0.7 * mb.state_dict()[k])
    meta = info["metadata"]
    assert json.loads(meta["alpha"]) == 0.7
    assert json.loads(meta["source_a"])["description"] == "psnr"
    assert json.loads(meta["source_b"])["path"].endswith("b.safetensors")
    assert len(json.loads(meta["source_b"])["sha256"]) == 64


def test_interpolate_mismatched_archs(tmp_path):
    save_weights(tmp_path / "a.safetensors", _tiny(0))
    save_weights(tmp_path / "b.safetensors", _tiny(0, num_block=2))
    torch.manual_seed(0)
    save_weights(tmp_path / "c.safetensors",
                 build_generator("compact", num_feat=8, num_conv=2, upscale=4))
    with pytest.raises(ExportError, match=r"num_block=1 vs num_block=2"):
        interpolate_files(tmp_path / "a.safetensors", tmp_path / "b.safetensors", 0.5,
                          tmp_path / "out.safetensors")
    with pytest.raises(ExportError, match=r"'msrresnet' vs 'compact'"):
        interpolate_files(tmp_path / "a.safetensors", tmp_path / "c.safetensors", 0.5,
                          tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_source_metadata_is_portable(tmp_path, monkeypatch):
    from superres.training.export import portable_path

    monkeypatch.chdir(tmp_path)
    assert portable_path("runs/a/checkpoints/ckpt_00000010.pt") == "runs/a/checkpoints/ckpt_00000010.pt"
    assert portable_path(tmp_path / "runs" / "a" / "best.safetensors") == "runs/a/best.safetensors"
    outside = tmp_path.parent / "elsewhere" / "home" / "me" / "runs" / "b" / "checkpoints" / "ckpt_1.pt"
    assert portable_path(outside) == "b/checkpoints/ckpt_1.pt"
