"""The inference core: padding to the input multiple, precision and the fp32 fallback, one path
for upscale / eval / training samples, and sharing an Upscaler between threads."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from superres.archs import build_generator
from superres.evaluation.protocol import evaluate_generator, generator_upscaler
from superres.inference.upscaler import Upscaler
from superres.inference.core import upscale_tensor

RRDB_TINY = dict(num_feat=8, num_block=1, num_grow_ch=4)


def _rrdbnet(scale: int) -> nn.Module:
    torch.manual_seed(0)
    return build_generator("rrdbnet", upscale=scale, **RRDB_TINY).eval()


@pytest.mark.parametrize("scale,multiple", [(2, 2), (1, 4)])
def test_pixel_unshuffle_nets_take_any_size(scale, multiple):
    model = _rrdbnet(scale)
    x = torch.rand(1, 3, 7, 9)
    y = upscale_tensor(model, x)
    assert y.shape == (1, 3, 7 * scale, 9 * scale) and y.dtype == torch.float32
    # the documented padding: edge pixels repeated up to the multiple, output cropped back
    ph, pw = -7 % multiple, -9 % multiple
    with torch.no_grad():
        full = model(F.pad(x, (0, pw, 0, ph), mode="replicate"))
    torch.testing.assert_close(y, full[..., :7 * scale, :9 * scale], rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"rrdbnet x{scale}: input 7x9 must be divisible by {multiple}"):
        model(x)   # the net itself still refuses: only the core pads


def test_upscaler_takes_the_multiple_from_the_registry_not_a_name():
    up = Upscaler(_rrdbnet(2), precision="fp32", tile=0)   # no info: nothing names the arch
    assert up.multiple == 2 and up.scale == 2
    out = up.upscale(np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8))
    assert out.shape == (14, 18, 3) and out.dtype == np.uint8


def test_odd_size_x2_rrdbnet_evaluation(tmp_path):
    """Set14's comic is 125x180 at x2 LR; an odd side used to crash eval and validation."""
    rng = np.random.default_rng(0)
    (tmp_path / "HR").mkdir()
    Image.fromarray(rng.integers(0, 256, (50, 38, 3), dtype=np.uint8)).save(tmp_path / "HR" / "odd.png")
    model = _rrdbnet(2)
    res = evaluate_generator(model, tmp_path, 2, metrics=("psnr", "ssim"))
    (row,) = res["per_image"]
    assert row["name"] == "odd.png" and 0 < row["psnr"] < 60 and -1 <= row["ssim"] <= 1
    lr = rng.integers(0, 256, (25, 19, 3), dtype=np.uint8)
    sr = generator_upscaler(model)(lr)
    assert sr.shape == (50, 38, 3) and sr.dtype == np.uint8
    # the same pixels as the file path's Upscaler with one whole-image tile (the roundings differ
    # by design only at exact .5 ties: eval rounds half to even, the tiler half up)
    whole = Upscaler(model, precision="fp32", tile=0).upscale(lr)
    assert np.abs(sr.astype(int) - whole).max() <= 1


def test_training_samples_take_odd_lr_sizes(tmp_path):
    from superres.training.loop import save_samples

    rng = np.random.default_rng(0)
    (tmp_path / "hr").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "hr" / "a.png")
    (path,) = save_samples(_rrdbnet(2), tmp_path / "hr", 2, 1, tmp_path / "samples", 7, torch.device("cpu"),
                           lr_crop=13)   # 26x26 HR crop -> a 13x13 LR: odd
    assert path.name == "step00000007_a.png"
    assert np.asarray(Image.open(path)).shape == (26, 3 * 26, 3)   # [LR nearest | SR | HR]


class _Probe(nn.Module):
    """x2 nearest + a 1x1 conv; records the autocast state each forward runs under, and returns
    NaN under autocast when told to (an fp16/bf16 overflow, forced)."""
    input_multiple = 1

    def __init__(self, nan_under_autocast: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 1)
        self.nan_under_autocast = nan_under_autocast
        self.hparams = {"upscale": 2, "num_in_ch": 3}
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = torch.is_autocast_enabled(x.device.type)
        self.seen.append((on, torch.get_autocast_dtype(x.device.type)))
        y = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        return y * float("nan") if on and self.nan_under_autocast else y


