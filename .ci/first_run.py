#!/usr/bin/env python3
"""Prove the README's quick start works on a machine that has only this repository.

Clones the checked-out commit into a temporary folder with no `../shared` beside it, takes the
README's first two ```bash blocks under "## Quick start" (install + upscale, then tests), runs them
exactly as written in one bash session (the first command activates the virtualenv the second one
uses, as in a newcomer's terminal) and checks that the upscaled image exists with 4x the sample's
size. Standard library only: it runs before anything is installed.

Usage: python3 .ci/first_run.py [--keep] [--fast] [--self-test]
  --fast       the test command with `-m "not slow"` appended (CI has just run the whole suite)
  --self-test  check this script's README parsing on made-up inputs, run nothing
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCALE = 4  # the default model's scale; the README promises a 4x image


def quick_start_commands(readme: str) -> list[str]:
    """The first two ```bash blocks of the "## Quick start" section, verbatim."""
    m = re.search(r"^## Quick start.*?$(.*?)(?=^## )", readme, re.M | re.S)
    if not m:
        raise SystemExit("README.md has no '## Quick start' section")
    blocks = re.findall(r"^```bash\n(.*?)^```", m.group(1), re.M | re.S)
    if len(blocks) < 2:
        raise SystemExit(f"README quick start: expected two ```bash blocks, found {len(blocks)}")
    return [b.strip() for b in blocks[:2]]


def upscale_paths(install_cmd: str) -> tuple[str, str]:
    """(input, output) of the `superres upscale IN -o OUT` call in the install command."""
    for part in install_cmd.split("&&"):
        words = shlex.split(part)
        if words[:2] == ["superres", "upscale"]:
            args = words[2:]
            if "-o" not in args:
                break
            out = args[args.index("-o") + 1]
            inputs = [a for i, a in enumerate(args) if not a.startswith("-")
                      and (i == 0 or args[i - 1] != "-o")]
            if len(inputs) == 1:
                return inputs[0], out
            break
    raise SystemExit(f"README first command has no 'superres upscale IN -o OUT': {install_cmd!r}")


def png_size(path: Path) -> tuple[int, int]:
    # PNG signature (8 bytes), then the IHDR chunk: length, type, width, height (big-endian).
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise SystemExit(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def _expect_exit(fn, text: str, match: str) -> None:
    try:
        fn(text)
    except SystemExit as e:
        if match not in str(e):
            raise AssertionError(f"expected {match!r} in {e}") from None
        return
    raise AssertionError(f"no SystemExit for {text!r}")


def self_test() -> int:
    """The parsing above on made-up READMEs (the repository's own README is checked by
    tests/test_quick_start.py and by the real run)."""
    readme = ("## Quick start\n\n```bash\npip install . && superres upscale in.png -o out.png\n```\n\n"
              "```bash\npython -m pytest -q\n```\n\n## Next\n")
    assert quick_start_commands(readme) == ["pip install . && superres upscale in.png -o out.png",
                                            "python -m pytest -q"]
    assert upscale_paths(quick_start_commands(readme)[0]) == ("in.png", "out.png")
    _expect_exit(quick_start_commands, "## Quick start\n\n```bash\necho hi\n```\n\n## Next\n",
                 "two ```bash blocks, found 1")
    _expect_exit(upscale_paths, "pip install . && superres upscale a.png b.png", "no 'superres upscale IN -o OUT'")
    tmp = Path(tempfile.mkdtemp(prefix="superres-first-run-self-test-"))
    try:
        (tmp / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII", 13, b"IHDR", 7, 5) + bytes(5))
        assert png_size(tmp / "x.png") == (7, 5)
        (tmp / "y.png").write_bytes(b"GIF89a" + bytes(30))
        _expect_exit(png_size, tmp / "y.png", "not a PNG")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("first_run self-test OK")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", action="store_true", help="keep the temporary clone")
    p.add_argument("--fast", action="store_true", help='append -m "not slow" to the test command')
    p.add_argument("--self-test", action="store_true", help="check the README parsing, run nothing")
    args = p.parse_args()
    if args.self_test:
        return self_test()

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="superres-first-run-"))
    clone = tmp / "superres"
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
        assert not (clone.parent / "shared").exists()
        install, test = quick_start_commands((clone / "README.md").read_text())
        src, out = upscale_paths(install)
        print(f"first run in {clone} (commit {commit[:10]}, no ../shared):\n  $ {install}\n  $ {test}",
              flush=True)
        if args.fast:
            test = f'{test} -m "not slow"'
        script = f"set -e\n{install}\n{test}\n"
        rc = subprocess.run(["bash", "-c", script], cwd=clone).returncode
        if rc != 0:
            print(f"FAIL: the README's quick start exited {rc}", file=sys.stderr)
            return 1
        out_path, src_path = clone / out, clone / src
        if not out_path.is_file():
            print(f"FAIL: the README's first command did not write {out}", file=sys.stderr)
            return 1
        (w, h), (ow, oh) = png_size(src_path), png_size(out_path)
        if (ow, oh) != (w * SCALE, h * SCALE):
            print(f"FAIL: {out} is {ow}x{oh}; expected {w * SCALE}x{h * SCALE} (4x {src})",
                  file=sys.stderr)
            return 1
        print(f"first run OK: {src} {w}x{h} -> {out} {ow}x{oh}")
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
