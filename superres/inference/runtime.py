"""Device and precision choices shared by inference, evaluation and training.

`auto` means: CUDA if present, else Apple MPS, else CPU; on the CPU bf16 autocast (with channels_last)
only where the CPU has native bf16 instructions, since emulated bf16 is slower than fp32; on CUDA fp16
for inference. fp16 is never used on a CPU.

int8 is for inference on the CPU only and is not an autocast dtype: the model is replaced by its
statically quantized ONNX Runtime form (superres/int8.py), so it is one of INFERENCE_PRECISIONS and
never auto's pick (it changes the output by a little, which a user should ask for).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
import os

from .._lazy import lazy_module

torch = lazy_module("torch")   # the option lists below are needed by --help, which must not import torch

# Inference defaults the command line shows in --help (the Upscaler uses the same objects).
ALPHA_MODES = ("model", "bicubic")
# LR pixels each tile reads beyond its core on a side with a neighbour. 8 is where tiling stops
# showing: at tile 64 on RealSRSet frog and ppt3, the tiled output of psnr-x4, gan-x4, psnr-x2 and
# realnet-x4 differs from the whole-image one by at most 1 level (mean 0.001-0.005) at 8, as at 16,
# while 4 leaves 4-15-level seams. 16 recomputed twice the overlap for nothing: psnr-x4's 256 tiles
# on a 2000x1500 image read 23% more LR pixels than the image at 16, 11% at 8.
DEFAULT_OVERLAP = 8

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")          # autocast: training and inference
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")             # Upscaler, upscale, serve


class RuntimeChoiceError(ValueError):
    """A device or precision that is unknown or not available on this machine."""


def pick_device(name: str = "auto") -> torch.device:
    """`auto|cpu|cuda|mps` (or `cuda:N`) -> a torch.device that exists here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise RuntimeChoiceError(f"device {name!r}; allowed values: {', '.join(DEVICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeChoiceError(f"device {name!r} was asked for but no CUDA device is available")
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeChoiceError("device 'mps' was asked for but Apple MPS is not available")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpuinfo_text() -> str:
    """/proc/cpuinfo's text, read once per process ("" where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """The first CPU's model name ("" if none is given) and its flags, from /proc/cpuinfo's text."""
    lines = text.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return model, frozenset(flags)


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX)."""
    if os.environ.get("SUPERRES_NO_BF16"):
        return False
    cap = torch.backends.cpu.get_cpu_capability().lower()
    if "avx512" not in cap and "amx" not in cap:
        return False
    flags = parse_cpuinfo(cpuinfo_text())[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_int8(device: torch.device) -> None:
    """Raise unless precision 'int8' can run on `device` (ONNX Runtime's CPU provider only)."""
    if device.type != "cpu":
        raise RuntimeChoiceError(f"precision 'int8' runs on the CPU only (ONNX Runtime's CPU provider); the "
                                 f"device is {device}: use --device cpu, or fp16/bf16 there")


def pick_precision(name: str, device: torch.device, *, training: bool = False) -> torch.dtype | None:
    """The autocast dtype for `name` on `device`, or None for plain fp32."""
    if name == "int8":
        raise RuntimeChoiceError("precision 'int8' is for inference only (Upscaler quantizes the model); "
                                 f"as an autocast precision use one of {', '.join(PRECISIONS)}")
    if name not in PRECISIONS:
        raise RuntimeChoiceError(f"precision {name!r}; allowed values: {', '.join(PRECISIONS)}")
    if name == "fp32":
        return None
    if name == "fp16":
        if device.type == "cpu":
            raise RuntimeChoiceError("precision 'fp16' is not supported on the CPU; use 'bf16' or 'fp32'")
        return torch.float16
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        # training prefers bf16 (no loss scaling needed); inference takes fp16, the faster of the two
        if training and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


@dataclass(frozen=True)
class InferencePolicy:
    """How a generator runs: the autocast dtype (None = fp32) and whether in channels_last."""

    amp_dtype: torch.dtype | None
    channels_last: bool

    @property
    def name(self) -> str:
        return precision_name(self.amp_dtype)


def inference_policy(name: str, device: torch.device) -> InferencePolicy:
    """The one precision policy of inference, for every command (upscale, video, cluster and serve
    through the Upscaler; eval; bench): `pick_precision`'s dtype, and channels_last for
    low-precision CPU work, where oneDNN's bf16 convolutions want NHWC; fp32 keeps NCHW, whose
    results are the published numbers'. int8 is not an autocast precision (see check_int8)."""
    amp = pick_precision(name, device)
    return InferencePolicy(amp, amp is not None and device.type == "cpu")


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
