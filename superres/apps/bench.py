"""`superres bench`: speed of the shipped code paths, against a plain loop and the hardware.

    superres bench --model psnr-x4 --model psnr-x2 --size 256x256 --size 500x480 --json bench.json

For each model and input size, in one process on one machine, the median and spread over repeats of
output megapixels per second through: the end-to-end path of `superres upscale` (PNG bytes ->
`images.decode_image` -> `Upscaler.upscale_image` -> `images.encode_image`), the inference core
alone (`Upscaler.upscale_pixels` on a preloaded array), the folder path (`upscale.upscale_files`
over a temp folder: the CLI's folder loop, which decodes and encodes while the model works) and a
plain reference loop written here as the common SRGAN / Real-ESRGAN scripts run a generator (fp32,
NCHW, eager, whole image, no_grad). The model's FLOPs per output pixel come from forward hooks on
its convolutions; the machine's peak is a 64->64 3x3 conv in the same precision, measured in the
same run, so "fraction of peak" and "ceiling" compare like with like. Numbers from a loaded machine
are noise: run it on an idle one.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .._lazy import lazy_module
from ..inference import runtime
from ..inference.models import MODELS, ModelNotFound, default_model_name, resolve_model_path
from .upscale import ENGINE_NAMES, default_engine, int_in

if TYPE_CHECKING:
    import numpy as np_t
    import torch as torch_t

    from .filejob import FileJobOptions

    from ..inference.upscaler import Upscaler

log = logging.getLogger(__name__)

__all__ = ["count_flops_per_pixel", "conv_peak_gflops", "int8_conv_peak_gflops", "derived_metrics",
           "parse_size", "summarize", "add_bench_arguments", "run_bench", "RESULT_KEYS", "MACHINE_KEYS"]

# `superres bench --help` and its usage errors must not import torch (see _lazy.py)
torch = lazy_module("torch")
np = lazy_module("numpy")

EXAMPLE = "superres bench --model psnr-x4 --size 256x256 --json bench.json"
DEFAULT_SIZES = ("256x256", "500x480")     # 500x480: Set14 baboon, the README's one-image example
DEFAULT_REPEATS = 5
# `superres bench` with no arguments answers "how fast is the default model here?" in about a
# minute: that model, one size, 3 repeats, no subprocess measurements; --all runs the full matrix
QUICK_LOOK_SIZE = "256x256"
QUICK_LOOK_REPEATS = 3
MEMORY_SIZE = (2000, 1500)                 # the issue's large-image case: 2000x1500 in
PEAK_INPUT = (1, 64, 256, 256)             # big enough that the conv is compute-bound, not overhead
# The peak is the fastest of these: with one thread beside a busy core the 256x256 conv (16 MB in,
# 16 MB out) waits on memory and measured 37-48 GFLOP/s against 61-65 at 64-128, under the rate
# psnr-x4's own convs reached in the same run (118% of "peak").
PEAK_INPUTS = ((1, 64, 64, 64), (1, 64, 128, 128), PEAK_INPUT)
QUICK_PEAK_INPUT = (1, 64, 32, 32)
FLOP_COUNT_SIDE = 32                       # LR side of the probe input that the FLOP hooks see

# the issue's schema; tests check every key
RESULT_KEYS = ("model", "input_size", "mp_per_s", "model_only_mp_per_s", "folder_mp_per_s",
               "reference_mp_per_s", "speedup_vs_reference", "flops_per_pixel", "gflops", "peak_gflops",
               "fraction_of_peak", "ceiling_mp_per_s", "peak_rss_mb")
MACHINE_KEYS = ("cores", "cpu_model", "isa", "torch_version", "threads", "device")
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx")

COLUMNS_HELP = """\
columns (all MP/s are output megapixels per second; median over --repeats, min-max in the JSON):
  engine       who ran the model's arithmetic (--engine: torch, winograd, onnxruntime, openvino)
  e2e MP/s     end to end as `superres upscale` runs one image, without process start: PNG bytes ->
               decode -> tiles -> model -> blend -> PNG encode (superres.images, Upscaler)
  model MP/s   the inference core alone: Upscaler.upscale_pixels on an array already in memory
               (tiles, model, blend; no codec)
  folder MP/s  the batch path: upscale.upscale_files over a temp folder of PNGs of this size, the
               loop `superres upscale FOLDER` runs (read, checks, write per file; the next file
               is decoded and the previous one encoded while the model works)
  ref MP/s     a plain loop written in the benchmark, as common SRGAN/Real-ESRGAN scripts run a
               model: fp32, NCHW, eager, whole image at once, torch.no_grad, no codec
  x ref        model MP/s / ref MP/s (both without codec)
  kFLOP/px     FLOPs per output pixel, counted by forward hooks on the model's Conv2d,
               ConvTranspose2d and Linear layers (2 * multiply-adds; biases and activations ignored)
  GFLOP/s      achieved: kFLOP/px * model MP/s
  peak         GFLOP/s of one 64->64 3x3 conv in the same precision and memory format as the model
               runs, measured in this run before and after the models: the fastest of 64x64,
               128x128 and 256x256 inputs (median of repeats each; a big one can wait on memory,
               and a busy neighbour process slows either measurement); for
               int8, eight such convs in a row through ONNX Runtime (a lone int8 conv also pays
               its input's quantize and output's dequantize, which a network pays once a chain)
  %peak        GFLOP/s / peak
  ceiling      peak / kFLOP/px: the MP/s no implementation of this network can pass on this machine
               at that conv speed; e2e MP/s above it means a measurement is wrong
  RSS MB       peak resident memory of a `superres upscale` process on a 2000x1500 PNG with the
               default tile (one value per model; --no-memory skips it)
  spread       (max - min) / median of the noisiest timed column of the row (IQR and min/max of
               each column are in the JSON): more than a few percent means a busy machine
  PSNR / SSIM  with --quality HR_DIR: the model as benched (precision, tiles) on that folder, the
               `superres eval` protocol (Y channel, scale pixels shaved), LR by --quality-degrade
