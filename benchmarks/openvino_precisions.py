"""OpenVINO's bf16 and int8 (NNCF) against our own bf16 and int8 paths, on a CPU that has them.

    PYTHONPATH=. python benchmarks/openvino_precisions.py --json ov.json        # needs [openvino], nncf

Issue 28 asks what OpenVINO's low-precision modes are worth where the CPU runs them natively (AVX-512
BF16 / VNNI or AMX); on an AVX2-only CPU they are emulated and say nothing. One shipped model
(`--model`, default the default family's light end, photo-x4-light), one process, 2 threads unless
OMP_NUM_THREADS says otherwise. Methods:

  torch-fp32     the module in fp32 (NCHW): the reference of every difference and ratio
  torch-bf16     our `--precision bf16`: bf16 autocast + channels_last (inference.core.upscale_tensor),
                 what `--precision auto` runs on such a CPU
  ov-f32         our `--engine openvino`: the cached ONNX export, INFERENCE_PRECISION_HINT f32
  ov-bf16        the same graph with INFERENCE_PRECISION_HINT bf16 (OpenVINO's own default on these CPUs)
  ort-int8       our `--precision int8`: the shipped QDQ int8 ONNX file run by ONNX Runtime
  ov-int8-qdq    that same int8 file run by OpenVINO (it reads QDQ and runs the convs in int8)
  ov-int8-nncf   the fp32 graph quantized by NNCF's post-training `nncf.quantize` (default preset,
                 --calib patches cut as `superres quantize` cuts them: T91 + BSD200, never a test set)

Speed: each method on one seeded random LR input of --size (H W, default the engine probe's 256x512),
the median of --repeats calls in a row after a warm-up and a pause, two passes over the methods, the
faster pass counting; printed as output MP/s and as a ratio to torch-fp32 and to torch-bf16. Quality: Set5 and Set14 on the paper
protocol (MATLAB-bicubic LR, uint8 output, PSNR on Y with 4 pixels shaved), and the largest and mean
per-value difference from torch-fp32's uint8 output in 8-bit levels over those images.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from superres.data.calibration import calibration_patches
from superres.evaluation import metrics as M
from superres.evaluation.protocol import load_pairs
from superres.inference.core import (
    configure_host_allocator,
    tensor_to_uint8,
    upscale_tensor,
)
from superres.inference.engines import cpu_identity, engine_generator
from superres.inference.int8 import int8_path, load_int8
from superres.inference.models import resolve_model_path
from superres.inference.onnx import export_onnx
from superres.inference.weights import load_generator

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _openvino(path: str | Path | object, hint: str | None):
    """A graph (a path or an OpenVINO model) compiled as engines.EngineGenerator compiles ours."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    model = core.read_model(str(path)) if isinstance(path, (str, Path)) else path
    compiled = core.compile_model(model, "CPU", config)
    return lambda x: torch.from_numpy(np.asarray(compiled(x.numpy())[0], dtype=np.float32))


