"""The `superres` dispatcher: every listed subcommand is wired to its module and shows in --help."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from superres.apps.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_module_provides_its_functions(name):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(getattr(module, f"add_{name}_arguments", None)), \
        f"{module.__name__} lacks add_{name}_arguments(parser)"
    assert callable(getattr(module, f"run_{name}", None)), f"{module.__name__} lacks run_{name}(args)"


def test_parser_has_every_command():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


def _listed(help_text: str, name: str) -> bool:
    """argparse lists a subcommand as an indented row starting with its name."""
    return re.search(rf"^\s+{re.escape(name)}\b", help_text, re.MULTILINE) is not None


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    missing = [name for name in COMMANDS if not _listed(out, name)]
    assert not missing, f"help does not list {missing}"


def _run_module(*args: str) -> subprocess.CompletedProcess:
    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run([sys.executable, "-m", "superres", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_python_dash_m_help_lists_every_command():
    proc = _run_module("--help")
    assert proc.returncode == 0, proc.stderr
    missing = [name for name in COMMANDS if not _listed(proc.stdout, name)]
    assert not missing, f"`superres --help` does not list {missing}"


def test_python_dash_m_subcommand_help():
    proc = _run_module("export", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--onnx" in proc.stdout and "Example: superres export" in proc.stdout