also measured once per run: process start-up (`superres --help`, `python -c "import superres"`,
`import superres.inference`), and, when installed, ONNX Runtime (our ONNX export) and torch.compile
as extra backends, with their one-time cost (export / compile) shown separately. A part that fails
records its error and the run goes on.
"""


# ---------------------------------------------------------------------------------------------
# arithmetic (pure; the tests check it)

def parse_size(text: str) -> tuple[int, int]:
    """'256x256' or '256' (square) -> (width, height); argparse.ArgumentTypeError otherwise."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 256x256") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT with both sides 1 or more, "
                                         "e.g. 256x256")
    return nums[0], nums[1]


def summarize(values: list[float]) -> dict[str, float]:
    """Median and spread of repeated measurements: min, max, quartiles, count."""
    if not values:
        raise ValueError("no measurements to summarize")
    q1, q3 = (statistics.quantiles(values, n=4, method="inclusive")[::2] if len(values) > 1
              else (values[0], values[0]))
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "q1": q1, "q3": q3, "n": len(values)}


def derived_metrics(flops_per_pixel: float, model_only_mp_per_s: float | None,
                    reference_mp_per_s: float | None, peak_gflops: float | None) -> dict[str, float | None]:
    """The columns that follow from measured ones; None where an input is missing (a failed part).

    Achieved GFLOP/s uses the model-only rate: the codec does no convolution, so counting its time
    would blame the convs for the PNG encoder.
    """
    gflops = (flops_per_pixel * model_only_mp_per_s * 1e6 / 1e9
              if model_only_mp_per_s is not None else None)
    speedup = (model_only_mp_per_s / reference_mp_per_s
               if model_only_mp_per_s is not None and reference_mp_per_s else None)
    fraction = gflops / peak_gflops if gflops is not None and peak_gflops else None
    ceiling = peak_gflops * 1e9 / flops_per_pixel / 1e6 if peak_gflops and flops_per_pixel else None
    return {"gflops": gflops, "speedup_vs_reference": speedup, "fraction_of_peak": fraction,
            "ceiling_mp_per_s": ceiling}


