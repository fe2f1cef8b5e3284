"""superres.evaluate: the benchmark protocol (published bicubic table) and `superres eval`.

Tests that need the shared benchmark data skip with a reason when it is absent.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from superres.evaluation import protocol as ev
from superres.evaluation import metrics as M
from superres.apps.cli import main
from superres.evaluation.protocol import bicubic_upscaler, dataset_name, evaluate_pairs, load_pairs, read_image
from superres.apps.eval import markdown_table, sheet_boxes

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCH = DATA / "benchmarks"
NIQE_PARAMS = DATA / "niqe_pris_params.npz"

# Bicubic x4 under the standard protocol, as published (e.g. EDSR, RCAN tables).
PUBLISHED_X4 = {"Set5": (28.42, 0.8104), "Set14": (26.00, 0.7027), "BSD100": (25.96, 0.6675)}


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared benchmark data not found at {path} (read-only data outside the repo)")
    return path


def _eval(tmp_path, *args) -> tuple[int, dict]:
    out = tmp_path / "r.json"
    rc = main(["eval", *args, "--device", "cpu", "--json", str(out)])
    return rc, (json.loads(out.read_text()) if out.exists() else {})


# ---------------------------------------------------------------------------------------------
# the protocol

def test_bicubic_reproduces_the_published_x4_table():
    dirs = {name: _need(BENCH / name) for name in PUBLISHED_X4}
    for name, d in dirs.items():
        res = evaluate_pairs(bicubic_upscaler(4), load_pairs(d, 4), 4, ("psnr", "ssim"))
        psnr, ssim = PUBLISHED_X4[name]
        assert abs(res["psnr"] - psnr) <= 0.01, (name, res["psnr"])
        assert abs(res["ssim"] - ssim) <= 0.001, (name, res["ssim"])


def test_reference_niqe_of_set14():
    # Measured with the MATLAB/BasicSR reference on these files (shared/data/README.md).
    _need(NIQE_PARAMS)
    pairs = load_pairs(_need(BENCH / "Set14"), 4)
    up = bicubic_upscaler(4)
    assert np.mean([M.niqe(p.hr, shave=4) for p in pairs]) == pytest.approx(4.92, abs=0.005)
    assert np.mean([M.niqe(up(p.lr), shave=4) for p in pairs]) == pytest.approx(7.61, abs=0.005)


def test_an_image_too_small_for_niqe_is_left_out_of_its_mean(tmp_path, caplog):
    _need(NIQE_PARAMS)
    rng = np.random.default_rng(1)
    (tmp_path / "HR").mkdir()
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(tmp_path / "HR" / "big.png")
    Image.fromarray(rng.integers(0, 256, (120, 132, 3), dtype=np.uint8)).save(tmp_path / "HR" / "small.png")
    res = evaluate_pairs(bicubic_upscaler(4), load_pairs(tmp_path, 4), 4, ("psnr", "niqe"))
    rows = {r["name"]: r for r in res["per_image"]}
    assert math.isnan(rows["small.png"]["niqe"]) and math.isfinite(rows["small.png"]["psnr"])
    assert res["niqe"] == rows["big.png"]["niqe"]
    assert res["psnr"] == pytest.approx((rows["big.png"]["psnr"] + rows["small.png"]["psnr"]) / 2)
    assert "NIQE of small.png" in caplog.text


def test_load_pairs_crops_hr_and_makes_matlab_lr(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (37, 42, 3), dtype=np.uint8)
    (tmp_path / "HR").mkdir()
    Image.fromarray(img).save(tmp_path / "HR" / "a.png")
    (pair,) = load_pairs(tmp_path, 4)
    assert pair.hr.shape == (36, 40, 3) and pair.lr.shape == (9, 10, 3)
    np.testing.assert_array_equal(pair.hr, img[:36, :40])
    assert dataset_name(tmp_path / "HR") == dataset_name(tmp_path) == tmp_path.name


def test_evaluate_pairs_reports_the_frequency_metrics():
    rng = np.random.default_rng(2)
    hr = np.clip(rng.normal(110, 30, (48, 64, 3)), 20, 200).astype(np.uint8)
    pairs = [ev.Pair("a.png", hr, ev.imresize(hr, 1 / 4)), ev.Pair("b.png", hr[:, ::-1].copy(),
                                                                  ev.imresize(hr[:, ::-1].copy(), 1 / 4))]
    metrics = ("psnr", "lf-psnr", "hf-corr", "hf-ratio")
    res = evaluate_pairs(bicubic_upscaler(4), pairs, 4, metrics)
    for m in metrics:
        assert all(m in r for r in res["per_image"]) and math.isfinite(res[m])
    assert res["lf-psnr"] > res["psnr"] and 0 < res["hf-corr"] < 1 and 0 < res["hf-ratio"] < 1
    assert res["hf-ratio"] == pytest.approx(np.mean([r["hf-ratio"] for r in res["per_image"]]))
    # The hr pseudo-model: the ground truth against itself.
    ref = evaluate_pairs(ev.HR_REFERENCE, pairs, 4, [" LF-PSNR", "hf-corr", "hf-ratio"])
    assert (ref["lf-psnr"], ref["hf-corr"], ref["hf-ratio"]) == (math.inf, pytest.approx(1), pytest.approx(1))
    table = markdown_table([{"model": "bicubic", "dataset": "X", **res}], metrics).splitlines()
    assert table[0] == "| model | X PSNR | X LF-PSNR | X HF-CORR | X HF-RATIO | s/img |"
    assert table[2].split(" | ")[3] == format(res["hf-corr"], ".3f")


# ---------------------------------------------------------------------------------------------
# the command line

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from superres.archs import build_generator
    from superres.inference.weights import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_weights(path, build_generator("msrresnet", num_feat=8, num_block=1, upscale=4))
    return path


def test_cli_json_csv_save_dir_compare_and_table(tmp_path, tiny_model, capsys):
    set5 = _need(BENCH / "Set5")
    _need(NIQE_PARAMS)
    csv_path, save, compare = tmp_path / "r.csv", tmp_path / "sr", tmp_path / "cmp.png"
    rc, js = _eval(tmp_path, "--model", "bicubic", "--model", str(tiny_model), "--model", "hr",
                   "--data", str(set5), "--scale", "4", "--metrics", "psnr,ssim,niqe",
                   "--csv", str(csv_path), "--save-dir", str(save), "--compare", str(compare))
    assert rc == 0
    results = js["results"]
    assert [(r["model"], r["dataset"], r["scale"]) for r in results] == \
        [("bicubic", "Set5", 4), ("tiny", "Set5", 4), ("hr", "Set5", 4)]
    names = sorted(p.name for p in (set5 / "HR").glob("*.png"))
    for r in results:
        assert {"model", "dataset", "scale", "psnr", "ssim", "niqe", "seconds_per_image", "per_image"} <= set(r)
        assert [row["name"] for row in r["per_image"]] == names
        for row in r["per_image"]:
            assert {"name", "psnr", "ssim", "niqe", "seconds"} <= set(row)
        assert r["niqe"] == pytest.approx(np.mean([row["niqe"] for row in r["per_image"]]))
    bic, tiny, hr = results
    assert bic["psnr"] == pytest.approx(28.42, abs=0.01) and bic["ssim"] == pytest.approx(0.8104, abs=0.001)
    assert math.isfinite(tiny["psnr"]) and tiny["psnr"] < bic["psnr"]
    # hr: the ground truth itself; infinite PSNR is written as null, NIQE is a reference value.
    assert hr["psnr"] is None and hr["ssim"] == pytest.approx(1.0)
    assert hr["niqe"] < bic["niqe"]
    pairs = load_pairs(set5, 4)
    assert hr["per_image"][0]["niqe"] == pytest.approx(M.niqe(pairs[0].hr, shave=4))

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(names)
    assert {"model", "dataset", "scale", "image", "psnr", "ssim", "niqe"} <= set(rows[0])
    assert [(r["model"], r["image"]) for r in rows[:2]] == [("bicubic", names[0]), ("bicubic", names[1])]
    assert float(rows[0]["psnr"]) == pytest.approx(bic["per_image"][0]["psnr"])
    assert rows[-1]["psnr"] == "inf"

    for label in ("bicubic", "tiny", "hr"):
        files = sorted(p.name for p in (save / label / "Set5").glob("*.png"))
        assert files == names
    np.testing.assert_array_equal(read_image(save / "bicubic" / "Set5" / names[0]),
                                  bicubic_upscaler(4)(pairs[0].lr))
    np.testing.assert_array_equal(read_image(save / "hr" / "Set5" / names[0]), pairs[0].hr)

    with Image.open(compare) as im:
        w, h = im.size
        assert im.mode == "RGB"
        sheet = np.asarray(im)
    # Columns input, bicubic, tiny, HR (hr would repeat HR) of 128 output px at 1:1, 4 px gaps, a
    # 14 px label row; rows: the most detailed and the calmest window.
    assert (w, h) == (4 * 128 + 3 * 4, 14 + 2 * 128 + 4)
    (t0, l0, s0), (t1, l1, s1) = sheet_boxes(pairs[0].hr, 128)
    assert (t0, l0) != (t1, l1)
    np.testing.assert_array_equal(sheet[14:14 + 128, 3 * 132:3 * 132 + 128], pairs[0].hr[t0:t0 + 128, l0:l0 + 128])
    np.testing.assert_array_equal(sheet[146:146 + 128, 132:132 + 128],
                                  bicubic_upscaler(4)(pairs[0].lr)[t1:t1 + 128, l1:l1 + 128])

    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    assert lines[0] == "| model | Set5 PSNR | Set5 SSIM | Set5 NIQE | s/img |"
    assert lines[2].startswith(f"| bicubic | {bic['psnr']:.2f} | {bic['ssim']:.4f} | {bic['niqe']:.2f} |")
    assert lines[4].startswith("| hr | inf | 1.0000 |")


def test_cli_lr_dir_pairs_match_the_generated_lr(tmp_path):
    set5 = _need(BENCH / "Set5")
    lr_dir = _need(set5 / "LR_bicubic" / "X4")
    rc, with_lr = _eval(tmp_path, "--model", "bicubic", "--data", str(set5), "--lr-dir", str(lr_dir))
    assert rc == 0
    rc, generated = _eval(tmp_path, "--model", "bicubic", "--data", str(set5))
    assert rc == 0
    a, b = with_lr["results"][0], generated["results"][0]
    assert a["dataset"] == "Set5"
    # The MATLAB LR files equal our imresize output, so the scores are identical.
    assert [r["psnr"] for r in a["per_image"]] == [r["psnr"] for r in b["per_image"]]
    assert a["ssim"] == b["ssim"]


def test_cli_lr_dir_count_must_match_data(tmp_path, caplog):
    set5 = _need(BENCH / "Set5")
    rc = main(["eval", "--model", "bicubic", "--data", str(set5), "--data", str(set5),
               "--lr-dir", str(set5 / "LR_bicubic" / "X4")])
    assert rc == 2
    assert "one per dataset" in caplog.text


def test_cli_model_scale_mismatch_and_unknown_model(tmp_path, tiny_model, caplog):
    set5 = _need(BENCH / "Set5")
    assert main(["eval", "--model", str(tiny_model), "--data", str(set5), "--scale", "2"]) == 2
    assert "--scale 4" in caplog.text
    assert main(["eval", "--model", str(tmp_path / "none.pth"), "--data", str(set5)]) == 2
    assert main(["eval", "--model", "bicubic", "--data", str(set5), "--metrics", "psnr,bogus"]) == 2
    assert "bogus" in caplog.text


def test_cli_missing_niqe_params_and_lpips_weights(tmp_path, caplog):
    set5 = _need(BENCH / "Set5")
    rc = main(["eval", "--model", "bicubic", "--data", str(set5), "--metrics", "niqe",
               "--niqe-params", str(tmp_path / "none.npz")])
    assert rc == 2 and "niqe_pris_params.npz" in caplog.text
    rc = main(["eval", "--model", "bicubic", "--data", str(set5), "--metrics", "lpips"])
    assert rc == 2 and "never downloads" in caplog.text


def test_markdown_table_formats_inf_and_missing_cells():
    results = [{"model": "a", "dataset": "X", "psnr": math.inf, "seconds_per_image": 0.5, "per_image": [{}]},
               {"model": "b", "dataset": "Y", "psnr": 30.123, "seconds_per_image": 1.0, "per_image": [{}, {}]}]
    table = markdown_table(results, ("psnr",)).splitlines()
    assert table[0] == "| model | X PSNR | Y PSNR | s/img |"
    assert table[2] == "| a | inf | - | 0.500 |"
    assert table[3] == "| b | - | 30.12 | 1.000 |"


def test_cli_evaluates_a_training_folders_holdout(tmp_path):
    folder = tmp_path / "Train"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    rc, js = _eval(tmp_path, "--model", "bicubic", "--data", str(folder), "--holdout", "2")
    assert rc == 0
    (res,) = js["results"]
    # the images data.holdout = 2 keeps out of training: the 2nd and 4th by name
    assert res["dataset"] == "Train-holdout" and [r["name"] for r in res["per_image"]] == ["1.png", "3.png"]
    rc, _ = _eval(tmp_path, "--model", "bicubic", "--data", str(folder), "--holdout", "1")
    assert rc == 2


def test_cli_passes_hyphenated_metric_names_to_table_json_and_csv(tmp_path, capsys):
    folder = tmp_path / "Tiny"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(2):
        Image.fromarray(rng.integers(20, 200, (32, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    csv_path = tmp_path / "r.csv"
    rc, js = _eval(tmp_path, "--model", "bicubic", "--model", "hr", "--data", str(folder), "--no-progress",
                   "--metrics", "psnr,ssim,lf-psnr,hf-corr,hf-ratio", "--csv", str(csv_path))
    assert rc == 0
    assert "| model | Tiny PSNR | Tiny SSIM | Tiny LF-PSNR | Tiny HF-CORR | Tiny HF-RATIO | s/img |" \
        in capsys.readouterr().out
    bic, hr = js["results"]
    assert 0 < bic["hf-corr"] < 1 and 0 < bic["hf-ratio"] < 1 and bic["lf-psnr"] > bic["psnr"]
    assert hr["lf-psnr"] is None and hr["hf-corr"] == 1.0 and hr["hf-ratio"] == 1.0   # inf -> null
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f))
    assert header[4:9] == ["psnr", "ssim", "lf-psnr", "hf-corr", "hf-ratio"]


# ---------------------------------------------------------------------------------------------
# degraded and no-reference tracks

def _photos(folder: Path, n: int = 2, size: tuple[int, int] = (64, 48), seed: int = 0) -> list[str]:
    """Smooth gradients with a few edges: enough structure for blur, noise and JPEG to show."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    for i in range(n):
        img = np.stack([(xx * 3 + i * 40) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256], axis=2)
        img[rng.integers(0, size[1] - 8):, : size[0] // 3] = 30 * i
        names.append(f"img{i}.png")
        Image.fromarray(img.astype(np.uint8)).save(folder / names[-1])
    return names


@pytest.mark.parametrize("degrade", ["realistic", "camera"])
def test_degraded_track_is_a_function_of_seed_and_file_name(tmp_path, degrade):
    _photos(tmp_path / "a", 3)
    a = load_pairs(tmp_path / "a", 4, degrade=degrade, seed=5)
    again = load_pairs(tmp_path / "a", 4, degrade=degrade, seed=5, max_images=None)
    other = load_pairs(tmp_path / "a", 4, degrade=degrade, seed=6)
    bic = load_pairs(tmp_path / "a", 4)
    for p, q, r, b in zip(a, again, other, bic):
        assert p.lr.shape == b.lr.shape == (12, 16, 3) and p.lr.dtype == np.uint8
        np.testing.assert_array_equal(p.lr, q.lr)
        assert np.abs(p.lr.astype(int) - r.lr.astype(int)).mean() > 0.5     # another seed, another draw
        assert np.abs(p.lr.astype(int) - b.lr.astype(int)).mean() > 0.5     # not the bicubic LR
        np.testing.assert_array_equal(p.hr, b.hr)                           # scored against clean HR
    # The draw of img1 does not depend on which other images are in the folder (nor their order).
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "img1.png").write_bytes((tmp_path / "a" / "img1.png").read_bytes())
    alone = load_pairs(tmp_path / "b", 4, degrade=degrade, seed=5)
    np.testing.assert_array_equal(alone[0].lr, a[1].lr)
    # The same numbers the degrade command uses: degrade_image seeded by image_seed.
    from superres.data.degrade import degrade_image, image_seed
    np.testing.assert_array_equal(a[0].lr, degrade_image(a[0].hr, degrade, 4, image_seed(5, "img0.png")))


