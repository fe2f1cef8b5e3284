"""Make the shipped int8 ONNX files: `python -m superres.apps.quantize`, calibrated on patches from
data.calibration and written beside the weights by inference.int8.quantize.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..data.calibration import CALIB_PATCHES, CALIB_SEED, CALIB_SIZE, calibration_patches
from ..inference.int8 import _sha256, int8_path, quantize

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# making the shipped files

def main(argv: list[str] | None = None) -> int:
    from ..data.degrade import DEGRADATIONS
    from ..inference.models import MODELS, resolve_model_path
    from ..inference.weights import load_generator

    p = argparse.ArgumentParser(prog="python -m superres.int8",
                                description="Write the int8 ONNX file of a model beside its weights (NAME.int8.onnx), "
                                            "calibrated on LR patches of training images.")
    p.add_argument("--model", action="append", required=True, metavar="NAME|PATH",
                   help=f"shipped model ({', '.join(MODELS)}) or weights file (repeatable)")
    p.add_argument("--calib-dir", action="append", required=True, metavar="DIR",
                   help="training image folder (repeatable), e.g. T91 and BSD200; never a benchmark set")
    p.add_argument("--patches", type=int, default=CALIB_PATCHES, help=f"calibration patches (default {CALIB_PATCHES})")
    p.add_argument("--size", type=int, default=CALIB_SIZE, help=f"patch side in LR pixels (default {CALIB_SIZE})")
    p.add_argument("--seed", type=int, default=CALIB_SEED, help=f"patch draw seed (default {CALIB_SEED})")
    p.add_argument("--degrade", default=None, choices=DEGRADATIONS,
                   help="how the LR patches are made (default: bicubic for models for clean inputs, "
                        "realistic for real-photo models such as realnet-x4)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for spec in args.model:
        weights = resolve_model_path(spec)
        model, info = load_generator(weights)
        entry = MODELS.get(spec)
        degrade = args.degrade or ("realistic" if entry is not None and entry.inputs == "real" else "bicubic")
        patches = calibration_patches(args.calib_dir, info["scale"], count=args.patches, lr_size=args.size,
                                      seed=args.seed, degrade=degrade)
        how = "MATLAB bicubic" if degrade == "bicubic" else f"degradation {degrade!r} seeded per file"
        dirs = ", ".join(Path(d).name for d in args.calib_dir)
        quantize(model, patches, int8_path(weights), metadata={
            "source_sha256": _sha256(weights), "source": weights.name,
            "calibration": f"{args.patches} LR patches {args.size}x{args.size} from {dirs}, seed {args.seed}, "
                           f"{how}, MinMax",
            "quantization": "onnxruntime quantize_static QDQ, per-channel s8 weights, u8 activations, reduce_range"})
        log.info("wrote %s", int8_path(weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
