"""Engines: who runs an fp32 generator's arithmetic on the CPU (`--engine`: auto, torch, winograd,
onnxruntime, openvino).

torch runs the module itself. winograd is torch too, with every 3x3 stride-1 convolution handed to
NNPACK (bundled in PyTorch's CPU wheels for x86-64 and ARM), whose Winograd kernels (F(6x6, 3x3):
64 multiplications per 6x6 output tile and channel pair where a direct 3x3 conv does 324) round
differently by about 1e-5 per conv; on a CPU where torch's own convs already run near the fp32
peak it is the one engine left that can be much faster. onnxruntime and openvino run the same
network exported to ONNX (inference/onnx.py: dynamic batch, height and width, checked against torch
at export). An engine is a module like the int8 one, (B, C, H, W) float in [0, 1] -> (B, C, H*s,
W*s) float32, so tiling, the OOM back-off, blends and the web service use it unchanged.

`auto` (fp32 on the CPU only; bf16, fp16 and int8 keep their own paths) measures once per machine
and architecture which installed engine is fastest among those whose output equals torch's within
1 level on a fixed probe, and keeps the answer in the cache folder (`engines.json`), so later runs
start at once. Exported graphs are cached there too, named by the sha256 of the weights they hold,
and made on first use: nothing is shipped twice.

The cache folder is $SUPERRES_CACHE_DIR, else $XDG_CACHE_HOME/superres, else ~/.cache/superres.
$SUPERRES_ENGINE sets the default engine of the command line (the library default is torch).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .runtime import RuntimeChoiceError, cpuinfo_text, parse_cpuinfo

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "EngineGenerator", "WinogradConv2d", "winograd_generator", "winograd_available",
           "cache_dir", "engine_generator", "choose_engine", "choose_int8_engine", "int8_engines",
           "available_engines",
           "weights_sha256"]

ENGINES = ("auto", "torch", "winograd", "onnxruntime", "openvino")
# The probe's LR (height, width): a tile of a photo. The engines rank differently on small inputs
# (per-call costs: NNPACK transforms every conv's weights on each call, and is slower than torch at
# 128x128 but 1.3-1.65x faster from 256x512 up on a 2-core AVX2 CPU), so it is measured at the size
# it will run at. About 1 s per torch pass on such a CPU.
PROBE_SHAPE = (256, 512)
PROBE_REPEATS = 2
# the CPU features an engine's speed turns on (in the cache key beside the model name)
_KEY_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                        "amx_bf16", "amx_int8", "avx_vnni"})
TOLERANCE_LEVELS = 1     # an engine may differ from torch fp32 by this many 8-bit levels at most


class EngineError(RuntimeChoiceError):
    """An engine that is not installed or cannot run this model (the message says what to do)."""


def cache_dir() -> Path:
    base = os.environ.get("SUPERRES_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "superres"


def winograd_available() -> bool:
    """Whether this torch build has NNPACK and it runs on this CPU (its x86-64 kernels need AVX2).
    torch._nnpack_available() also initialises NNPACK, which its convolution needs first."""
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):
        return False


def available_engines() -> list[str]:
    """The engines that can run here: torch, winograd where NNPACK works, and those whose package
    is installed."""
    out = ["torch"]
    if winograd_available():
        out.append("winograd")
    for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        try:
            __import__(module)
            out.append(name)
        except ImportError:
            pass
    return out


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a module's state (names, shapes and bytes), so a blend gets its own graph."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        a = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(a.shape)).encode())
        h.update(a.numpy().tobytes() if a.dtype != torch.bfloat16 else a.float().numpy().tobytes())
    return h.hexdigest()


class EngineGenerator(nn.Module):
    """An exported generator run by onnxruntime or openvino, as a module. No parameters; its one
    buffer is the graph's sha256 (video resume fingerprints a model by its state dict)."""

    def __init__(self, path: Path, engine: str, *, hparams: dict[str, Any], input_multiple: int,
                 activation_bytes_per_lr_pixel: int | None) -> None:
        super().__init__()
        self.engine, self.path = engine, Path(path)
        threads = torch.get_num_threads()   # as torch would use: the engine changes nothing else
        if engine == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name
        elif engine == "openvino":
            import openvino as ov

            core = ov.Core()
            # f32 inference precision: OpenVINO would otherwise pick bf16 on CPUs that have it
            self._compiled = core.compile_model(str(path), "CPU", {
                "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                "PERFORMANCE_HINT": "LATENCY"})
        else:
            raise EngineError(f"engine {engine!r}; allowed values: onnxruntime, openvino")
        self.hparams = dict(hparams)
        self.input_multiple = int(input_multiple)
        self.activation_bytes_per_lr_pixel = activation_bytes_per_lr_pixel
        digest = hashlib.sha256(self.path.read_bytes()).digest()
        self.register_buffer("graph_sha256", torch.frombuffer(bytearray(digest), dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        if self.engine == "onnxruntime":
            y = self._session.run(None, {self._input: a})[0]
        else:
            y = self._compiled(a)[0]
        return torch.from_numpy(np.asarray(y, dtype=np.float32))


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, ungrouped, zero-padded Conv2d whose fp32 CPU inference runs in NNPACK.

    A subclass, so the module keeps its parameters, state-dict keys and forward hooks (FLOP counts,
    fingerprints); training, other dtypes and devices take nn.Conv2d's own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return super().forward(x)
        bias = self.bias if self.bias is not None else torch.zeros(self.out_channels, dtype=x.dtype)
        return torch._nnpack_spatial_convolution(x.contiguous(), self.weight.contiguous(), bias,
                                                 list(self.padding), list(self.stride))


def _winograd_eligible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple))


def winograd_generator(model: nn.Module) -> nn.Module:
    """A copy of `model` (fp32, eval, CPU) whose 3x3 stride-1 convs run in NNPACK; the others (1x1,
    strided, dilated or grouped convs) stay as they are."""
    if not winograd_available():
        raise EngineError("engine 'winograd' needs NNPACK, which this torch build or CPU lacks; use --engine torch")
    out = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()
    swapped = 0
    for module in out.modules():
        if _winograd_eligible(module):
            module.__class__ = WinogradConv2d
            swapped += 1
    if not swapped:
        raise EngineError("engine 'winograd': this network has no 3x3 stride-1 convolution; use --engine torch")
    return out


def _graph(model: nn.Module) -> Path:
    """The model's ONNX graph in the cache, exported (and checked against torch) on first use."""
    from .onnx import ExportError, export_onnx

    path = cache_dir() / "onnx" / f"{weights_sha256(model)}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            export_onnx(model, path, metadata={"made_by": "superres engine cache"})
        except (ExportError, ImportError) as e:
            raise EngineError(f"cannot export this model to ONNX for another engine ({e}); use --engine torch") from e
        log.info("exported the model for the ONNX engines in %.1f s (cached in %s)", time.perf_counter() - t0,
                 path.parent)
    return path


def engine_generator(model: nn.Module, engine: str) -> nn.Module:
    """`model` (fp32, eval, CPU) run by `engine`: the module itself for torch."""
    if engine == "torch":
        return model
    if engine == "winograd":
        return winograd_generator(model)
    if engine not in available_engines():
        extra = "onnx" if engine == "onnxruntime" else "openvino"
        raise EngineError(f"engine {engine!r} is not installed; pip install -c constraints.txt -e '.[{extra}]' "
                          "or use --engine torch")
    from ..archs import activation_bytes, input_multiple

    return EngineGenerator(_graph(model), engine, hparams=getattr(model, "hparams", {}) or {},
                           input_multiple=input_multiple(model),
                           activation_bytes_per_lr_pixel=activation_bytes(model, graph=True))


def _read_cpuinfo() -> str:
    return cpuinfo_text()   # a name of its own here, so tests can stand in another machine


def cpu_identity(cpuinfo: str) -> tuple[str, list[str]]:
    """The CPU's model name and the features an engine's speed turns on, from /proc/cpuinfo's text.

    The model name alone does not tell the ISA: VMs sold as "AMD EPYC" come with AVX2 only or with
    AVX-512 BF16, and the engines rank differently on the two (winograd led on the first, OpenVINO on
    the second), so a cache shared between such machines (one home directory on a cluster) must keep
    them apart."""
    model, flags = parse_cpuinfo(cpuinfo)
    return (model or platform.processor() or platform.machine(),
            [torch.backends.cpu.get_cpu_capability()] + sorted(flags & _KEY_FLAGS))


def _machine_key(model: nn.Module, engines: list[str]) -> str:
    """What an engine's speed depends on: CPU, thread count, library versions and the network's
    shape (not its weights)."""
    versions = []
    for module in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{module}={__import__(module).__version__}")
        except ImportError:
            pass
    cpu, isa = cpu_identity(_read_cpuinfo())
    arch = f"{type(model).__name__}{sorted((getattr(model, 'hparams', {}) or {}).items())}"
    # the engines on offer are part of the key: a newly installed (or newly added) one is measured
    return "|".join([cpu, "isa=" + ",".join(isa), f"threads={torch.get_num_threads()}",
                     f"torch={torch.__version__}", *versions, "engines=" + ",".join(engines), arch])


def _probe(model: nn.Module, engines: list[str]) -> dict[str, Any]:
    """Time each engine on a fixed input and compare its output with torch fp32's."""
    return _probe_generators(model, {name: (lambda name=name: engine_generator(model, name)) for name in engines})


def _probe_generators(model: nn.Module, makers: dict[str, Any]) -> dict[str, Any]:
    """Time each generator `makers[name]()` on a fixed input; compare its output with the first's."""
    from .core import tensor_to_uint8, upscale_tensor

    channels = int((getattr(model, "hparams", {}) or {}).get("num_in_ch", 3))
    x = torch.rand(1, channels, *PROBE_SHAPE, generator=torch.Generator().manual_seed(0))
    results: dict[str, Any] = {}
    reference = None
    for name, make in makers.items():
        try:
            gen = make()
            with torch.no_grad():
                out = tensor_to_uint8(upscale_tensor(gen, x))   # also the warm-up
                times = []
                for _ in range(PROBE_REPEATS):
                    t0 = time.perf_counter()
                    upscale_tensor(gen, x)
                    times.append(time.perf_counter() - t0)
        except Exception as e:   # an engine that fails is a result, not the end of the run
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        if reference is None:
            reference = out
        diff = int(np.abs(out.astype(np.int16) - reference.astype(np.int16)).max())
        results[name] = {"seconds": min(times), "max_diff_levels": diff}
    return results


def _choose(key: str, offered: list[str], measure: Any, fallback: str) -> str:
    """The engine remembered under `key`, else `measure()`'s fastest within TOLERANCE_LEVELS of the
    reference, remembered in the cache folder."""
    store = cache_dir() / "engines.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known and known[key].get("engine") in offered:
        return known[key]["engine"]
    if offered == [fallback]:
        return fallback
    log.info("measuring the engines for this model on this machine (once; cached in %s)", store)
    results = measure()
    ok = {n: r for n, r in results.items() if "seconds" in r and r["max_diff_levels"] <= TOLERANCE_LEVELS}
    best = min(ok, key=lambda n: ok[n]["seconds"]) if ok else fallback
    known[key] = {"engine": best, "probe": results, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        from ..io.fs import atomic_write

        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(store, json.dumps(known, indent=2).encode())
    except OSError as e:   # a read-only home: measured again next time
        log.warning("could not remember the engine choice in %s (%s)", store, e)
    speed = ", ".join(f"{n} {r['seconds'] * 1000:.0f} ms" if "seconds" in r else f"{n} failed"
                      for n, r in results.items())
    log.info("engine %s (%s)", best, speed)
    return best


def choose_engine(model: nn.Module) -> str:
    """The fastest installed engine for `model` on this machine whose output is within 1 level of
    torch fp32's, measured once and remembered in the cache folder."""
    engines = available_engines()
    return _choose(_machine_key(model, engines), engines, lambda: _probe(model, engines), "torch")


def int8_engines() -> list[str]:
    """Who can run an int8 graph here: ONNX Runtime (the int8 extra), and OpenVINO where installed."""
    return [n for n in available_engines() if n in ("onnxruntime", "openvino")]


def choose_int8_engine(model: nn.Module, make: Any) -> str:
    """For `--precision int8 --engine auto`: the faster of ONNX Runtime and OpenVINO on the same
    int8 graph (`make(engine)` builds it), OpenVINO only where its output is within 1 level of ONNX
    Runtime's; measured once per machine and architecture like choose_engine. On a CPU with AVX-512
    VNNI OpenVINO ran the shipped int8 files 2.6x faster than ONNX Runtime with the same output."""
    offered = int8_engines()
    if "onnxruntime" not in offered:
        return "onnxruntime"   # the int8 path reports that the extra is missing
    return _choose(_machine_key(model, offered) + "|int8", offered,
                   lambda: _probe_generators(model, {n: (lambda n=n: make(n)) for n in offered}), "onnxruntime")
