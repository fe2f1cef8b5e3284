"""Training data: HR folders -> random (LR, HR) patch pairs.

Every sample is a pure function of (seed, global sample index): which image, where to crop and how
to flip/rotate come from an RNG seeded with both. That makes the data stream deterministic,
resumable from a single integer (the next sample index) and trivially shardable across
DataLoader workers and DDP ranks (rank r takes indices r, r+world, ...). DataLoader workers need
no sharding of their own: the sampler runs in the main process and hands each worker whole
indices, and since a sample depends on nothing else, the batches are the same with any number of
workers.

The `bicubic` LR is cut from MATLAB-bicubic-downscaled image regions aligned to the scale grid with
a margin wider than the kernel, so it equals the crop of `imresize(full_image, 1/scale)`, exactly
the evaluation protocol's LR, at the cost of resizing only a small region per sample.
"""
from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler

from ..io.formats import IMAGE_EXTENSIONS
from ..io.images import convert_depth, read_image
from .resize import imresize

log = logging.getLogger(__name__)

IMAGE_EXTS = IMAGE_EXTENSIONS   # the name older code imports


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def split_holdout(paths: list[Path], every: int) -> tuple[list[Path], list[Path]]:
    """(kept, held out): with every = N > 1 the N-th, 2N-th, ... image of the sorted list is held
    out, so the split is fixed by the file names alone and the same on every machine."""
    if every <= 1:
        return list(paths), []
    return ([p for i, p in enumerate(paths) if i % every != every - 1],
            [p for i, p in enumerate(paths) if i % every == every - 1])


def held_out_images(folder: str | Path, every: int) -> list[Path]:
    """The images of `folder` that a training run with data.holdout = `every` never trains on."""
    return split_holdout(list_images(folder), every)[1]


