"""The README's quick start must work on a machine that has only this repository.

`.ci/first_run.py` runs the two commands in a clone without `../shared`; these tests check, without
installing anything, that the README's commands are the ones CI runs: a runtime-only install that
upscales the shipped sample, then the test command, and that they name no file outside the repository.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TEST_COMMAND = 'pip install -c constraints.txt -e ".[dev]" && python -m pytest -q'


def _quick_start() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = re.search(r"^## Quick start.*?$(.*?)(?=^## )", readme, re.M | re.S)
    assert section, "README.md has no '## Quick start' section"
    return [b.strip() for b in re.findall(r"^```bash\n(.*?)^```", section.group(1), re.M | re.S)]


def test_quick_start_is_a_runtime_install_then_the_tests():
    blocks = _quick_start()
    assert len(blocks) >= 2, blocks
    install, test = blocks[:2]
    assert "pip install -c constraints.txt -e ." in install and "[dev]" not in install
    assert test == TEST_COMMAND
    # .ci/run runs exactly this test command
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text()


def test_quick_start_upscales_the_sample_shipped_in_the_repo():
    install = _quick_start()[0]
    calls = [shlex.split(part) for part in install.split("&&")]
    upscale = next(words for words in calls if words[:2] == ["superres", "upscale"])
    src, out = upscale[2], upscale[upscale.index("-o") + 1]
    assert not src.startswith(".."), src
    assert Image.open(REPO / src).size == (451, 300)
    # The output a newcomer makes is not something git should offer to commit.
    ignored = (REPO / ".gitignore").read_text().split()
    assert f"/{out}" in ignored or out in ignored


def test_user_docs_name_no_path_outside_the_repository():
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "../shared" not in text, doc.name
        assert not re.search(r"\bissue \d+", text, re.I), doc.name
    assert len((REPO / "README.md").read_text().splitlines()) <= 260