def count_flops_per_pixel(model: "torch_t.nn.Module", in_channels: int, *, side: int = FLOP_COUNT_SIDE,
                          multiple: int = 1) -> float:
    """FLOPs per output pixel of one forward, from hooks on Conv2d, ConvTranspose2d and Linear.

    A conv costs 2 * (Cin / groups) * kh * kw FLOPs per output element (one multiply-add per weight
    it reads); a transposed conv the same per *input* element times Cout / groups; a linear layer
    2 * in_features per output element. Biases, activations, pixel shuffle and interpolation are
    left out: they are memory traffic, not arithmetic the conv peak could be compared with.
    """
    nn = torch.nn
    total = [0]

    def conv(mod: Any, inputs: tuple, out: Any) -> None:
        kh, kw = mod.kernel_size
        total[0] += 2 * out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def deconv(mod: Any, inputs: tuple, out: Any) -> None:
        kh, kw = mod.kernel_size
        total[0] += 2 * inputs[0].numel() * (mod.out_channels // mod.groups) * kh * kw

    def linear(mod: Any, inputs: tuple, out: Any) -> None:
        total[0] += 2 * out.numel() * mod.in_features

    hooks = []
    for m in model.modules():
        # ConvTranspose2d is checked first: it is not a Conv2d subclass, but be explicit anyway
        if isinstance(m, nn.ConvTranspose2d):
            hooks.append(m.register_forward_hook(deconv))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
    side = -(-side // multiple) * multiple
    param = next(model.parameters(), None)
    x = torch.rand(1, in_channels, side, side, device=param.device if param is not None else "cpu",
                   dtype=param.dtype if param is not None else torch.float32)
    try:
        with torch.inference_mode():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0] / (y.shape[0] * y.shape[-2] * y.shape[-1])


# ---------------------------------------------------------------------------------------------
# timing

def _sync(device: "torch_t.device") -> None:
    """Wait for queued device work, so that a timer measures the work and not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time(fn: Callable[[], Any], device: "torch_t.device") -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def conv_peak_gflops(device: "torch_t.device", amp_dtype: "torch_t.dtype | None", channels_last: bool, *,
                     shape: tuple[int, int, int, int] = PEAK_INPUT, repeats: int = DEFAULT_REPEATS,
                     warmup: int = 2) -> dict[str, Any]:
    """GFLOP/s of one 64->64 3x3 conv (padding 1) in the given precision and memory format.

    The densest layer our generators are made of, so its speed is the most a generator's convs
    can reach here; median of `repeats` after `warmup` calls (oneDNN picks kernels on the first).
    """
    n, c, h, w = shape
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c, c, 3, 1, 1).to(device).eval()
    x = torch.rand(shape, device=device)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    flops = 2 * n * c * h * w * c * 9

    def run() -> None:
        with torch.inference_mode():
            if amp_dtype is not None:
                with torch.autocast(device.type, dtype=amp_dtype):
                    conv(x)
            else:
                conv(x)

    for _ in range(warmup):
        run()
    stats = summarize([flops / _time(run, device) / 1e9 for _ in range(max(1, repeats))])
    return {"gflops": stats["median"], "spread": stats, "input": list(shape),
            "precision": runtime.precision_name(amp_dtype), "channels_last": channels_last}


INT8_PEAK_CHAIN = 8   # convs in a row: a model's int8 convs hand int8 to each other


def int8_conv_peak_gflops(shape: tuple[int, int, int, int] = PEAK_INPUT, *, repeats: int = DEFAULT_REPEATS,
                          warmup: int = 2, chain: int = INT8_PEAK_CHAIN) -> dict[str, Any]:
    """GFLOP/s of the same 64->64 3x3 conv as conv_peak_gflops, quantized the way `--precision int8`
    quantizes a generator (superres.int8.quantize: static QDQ, per-channel int8 weights, uint8
    activations, MinMax ranges) and run as it runs one (int8.Int8Generator, ONNX Runtime's CPU
    provider, torch's thread count). Its FLOPs are counted as for fp32: 2 per multiply-add.

    `chain` such convs in a row, not one: one int8 conv alone also pays for quantizing its float
    input and dequantizing its output, which inside a network happens once per chain of convs, so
    a lone conv's rate is below what a model's convs reach (psnr-x4 measured 117% of it)."""
    from ..inference.int8 import Int8Generator, quantize

    n, c, h, w = shape
    torch.manual_seed(0)
    convs = torch.nn.Sequential(*[torch.nn.Conv2d(c, c, 3, 1, 1) for _ in range(chain)]).eval()
    convs.hparams = {"num_in_ch": c}   # what export_onnx reads to make its trace input
    calibration = torch.rand(8, c, 32, 32)
    with tempfile.TemporaryDirectory(prefix="superres-bench-int8-") as tmp:
        path = Path(tmp) / "convs.int8.onnx"
        quantize(convs, calibration, path)
        session = Int8Generator(path, hparams=convs.hparams)   # reads the file now; the folder may go
    x = torch.rand(shape)
    flops = 2 * n * c * h * w * c * 9 * chain

    def run() -> None:
        session(x)

    for _ in range(warmup):
        run()
    stats = summarize([flops / _time(run, torch.device("cpu")) / 1e9 for _ in range(max(1, repeats))])
    return {"gflops": stats["median"], "spread": stats, "input": list(shape), "precision": "int8",
            "channels_last": False, "runtime": "onnxruntime", "chain": chain}


# ---------------------------------------------------------------------------------------------
# inputs

def synthetic_image(width: int, height: int, seed: int = 0) -> "np_t.ndarray":
    """(H, W, 3) uint8 that compresses like a photo: smooth gradients, edges and mild noise.

    Pure noise would make PNG decode/encode far slower than for real pictures, a flat image far
    faster; the codec columns are only meaningful on something in between.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = []
    for k in range(3):
        fx, fy = rng.uniform(2, 12, 2) * np.pi / max(width, height)
        plane = 0.5 + 0.3 * np.sin(xx * fx + k) * np.cos(yy * fy - k)
        plane += 0.15 * ((xx // 16 + yy // 16) % 2)          # hard edges, as in real scenes
        plane += rng.normal(0.0, 0.03, plane.shape)
        planes.append(plane)
    return (np.clip(np.stack(planes, axis=2), 0, 1) * 255).round().astype(np.uint8)


def image_of_size(source: str | None, width: int, height: int) -> "np_t.ndarray":
    """The benchmark input: `source` (a picture, e.g. Set14 baboon) resized to the size, or synthetic."""
    if source is None:
        return synthetic_image(width, height)
    from PIL import Image

    from ..io.images import image_to_pil, read_image
    im = image_to_pil(read_image(source)).convert("RGB")
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8).copy()


# ---------------------------------------------------------------------------------------------
# the paths being measured

def _pad_to(x: "torch_t.Tensor", multiple: int) -> "torch_t.Tensor":
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


def reference_model(up: "Upscaler") -> "torch_t.nn.Module":
    """A separate fp32, NCHW copy of the Upscaler's generator, as a plain script would hold it. For an
    int8 Upscaler (whose model is an ONNX Runtime session) that is the fp32 generator it was made
    from, which bench_model keeps as `up.fp32_model`."""
    source = getattr(up, "fp32_model", None) or getattr(up, "_torch_model", None) or up.model
    model = copy.deepcopy(source).float().to(memory_format=torch.contiguous_format).eval()
    return model


def reference_upscale(model: "torch_t.nn.Module", pixels: "np_t.ndarray", device: "torch_t.device",
                      multiple: int) -> "np_t.ndarray":
    """The common script: uint8 HWC -> float NCHW on the device -> model(x) under no_grad -> uint8.

    No tiles, no autocast, no channels_last; sides padded to the model's input multiple (as
    Real-ESRGAN's script pads for pixel-unshuffle nets) and the output cropped back.
    """
    h, w = pixels.shape[:2]
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255.0).unsqueeze(0).to(device)
    with torch.no_grad():
        y = model(_pad_to(x, multiple))
    s = y.shape[-2] // _pad_to(x, multiple).shape[-2]
    y = y[..., :h * s, :w * s]
    return y.clamp(0, 1).mul(255.0).round().byte()[0].permute(1, 2, 0).cpu().numpy()


def _upscale_args(src_dir: Path, out_dir: Path) -> "FileJobOptions":
    """The options `superres upscale SRC -o OUT --overwrite --no-progress` would give upscale_files,
    parsed by the real parser so that every default is the command's own."""
    from .upscale import add_upscale_arguments

    p = argparse.ArgumentParser(add_help=False)
    add_upscale_arguments(p)
    from .filejob import FileJobOptions

    return FileJobOptions.from_args(p.parse_args([str(src_dir), "-o", str(out_dir), "--overwrite",
                                                  "--no-progress"]))


@dataclass
class Backend:
    """An alternative runtime for the model-only path: forward per tile, or the error that stopped it."""
    name: str
    forward: Callable[["torch_t.Tensor"], "torch_t.Tensor"] | None = None
    setup_s: float | None = None           # one-time cost: export, session, compile call
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def _onnx_backend(up: "Upscaler", tmp: Path) -> Backend:
    """Our ONNX export (superres.export.export_onnx, fp32) run by ONNX Runtime's CPU provider."""
    b = Backend("onnxruntime")
    try:
        import onnxruntime as ort

        from ..inference.onnx import export_onnx
    except ImportError as e:
        b.error = f"not installed ({e}); pip install -c constraints.txt -e '.[onnx]'"
        return b
    if up.device.type != "cpu":
        b.error = f"measured on the CPU provider only; the model runs on {up.device}"
        return b
    try:
        t0 = time.perf_counter()
        path = tmp / f"{up.name}.onnx"
        export_onnx(reference_model(up), path)
        export_s = time.perf_counter() - t0
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        b.setup_s = time.perf_counter() - t0
        b.notes = {"export_s": export_s, "onnxruntime": ort.__version__, "precision": "fp32"}
    except Exception as e:   # an exporter or runtime failure is a result to report, not a crash
        b.error = f"{type(e).__name__}: {e}"
        return b

    def forward(x: "torch_t.Tensor") -> "torch_t.Tensor":
        return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])

    b.forward = forward
    return b