def test_camera_preset_is_milder_than_realistic(tmp_path):
    _photos(tmp_path, 4, size=(128, 96))
    bic = load_pairs(tmp_path, 4)
    dev = {d: np.mean([np.abs(p.lr.astype(float) - b.lr.astype(float)).mean()
                       for p, b in zip(load_pairs(tmp_path, 4, degrade=d, seed=1), bic)])
           for d in ("camera", "realistic")}
    assert 0.5 < dev["camera"] < dev["realistic"], dev


def test_degraded_gray_image_stays_gray(tmp_path):
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None] * 4, (48, 1))).save(tmp_path / "g.png")
    (pair,) = load_pairs(tmp_path, 4, degrade="realistic", seed=0)
    assert pair.lr.shape == (12, 16) and pair.hr.shape == (48, 64)


def test_degraded_track_errors_name_the_values(tmp_path):
    _photos(tmp_path / "HR", 1)
    with pytest.raises(ValueError, match=r"degradation 'jpeg'; allowed values: \['bicubic', 'realistic', 'camera'\]"):
        load_pairs(tmp_path, 4, degrade="jpeg")
    with pytest.raises(ValueError, match="give one of them"):
        load_pairs(tmp_path, 4, degrade="camera", lr_dir=tmp_path / "HR")


