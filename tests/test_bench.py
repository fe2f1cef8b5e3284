"""`superres bench`: the JSON schema, the arithmetic and the command line, on a tiny model.

Timings on a test machine are noise, so nothing here asserts on a speed; only on what must hold
whatever the speed (keys, types, FLOP counts, the relations between derived columns).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from superres.apps import bench
from superres.archs import build_generator
from superres.apps.cli import main
from superres.inference.models import MODELS
from superres.inference.weights import save_weights

REPO = Path(__file__).resolve().parents[1]

# compact x2, 4 features, 1 middle conv: convs 3->4, 4->4, 4->12 (3 * 2^2), all 3x3 at LR size.
# FLOPs per LR pixel = 2 * 9 * (3*4 + 4*4 + 4*12) = 1368; four output pixels per LR pixel.
TINY_FLOPS_PER_PIXEL = 2 * 9 * (3 * 4 + 4 * 4 + 4 * 12) / 4   # 342


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_weights(path, build_generator("compact", num_feat=4, num_conv=1, upscale=2))
    return path


def _run(tmp_path: Path, tiny_path: Path, *extra: str) -> dict:
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", str(tiny_path), "--size", "16x12", "--size", "8", "--quick",
                 "--repeats", "1", "--folder-images", "1", "--json", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------
# arithmetic

def test_flops_of_one_conv_and_pixel_shuffle():
    # 3 -> 12 channels, 3x3: 2 * 3 * 9 FLOPs per output element, 12 elements per LR pixel, and
    # the shuffle spreads them over 4 output pixels: 2 * 3 * 12 * 9 / 4 = 162
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
    assert bench.count_flops_per_pixel(net, 3) == 2 * 3 * 12 * 9 / 4


def test_flops_of_grouped_transposed_and_linear_layers():
    grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)   # each output reads 2 input channels
    assert bench.count_flops_per_pixel(grouped, 4) == 8 * 2 * 2 * 9
    # stride = kernel = 2: each output element receives exactly one tap from each of 3 channels
    assert bench.count_flops_per_pixel(nn.ConvTranspose2d(3, 3, 2, stride=2), 3) == 3 * 2 * 3

    class PerPixelLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    assert bench.count_flops_per_pixel(PerPixelLinear(), 3) == 5 * 2 * 3


def test_flops_of_the_tiny_compact_net(tiny_path):
    from superres.inference.weights import load_generator

    model, _ = load_generator(tiny_path)
    assert bench.count_flops_per_pixel(model, 3) == TINY_FLOPS_PER_PIXEL


@pytest.mark.skipif(not MODELS["psnr-x4"].available, reason="psnr-x4 is not shipped here")
def test_flops_of_psnr_x4_match_the_issue():
    # issue 18: MSRResNet 64x16 x4 costs 317 kFLOP per output pixel. By hand, per output pixel:
    # LR convs (3->64, 32 x 64->64, 64->256) / 16, the x2 stage's 64->256 / 4, then 64->64 and 64->3 at HR
    from superres.inference.weights import load_generator

    model, _ = load_generator(MODELS["psnr-x4"].path)
    lr = 2 * 9 * (3 * 64 + 32 * 64 * 64 + 64 * 256)
    expected = lr / 16 + 2 * 9 * 64 * 256 / 4 + 2 * 9 * (64 * 64 + 64 * 3)
    assert bench.count_flops_per_pixel(model, 3) == expected == 317016


def test_derived_metrics():
    d = bench.derived_metrics(flops_per_pixel=2e5, model_only_mp_per_s=1.5, reference_mp_per_s=0.5,
                              peak_gflops=400.0)
    assert d["gflops"] == pytest.approx(2e5 * 1.5 * 1e6 / 1e9)
    assert d["speedup_vs_reference"] == pytest.approx(3.0)
    assert d["fraction_of_peak"] == pytest.approx(d["gflops"] / 400.0)
    assert d["ceiling_mp_per_s"] == pytest.approx(400e9 / 2e5 / 1e6)
    # a failed part leaves its dependents empty instead of inventing a number
    missing = bench.derived_metrics(2e5, None, 0.5, None)
    assert missing == {"gflops": None, "speedup_vs_reference": None, "fraction_of_peak": None,
                       "ceiling_mp_per_s": None}


def test_summarize():
    s = bench.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s["median"], s["min"], s["max"], s["q1"], s["q3"], s["n"]) == (3.0, 1.0, 5.0, 2.0, 4.0, 5)
    one = bench.summarize([2.5])
    assert one["median"] == one["q1"] == one["q3"] == 2.5


def test_spread_column():
    steady = {"median": 2.0, "min": 1.9, "max": 2.1, "q1": 2.0, "q3": 2.0, "n": 5}
    noisy = {"median": 1.0, "min": 0.5, "max": 1.5, "q1": 0.8, "q3": 1.2, "n": 5}
    assert bench._worst_spread({"a": steady, "b": noisy}) == "100%"
    assert bench._worst_spread({"a": steady}) == "10%"
    assert bench._worst_spread({"a": {**steady, "n": 1}}) == "-"   # one run has no spread


@pytest.mark.parametrize("text, size", [("256x256", (256, 256)), ("500x480", (500, 480)), ("64", (64, 64)),
                                        ("32X16", (32, 16))])
def test_parse_size(text, size):
    assert bench.parse_size(text) == size


# ---------------------------------------------------------------------------------------------
# the command

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_cli_writes_the_schema_and_consistent_numbers(tmp_path, tiny_path, capsys):
    report = _run(tmp_path, tiny_path)
    m = report["machine"]
    assert set(bench.MACHINE_KEYS) <= set(m)
    assert isinstance(m["cores"], int) and m["cores"] >= 1
    assert isinstance(m["cpu_model"], str) and m["cpu_model"]
    assert set(m["isa"]) == {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx"}
    assert all(isinstance(v, bool) for v in m["isa"].values())
    assert m["torch_version"] == torch.__version__
    assert isinstance(m["threads"], int) and m["threads"] >= 1
    assert m["device"] == "cpu"

    results = report["results"]
    assert [r["input_size"] for r in results] == [[16, 12], [8, 8]]
    for r in results:
        assert set(bench.RESULT_KEYS) <= set(r), set(bench.RESULT_KEYS) - set(r)
        assert r["model"] == "tiny"
        assert not r["errors"]
        for key in bench.RESULT_KEYS:
            if key in ("model", "input_size", "peak_rss_mb"):
                continue
            assert _is_number(r[key]) and r[key] > 0, (key, r[key])
        assert r["peak_rss_mb"] is None   # --quick skips the memory run
        assert r["flops_per_pixel"] == TINY_FLOPS_PER_PIXEL
        assert r["gflops"] == pytest.approx(r["flops_per_pixel"] * r["model_only_mp_per_s"] * 1e6 / 1e9)
        assert r["ceiling_mp_per_s"] == pytest.approx(r["peak_gflops"] * 1e9 / r["flops_per_pixel"] / 1e6)
        assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / r["peak_gflops"])
        assert r["speedup_vs_reference"] == pytest.approx(r["model_only_mp_per_s"] / r["reference_mp_per_s"])
        assert r["peak_gflops"] == report["peak"]["gflops"]
        for key in ("mp_per_s", "model_only_mp_per_s", "folder_mp_per_s", "reference_mp_per_s"):
            s = r["spread"][key]
            assert s["n"] == 1 and s["min"] <= s["median"] == r[key] <= s["max"]
        assert r["output_size"] == [r["input_size"][0] * 2, r["input_size"][1] * 2]
    assert [b["input"] for b in report["peak"]["by_input"]] == [list(bench.QUICK_PEAK_INPUT)]
    out = capsys.readouterr().out
    assert "| model | engine | input | e2e MP/s |" in out and "| tiny | torch | 16x12 |" in out


def test_memory_and_startup(tmp_path, tiny_path):
    report = _run(tmp_path, tiny_path, "--memory", "--memory-size", "24x16", "--startup")
    for r in report["results"]:
        assert _is_number(r["peak_rss_mb"]) and r["peak_rss_mb"] > 0, r["memory"]
        assert r["memory"]["input_size"] == [24, 16]
    for name in ("superres_help", "import_superres", "import_inference_core"):
        assert _is_number(report["startup"][name]["seconds"]), report["startup"][name]


def test_a_failing_backend_is_recorded_not_fatal(tmp_path, tiny_path, monkeypatch):
    def broken_forward(up, tmp):
        def forward(x):
            raise RuntimeError("backend exploded")
        return bench.Backend("broken-forward", forward=forward, setup_s=0.0)

    def broken_setup(up, tmp):
        raise ImportError("no such runtime")

    monkeypatch.setattr(bench, "BACKENDS", {"broken-forward": broken_forward, "broken-setup": broken_setup})
    report = _run(tmp_path, tiny_path, "--backends")
    for r in report["results"]:
        assert "backend exploded" in r["backends"]["broken-forward"]["error"]
        assert "no such runtime" in r["backends"]["broken-setup"]["error"]
        assert _is_number(r["mp_per_s"])


@pytest.mark.parametrize("bad", [["--size", "0x5"], ["--size", "abc"], ["--size", "5x5x5"],
                                 ["--repeats", "0"], ["--tile", "-1"]])
def test_bad_option_values_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "example: superres bench" in err


def test_unknown_model_exits_2_before_measuring(tmp_path, caplog):
    out = tmp_path / "never.json"
    assert main(["bench", "--model", "no-such-model", "--quick", "--json", str(out)]) == 2
    assert "no-such-model" in caplog.text and "neither a model name" in caplog.text
    assert not out.exists()


def test_bench_help_does_not_import_torch():
    code = ("import sys; from superres.apps.cli import build_parser; "
            "build_parser('bench').parse_known_args(['bench']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif("psnr-x2" not in MODELS or not MODELS["psnr-x2"].available,
                    reason="psnr-x2 is not shipped in this build")
def test_int8_rows_measure_the_int8_model_against_the_fp32_reference(tmp_path):
    pytest.importorskip("onnxruntime")
    from superres.inference.weights import load_generator

    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "psnr-x2", "--precision", "int8", "--size", "8", "--quick", "--repeats", "1",
                 "--folder-images", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["precision"] == "int8"
    peak = report["peak"]
    assert peak["precision"] == "int8" and peak["runtime"] == "onnxruntime" and peak["gflops"] > 0
    assert peak["chain"] == bench.INT8_PEAK_CHAIN
    (r,) = report["results"]
    assert r["precision"] == "int8" and not r["errors"]
    # FLOPs are the fp32 generator's (the int8 graph does the same multiply-adds), and the reference
    # loop is that fp32 generator as plain scripts run it
    fp32, _ = load_generator(MODELS["psnr-x2"].path)
    assert r["flops_per_pixel"] == bench.count_flops_per_pixel(fp32, 3)
    assert r["speedup_vs_reference"] == pytest.approx(r["model_only_mp_per_s"] / r["reference_mp_per_s"])
    assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / peak["gflops"])


def test_int8_calibration_without_int8_exits_2(tmp_path, caplog):
    assert main(["bench", "--model", "psnr-x2", "--int8-calibration", str(tmp_path), "--quick"]) == 2
    assert "only used with --precision int8" in caplog.text


def test_the_peak_is_the_fastest_conv_size(tmp_path, tiny_path, monkeypatch):
    """A big conv can wait on memory (one thread beside a busy core): the peak is the best size."""
    rates = iter([3.0, 5.0, 4.0,     # before the models: 128x128 is the fastest
                  2.0, 6.0, 1.0])    # after them: faster still; that one counts

    def fake_peak(device, amp_dtype, channels_last, *, shape, repeats):
        return {"gflops": next(rates), "input": list(shape), "precision": "fp32"}

    monkeypatch.setattr(bench, "conv_peak_gflops", fake_peak)
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(tiny_path), "--size", "8", "--repeats", "1", "--folder-images", "1",
                 "--no-memory", "--no-startup", "--no-backends", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    peak = report["peak"]
    assert peak["gflops"] == 6.0 and peak["input"] == [1, 64, 128, 128] and peak["when"] == "after the models"
    assert [b["gflops"] for b in peak["by_input"]] == [2.0, 6.0, 1.0]
    assert peak["other"]["gflops"] == 5.0 and [b["gflops"] for b in peak["other"]["by_input"]] == [3.0, 5.0, 4.0]
    # every derived column follows the peak that counts
    (r,) = report["results"]
    assert r["peak_gflops"] == 6.0 and r["ceiling_mp_per_s"] == pytest.approx(6.0e9 / r["flops_per_pixel"] / 1e6)
    assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / 6.0)


def test_quality_column_scores_the_model_as_benched(tmp_path, tiny_path, capsys):
    """--quality puts the eval protocol's PSNR / SSIM beside the speed, for the Upscaler as benched."""
    from PIL import Image

    from superres.evaluation.protocol import evaluate_pairs, load_pairs
    from superres.inference.upscaler import Upscaler

    hr = tmp_path / "photos"
    hr.mkdir()
    yy, xx = np.mgrid[0:24, 0:32]
    for i in range(2):
        img = np.stack([(xx * 7 + 40 * i) % 256, (yy * 9) % 256, ((xx + yy) * 5) % 256], axis=2)
        Image.fromarray(img.astype(np.uint8)).save(hr / f"img{i}.png")
    report = _run(tmp_path, tiny_path, "--quality", str(hr), "--quality-degrade", "camera", "--quality-seed", "2")
    up = Upscaler.from_pretrained(str(tiny_path), device="cpu")
    want = evaluate_pairs(up.upscale_pixels, load_pairs(hr, 2, degrade="camera", seed=2), 2, ("psnr", "ssim"))
    for r in report["results"]:
        q = r["quality"]
        assert q["dataset"] == "photos-camera" and q["degrade"] == "camera" and q["seed"] == 2 and q["images"] == 2
        assert q["psnr"] == pytest.approx(want["psnr"]) and q["ssim"] == pytest.approx(want["ssim"])
    assert "PSNR / SSIM photos-camera" in capsys.readouterr().out
    assert main(["bench", "--model", str(tiny_path), "--quick", "--quality", str(tmp_path / "nowhere")]) == 2
