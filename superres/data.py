"""Training data: HR folders -> random (LR, HR) patch pairs.

Every sample is a pure function of (seed, global sample index): which image, where to crop and how
to flip/rotate come from an RNG seeded with both. That makes the data stream deterministic,
resumable from a single integer (the next sample index) and trivially shardable across
DataLoader workers and DDP ranks (rank r takes indices r, r+world, ...).

The `bicubic` LR is cut from MATLAB-bicubic-downscaled image regions aligned to the scale grid with
a margin wider than the kernel, so it equals the crop of `imresize(full_image, 1/scale)`, exactly
the evaluation protocol's LR, at the cost of resizing only a small region per sample.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler

from .degrade import imresize

log = logging.getLogger(__name__)

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def load_rgb_uint8(path: str | Path) -> np.ndarray:
    """HxWx3 uint8; grayscale is replicated so every training sample has 3 channels."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def augment(arrays: list[np.ndarray], hflip: bool, vflip: bool, rot90: bool) -> list[np.ndarray]:
    """The same flips / 90-degree rotation applied to every array (HWC)."""
    out = []
    for a in arrays:
        if hflip:
            a = a[:, ::-1]
        if vflip:
            a = a[::-1]
        if rot90:
            a = a.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(a))
    return out


def to_tensor(a: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CHW float32 in [0, 1].

    Done in numpy: on small patches torch's threaded elementwise kernels cost ~10x more.
    """
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32) * np.float32(1 / 255))


@dataclass
class _Item:
    name: str
    hr: np.ndarray  # HWC uint8, cropped to a multiple of the scale
    lr: np.ndarray | None  # paired mode only


class PatchDataset(Dataset):
    """Map-style dataset indexed by a global sample index (any non-negative int).

    Returns {"lr": (3, p, p), "hr": (3, p*s, p*s)} float tensors in [0, 1]; with
    degradation="none" only "hr" (the training loop degrades batches on the device).
    """

    def __init__(self, hr_dirs: list[str], *, scale: int, hr_patch: int, seed: int = 0,
                 degradation: str = "bicubic", lr_dirs: list[str] | None = None,
                 augment: bool = True) -> None:
        if hr_patch % scale:
            raise ValueError(f"hr_patch={hr_patch} must be a multiple of scale={scale}")
        self.scale, self.hr_patch, self.lr_patch = scale, hr_patch, hr_patch // scale
        self.seed, self.degradation, self.augment = seed, degradation, augment
        self.items: list[_Item] = []
        lr_dirs = lr_dirs or []
        for i, d in enumerate(hr_dirs):
            lr_index = {}
            if lr_dirs:
                lr_index = {_stem_key(p): p for p in list_images(lr_dirs[i])}
            for path in list_images(d):
                hr = load_rgb_uint8(path)
                h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
                if h < hr_patch or w < hr_patch:
                    log.warning("skipping %s: %dx%d is smaller than the %d-pixel HR patch",
                                path, hr.shape[1], hr.shape[0], hr_patch)
                    continue
                lr = None
                if lr_dirs:
                    lr_path = lr_index.get(_stem_key(path))
                    if lr_path is None:
                        raise FileNotFoundError(f"paired mode: no LR image for {path} in {lr_dirs[i]}")
                    lr = load_rgb_uint8(lr_path)
                    if lr.shape[0] * scale < h or lr.shape[1] * scale < w:
                        raise ValueError(f"paired mode: {lr_path} is {lr.shape[1]}x{lr.shape[0]}, "
                                         f"too small for x{scale} of {path} ({w}x{h})")
                self.items.append(_Item(path.name, np.ascontiguousarray(hr[:h, :w]), lr))
        if not self.items:
            raise ValueError(f"no usable training images (>= {hr_patch}px) in {hr_dirs}")
        # Sample images in proportion to their area so every region is about equally likely.
        areas = np.array([it.hr.shape[0] * it.hr.shape[1] for it in self.items], dtype=np.float64)
        self.probs = areas / areas.sum()
        log.info("training data: %d images from %s", len(self.items), ", ".join(map(str, hr_dirs)))

    def __len__(self) -> int:
        # Sampling is with replacement from an infinite index stream; len() is only a nominal epoch.
        return len(self.items) * 100

    def sample_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.sample_rng(int(index))
        item = self.items[int(rng.choice(len(self.items), p=self.probs))]
        s, p = self.scale, self.lr_patch
        lh, lw = item.hr.shape[0] // s, item.hr.shape[1] // s
        top, left = int(rng.integers(0, lh - p + 1)), int(rng.integers(0, lw - p + 1))
        hflip, vflip, rot = (rng.random(3) < 0.5) if self.augment else (False, False, False)
        hr = item.hr[top * s:(top + p) * s, left * s:(left + p) * s]
        if item.lr is not None:
            lr = item.lr[top:top + p, left:left + p]
        elif self.degradation == "bicubic":
            lr = bicubic_lr_crop(item.hr, s, top, left, p)
        else:
            hr, = augment([hr], hflip, vflip, rot)
            return {"hr": to_tensor(hr)}
        hr, lr = augment([hr, lr], hflip, vflip, rot)
        return {"lr": to_tensor(lr), "hr": to_tensor(hr)}


def bicubic_lr_crop(hr: np.ndarray, scale: int, top: int, left: int, size: int) -> np.ndarray:
    """`imresize(hr, 1/scale)[top:top+size, left:left+size]` without resizing the whole image.

    MATLAB's antialiased cubic kernel spans 2 LR pixels on each side, so a region with a 4-pixel LR
    margin (clipped at the image border, where the symmetric padding is then the same as for the
    full image) resizes to exactly the same values.
    """
    m = 4
    lh, lw = hr.shape[0] // scale, hr.shape[1] // scale
    t0, l0 = max(top - m, 0), max(left - m, 0)
    t1, l1 = min(top + size + m, lh), min(left + size + m, lw)
    region = hr[t0 * scale:t1 * scale, l0 * scale:l1 * scale]
    lr = imresize(region, 1 / scale)
    return lr[top - t0:top - t0 + size, left - l0:left - l0 + size]


def _stem_key(path: Path) -> str:
    """Match LR/HR names that differ by a scale suffix: baby.png ~ babyx4.png ~ baby_x4.png."""
    stem = path.stem.lower()
    for suffix in ("x2", "x3", "x4", "x8"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)].rstrip("_-")
    return stem


class IndexStreamSampler(Sampler[int]):
    """Yields global sample indices start, start+1, ... sharded by rank: the whole sampler state is
    `next_index`, so resuming is exact and every rank sees a disjoint share."""

    def __init__(self, start_index: int = 0, rank: int = 0, world_size: int = 1,
                 length: int | None = None) -> None:
        self.next_index, self.rank, self.world_size, self.length = start_index, rank, world_size, length

    def __iter__(self):
        i = self.next_index
        count = 0
        while self.length is None or count < self.length:
            yield i * self.world_size + self.rank
            i += 1
            count += 1

    def __len__(self) -> int:
        return self.length if self.length is not None else 2 ** 62

    def state_dict(self) -> dict[str, int]:
        return {"next_index": self.next_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.next_index = int(state["next_index"])
