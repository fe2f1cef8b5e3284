"""What fp32 upscaling guarantees about its bytes (docs/upscaling.md#determinism): the same bytes for
the same model, tile settings and thread count, wherever it runs; within 1 level across thread counts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from superres.archs import build_generator
from superres.inference.engines import winograd_available
from superres.inference.upscaler import Upscaler

REPO = Path(__file__).resolve().parents[1]
BSD100 = REPO.parent / "shared" / "data" / "benchmarks" / "BSD100" / "HR"


def _images() -> list[np.ndarray]:
    """Small real photos (BSD100 downscaled by 8, the case that showed a 1-level difference), or the
    shipped sample when the data is not there."""
    paths = sorted(BSD100.glob("*.png"))[:3] if BSD100.is_dir() else [REPO / "examples" / "chelsea.png"]
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        out.append(np.asarray(im.resize((im.width // 8, im.height // 8), Image.BICUBIC)))
    return out


@pytest.fixture()
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("arch", ["msrresnet", "compact"])
def test_fp32_bytes_repeat_at_a_thread_count_and_stay_within_one_level_across_counts(arch, threads):
    torch.manual_seed(0)
    model = build_generator(arch, upscale=4)   # public BasicSR / Real-ESRGAN key names, random weights
    up = Upscaler(model, {"arch": arch, "scale": 4}, device="cpu", precision="fp32")
    for x in _images():
        threads(1)
        one = up.upscale_pixels(x)
        threads(2)
        two = up.upscale_pixels(x)
        threads(1)
        assert np.array_equal(up.upscale_pixels(x), one)   # same settings: the same bytes
        # another thread count splits the convolutions' sums differently: a rounding may flip
        assert np.abs(one.astype(int) - two.astype(int)).max() <= 1
        assert (one != two).mean() < 0.001


_WINOGRAD_RUN = """
import hashlib, sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from superres.archs import build_generator
from superres.inference.upscaler import Upscaler
torch.manual_seed(0)
up = Upscaler(build_generator("compact", upscale=4), {"arch": "compact", "scale": 4}, device="cpu",
              precision="fp32", engine="winograd", tile=int(sys.argv[2]))
for path in sys.argv[3:]:
    print(hashlib.sha256(up.upscale_pixels(np.load(path)).tobytes()).hexdigest())
"""


@pytest.mark.skipif(not winograd_available(), reason="this torch build or CPU has no NNPACK")
@pytest.mark.parametrize("tile", [0, 24])
def test_winograd_bytes_are_the_same_at_one_and_two_threads(tile, tmp_path):
    # NNPACK sizes its thread pool once per process, so each thread count gets a process of its own
    paths = []
    for i, x in enumerate(_images()):
        paths.append(str(tmp_path / f"{i}.npy"))
        np.save(paths[-1], x)
    runs = [subprocess.run([sys.executable, "-c", _WINOGRAD_RUN, str(n), str(tile), *paths], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split() for n in (1, 2)]
    assert len(runs[0]) == len(paths) and runs[0] == runs[1]