def test_cli_degraded_track_end_to_end(tmp_path, capsys):
    names = _photos(tmp_path / "photos", 2)
    lr_dir = tmp_path / "lr"
    rc, js = _eval(tmp_path, "--model", "bicubic", "--model", "hr", "--data", str(tmp_path / "photos"),
                   "--degrade", "camera", "--seed", "3", "--save-lr", str(lr_dir))
    assert rc == 0
    bic, hr = js["results"]
    assert bic["dataset"] == hr["dataset"] == "photos-camera"
    assert bic["degrade"] == "camera" and bic["seed"] == 3
    # The HR itself scores infinite PSNR (written as null) on the degraded track: scored vs clean HR.
    assert hr["psnr"] is None and hr["ssim"] == pytest.approx(1.0)
    assert math.isfinite(bic["psnr"]) and bic["psnr"] < 40
    pairs = load_pairs(tmp_path / "photos", 4, degrade="camera", seed=3)
    for name, pair in zip(names, pairs):
        np.testing.assert_array_equal(read_image(lr_dir / "photos-camera" / name), pair.lr)
    # Scored PSNR is the protocol's PSNR of bicubic-from-degraded-LR against the clean HR.
    want = np.mean([M.psnr(bicubic_upscaler(4)(p.lr), p.hr, 4) for p in pairs])
    assert bic["psnr"] == pytest.approx(want)
    assert "| photos-camera PSNR |" in capsys.readouterr().out


