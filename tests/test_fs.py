"""fs: atomic writes and the one temp-file name that the stale-file cleanup recognises."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from superres.io.fs import atomic_write, atomic_write_with, remove_stale_temp_files, temp_file_target


def test_atomic_write_bytes_and_permissions(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write(target, b"{}\n")
    assert target.read_bytes() == b"{}\n" and os.listdir(tmp_path / "sub") == ["a.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask   # not mkstemp's 0600


def test_failed_writer_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")
    seen = []

    def write(tmp):
        seen.append(tmp.name)
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt   # a signal in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(target, write)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["w.bin"]
    # while it was written, the temp file had the name the cleanup knows
    assert seen[0].startswith(f".w.bin.superres-{os.getpid()}-")
    assert temp_file_target(tmp_path / seen[0]) == target


def test_writer_result_is_returned_and_errors_name_the_destination(tmp_path):
    assert atomic_write_with(tmp_path / "r.txt", lambda tmp: tmp.write_text("x")) == 1
    target = tmp_path / "no_such_folder" / "x.png"
    with pytest.raises(FileNotFoundError) as e:
        atomic_write(target, b"", parents=False)
    assert e.value.filename == str(target)


def test_a_killed_writers_temp_file_is_removed_by_the_next_run(tmp_path):
    code = ("import os, sys; from superres.io.fs import atomic_write_with; "
            "atomic_write_with(sys.argv[1], lambda tmp: os._exit(9))")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.safetensors")], env=env)
    assert proc.returncode == 9
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 1 and temp_file_target(left[0]) == tmp_path / "m.safetensors"
    assert remove_stale_temp_files(tmp_path) == left and list(tmp_path.iterdir()) == []


def test_keep_suffix_temp_names_end_with_the_extension_and_are_cleaned_up(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"video")

    atomic_write_with(tmp_path / "clip.mkv", write, keep_suffix=True)
    assert seen[0].name.endswith(".tmp.mkv") and temp_file_target(seen[0]) == tmp_path / "clip.mkv"
    assert (tmp_path / "clip.mkv").read_bytes() == b"video" and not seen[0].exists()
    # a dead writer's temp of this kind is found by the same cleanup as any other
    stale = tmp_path / ".clip.mkv.superres-999999999-abcd1234.tmp.mkv"
    stale.write_bytes(b"half")
    assert remove_stale_temp_files(tmp_path) == [stale] and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv"]
