"""The folder loop (`upscale.upscale_files`): decoding of the next file and encoding of the previous one
overlap the model's work, and nothing a user can see changes: the bytes written, the order of report
entries and log lines, per-file errors, skipping, interrupts. Tiny random-weights model, tiny images."""
from __future__ import annotations

import argparse
import json
import logging
import threading

import numpy as np
import pytest
from PIL import Image

import superres.apps.filejob as upscale_mod
from superres.apps.cli import main
from superres.inference.upscaler import Upscaler
from superres.apps.filejob import FileJobOptions, upscale_file, upscale_files
from superres.apps.upscale import add_upscale_arguments

RNG = np.random.default_rng(18)
WAIT = 30   # seconds: only a safety net against a hang; a passing run never waits this long


@pytest.fixture(scope="module")
def up(model_path):
    return Upscaler.from_pretrained(model_path, tile=32)


def _cli(model_path, *args) -> int:
    return main(["upscale", *map(str, args), "--model", str(model_path), "--no-progress", "--tile", "32"])


def _args(src, out, *extra) -> FileJobOptions:
    """What the command line gives upscale_file(s), parsed by the command's own parser."""
    p = argparse.ArgumentParser()
    add_upscale_arguments(p)
    return FileJobOptions.from_args(p.parse_args([str(src), "-o", str(out), "--no-progress", "--tile", "32", *extra]))


def _folder(path, names, size=(10, 12)):
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        arr = RNG.integers(0, 256, (*size, 4 if name.startswith("rgba") else 3), dtype=np.uint8)
        Image.fromarray(arr).save(path / name)
    return [path / n for n in names]


def _messages(caplog, level=logging.INFO):
    return [r.getMessage() for r in caplog.records if r.levelno >= level and r.name.startswith("superres.apps.")]