def hr_folder(path: str | os.PathLike) -> Path:
    """The folder holding the HR images: `path/HR` when it exists (a benchmark folder such as Set5/
    with HR/ and LR_bicubic/ inside), else `path`."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"dataset folder {p} does not exist")
    return p / "HR" if (p / "HR").is_dir() else p


def read_uint8(path: str | os.PathLike, *, gray: bool) -> np.ndarray:
    """An image file as uint8 pixels, through images.read_image (EXIF orientation applied, alpha
    dropped, 16 bits rounded to 8): HxWx3, or HxW for gray files when `gray` (a gray image is its
    own Y, so the benchmark keeps it gray); with `gray` False gray is replicated to 3 channels."""
    px = convert_depth(read_image(path).pixels, np.uint8)
    if px.shape[2] == 1:
        px = px[..., 0] if gray else np.repeat(px, 3, axis=2)
    # PIL's buffers are read-only; callers crop and hand the array to torch, which wants to own it
    return px if px.flags.writeable else px.copy()


def load_rgb_uint8(path: str | Path) -> np.ndarray:
    """HxWx3 uint8; grayscale is replicated so every training sample has 3 channels."""
    return read_uint8(path, gray=False)


# LR/HR names: an LR image pairs with the HR image whose name it is with the scale, "LR" or "bicubic"
# added: baby, babyx4, baby_x4, baby-x4, baby.x4, baby_x4_LR, baby_LR and baby_bicubic all pair with
# baby (or baby_HR). Only this scale's suffix is removed, and only from LR names: an HR image called
# box2.png must not be taken for "bo" at x2.
_LR_WORD = re.compile(r"[_\-.]?(lr|bicubic)$")


def lr_key(stem: str, scale: int) -> str:
    """The HR name (lower case, no extension) that an LR file stem pairs with."""
    key = _LR_WORD.sub("", stem.lower())
    key = re.sub(rf"[_\-.]?x{scale}$", "", key)
    return _LR_WORD.sub("", key)


def hr_key(stem: str) -> str:
    """The name (lower case, no extension) by which an HR file stem is paired."""
    return re.sub(r"[_\-.]hr$", "", stem.lower())


def _relative_key(path: Path, root: Path, key: str) -> str:
    # sub-folders count: train/a/baby.png pairs with lr/a/babyx4.png, not lr/b/babyx4.png
    parent = path.parent.relative_to(root).as_posix().lower()
    return key if parent == "." else f"{parent}/{key}"


def lr_index(lr_paths: list[Path], root: str | os.PathLike, scale: int) -> dict[str, Path]:
    """LR images (under `root`) by the pair key of the HR image they belong to. Raises ValueError
    when two LR files claim the same HR image."""
    root = Path(root)
    index: dict[str, Path] = {}
    for p in lr_paths:
        key = _relative_key(p, root, lr_key(p.stem, scale))
        if key in index:
            raise ValueError(f"LR folder {root}: {index[key].name} and {p.name} both match the HR image "
                             f"named {key!r}")
        index[key] = p
    return index


def hr_pair_key(path: Path, root: str | os.PathLike) -> str:
    """The key under which `lr_index` files the LR image of the HR image `path` (under `root`)."""
    return _relative_key(path, Path(root), hr_key(path.stem))


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

    Returns {"lr": (3, p, p), "hr": (3, p*s, p*s)} float tensors in [0, 1] for "bicubic" and for
    paired folders; for "realistic" only {"hr"}: the training loop degrades whole batches on the
    device with degrade.RealisticDegrader.
    """

    DEGRADATIONS = ("bicubic", "realistic")

    def __init__(self, hr_dirs: list[str], *, scale: int, hr_patch: int, seed: int = 0,
                 degradation: str = "bicubic", lr_dirs: list[str] | None = None,
                 augment: bool = True, holdout: int = 0) -> None:
        if hr_patch % scale:
            raise ValueError(f"hr_patch={hr_patch} must be a multiple of scale={scale}")
        if degradation not in self.DEGRADATIONS:
            raise ValueError(f"degradation={degradation!r}; allowed values: {list(self.DEGRADATIONS)}")
        if lr_dirs and len(lr_dirs) != len(hr_dirs):
            raise ValueError(f"paired mode: {len(lr_dirs)} LR folders for {len(hr_dirs)} HR folders; "
                             "give one LR folder per HR folder")
        self.scale, self.hr_patch, self.lr_patch = scale, hr_patch, hr_patch // scale
        self.seed, self.degradation, self.augment = seed, degradation, augment
        self.items: list[_Item] = []
        lr_dirs = lr_dirs or []
        for i, d in enumerate(hr_dirs):
            index = lr_index(list_images(lr_dirs[i]), lr_dirs[i], scale) if lr_dirs else {}
            for path in split_holdout(list_images(d), holdout)[0]:
                try:
                    hr = load_rgb_uint8(path)
                except (ValueError, OSError) as e:   # ImageError is a ValueError: one bad file is skipped
                    log.warning("skipping %s: %s", path, e)
                    continue
                h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
                if h < hr_patch or w < hr_patch:
                    log.warning("skipping %s: %dx%d is smaller than the %d-pixel HR patch",
                                path, hr.shape[1], hr.shape[0], hr_patch)
                    continue
                lr = None
                if lr_dirs:
                    lr_path = index.get(hr_pair_key(path, d))
                    if lr_path is None:
                        raise FileNotFoundError(f"paired mode: no LR image for {path} in {lr_dirs[i]}")
                    lr = load_rgb_uint8(lr_path)
                    if lr.shape[0] * scale < h or lr.shape[1] * scale < w:
                        raise ValueError(f"paired mode: {lr_path} is {lr.shape[1]}x{lr.shape[0]}, "
                                         f"too small for x{scale} of {path} ({w}x{h})")
                self.items.append(_Item(path.name, np.ascontiguousarray(hr[:h, :w]), lr))
        if not self.items:
            raise ValueError(f"no usable training images (>= {hr_patch}px) in {hr_dirs}")
        if lr_dirs and degradation != "bicubic":
            log.info("paired mode: LR images come from %s; degradation=%r is not used", lr_dirs, degradation)
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


class IndexStreamSampler(Sampler[int]):
    """Yields global sample indices start, start+1, ... sharded by rank: the whole sampler state is
    `next_index`, so resuming is exact and every rank sees a disjoint share.

    Rank r yields (next_index + j) * world_size + r, so at training step k with a per-rank batch b
    (next_index = k * b) the ranks together take the global indices [k*b*W, (k+1)*b*W): the same
    samples as one process with the global batch b*W, in a different order. Like DistributedSampler,
    rank and world_size default to torch.distributed's when a process group is initialised.

    `next_index` is where iteration starts, not how far it has gone: a DataLoader prefetches ahead
    of what the loop has consumed, so the caller sets it from the step it resumes at
    (step * per-rank batch size).
    """

    def __init__(self, start_index: int = 0, rank: int | None = None, world_size: int | None = None,
                 length: int | None = None) -> None:
        dist = torch.distributed
        ddp = dist.is_available() and dist.is_initialized()
        world_size = world_size if world_size is not None else (dist.get_world_size() if ddp else 1)
        rank = rank if rank is not None else (dist.get_rank() if ddp else 0)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"IndexStreamSampler: rank={rank} must be in [0, world_size={world_size})")
        if start_index < 0:
            raise ValueError(f"IndexStreamSampler: start_index={start_index} must be >= 0")
        self.next_index, self.rank, self.world_size, self.length = start_index, rank, world_size, length

    def set_epoch(self, epoch: int) -> None:
        """Accepted for DistributedSampler-style loops; an endless stream has no epochs to shuffle."""

    def __iter__(self) -> Iterator[int]:
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


