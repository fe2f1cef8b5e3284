"""ONNX export of a generator, checked against PyTorch on a second shape (dynamic axes); the graph
that ONNX Runtime and the int8 path run.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from ..io.fs import atomic_write_with

log = logging.getLogger(__name__)

# Opset 18 is the lowest the torch.export-based exporter emits natively and is read by every
# onnxruntime since 1.14 and by the other common runtimes; newer opsets add nothing these nets use.
class ExportError(RuntimeError):
    """A source that cannot be exported, or an export that failed its own check."""


ONNX_OPSET = 18
# fp32 conv stacks agree with onnxruntime to ~1e-6 on [0, 1] inputs; 1e-3 is a wrong-graph alarm,
# not a precision claim.
ONNX_TOLERANCE = 1e-3
# Check sizes differ from the trace size in every dynamic axis and are multiples of 4, because
# RRDBNet x1 pixel-unshuffles by 4.
_ONNX_TRACE_SHAPE = (1, 32, 32)
_ONNX_CHECK_SHAPE = (2, 20, 28)


# ---------------------------------------------------------------------------------------------
# ONNX

def _require_onnx_tools() -> None:
    missing = []
    for mod in ("onnxscript", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ExportError(f"--onnx needs {' and '.join(missing)}: pip install -c constraints.txt "
                          "-e '.[onnx]' (the exporter is torch.onnx's torch.export-based one, which "
                          "needs onnxscript; onnxruntime checks the result)")


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence exporter chatter that users cannot act on.

    Without torchvision the exporter warns once per torchvision op it skips registering; the graph
    optimiser logs every rewrite at INFO, which the CLI's INFO level would print; and torch's own
    pytree code raises a deprecation FutureWarning from inside the exporter.
    """
    levels = {"torch.onnx._internal.exporter._registration": logging.ERROR,
              "onnxscript": logging.WARNING, "onnx_ir": logging.WARNING}
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    old_levels = {lg: lg.level for lg in loggers}
    for lg, level in loggers.items():
        lg.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for lg, level in old_levels.items():
            lg.setLevel(level)


def export_onnx(model: nn.Module, path: str | os.PathLike, *,
                metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Export with dynamic batch/height/width, then compare onnxruntime with PyTorch.

    The comparison runs on a random input of another batch size and spatial size than the trace,
    so a graph that baked in the trace shape fails here rather than in the user's hands. The file
    appears at `path` only if the check passes.
    """
    _require_onnx_tools()
    import onnxruntime as ort

    model = model.float().eval()
    channels = int(model.hparams.get("num_in_ch", 3))
    gen = torch.Generator().manual_seed(0)
    b, h, w = _ONNX_TRACE_SHAPE
    trace = torch.rand(b, channels, h, w, generator=gen)
    b, h, w = _ONNX_CHECK_SHAPE
    check = torch.rand(b, channels, h, w, generator=gen)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    with _quiet_onnx_exporter():
        program = torch.onnx.export(model, (trace,), None, dynamo=True, verbose=False,
                                    opset_version=ONNX_OPSET, input_names=["input"],
                                    output_names=["output"], dynamic_shapes=(dims,))
    program.model.metadata_props.update({k: str(v) for k, v in (metadata or {}).items()})
    with torch.no_grad():
        expected = model(check).numpy()
    result: dict[str, Any] = {"path": str(path), "opset": ONNX_OPSET,
                              "check_input": list(check.shape)}

    def write_and_check(tmp: str) -> None:
        # One file: external data only pays off past protobuf's 2 GB limit, far above our nets.
        program.save(tmp, external_data=False)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": check.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape} for input "
                              f"{tuple(check.shape)}; the dynamic axes were not exported")
        diff = float(abs(got - expected).max())
        result["max_abs_diff"] = diff
        if not diff <= ONNX_TOLERANCE:
            raise ExportError(f"ONNX output differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE}) "
                              f"on input {tuple(check.shape)}; the ONNX file was not written")

    atomic_write_with(path, lambda tmp: write_and_check(str(tmp)))
    return result