def _compile_backend(up: "Upscaler", tmp: Path) -> Backend:
    """torch.compile of the model, run exactly as the core runs it (same precision and layout)."""
    b = Backend("torch.compile")
    from ..inference.core import upscale_tensor
    if up.precision == "int8":
        b.error = "not for precision int8: the int8 model is an ONNX Runtime session, not torch code"
        return b
    try:
        t0 = time.perf_counter()
        compiled = torch.compile(copy.deepcopy(up.model))
        b.setup_s = time.perf_counter() - t0   # the compile itself happens on the first call per shape
    except Exception as e:
        b.error = f"{type(e).__name__}: {e}"
        return b

    def forward(x: "torch_t.Tensor") -> "torch_t.Tensor":
        return upscale_tensor(compiled, x.to(up.device), amp_dtype=up.amp_dtype,
                              channels_last=up.channels_last, multiple=up.multiple)

    b.forward = forward
    b.notes = {"precision": runtime.precision_name(up.amp_dtype),
               "setup_note": "first_call_s per size includes the compile for that size's tile shapes"}
    return b


# name -> factory(upscaler, temp folder); a factory reports what stops it in Backend.error
BACKENDS: dict[str, Callable[["Upscaler", Path], Backend]] = {"onnxruntime": _onnx_backend, "torch.compile": _compile_backend}


def measure_quality(up: "Upscaler", folder: str, degrade: str = "bicubic", seed: int = 0) -> dict[str, Any]:
    """PSNR / SSIM (Y, `scale` pixels shaved: the `superres eval` protocol) of the Upscaler exactly as
    benched (its precision, tiles and blend) on an HR folder, LR made by `degrade` (seeded as
    `superres eval --degrade NAME --seed S`): the quality beside the speed of the same row."""
    from ..evaluation.protocol import dataset_name, evaluate_pairs, load_pairs

    pairs = load_pairs(folder, up.scale, degrade=degrade, seed=seed)
    res = evaluate_pairs(up.upscale_pixels, pairs, up.scale, ("psnr", "ssim"))
    name = dataset_name(folder) + ("" if degrade == "bicubic" else f"-{degrade}")
    return {"dataset": name, "degrade": degrade, "seed": seed if degrade != "bicubic" else None,
            "images": len(pairs), "psnr": res["psnr"], "ssim": res["ssim"]}


# ---------------------------------------------------------------------------------------------
# subprocess measurements

def _child_env(threads: int | None = None) -> dict[str, str]:
    """The environment for child interpreters: this source tree importable, as in this process, and
    --threads passed on the only way a fresh `superres upscale` takes it (torch reads OMP_NUM_THREADS)."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def measure_startup(repeats: int) -> dict[str, Any]:
    """Seconds for fresh interpreters to do what every CLI call pays before any work."""
    cases = {"superres_help": [sys.executable, "-m", "superres", "--help"],
             "import_superres": [sys.executable, "-c", "import superres"],
             "import_inference_core": [sys.executable, "-c", "import superres.inference"]}
    out: dict[str, Any] = {}
    env = _child_env()
    for name, cmd in cases.items():
        times = []
        try:
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=300)
                times.append(time.perf_counter() - t0)
            out[name] = {"seconds": statistics.median(times), "spread": summarize(times)}
        except (subprocess.SubprocessError, OSError) as e:
            out[name] = {"seconds": None, "error": f"{type(e).__name__}: {e}"}
    return out


def measure_peak_rss(model: str, size: tuple[int, int], *, device: str, precision: str, tile: int | None,
                     workdir: Path, threads: int | None = None,
                     int8_calibration: list[str] | None = None) -> dict[str, Any]:
    """Peak RSS (MB) of a real `superres upscale` process on one PNG of `size` (default tile unless
    --tile), read from the child's own rusage (os.wait4), so nothing of this process counts."""
    from ..io.images import ImageData, write_image

    if not hasattr(os, "wait4"):
        return {"peak_rss_mb": None, "error": "os.wait4 is not available on this platform"}
    src, dst = workdir / "memory_in.png", workdir / "memory_out.png"
    write_image(src, ImageData(synthetic_image(*size)))
    cmd = [sys.executable, "-m", "superres", "upscale", str(src), "-o", str(dst), "--model", model,
           "--device", device, "--precision", precision, "--overwrite", "--no-progress"]
    if tile is not None:
        cmd += ["--tile", str(tile)]
    for folder in int8_calibration or []:
        cmd += ["--int8-calibration", str(folder)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        # not subprocess.run: it reaps the child itself and its rusage would be lost
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=_child_env(threads))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"peak_rss_mb": None, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    # ru_maxrss is KiB on Linux, bytes on macOS
    mb = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return {"peak_rss_mb": mb, "input_size": list(size), "seconds": seconds, "command": " ".join(cmd[1:])}