def _leftovers(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_outputs_are_byte_identical_to_the_one_file_path(tmp_path, model_path, up):
    files = _folder(tmp_path / "in", ["a.png", "b.jpg", "c.png", "rgba_d.png", "e.webp", "f.bmp"], (14, 18))
    report = tmp_path / "r.json"
    assert _cli(model_path, tmp_path / "in", "-o", tmp_path / "overlapped", "--report", report) == 0
    args = _args(tmp_path / "in", tmp_path / "sequential")
    (tmp_path / "sequential").mkdir()
    for f in files:
        assert upscale_file(up, f, tmp_path / "sequential" / f.name, args, None)["status"] == "ok"
    for f in files:
        overlapped, sequential = tmp_path / "overlapped" / f.name, tmp_path / "sequential" / f.name
        assert overlapped.read_bytes() == sequential.read_bytes()
    assert [e["input"] for e in json.loads(report.read_text())] == sorted(str(f) for f in files)


def test_a_corrupt_file_in_the_middle_is_reported_and_the_rest_written(tmp_path, model_path, caplog):
    src = tmp_path / "in"
    _folder(src, ["a.png", "b.png", "d.png", "e.png"])
    (src / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    report = tmp_path / "r.json"
    caplog.set_level(logging.INFO)
    assert _cli(model_path, src, "-o", tmp_path / "out", "--report", report) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "d.png", "e.png"]
    errors = _messages(caplog, logging.ERROR)
    assert len(errors) == 1 and errors[0].startswith(f"{src / 'c.png'}: ") and "\n" not in errors[0]
    assert [(e["input"], e["status"]) for e in json.loads(report.read_text())] == [
        (str(src / n), s) for n, s in [("a.png", "ok"), ("b.png", "ok"), ("c.png", "error"), ("d.png", "ok"),
                                       ("e.png", "ok")]]
    assert "4 written, 0 skipped (output exists), 1 failed" in _messages(caplog)
    assert not _leftovers(tmp_path)


def test_entries_and_log_lines_come_in_input_order_whatever_the_timing(tmp_path, up, monkeypatch, caplog):
    """Reads and writes run in other threads and finish out of order here (the first file's write
    is held back until the next file that needs the model has been computed, while a skipped and a
    broken file are read meanwhile); entries and log lines still come in input order, and the codec
    work ran off the calling thread."""
    src, out = tmp_path / "in", tmp_path / "out"
    files = _folder(src, ["a.png", "b.png", "c.png", "d.png", "e.png"])
    (src / "c.png").write_bytes(b"not a png")          # fails in the read stage
    out.mkdir()
    (out / "b.png").write_bytes(b"kept")               # skipped in the read stage
    d_computed = threading.Event()
    threads = {"read": set(), "write": set()}
    real_read, real_write, real_up = upscale_mod.read_image, upscale_mod.write_image, Upscaler.upscale_image

    def read_image(path):
        threads["read"].add(threading.current_thread().name)
        return real_read(path)

    def write_image(path, img, **kw):
        threads["write"].add(threading.current_thread().name)
        if path.name == "a.png":
            assert d_computed.wait(WAIT)
        return real_write(path, img, **kw)

    def upscale_image(self, img, **kw):
        result = real_up(self, img, **kw)
        computed.append(img)
        if len(computed) == 2:   # a, d and e reach the model; b is skipped and c broken
            d_computed.set()
        return result

    computed: list = []
    monkeypatch.setattr(upscale_mod, "read_image", read_image)
    monkeypatch.setattr(upscale_mod, "write_image", write_image)
    monkeypatch.setattr(Upscaler, "upscale_image", upscale_image)
    caplog.set_level(logging.INFO)
    entries = []
    upscale_files(up, [(f, out / f.name) for f in files], _args(src, out), None, frozenset(), entries.append)
    assert [(e["input"], e["status"]) for e in entries] == [
        (str(src / n), s) for n, s in [("a.png", "ok"), ("b.png", "skipped"), ("c.png", "error"),
                                       ("d.png", "ok"), ("e.png", "ok")]]
    logged = _messages(caplog)
    assert len(logged) == 5
    for line, name in zip([logged[0], logged[3], logged[4]], ["a.png", "d.png", "e.png"]):
        # a written file's line names it and what its analysis found
        assert line.startswith(f"{src / name} -> {out / name} (noise ") and "detail" in line
    assert logged[1] == f"{out / 'b.png'} exists, skipped (--overwrite replaces it)"
    assert logged[2].startswith(f"{src / 'c.png'}: ")
    assert threading.current_thread().name not in threads["read"] | threads["write"]
    assert (out / "b.png").read_bytes() == b"kept"


def test_the_next_file_is_read_and_the_previous_written_while_the_model_works(tmp_path, up, monkeypatch):
    """During file i's compute, file i+1 gets decoded and file i-1 written, and no more than that:
    file i+2 is not read yet, so at most one decoded image waits."""
    src, out = tmp_path / "in", tmp_path / "out"
    files = _folder(src, [f"{i}.png" for i in range(5)])
    read_done = [threading.Event() for _ in files]
    write_started = [threading.Event() for _ in files]
    reads_started: list[int] = []
    seen: list[tuple[int, bool, bool, int]] = []
    real_read, real_write, real_up = upscale_mod.read_image, upscale_mod.write_image, Upscaler.upscale_image

    def read_image(path):
        reads_started.append(int(path.stem))
        img = real_read(path)
        read_done[int(path.stem)].set()
        return img

    def write_image(path, img, **kw):
        write_started[int(path.stem)].set()
        return real_write(path, img, **kw)

    def upscale_image(self, img, **kw):
        i = len(seen)
        nxt = read_done[i + 1].wait(WAIT) if i + 1 < len(files) else True
        prev = write_started[i - 1].wait(WAIT) if i > 0 else True
        seen.append((i, nxt, prev, max(reads_started)))
        return real_up(self, img, **kw)

    monkeypatch.setattr(upscale_mod, "read_image", read_image)
    monkeypatch.setattr(upscale_mod, "write_image", write_image)
    monkeypatch.setattr(Upscaler, "upscale_image", upscale_image)
    entries = []
    upscale_files(up, [(f, out / f.name) for f in files], _args(src, out), None, frozenset(), entries.append)
    assert [e["status"] for e in entries] == ["ok"] * 5
    for i, nxt, prev, furthest_read in seen:
        assert nxt and prev, f"file {i}: the next read or the previous write did not overlap the compute"
        assert furthest_read <= i + 1, f"file {i}: file {furthest_read} was read ahead too far"


def test_two_inputs_for_one_output_are_refused_before_anything_runs(tmp_path, model_path, caplog):
    """a.jpg and a.png both become a.png with --format png: one of them would never be produced, so
    the run is refused with both named (exit 2) and writes nothing."""
    src = tmp_path / "in"
    _folder(src, ["a.jpg", "a.png"])
    report = tmp_path / "r.json"
    caplog.set_level(logging.INFO)
    assert _cli(model_path, src, "-o", tmp_path / "out", "--format", "png", "--report", report) == 2
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not report.exists()
    assert any("a.jpg" in m and "a.png" in m and "would both be written" in m for m in _messages(caplog))


def test_ctrl_c_lets_the_write_in_flight_finish_and_reports_it(tmp_path, model_path, monkeypatch, caplog):
    """Ctrl-C while file c is computed and file b is being written: b is completed (atomically) and
    reported, c is not written, nothing partial is left, exit 130."""
    src, out = tmp_path / "in", tmp_path / "out"
    _folder(src, ["a.png", "b.png", "c.png", "d.png"])
    interrupted = threading.Event()
    real_write, real_up = upscale_mod.write_image, Upscaler.upscale_image
    calls: list[int] = []

    def write_image(path, img, **kw):
        if path.name == "b.png":
            assert interrupted.wait(WAIT)   # still writing when Ctrl-C arrives
        return real_write(path, img, **kw)

    def upscale_image(self, img, **kw):
        calls.append(1)
        if len(calls) == 3:
            interrupted.set()
            raise KeyboardInterrupt
        return real_up(self, img, **kw)

    monkeypatch.setattr(upscale_mod, "write_image", write_image)
    monkeypatch.setattr(Upscaler, "upscale_image", upscale_image)
    caplog.set_level(logging.INFO)
    report = tmp_path / "r.json"
    assert _cli(model_path, src, "-o", out, "--report", report) == 130
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"] and not _leftovers(tmp_path)
    assert [e["status"] for e in json.loads(report.read_text())] == ["ok", "ok"]
    assert "2 written, 0 skipped (output exists), 0 failed, 2 not done" in _messages(caplog)
