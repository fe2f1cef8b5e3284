"""`superres upscale --ray`: a local Ray cluster with 2 CPUs, a tiny model, small images.

One Ray instance serves the whole module (starting one costs seconds); the driver-kill test runs
the driver in a subprocess that joins that instance by address.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray is not installed (the [cluster] extra)")

from superres.archs import build_generator  # noqa: E402
from superres.apps.cli import main  # noqa: E402
from superres.apps.cluster import RayOptions, UpscaleWorker, run_on_ray  # noqa: E402
from superres.apps.filejob import FileJobOptions  # noqa: E402
from superres.inference.weights import save_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    save_weights(path, build_generator("msrresnet", num_feat=4, num_block=1, upscale=4))
    return path


def _images(folder: Path, n: int = 12, size=(24, 16)) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        mode = ("RGB", "RGBA", "L")[i % 3]
        shape = (size[1], size[0]) + ((len(mode),) if mode != "L" else ())
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"img{i:02d}.png")
        names.append(f"img{i:02d}.png")
    return names


def _local(*argv: str) -> int:
    """A single-process run with one torch thread, like each Ray worker: fp32 convolutions split
    over a different number of threads may round differently in the last bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["upscale", *argv, "--no-progress"])
    finally:
        torch.set_num_threads(threads)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_every_image_once_byte_identical_to_local(cluster, tiny, tmp_path):
    names = _images(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert _local(str(tmp_path / "in"), "-o", str(tmp_path / "local"), "--model", str(tiny)) == 1
    # (the broken file fails locally too)
    report = tmp_path / "r.json"
    rc = main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "ray"), "--model", str(tiny),
               "--ray", cluster, "--workers", "2", "--report", str(report), "--no-progress"])
    assert rc == 1
    entries = json.loads(report.read_text())
    ok = [e for e in entries if e["status"] == "ok"]
    assert sorted(Path(e["input"]).name for e in ok) == names          # each image exactly once
    errors = [e for e in entries if e["status"] == "error"]
    assert len(errors) == 1 and "broken.png" in errors[0]["error"]      # the bad file, reported once
    # Two actors were asked for; which of them takes which file is Ray's business (a fast one may
    # take them all while the other still loads its model), so only the bound is checked.
    assert 1 <= len({e["worker"] for e in ok}) <= 2
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")   # byte-identical results
    # A rerun skips everything that exists (the same rule as the local path).
    rc = main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "ray"), "--model", str(tiny),
               "--ray", cluster, "--report", str(report), "--no-progress"])
    entries = json.loads(report.read_text())
    assert sorted(e["status"] for e in entries) == ["error"] + ["skipped"] * len(names)


# Ray's workers cannot import this test module: ship the class below by value instead.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class _CrashOnce(UpscaleWorker):
    """Dies (as if killed) the first time it meets img03.png; the marker file outlives the process."""

    def run(self, src, dst):
        marker = Path(dst).parent.parent / "crashed"
        if Path(src).name == "img03.png" and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().run(src, dst)


def test_a_killed_worker_is_replaced_and_its_task_retried(cluster, tiny, tmp_path):
    names = _images(tmp_path / "in")
    (tmp_path / "out").mkdir()
    plan = [(tmp_path / "in" / n, tmp_path / "out" / n) for n in names]
    model = {"name_or_path": str(tiny), "device": "cpu", "precision": "fp32", "tile_overlap": 16}
    entries = run_on_ray(RayOptions(cluster, workers=2, no_progress=True), model,
                         FileJobOptions(max_pixels=0, max_output_pixels=0), plan, None, {p for p, _ in plan},
                         worker=_CrashOnce)
    assert (tmp_path / "crashed").exists()                               # a worker really died
    assert [e["status"] for e in entries] == ["ok"] * len(names)
    _local(str(tmp_path / "in"), "-o", str(tmp_path / "local"), "--model", str(tiny), "--precision", "fp32")
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "local")


@pytest.mark.slow
def test_a_killed_driver_reruns_without_redoing_finished_files(cluster, tmp_path):
    # A heavier model and more images, so the driver can be killed while work is left.
    torch.manual_seed(1)
    model = tmp_path / "m.safetensors"
    save_weights(model, build_generator("msrresnet", num_feat=16, num_block=4, upscale=4))
    names = _images(tmp_path / "in", n=24, size=(96, 96))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "superres", "upscale", str(tmp_path / "in"), "-o", str(out), "--model",
           str(model), "--ray", cluster, "--workers", "2", "--no-progress", "--tile", "32"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while len(list(out.glob("*.png"))) < 3 and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Ray notices the owner is gone and stops its actors: wait until no output changes for 1 s
    first, quiet_since = None, time.monotonic()
    while time.monotonic() - quiet_since < 1.0 and time.monotonic() - t0 < 180:
        now = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
        if now != first:
            first, quiet_since = now, time.monotonic()
        time.sleep(0.05)
    assert 3 <= len(first) < len(names), len(first)  # killed with work left
    report = tmp_path / "r.json"
    rc = main(["upscale", str(tmp_path / "in"), "-o", str(out), "--model", str(model), "--ray", cluster,
               "--workers", "2", "--no-progress", "--tile", "32", "--report", str(report)])
    assert rc == 0
    entries = {Path(e["input"]).name: e for e in json.loads(report.read_text())}
    assert sorted(entries) == names
    for name, mtime in first.items():
        assert entries[name]["status"] == "skipped"                      # not redone
        assert (out / name).stat().st_mtime_ns == mtime
    assert sum(e["status"] == "ok" for e in entries.values()) == len(names) - len(first)
    assert sorted(p.name for p in out.glob("*.png")) == names
    assert not list(out.glob(".*.tmp"))                                  # no temp files left behind