def test_cli_no_reference_folder_reports_niqe_and_writes_sheets(tmp_path, tiny_model):
    _need(NIQE_PARAMS)
    folder = tmp_path / "real"
    names = _photos(folder, 2, size=(60, 32))
    sheets = tmp_path / "sheets"
    rc, js = _eval(tmp_path, "--model", "bicubic", "--model", str(tiny_model), "--data", str(folder),
                   "--no-reference", "--compare", str(sheets), "--compare-size", "96")
    assert rc == 0
    bic, tiny = js["results"]
    assert set(bic) >= {"niqe", "per_image"} and "psnr" not in bic
    lr = read_image(folder / names[0])
    assert bic["per_image"][0]["niqe"] == pytest.approx(M.niqe(bicubic_upscaler(4)(lr), shave=4))
    assert sorted(p.name for p in sheets.iterdir()) == ["img0.png", "img1.png"]
    with Image.open(sheets / "img0.png") as im:
        # input, bicubic, tiny: no HR column without a reference
        assert im.size == (3 * 96 + 2 * 4, 14 + 2 * 96 + 4)
        sheet = np.asarray(im.convert("RGB"))
    (t, l, s), _ = sheet_boxes(bicubic_upscaler(4)(lr), 96)
    nearest = np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1)
    np.testing.assert_array_equal(sheet[14:14 + 96, :96], nearest[t:t + 96, l:l + 96])


