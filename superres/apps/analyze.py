"""`superres analyze FILE...`: noise level, JPEG quality, blockiness and detail of input images.

One line per file on stdout (and with --json a JSON list of the same records); a file that cannot be
read is reported by name on one line, and the exit code is 1 when any file failed.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..inference.analysis import analyze_file

log = logging.getLogger(__name__)


def add_analyze_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="image files to analyze")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write the results as a JSON list of objects (one per readable file)")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _line(r: dict) -> str:
    q = r["jpeg_quality"]
    history = {True: "JPEG history", False: "no JPEG history", None: "JPEG history unknown"}[r.get("jpeg_history")]
    jpeg = f"jpeg_quality={q} ({r['jpeg_source']})" if q is not None else f"jpeg_quality=- ({history})"
    return (f"{r['file']}: {r['width']}x{r['height']}  noise_sigma={_fmt(r['noise_sigma'], '.2f')}  "
            f"detail={_fmt(r['detail'], '.2f')}  blockiness={r['blockiness']:.3f}  {jpeg}")


def run_analyze(args: argparse.Namespace) -> int:
    results, failed = [], 0
    for f in args.files:
        try:
            r = analyze_file(f)
        except (ValueError, OSError, MemoryError) as e:
            msg = str(e)
            log.error("%s", msg if str(f) in msg else f"{f}: {msg}")
            failed += 1
            continue
        results.append(r)
        print(_line(r), flush=True)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            log.error("%s: cannot write the JSON output (%s)", args.json, e.strerror or e)
            return 1
    if failed:
        log.error("%d of %d file(s) could not be analyzed", failed, len(args.files))
    return 1 if failed else 0
