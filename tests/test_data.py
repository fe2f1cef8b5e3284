"""Training data: exact bicubic LR crops, aligned pairs, deterministic and shardable sampling,
sub-image extraction, and the `degrade` command. Synthetic images in tmp_path throughout."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from superres.apps.cli import main as cli_main
from superres.data.datasets import IndexStreamSampler, PatchDataset, bicubic_lr_crop, crop_positions, extract_subimages, load_rgb_uint8
from superres.data.resize import imresize

SCALE, PATCH = 4, 32
# Sizes that are not multiples of the scale, so the mod-crop matters, plus one too small to use.
SIZES = {"a.png": (70, 90), "b.png": (64, 64), "c.png": (101, 52), "tiny.png": (20, 28)}


def _write(folder: Path, name: str, img: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(folder / name)


@pytest.fixture
def hr_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        # Smooth + noisy: every HR patch is unique, so its position can be found again.
        base = np.linspace(0, 200, h * w * 3).reshape(h, w, 3)
        _write(tmp_path / "hr", name, np.clip(base + rng.integers(0, 56, (h, w, 3)), 0, 255).astype(np.uint8))
    return tmp_path / "hr"


def _dataset(dirs, **kw) -> PatchDataset:
    return PatchDataset([str(d) for d in dirs], scale=SCALE, hr_patch=PATCH, seed=kw.pop("seed", 3), **kw)


def _uint8(t: torch.Tensor) -> np.ndarray:
    return (t * 255).round().byte().permute(1, 2, 0).numpy()


def test_shapes_ranges_and_small_images_skipped(hr_dir, caplog):
    with caplog.at_level(logging.WARNING):
        ds = _dataset([hr_dir])
    assert len(ds.items) == 3 and "tiny.png" in caplog.text
    for i in range(5):
        s = ds[i]
        assert s["lr"].shape == (3, PATCH // SCALE, PATCH // SCALE) and s["hr"].shape == (3, PATCH, PATCH)
        assert s["lr"].dtype == torch.float32 and 0 <= s["lr"].min() and s["hr"].max() <= 1
    real = _dataset([hr_dir], degradation="realistic")[0]
    assert set(real) == {"hr"} and real["hr"].shape == (3, PATCH, PATCH)
    with pytest.raises(ValueError, match="allowed values"):
        _dataset([hr_dir], degradation="jpeg")


def test_sample_recipe_is_frozen(hr_dir):
    """A live run resumes by sample index: the sample for (seed, index) must never change."""
    ds = _dataset([hr_dir], seed=11)
    for index in (0, 5, 123456789):
        rng = np.random.default_rng([11, index])
        item = ds.items[int(rng.choice(len(ds.items), p=ds.probs))]
        lh, lw = item.hr.shape[0] // SCALE, item.hr.shape[1] // SCALE
        p = PATCH // SCALE
        top, left = int(rng.integers(0, lh - p + 1)), int(rng.integers(0, lw - p + 1))
        hflip, vflip, rot = rng.random(3) < 0.5
        hr = item.hr[top * SCALE:(top + p) * SCALE, left * SCALE:(left + p) * SCALE]
        lr = imresize(item.hr, 1 / SCALE)[top:top + p, left:left + p]
        for flag, op in ((hflip, lambda a: a[:, ::-1]), (vflip, lambda a: a[::-1]),
                         (rot, lambda a: a.transpose(1, 0, 2))):
            hr, lr = (op(hr), op(lr)) if flag else (hr, lr)
        s = ds[index]
        np.testing.assert_array_equal(_uint8(s["hr"]), hr)
        np.testing.assert_array_equal(_uint8(s["lr"]), lr)


def test_bicubic_lr_crop_equals_crop_of_the_full_imresize():
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (96, 120, 3), dtype=np.uint8)
    full = imresize(hr, 1 / SCALE)
    size = 8
    for top, left in [(0, 0), (16, 22), (3, 11), (24 - size, 30 - size), (10, 0)]:
        np.testing.assert_array_equal(bicubic_lr_crop(hr, SCALE, top, left, size),
                                      full[top:top + size, left:left + size])
    # Resizing the HR crop alone differs only within the kernel's reach (2 LR pixels) of its edge.
    top, left = 8, 10
    alone = imresize(hr[top * SCALE:(top + size) * SCALE, left * SCALE:(left + size) * SCALE], 1 / SCALE)
    np.testing.assert_array_equal(alone[2:-2, 2:-2], full[top + 2:top + size - 2, left + 2:left + size - 2])


def test_dataset_lr_is_the_crop_of_the_full_image_lr(hr_dir):
    ds = _dataset([hr_dir], augment=False)
    full = {it.name: imresize(it.hr, 1 / SCALE) for it in ds.items}
    for i in range(8):
        s = ds[i]
        hr, lr = _uint8(s["hr"]), _uint8(s["lr"])
        for it in ds.items:  # find where the patch came from
            hits = [(t, l) for t in range(0, it.hr.shape[0] - PATCH + 1, SCALE)
                    for l in range(0, it.hr.shape[1] - PATCH + 1, SCALE)
                    if np.array_equal(it.hr[t:t + PATCH, l:l + PATCH], hr)]
            if hits:
                t, l = hits[0]
                p = PATCH // SCALE
                np.testing.assert_array_equal(lr, full[it.name][t // SCALE:t // SCALE + p, l // SCALE:l // SCALE + p])
                break
        else:
            pytest.fail(f"sample {i}: HR patch not found on the scale grid of any image")


def test_paired_crops_align_exactly(hr_dir, tmp_path):
    """LR files made by imresize: every pair must equal the bicubic pair (a 1-pixel shift would not)."""
    for p in hr_dir.glob("*.png"):
        hr = load_rgb_uint8(p)
        h, w = hr.shape[0] - hr.shape[0] % SCALE, hr.shape[1] - hr.shape[1] % SCALE
        _write(tmp_path / "lr", f"{p.stem}x{SCALE}.png", imresize(hr[:h, :w], 1 / SCALE))
    paired = _dataset([hr_dir], lr_dirs=[str(tmp_path / "lr")])
    bicubic = _dataset([hr_dir])
    for i in range(12):  # augmentation on: flips and rotation must treat both sides alike
        a, b = paired[i], bicubic[i]
        torch.testing.assert_close(a["hr"], b["hr"], rtol=0, atol=0)
        torch.testing.assert_close(a["lr"], b["lr"], rtol=0, atol=0)


def test_paired_names_only_lose_the_scale_suffix(tmp_path):
    img = np.zeros((32, 32, 3), np.uint8)
    _write(tmp_path / "hr", "box2.png", img)
    _write(tmp_path / "lr", "box2_x2.png", img[::2, ::2])
    ds = PatchDataset([str(tmp_path / "hr")], scale=2, hr_patch=16, lr_dirs=[str(tmp_path / "lr")])
    assert ds.items[0].lr is not None
    _write(tmp_path / "hr", "other.png", img)
    with pytest.raises(FileNotFoundError, match="other.png"):
        PatchDataset([str(tmp_path / "hr")], scale=2, hr_patch=16, lr_dirs=[str(tmp_path / "lr")])


def _batches(ds, sampler, n, workers=0) -> list[torch.Tensor]:
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers, drop_last=True)
    out = []
    for batch in loader:
        out.append(batch["lr"])
        if len(out) == n:
            break
    return out


def test_same_seed_same_batches_with_any_workers_and_after_resume(hr_dir):
    ds = _dataset([hr_dir])
    ref = _batches(ds, IndexStreamSampler(), 4)
    again = _batches(_dataset([hr_dir]), IndexStreamSampler(), 4, workers=2)
    resumed = _batches(ds, IndexStreamSampler(start_index=2 * 4), 2)  # resume at step 2, batch 4
    for a, b in zip(ref, again):
        assert torch.equal(a, b)
    assert torch.equal(resumed[0], ref[2]) and torch.equal(resumed[1], ref[3])
    other_seed = _batches(_dataset([hr_dir], seed=4), IndexStreamSampler(), 1)
    assert not torch.equal(other_seed[0], ref[0])


def test_ranks_get_disjoint_samples_covering_the_global_batches(hr_dir):
    world, per_rank, steps = 3, 4, 5
    indices = [list(IndexStreamSampler(start_index=0, rank=r, world_size=world, length=per_rank * steps))
               for r in range(world)]
    for a in range(world):
        for b in range(a + 1, world):
            assert not set(indices[a]) & set(indices[b])
    # Each step, the ranks together take one contiguous block of the global stream.
    for k in range(steps):
        block = sorted(i for r in range(world) for i in indices[r][k * per_rank:(k + 1) * per_rank])
        assert block == list(range(k * per_rank * world, (k + 1) * per_rank * world))
    ds = _dataset([hr_dir])
    b0 = _batches(ds, IndexStreamSampler(rank=0, world_size=2), 1)[0]
    b1 = _batches(ds, IndexStreamSampler(rank=1, world_size=2), 1)[0]
    assert not any(torch.equal(x, y) for x in b0 for y in b1)
    with pytest.raises(ValueError, match="rank"):
        IndexStreamSampler(rank=2, world_size=2)


def test_crop_positions_cover_the_edges():
    assert crop_positions(100, 48, 24) == [0, 24, 48, 52]
    assert crop_positions(100, 48, 24, thresh_size=10) == [0, 24, 48]
    assert crop_positions(96, 48, 24) == [0, 24, 48]
    assert crop_positions(30, 48, 24) == [0]


def test_prepare_writes_lossless_sub_images(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)
    _write(tmp_path / "big" / "sub", "photo.png", img)
    out = tmp_path / "tiles"
    assert cli_main(["prepare", str(tmp_path / "big"), "-o", str(out), "--crop", "48", "--step", "24"]) == 0
    tiles = sorted((out / "sub").glob("photo_s*.png"))
    assert len(tiles) == 2 * 4  # rows at 0, 22; columns at 0, 24, 48, 52
    tops, lefts = [0, 22], [0, 24, 48, 52]
    for n, path in enumerate(tiles):
        t, l = tops[n // 4], lefts[n % 4]
        np.testing.assert_array_equal(load_rgb_uint8(path), img[t:t + 48, l:l + 48])
    assert extract_subimages(tmp_path / "big", tmp_path / "t2", crop=48, step=24, thresh_size=10,
                             progress=False) == 2 * 3
    assert cli_main(["prepare", str(tmp_path / "nothing"), "-o", str(out)]) == 2


def test_degrade_command_writes_the_lr_image(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (48, 66, 3), dtype=np.uint8)  # width not a multiple of 4: mod-cropped
    _write(tmp_path, "hr.png", img)
    assert cli_main(["degrade", str(tmp_path / "hr.png"), "-o", str(tmp_path / "bic.png"),
                     "--preset", "bicubic", "--scale", "4"]) == 0
    np.testing.assert_array_equal(load_rgb_uint8(tmp_path / "bic.png"), imresize(img[:, :64], 1 / 4))
    for name in ("r1.png", "r2.png"):
        assert cli_main(["degrade", str(tmp_path / "hr.png"), "-o", str(tmp_path / name),
                         "--preset", "realistic", "--seed", "3"]) == 0
    r1, r2 = load_rgb_uint8(tmp_path / "r1.png"), load_rgb_uint8(tmp_path / "r2.png")
    assert r1.shape == (12, 16, 3)
    np.testing.assert_array_equal(r1, r2)


def test_split_holdout_is_fixed_by_the_sorted_names():
    from superres.data.datasets import split_holdout
    paths = [Path(f"{i:02d}.png") for i in range(25)]
    kept, held = split_holdout(paths, 10)
    assert [p.name for p in held] == ["09.png", "19.png"]
    assert len(kept) == 23 and not set(kept) & set(held)
    assert split_holdout(paths, 0) == (paths, [])


def test_readers_wrap_read_image_with_their_conversions(tmp_path):
    """Training gets 3 channels, the benchmark keeps gray gray; both round 16 bits to 8 and apply
    EXIF orientation, alpha dropped."""
    from superres.evaluation.protocol import read_image as read_benchmark
    from superres.io.images import ImageData, write_image

    gray16 = np.array([[0, 128, 129, 65535], [257, 383, 384, 1000]], np.uint16)[..., None]
    write_image(tmp_path / "g.png", ImageData(gray16))
    expect = np.floor(gray16[..., 0] / 257.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(read_benchmark(tmp_path / "g.png"), expect)
    np.testing.assert_array_equal(load_rgb_uint8(tmp_path / "g.png"), np.repeat(expect[..., None], 3, 2))

    rgba = np.random.default_rng(0).integers(0, 256, (4, 6, 4), dtype=np.uint8)
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.fromarray(rgba).save(tmp_path / "r.png", exif=ex)
    for read in (read_benchmark, load_rgb_uint8):
        out = read(tmp_path / "r.png")
        np.testing.assert_array_equal(out, np.rot90(rgba[..., :3], -1))
        assert out.flags.writeable


def test_one_lr_hr_name_matcher():
    from superres.data.datasets import hr_key, lr_key

    for lr in ("baby", "babyx4", "baby_x4", "baby-x4", "baby.x4", "baby_x4_LR", "baby_LR", "baby_bicubic",
               "BABY_X4"):
        assert lr_key(lr, 4) == "baby", lr
    # only this scale's suffix, and only from LR names: an HR image box2 stays box2 at x2
    assert lr_key("baby_x2", 4) == "baby_x2" and hr_key("box2") == "box2"
    assert hr_key("baby_HR") == hr_key("baby") == "baby"