# ---------------------------------------------------------------------------------------------
# `superres prepare`: large images -> overlapping sub-images (DIV2K-style)
#
# Decoding a 2K PNG costs more than a training step needs from it; cutting it once into ~480px
# tiles lets a loader (or PatchDataset's in-memory cache) touch only the pixels a patch uses.

def crop_positions(length: int, crop: int, step: int, thresh_size: int = 0) -> list[int]:
    """Offsets along one side: every `step` pixels, plus one crop flush with the far edge when the
    strip the regular grid leaves over is wider than `thresh_size` (narrower strips are dropped).
    A side shorter than `crop` gives one offset, 0: that side is kept whole."""
    if length <= crop:
        return [0]
    pos = list(range(0, length - crop + 1, step))
    if length - (pos[-1] + crop) > thresh_size:
        pos.append(length - crop)
    return pos


# Lossless, and faster than PNG's default level 6 for ~15% larger files.
_PNG_COMPRESS_LEVEL = 3


def _save_png(im: Image.Image, path: Path, icc: bytes | None) -> None:
    from ..io.fs import atomic_write_with

    atomic_write_with(path, lambda tmp: im.save(tmp, format="PNG", compress_level=_PNG_COMPRESS_LEVEL,
                                                icc_profile=icc))


def extract_subimages_of(path: Path, out_dir: Path, crop: int, step: int, thresh_size: int) -> int:
    """Write the sub-images of one image as `<stem>_s001.png`, ... in `out_dir`; returns how many.

    Pixels are copied as they are (bit depth, alpha, ICC profile kept); only modes PNG cannot hold
    (CMYK, YCbCr) are converted to RGB.
    """
    with Image.open(path) as im:
        icc = im.info.get("icc_profile")
        im = ImageOps.exif_transpose(im)
        if im.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            im = im.convert("RGB")
        w, h = im.size
        if w < crop or h < crop:
            # a "sub-image" would be the whole image at another size than every other one
            log.warning("%s: %dx%d is smaller than --crop %d; skipped", path, w, h, crop)
            return 0
        n = 0
        for top in crop_positions(h, crop, step, thresh_size):
            for left in crop_positions(w, crop, step, thresh_size):
                n += 1
                tile = im.crop((left, top, min(left + crop, w), min(top + crop, h)))
                _save_png(tile, out_dir / f"{path.stem}_s{n:03d}.png", icc)
    return n


def _extract_job(job: tuple[Path, Path, int, int, int]) -> int:
    return extract_subimages_of(*job)


def extract_subimages(hr_dir: str | Path, out_dir: str | Path, *, crop: int = 480, step: int = 240,
                      thresh_size: int = 0, workers: int = 1, progress: bool = True) -> int:
    """Cut every image under `hr_dir` into crop x crop sub-images every `step` pixels, written as
    PNG under `out_dir` (same sub-folders). Returns the number of sub-images written."""
    from tqdm import tqdm

    if crop <= 0 or step <= 0 or thresh_size < 0:
        raise ValueError(f"crop={crop} and step={step} must be > 0, thresh_size={thresh_size} >= 0")
    hr_dir, out_dir = Path(hr_dir), Path(out_dir)
    paths = list_images(hr_dir)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {hr_dir}")
    if out_dir.resolve() == hr_dir.resolve() or hr_dir.resolve() in out_dir.resolve().parents:
        raise ValueError(f"output folder {out_dir} is inside the input folder {hr_dir}: a second run "
                         "would cut the sub-images again; choose a folder outside it")
    jobs = [(p, out_dir / p.parent.relative_to(hr_dir), crop, step, thresh_size) for p in paths]
    bar = tqdm(total=len(jobs), desc="prepare", unit="img", disable=not progress, dynamic_ncols=True)
    total = 0
    try:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for n in pool.map(_extract_job, jobs):
                    total += n
                    bar.update(1)
        else:
            for job in jobs:
                total += _extract_job(job)
                bar.update(1)
    finally:
        bar.close()
    log.info("wrote %d sub-images of %d images to %s", total, len(jobs), out_dir)
    return total