def test_bf16_runs_under_autocast_and_returns_float32():
    probe = _Probe()
    x = torch.rand(1, 3, 6, 5)
    ref = upscale_tensor(probe, x)
    y = upscale_tensor(probe, x, amp_dtype=torch.bfloat16, channels_last=True)
    assert probe.seen == [(False, torch.bfloat16), (True, torch.bfloat16)]
    assert y.dtype == torch.float32 and y.shape == (1, 3, 12, 10)
    # bf16 keeps 8 bits of mantissa: close to fp32, and not identical (it really ran in bf16)
    torch.testing.assert_close(y, ref, rtol=0, atol=2e-2)
    assert not torch.equal(y, ref)


def test_non_finite_low_precision_output_is_recomputed_in_fp32(caplog):
    probe = _Probe(nan_under_autocast=True)
    x = torch.rand(1, 3, 6, 5)
    with caplog.at_level(logging.WARNING, logger="superres.inference.upscaler"):
        y = upscale_tensor(probe, x, amp_dtype=torch.bfloat16)
    assert [on for on, _ in probe.seen] == [True, False]   # the bf16 try, then the fp32 rerun
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, upscale_tensor(_Probe(), x), rtol=0, atol=0)
    assert "non-finite values in a bf16 forward; recomputing it in fp32" in caplog.text
    # the same through an Upscaler, tile by tile
    img = np.random.default_rng(0).integers(0, 256, (20, 18, 3), dtype=np.uint8)
    low = Upscaler(_Probe(nan_under_autocast=True), precision="bf16", tile=8, tile_overlap=2).upscale(img)
    exact = Upscaler(_Probe(), precision="fp32", tile=8, tile_overlap=2).upscale(img)
    np.testing.assert_array_equal(low, exact)


