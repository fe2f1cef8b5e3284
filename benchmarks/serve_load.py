"""Load on `superres serve` over loopback: N requests from C concurrent clients, then the server's
resident memory against its warm baseline.

    PYTHONPATH=. python benchmarks/serve_load.py                       # tiny model, 60 requests, 8 clients
    PYTHONPATH=. python benchmarks/serve_load.py --model gan-x4 --requests 16 --size 128x96 --json load.json

The server is `superres serve` in a subprocess (its RSS is read from /proc/PID/status), the clients
are threads of this process using httpx. Without --model a tiny MSRResNet (4 features, 1 block,
random weights) is served, so the numbers measure the service (upload, queue, worker, encode), not
the model. tests/test_serve.py runs `run_load` against a live server with fewer requests.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def sample_png(width: int, height: int, seed: int = 0) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def run_load(url: str, data: bytes, *, requests: int = 60, concurrency: int = 8,
             timeout: float = 300.0) -> dict:
    """POST /v1/upscale `requests` times from `concurrency` threads (one httpx client each)."""
    import httpx
    from PIL import Image

    results: list[tuple[float, int, tuple[int, int] | None]] = []
    lock = threading.Lock()
    left = [requests]

    def client() -> None:
        with httpx.Client(base_url=url, timeout=timeout) as c:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                t0 = time.perf_counter()
                r = c.post("/v1/upscale", files={"file": ("load.png", data)})
                dt = time.perf_counter() - t0
                size = Image.open(io.BytesIO(r.content)).size if r.status_code == 200 else None
                with lock:
                    results.append((dt, r.status_code, size))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array([r[0] for r in results])
    return {"requests": requests, "concurrency": concurrency, "wall_s": round(wall, 3),
            "req_per_s": round(requests / wall, 2), "p50_s": round(float(np.percentile(lat, 50)), 4),
            "p95_s": round(float(np.percentile(lat, 95)), 4),
            "statuses": sorted({r[1] for r in results}), "sizes": sorted({r[2] for r in results}, key=str)}


def start_server(model_args: list[str], queue: int = 16) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "superres", "serve", "--port", str(port), "--queue", str(queue), *model_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import httpx
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not answer /healthz within 120 s")


def tiny_model(path: Path) -> Path:
    import torch
    from superres.archs import build_generator
    from superres.inference.weights import save_weights
    torch.manual_seed(0)
    save_weights(path, build_generator("msrresnet", num_feat=4, num_block=1, upscale=4))
    return path


def measure(model: str | None, requests: int, concurrency: int, size: tuple[int, int]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model = model or str(tiny_model(Path(tmp) / "tiny.safetensors"))
        proc, url = start_server(["--model", model, "--tile", "0"])
        try:
            data = sample_png(*size)
            run_load(url, data, requests=max(concurrency, requests // 4), concurrency=concurrency)  # warm-up
            baseline = rss_mb(proc.pid)
            res = run_load(url, data, requests=requests, concurrency=concurrency)
            res.update(model=Path(model).stem if os.sep in model else model, input=f"{size[0]}x{size[1]}",
                       rss_warm_mb=round(baseline, 1), rss_after_mb=round(rss_mb(proc.pid), 1))
            return res
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model to serve (default: a tiny random MSRResNet)")
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--size", default="64x48", help="input WxH (default 64x48)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    res = measure(args.model, args.requests, args.concurrency, (w, h))
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
