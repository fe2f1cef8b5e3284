#!/usr/bin/env python3
"""What the host allocator setting does to a real process (glibc only), measured in fresh processes.

`Upscaler.tune_host_allocator` (switched on by upscale, video, cluster workers, serve and bench) makes
glibc keep freed memory for reuse. Two effects, printed, not asserted (they depend on the kernel and
the machine's load; tests/test_inference.py checks the settings themselves with a stand-in libc):
- page faults of a 64 MB buffer allocated and freed 8 times (median): about 16384 with glibc's
  defaults (SUPERRES_KEEP_FREED_MEMORY=0), near 0 once tuned;
- resident memory kept after freeing 512 MB, and after `release_host_memory()` (what serve calls
  whenever its queue is empty).

Usage: PYTHONPATH=. python benchmarks/allocator_effect.py
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FAULTS = """
import resource, sys, torch
from superres.archs import build_generator
from superres.inference import Upscaler, host_allocator_configured
Upscaler(build_generator("msrresnet", num_feat=8, num_block=1, upscale=2), device="cpu",
         precision="fp32").tune_host_allocator()

def faults_of_a_64mb_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(16 << 20)
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

counts = sorted(faults_of_a_64mb_buffer() for _ in range(8))
print(host_allocator_configured(), counts[len(counts) // 2])
"""

TRIM = """
import sys, torch
from superres.archs import build_generator
from superres.inference import Upscaler, release_host_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

Upscaler(build_generator("msrresnet", num_feat=8, num_block=1, upscale=2), device="cpu",
         precision="fp32").tune_host_allocator()
start = rss_mib()
big = [torch.ones(32 << 20) for _ in range(4)]   # 512 MB in blocks of 128 MB, as a big tile's maps
del big
kept = rss_mib()
print(start, kept, release_host_memory(), rss_mib())
"""


def run(code: str, keep: str) -> list[str]:
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "SUPERRES_KEEP_FREED_MEMORY": keep, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=300).stdout.split()


def main() -> int:
    for keep in ("0", "1"):
        configured, faults = run(FAULTS, keep)
        print(f"SUPERRES_KEEP_FREED_MEMORY={keep}: tuned {configured}, median faults of a 64 MB buffer {faults}")
    start, kept, released, after = run(TRIM, "1")
    print(f"RSS MiB: start {float(start):.0f}, after freeing 512 MB {float(kept):.0f}, "
          f"release_host_memory() -> {released}, then {float(after):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
