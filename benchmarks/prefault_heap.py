"""Experiment: fault the heap in on the idle core while torch imports, before the first image.

    PYTHONPATH=. python benchmarks/prefault_heap.py photo.png --engine winograd --prefault-mb 0 1200

On a VM the first touch of a page is expensive (here about 2.5 us per 4 KB page, 1-3 s per GB,
against ~0.04 s to rewrite the same memory), and every `superres upscale` process pays it for its
first tile's working set, with both cores busy in the model. Importing torch takes ~1.5 s on one
core and leaves the other idle. This script measures, each case in a fresh subprocess (mallopt is
for the life of a process), the start-up (imports + model), the first image's time and the peak
RSS, with the glibc settings `configure_host_allocator` makes applied first, then `MB` megabytes
malloc'd, faulted in by a second thread (madvise MADV_POPULATE_WRITE in 32 MB steps, so the
importing thread's own mmaps are not held up for long) and freed back to the heap, which keeps
them (M_TRIM_THRESHOLD -1) for torch's buffers to reuse. Linux >= 5.14 with glibc only.
Nothing in the package does this; it measures whether it would pay.

Result on the 2-core AMD EPYC VM (AVX2), winograd, a 1280x800 photo, 3 rounds, 0 vs 1200 MB:
start-up 1.77-2.31 s vs 2.86-4.05 s, first image 8.67-9.68 s vs 7.65-8.26 s, total 10.44-11.99 s vs
10.92-11.70 s, peak RSS 1.1-1.3 GB vs 1.4 GB. The faults do not overlap with the import (they slow
it by as much as they save later), so it does not pay here.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CASE = r"""
import ctypes, json, resource, sys, threading, time
t0 = time.perf_counter()
libc = ctypes.CDLL("libc.so.6")
libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
libc.mallopt(-4, 0)     # M_MMAP_MAX 0: big blocks come from the heap
libc.mallopt(-1, -1)    # M_TRIM_THRESHOLD -1: freed memory stays in the heap
size = int(sys.argv[3]) << 20
worker = None
if size:
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(size)
    def populate():
        start, end, step = (block + 4095) & ~4095, (block + size) & ~4095, 32 << 20
        for a in range(start, end, step):
            if libc.madvise(a, min(step, end - a), 23) != 0:   # MADV_POPULATE_WRITE
                break
    worker = threading.Thread(target=populate)
    worker.start()
from superres.inference.upscaler import Upscaler
from superres.io.images import read_image
if worker is not None:
    worker.join()
    libc.free(block)
Upscaler.tune_host_allocator_before("cpu")
up = Upscaler.from_pretrained(None, engine=sys.argv[2])
img = read_image(sys.argv[1])
t1 = time.perf_counter()
up.upscale_image(img)
t2 = time.perf_counter()
r = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"startup_s": round(t1 - t0, 2), "first_image_s": round(t2 - t1, 2),
                  "total_s": round(t2 - t0, 2), "peak_rss_mb": r.ru_maxrss // 1024}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image")
    p.add_argument("--engine", default="winograd")
    p.add_argument("--prefault-mb", type=int, nargs="+", default=[0, 1200])
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    for r in range(a.rounds):
        for mb in a.prefault_mb:   # round-robin: a slow spell of the VM spreads over every case
            out = subprocess.run([sys.executable, "-c", _CASE, a.image, a.engine, str(mb)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            print(json.dumps({"round": r, "engine": a.engine, "prefault_mb": mb, **json.loads(out)}))


if __name__ == "__main__":
    main()
