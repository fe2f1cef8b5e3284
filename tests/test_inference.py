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
from superres.evaluate import evaluate_generator, generator_upscaler
from superres.inference import Upscaler, upscale_tensor

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
    from superres.train import save_samples

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
    with caplog.at_level(logging.WARNING, logger="superres.inference"):
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

    def small_memory(x: torch.Tensor) -> torch.Tensor:
        sides.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(x)

    monkeypatch.setattr(up, "_run_tile", small_memory)
    img = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    first = up.upscale(img)
    assert up.tile_size() == 32 and sides[:2] == [100, 54]   # whole image, then 50 + overlap
    sides.clear()
    second = up.upscale(img)
    assert max(sides) <= 40, "the second call started from the remembered tile"
    np.testing.assert_array_equal(first, second)
    assert up.count_tiles(100, 100) == 16