# ---------------------------------------------------------------------------------------------
# the machine

def machine_info(device: "torch_t.device", precision: str) -> dict[str, Any]:
    # not Linux: no /proc/cpuinfo, so the ISA flags stay unknown (False) rather than guessed
    cpu_model, flags = runtime.parse_cpuinfo(runtime.cpuinfo_text())
    cpu_model = cpu_model or platform.processor() or platform.machine()
    isa = {f: f in flags for f in _ISA_FLAGS if f != "amx"}
    isa["amx"] = any(f.startswith("amx") for f in flags)
    info: dict[str, Any] = {
        "cores": os.cpu_count(), "cpu_model": cpu_model, "isa": isa,
        "torch_version": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
        "precision": precision, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(), "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------------------------
# one model

@dataclass(frozen=True)
class BenchOptions:
    """How `bench_model` measures a model (the options of `superres bench`)."""

    device: str = "auto"
    precision: str = "auto"                # as `superres upscale`
    tile: int | None = None
    int8_calibration: list[str] | None = None
    threads: int | None = None             # torch intra-op threads, for the memory subprocess
    repeats: int = DEFAULT_REPEATS
    folder_images: int = 4                 # images in the folder column's temp folder
    image: str | None = None               # resize this picture to each size (else synthetic)
    memory: bool = False                   # peak RSS of `superres upscale` on memory_size
    memory_size: tuple[int, int] = MEMORY_SIZE
    quality: str | None = None             # HR folder to score the model on, as benched
    quality_degrade: str = "bicubic"
    quality_seed: int = 0
    backends: tuple[str, ...] = ()         # optional backends to time beside ours (BACKENDS)
    engine: str = "auto"                   # as `superres upscale --engine`

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BenchOptions":
        return cls(device=args.device, precision=args.precision, tile=args.tile,
                   int8_calibration=args.int8_calibration, threads=args.threads, repeats=args.repeats,
                   folder_images=args.folder_images, image=args.image, memory=bool(args.memory),
                   memory_size=tuple(args.memory_size), quality=args.quality,
                   quality_degrade=args.quality_degrade, quality_seed=args.quality_seed,
                   backends=tuple(args.backend_list), engine=args.engine)


def _measure(fn: Callable[[], Any], device: "torch_t.device", out_pixels: int) -> float:
    return out_pixels / 1e6 / _time(fn, device)


def bench_model(name: str, sizes: list[tuple[int, int]], opts: BenchOptions, peak: dict[str, Any] | None,
                workdir: Path) -> list[dict[str, Any]]:
    """One result row per size for model `name` (a shipped name or a weights path)."""
    from ..inference.tiling import tiled_upscale
    from ..inference.upscaler import Upscaler
    from ..io.images import ImageData, decode_image, encode_image
    from .filejob import upscale_files

    Upscaler.tune_host_allocator_before(opts.device, opts.tile)
    up = Upscaler.from_pretrained(name, device=opts.device, precision=opts.precision, tile=opts.tile,
                                  int8_calibration=opts.int8_calibration, engine=opts.engine)
    up.tune_host_allocator()   # as `superres upscale` runs it
    if up.precision == "int8":
        # the int8 model is an ONNX Runtime session: the reference loop, the FLOP count and the fp32
        # ONNX backend need the fp32 generator it was made from
        up.fp32_model = Upscaler.from_pretrained(name, device="cpu", precision="fp32", tile=0).model
    ref = reference_model(up)
    flops = count_flops_per_pixel(ref, up.in_channels, multiple=up.multiple)
    peak_gflops = peak["gflops"] if peak else None
    log.info("%s: %s x%d on %s, %s, %.1f kFLOP per output pixel", up.name, up.info.get("arch"), up.scale,
             up.device, up.precision, flops / 1e3)

    memory: dict[str, Any] = {"peak_rss_mb": None, "skipped": True}
    if opts.memory:
        log.info("%s: peak memory of `superres upscale` on %dx%d", up.name, *opts.memory_size)
        try:
            memory = measure_peak_rss(name, opts.memory_size, device=opts.device, precision=opts.precision,
                                      tile=opts.tile, workdir=workdir, threads=opts.threads,
                                      int8_calibration=opts.int8_calibration)
        except (OSError, subprocess.SubprocessError, ValueError) as e:   # recorded; the speed rows still count
            memory = {"peak_rss_mb": None, "error": f"{type(e).__name__}: {e}"}

    quality: dict[str, Any] | None = None
    if opts.quality:
        log.info("%s: quality on %s (%s LR)", up.name, opts.quality, opts.quality_degrade)
        quality = measure_quality(up, opts.quality, opts.quality_degrade, opts.quality_seed)

    backends = []
    for b in opts.backends:
        try:
            backends.append(BACKENDS[b](up, workdir))
        except Exception as e:   # a backend is optional: its failure is a result, not the end of the run
            backends.append(Backend(b, error=f"{type(e).__name__}: {e}"))

    rows = []
    for width, height in sizes:
        pixels = image_of_size(opts.image, width, height)
        out_px = width * up.scale * height * up.scale
        png = encode_image(ImageData(pixels), "png")
        folder = workdir / f"{up.name}_{width}x{height}"
        (folder / "in").mkdir(parents=True, exist_ok=True)
        files = []
        for i in range(opts.folder_images):
            # different content per file, so no cache or branch predictor sees the same image twice
            f = folder / "in" / f"img{i:03d}.png"
            f.write_bytes(encode_image(ImageData(np.roll(pixels, 7 * i, axis=1)), "png"))
            files.append(f)
        upscale_args = _upscale_args(folder / "in", folder / "out")
        errors: dict[str, str] = {}

        def end_to_end() -> None:
            img = decode_image(png)
            encode_image(up.upscale_image(img), "png")

        def model_only() -> None:
            up.upscale_pixels(pixels)

        def folder_run() -> None:
            def check(entry: dict[str, Any]) -> None:
                if entry["status"] != "ok":
                    raise RuntimeError(entry.get("error", entry["status"]))
            # the CLI's folder loop itself: decoding and encoding overlap the model's work
            upscale_files(up, [(f, folder / "out" / f.name) for f in files], upscale_args, None,
                          frozenset(), check)

        def reference() -> None:
            reference_upscale(ref, pixels, up.device, up.multiple)

        parts: dict[str, tuple[Callable[[], None], int]] = {
            "mp_per_s": (end_to_end, out_px), "model_only_mp_per_s": (model_only, out_px),
            "folder_mp_per_s": (folder_run, out_px * len(files)), "reference_mp_per_s": (reference, out_px)}
        first_call: dict[str, float] = {}
        for key, (fn, _) in parts.items():
            try:
                first_call[key] = _time(fn, up.device)   # warm-up: kernel choice, allocator, page faults
            except Exception as e:   # e.g. the whole-image reference out of memory: report, go on
                errors[key] = f"{type(e).__name__}: {e}"
                log.warning("%s %dx%d %s failed: %s", up.name, width, height, key, errors[key])
        samples: dict[str, list[float]] = {k: [] for k in parts if k not in errors}
        # round-robin over the paths, not one path's repeats in a row: a slow spell on a shared
        # machine then spreads over all columns instead of biasing the ratio between two of them
        for _ in range(opts.repeats):
            for key in list(samples):
                fn, px = parts[key]
                try:
                    samples[key].append(_measure(fn, up.device, px))
                except Exception as e:
                    errors[key] = f"{type(e).__name__}: {e}"
                    del samples[key]
        spreads = {k: summarize(v) for k, v in samples.items() if v}
        med = {k: (spreads[k]["median"] if k in spreads else None) for k in parts}

        backend_rows: dict[str, Any] = {}
        for b in backends:
            entry: dict[str, Any] = {"setup_s": b.setup_s, "error": b.error, **b.notes}
            if b.forward is not None and b.error is None:
                def run_backend(fwd: Callable = b.forward) -> None:
                    tiled_upscale(pixels, fwd, scale=up.scale, tile=up.tile_size(), overlap=up.tile_overlap,
                                  multiple=up.multiple)
                try:
                    entry["first_call_s"] = _time(run_backend, up.device)
                    vals = [_measure(run_backend, up.device, out_px) for _ in range(opts.repeats)]
                    entry["spread"] = summarize(vals)
                    entry["model_only_mp_per_s"] = entry["spread"]["median"]
                    if med["model_only_mp_per_s"]:
                        entry["vs_ours"] = entry["model_only_mp_per_s"] / med["model_only_mp_per_s"]
                except Exception as e:
                    entry["error"] = f"{type(e).__name__}: {e}"
            backend_rows[b.name] = entry

        row: dict[str, Any] = {
            "model": up.name, "input_size": [width, height], **med,
            "flops_per_pixel": flops, "peak_gflops": peak_gflops,
            **derived_metrics(flops, med["model_only_mp_per_s"], med["reference_mp_per_s"], peak_gflops),
            "peak_rss_mb": memory.get("peak_rss_mb"),
            # extra keys: how it was measured, and the spread behind every median
            "arch": up.info.get("arch"), "scale": up.scale, "output_size": [width * up.scale, height * up.scale],
            "precision": up.precision, "engine": up.engine, "channels_last": up.channels_last,
            "tile": up.tile_size(), "tiles": up.count_tiles(height, width), "folder_images": len(files),
            "repeats": opts.repeats, "spread": spreads, "first_call_s": first_call,
            "memory": memory, "backends": backend_rows, "errors": errors, "quality": quality,
        }
        rows.append(row)
        log.info("%s %dx%d: %s", up.name, width, height,
                 ", ".join(f"{k} {v:.3g}" for k, v in med.items() if v is not None))
    return rows


# ---------------------------------------------------------------------------------------------
# output

def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _worst_spread(spreads: dict[str, dict[str, float]]) -> str:
    """(max - min) / median of the noisiest of a row's timed paths, as a percentage: one glance tells
    whether the row's ratios can be trusted (a few % on an idle machine; tens of % on a busy one)."""
    # one run has no spread to show, and 0% would read as "perfectly steady"
    rel = [(s["max"] - s["min"]) / s["median"] for s in spreads.values() if s["median"] and s["n"] > 1]
    return f"{100 * max(rel):.0f}%" if rel else "-"


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table of the results (pastes into the README as it is), machine line first."""
    m = report["machine"]
    isa = ", ".join(k for k, v in m["isa"].items() if v) or "none of " + "/".join(_ISA_FLAGS)
    lines = [f"{m['cpu_model']}, {m['cores']} cores ({isa}); torch {m['torch_version']}, "
             f"{m['threads']} threads, {m['device']}, {m['precision']}", ""]
    header = ["model", "engine", "input", "e2e MP/s", "model MP/s", "folder MP/s", "ref MP/s", "x ref", "kFLOP/px",
              "GFLOP/s", "peak", "%peak", "ceiling", "RSS MB", "spread"]
    qualities = [r["quality"] for r in report["results"] if r.get("quality")]
    if qualities:
        header.append(f"PSNR / SSIM {qualities[0]['dataset']}")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in report["results"]:
        frac = r["fraction_of_peak"]
        cells = [r["model"], r.get("engine", "torch"), "x".join(map(str, r["input_size"])), _fmt(r["mp_per_s"]),
                 _fmt(r["model_only_mp_per_s"]), _fmt(r["folder_mp_per_s"]), _fmt(r["reference_mp_per_s"]),
                 _fmt(r["speedup_vs_reference"], ".2f"), _fmt(r["flops_per_pixel"] / 1e3, ".4g"),
                 _fmt(r["gflops"], ".1f"), _fmt(r["peak_gflops"], ".1f"),
                 "-" if frac is None else f"{100 * frac:.0f}%", _fmt(r["ceiling_mp_per_s"]),
                 _fmt(r["peak_rss_mb"], ".0f"), _worst_spread(r["spread"])]
        if qualities:
            q = r.get("quality")
            cells.append(f"{q['psnr']:.2f} / {q['ssim']:.4f}" if q else "-")
        lines.append("| " + " | ".join(cells) + " |")
    extra = []
    for r in report["results"]:
        for part, err in r["errors"].items():
            extra.append(f"{r['model']} {'x'.join(map(str, r['input_size']))} {part}: failed: {err}")
        for name, b in r["backends"].items():
            size = "x".join(map(str, r["input_size"]))
            if b.get("error"):
                extra.append(f"{r['model']} {size} {name}: {b['error']}")
            else:
                extra.append(f"{r['model']} {size} {name}: {_fmt(b.get('model_only_mp_per_s'))} MP/s "
                             f"({_fmt(b.get('vs_ours'), '.2f')}x ours), one-time {_fmt(b.get('setup_s'), '.2f')} s "
                             f"+ first call {_fmt(b.get('first_call_s'), '.2f')} s")
    startup = report.get("startup")
    if startup:
        extra.append("start-up: " + ", ".join(f"{k} {_fmt(v.get('seconds'), '.2f')} s" for k, v in startup.items()))
    if extra:
        lines += [""] + extra
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the command

def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = COLUMNS_HELP
    p.add_argument("--model", action="append", default=None, metavar="NAME|PATH",
                   help=f"a shipped model ({', '.join(MODELS)}) or a weights file; repeat for several "
                        "(default: the default model; every shipped model with --all)")
    p.add_argument("--size", action="append", type=parse_size, default=None, metavar="WxH",
                   help=f"input size in pixels; repeat for several (default: {QUICK_LOOK_SIZE}; "
                        f"{' '.join(DEFAULT_SIZES)} with --all)")
    p.add_argument("--image", default=None, metavar="FILE",
                   help="resize this picture to each --size instead of a synthetic image (e.g. Set14 baboon)")
    p.add_argument("--device", default="auto", choices=runtime.DEVICES)
    p.add_argument("--engine", default=default_engine(), choices=ENGINE_NAMES,
                   help="as `superres upscale --engine` (default auto); the ref column is always plain torch")
    p.add_argument("--precision", default="auto", choices=runtime.INFERENCE_PRECISIONS,
                   help="as `superres upscale` (the peak conv is measured in the same precision; for int8 "
                        "it is the same conv quantized as int8 quantizes a model, run by ONNX Runtime)")
    p.add_argument("--int8-calibration", action="append", default=None, metavar="DIR",
                   help="as `superres upscale`: with --precision int8, folders to quantize a model without a "
                        "shipped int8 file")
    p.add_argument("--tile", type=int_in(0), default=None, metavar="N",
                   help="as `superres upscale --tile` (default: automatic, as the command)")
    p.add_argument("--threads", type=int_in(1), default=None, metavar="N",
                   help="torch intra-op threads (default: torch's choice, as `superres upscale`)")
    p.add_argument("--repeats", type=int_in(1), default=None, metavar="N",
                   help=f"timed runs per measurement after one warm-up (default {QUICK_LOOK_REPEATS}; "
                        f"{DEFAULT_REPEATS} with --all, 2 with --quick)")
    p.add_argument("--folder-images", type=int_in(1), default=None, metavar="N",
                   help="images in the temp folder of the folder column (default 4; 2 with --quick)")
    p.add_argument("--quality", default=None, metavar="HR_DIR",
                   help="also score each model, as benched (precision, tiles), on this HR folder with the "
                        "`superres eval` protocol: a PSNR / SSIM column beside the speed (e.g. "
                        "../shared/data/benchmarks/Set14; a validation set, never a test set, if you "
                        "choose by it)")
    p.add_argument("--quality-degrade", default="bicubic", choices=("bicubic", "realistic", "camera"),
                   help="how --quality makes its LR, as `superres eval --degrade` (default bicubic; "
                        "realistic for models for real photos)")
    p.add_argument("--quality-seed", type=int, default=0, metavar="S",
                   help="seed of --quality-degrade, as `superres eval --seed` (default 0)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--all", action="store_true",
                   help="the full matrix: every shipped model at every default size, "
                        f"{DEFAULT_REPEATS} repeats, and the start-up, memory and backend measurements "
                        "(tens of minutes on a 2-core CPU)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test, not a measurement: 2 repeats, a small peak conv, and no start-up, "
                        "memory or backend measurements unless asked for")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="measure peak RSS of `superres upscale` on a large image (slow; default on with "
                        "--all)")
    p.add_argument("--memory-size", type=parse_size, default=MEMORY_SIZE, metavar="WxH",
                   help="input size for the memory measurement (default %dx%d)" % MEMORY_SIZE)
    p.add_argument("--startup", action=argparse.BooleanOptionalAction, default=None,
                   help="time interpreter start-up and imports in subprocesses (default on with --all)")
    p.add_argument("--backends", action=argparse.BooleanOptionalAction, default=None,
                   help=f"also time the installed optional backends ({', '.join(BACKENDS)}) "
                        "(default on with --all)")


def _resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the options whose defaults depend on --quick."""
    full = getattr(args, "all", False)
    args.repeats = args.repeats or (2 if args.quick else DEFAULT_REPEATS if full else QUICK_LOOK_REPEATS)
    args.folder_images = args.folder_images or (2 if args.quick or not full else 4)
    for flag in ("memory", "startup", "backends"):
        if getattr(args, flag) is None:
            setattr(args, flag, full and not args.quick)
    args.backend_list = list(BACKENDS) if args.backends else []


def run_bench(args: argparse.Namespace) -> int:
    _resolve_defaults(args)
    full = getattr(args, "all", False)
    shipped = [n for n, e in MODELS.items() if e.available]
    models = args.model or (shipped if full and shipped else [default_model_name()])
    sizes = args.size or [parse_size(s) for s in (DEFAULT_SIZES if full else (QUICK_LOOK_SIZE,))]
    try:
        for m in models:   # a typo fails in a second, not after the first model's measurements
            resolve_model_path(m)
        if args.image is not None and not Path(args.image).is_file():
            raise ModelNotFound(f"--image {args.image}: no such file")
        if args.quality is not None and not Path(args.quality).is_dir():
            raise ModelNotFound(f"--quality {args.quality}: no such folder")
        device = runtime.pick_device(args.device)
        if args.int8_calibration and args.precision != "int8":
            raise runtime.RuntimeChoiceError("--int8-calibration is only used with --precision int8")
        if args.precision == "int8":
            runtime.check_int8(device)
            from ..inference.int8 import _require_ort

            _require_ort()   # a missing onnxruntime fails now, not after the start-up measurements
            amp = None
        else:
            amp = runtime.pick_precision(args.precision, device)
    except (ModelNotFound, runtime.RuntimeChoiceError) as e:
        log.error("%s", e)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = "int8" if args.precision == "int8" else runtime.precision_name(amp)
    report: dict[str, Any] = {"machine": machine_info(device, precision), "results": []}
    report["argv"] = sys.argv[1:]
    # the Upscaler turns channels_last on exactly when it autocasts on the CPU; the peak follows it
    channels_last = amp is not None and device.type == "cpu"
    def measure_peak(when: str) -> dict[str, Any] | None:
        log.info("peak (%s): one 64->64 3x3 conv, %s%s", when, precision, ", channels_last" if channels_last else "")
        try:
            runs = [int8_conv_peak_gflops(shape, repeats=args.repeats) if precision == "int8"
                    else conv_peak_gflops(device, amp, channels_last, repeats=args.repeats, shape=shape)
                    for shape in ((QUICK_PEAK_INPUT,) if args.quick else PEAK_INPUTS)]
        except Exception as e:
            log.error("the peak conv failed: %s", e)
            return None
        best = dict(max(runs, key=lambda r: r["gflops"]))
        best["by_input"] = [{"input": r["input"], "gflops": r["gflops"]} for r in runs]
        best["when"] = when
        return best

    peak = measure_peak("before the models")
    report["peak"] = peak
    if args.startup:
        log.info("start-up times (subprocesses)")
        report["startup"] = measure_startup(min(args.repeats, 3))
    failed = False
    opts = BenchOptions.from_args(args)
    with tempfile.TemporaryDirectory(prefix="superres-bench-") as tmp:
        for m in models:
            try:
                report["results"] += bench_model(m, sizes, opts, peak, Path(tmp))
            except Exception as e:   # a model that cannot be loaded or run: the others still count
                log.exception("%s: the benchmark failed", m)
                report.setdefault("failed_models", {})[m] = f"{type(e).__name__}: {e}"
                failed = True
    if not args.quick and report["results"]:
        # Measured again after the models, and the faster of the two counts: a peak taken while
        # another process had the memory bus reads low, and a model would then pass "100% of peak".
        again = measure_peak("after the models")
        if again is not None and (peak is None or again["gflops"] > peak["gflops"]):
            again["other"] = peak
            peak = report["peak"] = again
            for r in report["results"]:
                r["peak_gflops"] = peak["gflops"]
                r.update(derived_metrics(r["flops_per_pixel"], r["model_only_mp_per_s"],
                                         r["reference_mp_per_s"], peak["gflops"]))
        elif again is not None and peak is not None:
            peak["other"] = again
    print(format_table(report))
    if args.json:
        from ..io.fs import atomic_write

        atomic_write(args.json, json.dumps(report, indent=2).encode())
        log.info("wrote %s", args.json)
    return 1 if failed else 0
