"""Fixtures shared by the test files."""
from __future__ import annotations

import os

import pytest

# The command line's default engine is `auto`, which measures the installed engines once per machine
# and caches ONNX graphs; the tests run torch unless they ask for an engine (test_engines.py), so
# their outputs are torch's bit for bit and nothing is written to the user's cache.
os.environ.setdefault("SUPERRES_ENGINE", "torch")


def start_live_server(app):
    """Run `app` on a real uvicorn server in a thread on a free loopback port; (port, stop)."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not srv.started:
        if time.monotonic() - t0 > 20:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)

    def stop() -> None:
        srv.should_exit = True
        thread.join(10)

    return port, stop
import torch

from superres.archs import build_generator
from superres.training.losses import vgg19_features
from superres.inference.weights import save_weights


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny x4 MSRResNet weights file (8 features, 1 block): fast, and enough for file-level tests."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_weights(path, build_generator("msrresnet", num_feat=8, num_block=1, upscale=4))
    return path


def _write_vgg19(path, full: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-weight VGG19 in torchvision's key layout (full model or features-only)."""
    torch.manual_seed(seed)
    feats = vgg19_features()
    state = {f"features.{k}" if full else k: v for k, v in feats.state_dict().items()}
    if full:
        state["classifier.0.weight"] = torch.zeros(4, 8)
        state["classifier.0.bias"] = torch.zeros(4)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return feats.state_dict()


@pytest.fixture
def write_vgg19():
    """write_vgg19(path, full=True, seed=0): a random-weight VGG19 file; returns its features' state dict."""
    return _write_vgg19


# The slow lane: tests that start Ray clusters, browsers, DDP or signal-driven subprocesses, build
# the wheel, or hold the shipped models to their quality floors on benchmark data (seconds each).
# `python -m pytest -q -m "not slow"` is the fast lane; CI runs everything once.
SLOW = {
    "test_cluster.py": None,          # every test starts Ray
    "test_serve_browser.py": None,    # Chromium
    "test_models.py": {"test_shipped_real_world_models_beat_bicubic_on_degraded_set5",
                       "test_psnr_x2_meets_vdsr_and_gan_x2_looks_sharper_than_bicubic",
                       "test_default_model_loads_from_the_installed_package",
                       "test_psnr_x4_meets_its_floor_and_gan_x4_looks_sharper_than_bicubic",
                       "test_strength_blends_toward_the_psnr_twin"},
    "test_train.py": {"test_signal_saves_says_interrupted_and_exits_non_zero",
                      "test_ddp_two_cpu_processes_match_one_process", "test_sigkill_and_resume_is_bitwise_identical"},
    "test_reliability.py": {"test_kill_and_rerun_leaves_no_temp_files"},
    "test_evaluate.py": {"test_bicubic_reproduces_the_published_x4_table", "test_reference_niqe_of_set14"},
    "test_bench.py": {"test_int8_rows_measure_the_int8_model_against_the_fp32_reference", "test_memory_and_startup"},
    "test_export.py": {"test_onnx_round_trip", "test_export_with_onnx_writes_both_files_or_neither"},
    "test_int8.py": {"test_int8_output_is_close_to_fp32_and_keeps_the_networks_part",
                     "test_shipped_x4_models_in_int8_are_close_to_fp32"},
    "test_tiling.py": {"test_tiled_matches_untiled"},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = SLOW.get(item.path.name, ())
        if names is None or item.originalname in names:
            item.add_marker(pytest.mark.slow)
