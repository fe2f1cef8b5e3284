"""`superres prepare HR/ -o HR_sub/`: cut large training images into overlapping sub-images
(data.datasets.extract_subimages).
"""
from __future__ import annotations

import argparse
import logging

from ..data.datasets import extract_subimages

log = logging.getLogger(__name__)


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("hr_dir", help="folder of HR images (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="folder for the sub-images (PNG)")
    p.add_argument("--crop", type=int, default=480, help="sub-image side in pixels (default 480)")
    p.add_argument("--step", type=int, default=240, help="distance between sub-images (default 240)")
    p.add_argument("--thresh-size", type=int, default=0,
                   help="drop a leftover edge strip up to this many pixels wide instead of adding a "
                        "sub-image flush with the edge (default 0: always cover the edge)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")


def run_prepare(args: argparse.Namespace) -> int:
    try:
        extract_subimages(args.hr_dir, args.output, crop=args.crop, step=args.step,
                          thresh_size=args.thresh_size, workers=args.workers)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    return 0