def test_one_upscaler_shared_by_threads_gives_the_sequential_results():
    torch.manual_seed(0)
    up = Upscaler(build_generator("msrresnet", upscale=2, num_feat=8, num_block=1), precision="fp32",
                  tile=12, tile_overlap=4)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (17 + i, 23 - i, 3), dtype=np.uint8) for i in range(4)]
    expected = [up.upscale(img) for img in images]
    results: list[np.ndarray | None] = [None] * len(images)

    def work(i: int) -> None:
        results[i] = up.upscale(images[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_oom_back_off_remembers_the_tile_that_worked(monkeypatch):
    torch.manual_seed(0)
    up = Upscaler(build_generator("msrresnet", upscale=2, num_feat=8, num_block=1), precision="fp32",
                  tile=0, tile_overlap=4)
    real = up._run_tile
    sides: list[int] = []

    def small_memory(x: torch.Tensor, model=None) -> torch.Tensor:
        sides.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(x, model)

    monkeypatch.setattr(up, "_run_tile", small_memory)
    img = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    first = up.upscale(img)
    assert up.tile_size() == 32 and sides[:2] == [100, 54]   # whole image, then 50 + overlap
    sides.clear()
    second = up.upscale(img)
    assert max(sides) <= 40, "the second call started from the remembered tile"
    np.testing.assert_array_equal(first, second)
    assert up.count_tiles(100, 100) == 16


# ---------------------------------------------------------------------------------------------
# the host allocator (issue 18: no page-fault storm on large tiles)

class _FakeLibc:
    """Records mallopt calls instead of changing the test process's malloc."""

    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []

        def mallopt(param: int, value: int) -> int:
            self.calls.append((param, value))
            return answer

        self.mallopt = mallopt


@pytest.fixture
def fresh_allocator_state(monkeypatch):
    """As if no Upscaler had been made in this process yet; glibc pretended, malloc untouched."""
    from superres.inference import core as inference

    libc = _FakeLibc()
    monkeypatch.setattr(inference, "_allocator_configured", None)
    monkeypatch.setattr(inference, "_load_libc", lambda: libc)
    monkeypatch.setattr(inference.sys, "platform", "linux")
    monkeypatch.setattr(inference.platform, "libc_ver", lambda *a, **k: ("glibc", "2.35"))
    monkeypatch.delenv("SUPERRES_KEEP_FREED_MEMORY", raising=False)
    return libc


def _tiny_x2() -> nn.Module:
    torch.manual_seed(0)
    return build_generator("msrresnet", num_feat=8, num_block=1, upscale=2)


@pytest.mark.parametrize("tile", [None, 128, 256])
def test_cpu_upscaler_sets_mallopt_once_per_process(fresh_allocator_state, tile):
    from superres.inference import core as inference

    up = Upscaler(_tiny_x2(), device="cpu", precision="fp32", tile=tile)
    # building one changes nothing in the process: the applications ask for it
    assert fresh_allocator_state.calls == [] and not inference.host_allocator_configured()
    assert up.tune_host_allocator()
    Upscaler(_tiny_x2(), device="cpu", precision="fp32", tile=tile).tune_host_allocator()
    # mmap off (M_MMAP_MAX = 0) and trimming off (M_TRIM_THRESHOLD = -1), once
    assert fresh_allocator_state.calls == [(-4, 0), (-1, -1)]
    assert inference.host_allocator_configured()


@pytest.mark.parametrize("tile", [0, 640])
def test_big_tiles_and_whole_images_leave_malloc_alone(fresh_allocator_state, tile):
    """A heap that is never given back fragments under blocks of many sizes (10.9 GB instead of
    4.4 GB for psnr-x4 at 512 tiles, 2000x1500, when its tail still ran whole): whole images and
    tiles over the CPU budget (psnr-x4: 528) keep glibc's way."""
    from superres.inference import core as inference

    psnr_x4 = build_generator("msrresnet", num_feat=64, num_block=1, upscale=4)
    assert not Upscaler(psnr_x4, device="cpu", precision="fp32", tile=tile).tune_host_allocator()
    assert fresh_allocator_state.calls == [] and not inference.host_allocator_configured()


def test_the_malloc_budget_is_in_bytes_not_sides(fresh_allocator_state):
    """A 512 tile of a compact x4 net holds less than psnr-x4's 256 tile: it reuses freed memory."""
    from superres.inference import core as inference

    compact = build_generator("compact", num_feat=64, num_conv=2, upscale=4)
    Upscaler(compact, device="cpu", precision="fp32", tile=512).tune_host_allocator()
    assert inference.host_allocator_configured()


def test_automatic_cpu_tile_is_sized_by_the_architectures_memory(monkeypatch):
    from superres.inference import core as inference

    model = _tiny_x2()
    monkeypatch.setattr(inference, "_available_host_memory", lambda: 64 << 30)
    # the CPU budget: what a psnr-x4 tile of 256 held with its whole tail at HR size (24 KiB per LR
    # pixel). With the tail in strips MSRResNet holds 4 * 64 * (6 + scale^2) bytes per LR pixel:
    # sqrt(budget / 5632) -> 528 at x4, sqrt(budget / 2560) -> 784 at x2
    psnr_x4 = build_generator("msrresnet", num_feat=64, num_block=1, upscale=4)
    assert inference.CPU_TILE_BYTES == 256 * 256 * 64 * 16 * 4 * 6
    assert inference.auto_tile_size(psnr_x4, 4, torch.device("cpu")) == 528
    psnr_x2 = build_generator("msrresnet", num_feat=64, num_block=1, upscale=2)
    assert inference.auto_tile_size(psnr_x2, 2, torch.device("cpu")) == 784
    # RRDBNet (ESRGAN, Real-ESRGAN x4plus) has the same tail, in strips too
    esrgan = build_generator("rrdbnet", num_feat=64, num_block=1, num_grow_ch=32, upscale=4)
    assert inference.auto_tile_size(esrgan, 4, torch.device("cpu")) == 528
    # a compact net convolves at LR size: (64 + 3 * 16) * 24 bytes per LR pixel -> sqrt(budget / 2688)
    compact = build_generator("compact", num_feat=64, num_conv=2, upscale=4)
    assert inference.auto_tile_size(compact, 4, torch.device("cpu")) == 768
    # its int8 form keeps the fp32 net's estimate
    from superres.archs import activation_bytes

    class Wrapped(nn.Module):
        hparams = compact.hparams
        activation_bytes_per_lr_pixel = activation_bytes(compact, 4)
    assert inference.auto_tile_size(Wrapped(), 4, torch.device("cpu")) == 768
    # MSRResNet exported as one graph (ONNX, int8) runs its tail whole: the int8 form keeps 256
    assert activation_bytes(psnr_x4, 4, graph=True) == 64 * 16 * 4 * 6
    assert activation_bytes(compact, 4, graph=True) == activation_bytes(compact, 4)

    class WrappedMSRResNet(nn.Module):
        hparams = psnr_x4.hparams
        activation_bytes_per_lr_pixel = activation_bytes(psnr_x4, 4, graph=True)
    assert inference.auto_tile_size(WrappedMSRResNet(), 4, torch.device("cpu")) == 256
    # the smallest nets stop at the side cap; accelerators at theirs, by free memory only
    assert inference.auto_tile_size(model, 2, torch.device("cpu")) == inference.MAX_AUTO_TILE_CPU == 1024
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (64 << 30, 80 << 30))
    assert inference.auto_tile_size(psnr_x4, 4, torch.device("cuda")) == inference.MAX_AUTO_TILE == 512
    # little memory: the estimate decides (1 GiB free, 64 features x4: sqrt(0.5 GiB / 5632) -> 304)
    monkeypatch.setattr(inference, "_available_host_memory", lambda: 1 << 30)
    big = build_generator("msrresnet", num_feat=64, num_block=1, upscale=4)
    assert inference.auto_tile_size(big, 4, torch.device("cpu")) == 304
    up = Upscaler(model, device="cpu", precision="fp32")
    assert up.tile_size() == inference.auto_tile_size(model, 2, torch.device("cpu"))


@pytest.mark.parametrize("case", ["musl", "macos", "opt-out", "refused"])
def test_allocator_left_alone_where_it_cannot_or_should_not_change(fresh_allocator_state, monkeypatch, case):
    from superres.inference import core as inference

    if case == "musl":
        monkeypatch.setattr(inference.platform, "libc_ver", lambda *a, **k: ("", ""))
    elif case == "macos":
        monkeypatch.setattr(inference.sys, "platform", "darwin")
    elif case == "opt-out":
        monkeypatch.setenv("SUPERRES_KEEP_FREED_MEMORY", "0")
    else:   # a C library that answers 0 (error) to these parameters
        monkeypatch.setattr(inference, "_load_libc", lambda: _FakeLibc(answer=0))
    up = Upscaler(_tiny_x2(), device="cpu", precision="fp32", tile=0)
    assert not inference.host_allocator_configured()
    if case != "refused":
        assert fresh_allocator_state.calls == []
    # and the upscaler works as ever
    out = up.upscale(np.full((6, 5, 3), 128, np.uint8))
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8


def test_nothing_is_released_where_malloc_was_not_configured(fresh_allocator_state):
    from superres.inference import core as inference

    Upscaler(_tiny_x2(), device="cpu", precision="fp32", tile=0)   # whole images leave malloc alone
    assert not inference.release_host_memory()


def test_same_size_frames_still_batch_up_to_the_old_area(monkeypatch):
    """Video frames batch by the memory-based size up to MAX_AUTO_TILE, not by the CPU tile cap: 8
    frames of 100x100 (80000 px, over 256^2 but under 512^2) go through in one forward."""
    from superres.inference import core as inference

    monkeypatch.setattr(inference, "_available_host_memory", lambda: 64 << 30)
    up = Upscaler(_tiny_x2(), device="cpu", precision="fp32")
    batches = []
    up.model.register_forward_hook(lambda mod, inputs, out: batches.append(inputs[0].shape[0]))
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (100, 100, 3), dtype=np.uint8) for _ in range(8)]
    outs = up.upscale_frames(frames)
    assert batches == [8] and [o.shape for o in outs] == [(200, 200, 3)] * 8
    # single images go in the CPU tiles sized by the memory budget (this tiny net: the side cap)
    assert up.tile_size() == inference.MAX_AUTO_TILE_CPU