def _nncf_int8(fp32_onnx: Path, calib: torch.Tensor):
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_onnx))
    data = nncf.Dataset([calib[i:i + 1].numpy() for i in range(len(calib))])
    return _openvino(nncf.quantize(model, data, subset_size=len(calib)), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="photo-x4-light")
    p.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calib", type=int, default=64, help="calibration patches for NNCF (default 64)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    # as `superres upscale` runs: glibc keeps freed memory, so torch's large activations are not
    # page-faulted in again on every call (about 2x on torch fp32 at this size on a VM)
    configure_host_allocator()
    weights = resolve_model_path(args.model)
    model, info = load_generator(weights)
    model.eval()
    scale = int(info["scale"])
    tmp = Path(tempfile.mkdtemp(prefix="superres-ov-"))
    fp32_onnx = tmp / "fp32.onnx"
    export_onnx(model, fp32_onnx)
    bf16_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    calib = calibration_patches([SHARED / "train" / "T91", SHARED / "train" / "BSD200"], scale, count=args.calib)

    def torch_fp32(x):
        return upscale_tensor(model, x)

    def torch_bf16(x):
        return upscale_tensor(bf16_model, x, amp_dtype=torch.bfloat16, channels_last=True)

    # our own paths through the library's generators (what --engine / --precision run); only the
    # bf16 hint and NNCF, which superres does not ship, are compiled here
    ov_f32 = engine_generator(model, "openvino")
    methods = {"torch-fp32": torch_fp32, "torch-bf16": torch_bf16,
               "ov-f32": ov_f32, "ov-bf16": _openvino(fp32_onnx, "bf16")}
    if int8_path(weights).is_file():
        methods["ort-int8"] = load_int8(weights, model)
        methods["ov-int8-qdq"] = load_int8(weights, model, engine="openvino")
    methods["ov-int8-nncf"] = _nncf_int8(fp32_onnx, calib)

    x = torch.rand(1, 3, *args.size, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {n: [] for n in methods}
    with torch.no_grad():
        # Blocks, not interleaved calls: OpenVINO's TBB workers and torch's OpenMP threads each
        # spin for a while after their own call, and a method timed right after the other runtime
        # pays for those spinning threads (torch fp32 measured 2.7x slower that way). So each method
        # runs warm-up + repeats in a row after a pause, and the whole pass is done twice (the
        # faster pass of each method counts; the two passes show the noise).
        for _ in range(2):
            for name, f in methods.items():
                time.sleep(1.0)
                f(x)   # warm-up
                block = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    f(x)
                    block.append(time.perf_counter() - t0)
                times[name].append(statistics.median(block))
        out_mp = args.size[0] * args.size[1] * scale * scale / 1e6
        results = {n: {"seconds": min(t), "passes_seconds": t, "mp_per_s": out_mp / min(t)}
                   for n, t in times.items()}

        for track in ("Set5", "Set14"):
            pairs = load_pairs(SHARED / "benchmarks" / track, scale)
            reference = {}
            for name, f in methods.items():
                psnrs, diffs_max, diffs_sum, n_values = [], 0, 0.0, 0
                for pair in pairs:
                    lr = pair.lr if pair.lr.ndim == 3 else np.repeat(pair.lr[..., None], 3, axis=2)
                    t = torch.from_numpy(lr).permute(2, 0, 1)[None].float().div(255).contiguous()
                    sr = tensor_to_uint8(f(t))
                    if name == "torch-fp32":
                        reference[pair.name] = sr
                    d = np.abs(sr.astype(np.int16) - reference[pair.name].astype(np.int16))
                    diffs_max, diffs_sum, n_values = max(diffs_max, int(d.max())), diffs_sum + float(d.sum()), n_values + d.size
                    hr = pair.hr if pair.hr.ndim == 3 else np.repeat(pair.hr[..., None], 3, axis=2)
                    psnrs.append(M.psnr(sr, hr, scale))
                results[name][track] = {"psnr": float(np.mean(psnrs)), "max_diff_levels": diffs_max,
                                        "mean_diff_levels": diffs_sum / n_values}

    cpu, isa = cpu_identity(Path("/proc/cpuinfo").read_text())
    import openvino

    print(f"{cpu} ({', '.join(isa)}); torch {torch.__version__}, openvino {openvino.__version__}, "
          f"{torch.get_num_threads()} threads; {args.model}, LR {args.size[0]}x{args.size[1]}, "
          f"median of {args.repeats}, better of 2 passes")
    print()
    print("| method | output MP/s | x torch-fp32 | x torch-bf16 | Set5 PSNR | Set14 PSNR | max diff | mean diff |")
    print("|---|---|---|---|---|---|---|---|")
    base, bf = results["torch-fp32"]["seconds"], results["torch-bf16"]["seconds"]
    for name, r in results.items():
        print(f"| {name} | {r['mp_per_s']:.2f} | {base / r['seconds']:.2f} | {bf / r['seconds']:.2f} | "
              f"{r['Set5']['psnr']:.2f} | {r['Set14']['psnr']:.2f} | "
              f"{max(r['Set5']['max_diff_levels'], r['Set14']['max_diff_levels'])} | "
              f"{(r['Set5']['mean_diff_levels'] + r['Set14']['mean_diff_levels']) / 2:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "isa": isa, "threads": torch.get_num_threads(),
                                         "model": args.model, "size": list(args.size),
                                         "openvino": openvino.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
