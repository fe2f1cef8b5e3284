"""Speed of SPAN (NTIRE 2024 efficient SR, as spandrel builds it) against our compact net, per engine.

    PYTHONPATH=. python benchmarks/span_vs_compact.py --size 256x512 --repeats 3

Random weights (speed does not depend on them), fp32, torch's default threads, the allocator tuned
as `superres upscale` tunes it; each network under torch and under the winograd engine, interleaved.
spandrel imports torchvision for two unrelated architectures; it is never installed here, so a stub
stands in for it (as in tests/test_ecosystem.py). SPAN's 3x3 convs in eval mode are functional
calls on fused weights, not nn.Conv2d modules, so the winograd engine reaches only its other convs.
"""
from __future__ import annotations

import argparse
import enum
import sys
import time
import types

import torch


def _stub_torchvision() -> None:
    tv, tr, fn = (types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                                 "torchvision.transforms.functional"))

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stub")

    fn.InterpolationMode, fn.rotate, fn.normalize = InterpolationMode, unavailable, unavailable
    tr.functional, tv.transforms = fn, tr
    for name, mod in (("torchvision", tv), ("torchvision.transforms", tr), ("torchvision.transforms.functional", fn)):
        sys.modules.setdefault(name, mod)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="256x512", help="input WxH")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    _stub_torchvision()
    from spandrel.architectures.SPAN.__arch.span import SPAN

    from superres.archs import build_generator
    from superres.inference.core import configure_host_allocator
    from superres.inference.engines import engine_generator, winograd_available

    configure_host_allocator()
    nets = {"compact (64 features, 16 convs)": build_generator("compact", upscale=4),
            "SPAN (48 features)": SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4),
            "SPAN (32 features)": SPAN(num_in_ch=3, num_out_ch=3, feature_channels=32, upscale=4)}
    runs = {}
    for name, net in nets.items():
        net = net.eval().float()
        runs[(name, "torch")] = net
        if winograd_available():
            runs[(name, "winograd")] = engine_generator(net, "winograd")
    x = torch.rand(1, 3, h, w)
    times: dict = {k: [] for k in runs}
    with torch.no_grad():
        for m in runs.values():
            m(x)   # warm-up
        for _ in range(a.repeats):
            for k, m in runs.items():
                t0 = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - t0)
    out_mp = h * w * 16 / 1e6
    print(f"{w}x{h} input, {torch.get_num_threads()} threads, fp32; output MP/s (best of {a.repeats})")
    print("| network | params | engine | MP/s |\n|---|---|---|---|")
    for (name, engine), ts in times.items():
        params = sum(p.numel() for p in nets[name].parameters())
        print(f"| {name} | {params / 1e6:.2f}M | {engine} | {out_mp / min(ts):.2f} |")


if __name__ == "__main__":
    main()
