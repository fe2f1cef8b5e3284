"""int8 inference on the CPU (`--precision int8`): a generator statically quantized by ONNX Runtime.

The fp32 generator is exported to ONNX (export.export_onnx) and quantized with
`onnxruntime.quantization.quantize_static`: QDQ format, per-channel int8 weights, uint8 activations
with reduce_range (7-bit activations: without AVX-512 VNNI the u8 x s8 multiply-add can saturate at
8 bits), MinMax ranges. ONNX Runtime fuses the QDQ pairs into integer convolutions on its CPU
provider; there is no int8 kernel on CUDA or MPS here, so int8 is CPU only.

Calibration: static quantization fixes every activation's range in advance from sample inputs.
Ranges are taken from LR patches of training images (T91 and BSD200, never a benchmark set),
made the way training makes them: random HR crops of CALIB_SIZE * scale pixels, downscaled by
MATLAB bicubic (degrade.imresize); CALIB_PATCHES patches, seed CALIB_SEED.

The shipped models come with their int8 file beside the weights (`psnr-x4.int8.onnx`), made by

    python -m superres.int8 --model psnr-x4 --calib-dir ../shared/data/train/T91 \\
        --calib-dir ../shared/data/train/BSD200

It records the sha256 of the weights it was made from; a file that does not match its weights is
refused rather than silently used. Any other generator (a weights file, a --strength blend) is
quantized when it is loaded, from calibration images the caller gives (`int8_calibration`,
`--int8-calibration DIR`): about a minute for an MSRResNet, and photos like the ones to upscale.

`engine="openvino"` (`--precision int8 --engine openvino`) runs the same file in OpenVINO, which
reads the QDQ pairs and runs the convolutions in int8 as well: on a CPU with AVX-512 VNNI 2.65x
ONNX Runtime's speed, its output within 3 levels of ONNX Runtime's (the two requantize in their own
order), so `--engine auto` takes it only where the probe finds it within 1 level
(engines.choose_int8_engine).
Measured with an AVX2 CPU, one thread (benchmarks/int8_experiment.py, numbers in its docstring):
psnr-x4 2.5x the speed of fp32 for 0.011 dB less PSNR on Set14; all four shipped models 2.2-2.5x
for at most 0.032 dB.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.calibration import calibration_patches
from .runtime import RuntimeChoiceError

log = logging.getLogger(__name__)

__all__ = ["INT8_ENGINES", "Int8Generator", "quantize", "int8_path", "load_int8", "int8_generator"]
INT8_SUFFIX = ".int8.onnx"


class Int8Error(RuntimeChoiceError):
    """int8 is not available for this model or machine (the message says why and what to do)."""


def _require_ort() -> Any:
    try:
        import onnxruntime
        import onnxruntime.quantization  # noqa: F401   (the quantizer lives in a submodule)
    except ImportError as e:
        raise Int8Error(f"precision 'int8' needs onnxruntime ({e}); "
                        "pip install -c constraints.txt -e '.[onnx]'") from e
    return onnxruntime


# ---------------------------------------------------------------------------------------------
# quantization

def quantize(model: nn.Module, calibration: torch.Tensor, path: str | os.PathLike, *,
             metadata: dict[str, str] | None = None) -> None:
    """Write `model` (fp32, any of our generators) as a statically quantized int8 ONNX file.

    calibration: (N, C, h, w) float LR inputs in [0, 1], run through the fp32 ONNX model to fix the
    activation ranges (MinMax). metadata goes into the file's metadata_props.
    """
    _require_ort()
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from ..io.fs import atomic_write_with
    from .onnx import export_onnx

    if calibration.ndim != 4 or len(calibration) == 0:
        raise Int8Error(f"int8 calibration: expected (N, C, h, w) LR inputs, got shape {tuple(calibration.shape)}")

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration.float().split(8))

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.items, None)
            return None if b is None else {"input": b.numpy()}

    with tempfile.TemporaryDirectory(prefix="superres-int8-") as tmp:
        fp32_path, q_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_onnx(model, fp32_path)
        quantize_static(str(fp32_path), str(q_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(q_path))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    atomic_write_with(path, lambda tmp: onnx.save(proto, tmp))


INT8_ENGINES = ("onnxruntime", "openvino")


class Int8Generator(nn.Module):
    """An int8 ONNX file run by ONNX Runtime's CPU provider (or by OpenVINO, `engine="openvino"`,
    which reads the same QDQ graph and runs its convolutions in int8 too), as a module: (B, C, H, W)
    float in [0, 1] -> (B, C, H*s, W*s) float32, so the inference core runs it like any generator.

    It has no parameters; its one buffer is the sha256 of the ONNX file, so anything that
    fingerprints a model by its state dict (video resume) tells two int8 files apart. hparams and
    input_multiple are the fp32 generator's (tile sizing and padding read them).
    """

    def __init__(self, path: str | os.PathLike | bytes, *, hparams: dict[str, Any], input_multiple: int = 1,
                 activation_bytes_per_lr_pixel: int | None = None, engine: str = "onnxruntime") -> None:
        super().__init__()
        if engine not in INT8_ENGINES:
            raise Int8Error(f"int8 engine {engine!r}; allowed values: {', '.join(INT8_ENGINES)}")
        ort = _require_ort()
        data = path if isinstance(path, bytes) else Path(path).read_bytes()   # the file or its bytes
        self.engine = engine
        self._data = data   # the graph's bytes (a few MB), for on()
        # As many threads as torch uses (OMP_NUM_THREADS, torch.set_num_threads), not the runtime's
        # default of every core, so --precision changes the arithmetic and nothing else.
        threads = torch.get_num_threads()
        if engine == "onnxruntime":
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        else:
            try:
                import onnx
                import openvino as ov
            except ImportError as e:
                raise Int8Error("int8 on engine 'openvino' needs OpenVINO: pip install -c constraints.txt -e "
                                "'.[openvino]', or use --engine onnxruntime") from e
            # no precision hint: the graph's QDQ pairs fix the int8 convolutions, and the f32 hint
            # would not change them
            core = ov.Core()
            self._compiled = core.compile_model(core.read_model(data, b""), "CPU", {
                "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
            self.metadata = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
        self.hparams = dict(hparams)
        self.input_multiple = int(input_multiple)
        # the fp32 net's estimate as one graph (archs.activation_bytes(graph=True)), which sizes the
        # automatic tile
        self.activation_bytes_per_lr_pixel = activation_bytes_per_lr_pixel
        self.register_buffer("onnx_sha256", torch.frombuffer(bytearray(hashlib.sha256(data).digest()),
                                                             dtype=torch.uint8))

    def on(self, engine: str) -> Int8Generator:
        """The same int8 graph run by `engine` (self when it already is)."""
        if engine == self.engine:
            return self
        return Int8Generator(self._data, hparams=self.hparams, input_multiple=self.input_multiple,
                             activation_bytes_per_lr_pixel=self.activation_bytes_per_lr_pixel, engine=engine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise Int8Error(f"the int8 model runs on the CPU; got an input on {x.device}")
        arr = np.ascontiguousarray(x.detach().float().numpy())
        if self.engine == "onnxruntime":
            return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])
        return torch.from_numpy(np.asarray(self._compiled(arr)[0], dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# which int8 model a generator gets

def int8_path(weights: str | os.PathLike) -> Path:
    """Where the int8 file of a weights file lives: beside it, `NAME.int8.onnx`."""
    p = Path(weights)
    return p.with_name(p.name.split(".")[0] + INT8_SUFFIX)


def _sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_int8(weights: str | os.PathLike, model: nn.Module, *, engine: str = "onnxruntime") -> Int8Generator:
    """The int8 file beside `weights`, checked against the weights' sha256; `model` is their fp32
    generator (for hparams and the input multiple)."""
    from ..archs import activation_bytes, input_multiple

    path = int8_path(weights)
    if not path.is_file():
        raise Int8Error(f"{Path(weights).name} has no int8 file ({path.name}); give calibration images "
                        "(--int8-calibration DIR) to quantize it when it is loaded")
    gen = Int8Generator(path, hparams=getattr(model, "hparams", {}), input_multiple=input_multiple(model),
                        activation_bytes_per_lr_pixel=activation_bytes(model, graph=True), engine=engine)
    want, got = gen.metadata.get("source_sha256"), _sha256(weights)
    if want != got:
        raise Int8Error(f"{path.name} was made from other weights than {Path(weights).name} (sha256 "
                        f"{str(want)[:12]} != {got[:12]}); remake it with `python -m superres.int8` or give "
                        "calibration images (--int8-calibration DIR)")
    return gen


def int8_generator(model: nn.Module, info: dict[str, Any] | None = None, *,
                   calibration: torch.Tensor | str | os.PathLike | list | None = None,
                   engine: str = "onnxruntime") -> Int8Generator:
    """The int8 form of `model` (fp32, eval mode).

    With `calibration` (LR tensors (N, C, h, w) in [0, 1], or image folders to cut CALIB_PATCHES
    patches from) the model is quantized now; without, the int8 file shipped beside its weights
    (info["path"]) is used, which exists for the shipped models as trained (not for a --strength
    blend, whose weights are no file).
    """
    from ..archs import activation_bytes, input_multiple

    _require_ort()
    info = info or {}
    hparams = dict(getattr(model, "hparams", {}) or info.get("hparams", {}))
    if calibration is None:
        if info.get("path") and "strength" not in info:
            return load_int8(info["path"], model, engine=engine)
        what = "a --strength blend" if "strength" in info else "this model"
        raise Int8Error(f"precision 'int8' for {what} needs calibration images (--int8-calibration DIR, "
                        "photos like the ones to upscale): only the shipped models as trained come with an "
                        "int8 file")
    if not isinstance(calibration, torch.Tensor):
        folders = calibration if isinstance(calibration, (list, tuple)) else [calibration]
        scale = int(info.get("scale") or hparams.get("upscale") or hparams.get("scale"))
        try:
            calibration = calibration_patches(folders, scale)
        except ValueError as e:
            raise Int8Error(str(e)) from e
    with tempfile.TemporaryDirectory(prefix="superres-int8-") as tmp:
        path = Path(tmp) / "model.int8.onnx"
        log.info("quantizing to int8 with %d calibration patches", len(calibration))
        quantize(model, calibration, path)
        return Int8Generator(path, hparams=hparams, input_multiple=input_multiple(model),
                             activation_bytes_per_lr_pixel=activation_bytes(model, graph=True), engine=engine)


