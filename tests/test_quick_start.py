"""The README's quick start must work on a machine that has only this repository.

`.ci/first_run.py` runs the two commands in a clone without `../shared`; these tests check, without
installing anything, that the commands it will extract are the ones a newcomer sees and that they
name no file outside the repository.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _first_run():
    spec = importlib.util.spec_from_file_location("first_run", REPO / ".ci" / "first_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_start_commands_are_install_and_tests():
    fr = _first_run()
    install, test = fr.quick_start_commands((REPO / "README.md").read_text())
    assert "pip install -c constraints.txt" in install
    assert test == "python -m pytest -q"
    src, out = fr.upscale_paths(install)
    # The sample ships inside the repo, so a clone anywhere can run the command.
    assert not src.startswith(".."), src
    assert (REPO / src).is_file()
    w, h = fr.png_size(REPO / src)
    assert (w, h) == (451, 300)
    # The output a newcomer makes is not something git should offer to commit.
    ignored = (REPO / ".gitignore").read_text().split()
    assert f"/{out}" in ignored or out in ignored


def test_quick_start_parser_rejects_a_readme_without_the_commands():
    fr = _first_run()
    with pytest.raises(SystemExit, match="two ```bash blocks, found 1"):
        fr.quick_start_commands("## Quick start\n\n```bash\necho hi\n```\n\n## Next\n")
    with pytest.raises(SystemExit, match="no 'superres upscale IN -o OUT'"):
        fr.upscale_paths("pip install . && superres upscale a.png b.png")


def test_png_size_reads_the_header(tmp_path):
    fr = _first_run()
    from PIL import Image
    Image.new("RGB", (7, 5)).save(tmp_path / "x.png")
    assert fr.png_size(tmp_path / "x.png") == (7, 5)
    (tmp_path / "y.png").write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(SystemExit, match="not a PNG"):
        fr.png_size(tmp_path / "y.png")