@pytest.mark.parametrize("extra, message", [
    (["--metrics", "psnr,niqe"], "--metrics psnr need ground truth"),
    (["--degrade", "camera"], "--degrade does not apply to --no-reference"),
    (["--model", "hr"], "--model hr does not apply"),
])
def test_cli_no_reference_refuses_what_needs_ground_truth(tmp_path, extra, message, caplog):
    _photos(tmp_path / "real", 1)
    rc = main(["eval", "--model", "bicubic", "--data", str(tmp_path / "real"), "--no-reference", *extra])
    assert rc == 2
    assert message in caplog.text


def test_cli_int8_rows_are_labelled_and_close_to_fp32(tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    from superres.inference.models import MODELS

    if not MODELS["psnr-x4"].available:
        pytest.skip("psnr-x4 is not shipped in this build")
    # a real photo: on the synthetic gradients (41 dB) one level of int8 noise is worth 0.9 dB
    (tmp_path / "photos").mkdir()
    cat = Image.open(Path(__file__).resolve().parents[1] / "examples" / "chelsea.png").convert("RGB")
    cat.crop((100, 60, 300, 220)).save(tmp_path / "photos" / "chelsea.png")
    photos = str(tmp_path / "photos")
    rc, fp32 = _eval(tmp_path, "--model", "psnr-x4", "--data", photos)
    assert rc == 0
    rc, int8 = _eval(tmp_path, "--model", "psnr-x4", "--data", photos, "--precision", "int8")
    assert rc == 0
    (a,), (b,) = fp32["results"], int8["results"]
    # an int8 row never passes for the model's fp32 numbers; its loss is the ~0.01 dB int8 costs
    assert a["model"] == "psnr-x4" and b["model"] == "psnr-x4-int8"
    assert b["psnr"] != a["psnr"] and abs(b["psnr"] - a["psnr"]) < 0.1
    caplog.clear()
    assert _eval(tmp_path, "--model", "psnr-x4", "--data", photos, "--bf16", "--precision", "int8")[0] == 2
    assert "--bf16 and --precision int8 contradict" in caplog.text
    caplog.clear()
    assert _eval(tmp_path, "--model", "psnr-x4", "--data", photos, "--int8-calibration", photos)[0] == 2
    assert "only used with --precision int8" in caplog.text
