"""Issue 14: every bad input gets one clear line, option errors stop before any compute, interrupted
runs leave nothing behind. The bad files are made here, small, with a tiny random-weights model."""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import superres.apps.filejob as upscale_mod
from superres.inference.upscaler import Upscaler as _Upscaler
from superres.archs import build_generator
from superres.apps.cli import main
from superres.io.images import ImageData, encode_image, read_image
from superres.inference.weights import save_weights

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(14)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _cli(model_path, *args) -> int:
    return main(["upscale", *map(str, args), "--model", str(model_path), "--no-progress", "--tile", "32"])


def _rgb(h=10, w=12):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encoded(arr_or_im, fmt: str, **kw) -> bytes:
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png(width: int, height: int, depth: int = 8, idat: bytes = b"") -> bytes:
    """A PNG whose header says width x height; its pixel data is whatever `idat` is."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------------------------------------
# the bad-input corpus

def _refused_files(folder: Path) -> dict[str, str]:
    """name -> what it is; every one of these must be refused with one line."""
    folder.mkdir(parents=True)
    kinds: dict[str, str] = {}

    def put(name: str, data: bytes, what: str) -> None:
        (folder / name).write_bytes(data)
        kinds[name] = what

    big = RNG.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    png, jpg = _encoded(big, "PNG"), _encoded(big, "JPEG", quality=90)
    png16 = encode_image(ImageData(RNG.integers(0, 65536, (16, 16, 3), dtype=np.uint16)), "png")
    put("empty.png", b"", "zero-byte file")
    put("truncated.png", png[:len(png) // 2], "truncated 8-bit PNG")
    put("truncated16.png", png16[:len(png16) // 2], "truncated 16-bit PNG")
    put("truncated.jpg", jpg[:len(jpg) // 2], "truncated JPEG")
    put("header_only.jpg", jpg[:20], "JPEG cut after its first marker")
    put("text.png", b"just some notes, not a picture\n", "text file with a .png name")
    put("page.jpg", b"<html><body>404 Not Found</body></html>", "HTML error page saved as .jpg")
    put("noise.webp", RNG.integers(0, 256, 300, dtype=np.uint8).tobytes(), "random bytes named .webp")
    crc = bytearray(png)
    crc[20] ^= 0xFF   # inside IHDR's width: its CRC no longer matches
    put("bad_crc.png", bytes(crc), "PNG with a CRC mismatch")
    put("bad_zlib.png", _png(8, 8, idat=b"this is not zlib data"), "PNG whose pixel data is not zlib")
    put("zero_size.png", _png(0, 0, idat=zlib.compress(b"")), "PNG of 0x0 pixels")
    put("huge_header.png", _png(30000, 30000, idat=zlib.compress(b"\0" * 100)),
        "PNG header claiming 900 MP (140 KB files like it pass PIL's own check)")
    put("huge_header16.png", _png(20000, 20000, depth=16, idat=zlib.compress(b"\0" * 100)),
        "16-bit PNG header claiming 400 MP")
    rows = b"".join(b"\0" + bytes(8000 * 3) for _ in range(8000))   # filter byte + one black row
    put("bomb.png", _png(8000, 8000, idat=zlib.compress(rows, 9)), "real 64 MP bomb of 190 KB")
    put("bomb2.gif", b"GIF89a" + struct.pack("<HHBBB", 60000, 60000, 0, 0, 0) + b","
        + struct.pack("<HHHHB", 0, 0, 60000, 60000, 0) + b"\x02\x02\x44\x01\x00;", "GIF bomb header")
    put("too_big_output.png", _encoded(RNG.integers(0, 256, (300, 300, 3), dtype=np.uint8), "PNG"),
        "result over --max-output-pixels")
    for fmt, ext in (("GIF", "gif"), ("TIFF", "tif"), ("BMP", "bmp"), ("WEBP", "webp")):
        data = _encoded(big, fmt)
        # distinct stems: GIF and WEBP inputs are written as PNG, and two inputs never share an output
        put(f"truncated_{ext}.{ext}", data[:len(data) // 3], f"truncated {fmt}")
    (folder / "broken_link.png").symlink_to(folder / "deleted.png")
    kinds["broken_link.png"] = "broken symbolic link in a folder"
    os.mkfifo(folder / "pipe.png")
    kinds["pipe.png"] = "FIFO with an image name (reading it would hang)"
    return kinds


def _accepted_files(folder: Path) -> dict[str, tuple[int, int]]:
    """name -> expected output size; odd but valid images that must just work."""
    frames = [Image.fromarray(_rgb()) for _ in range(3)]
    cases = {
        "good.png": (Image.fromarray(_rgb()), "PNG", {}),
        "png_named.jpg": (Image.fromarray(_rgb()), "PNG", {}),   # wrong extension: content decides
        "static.gif": (Image.fromarray(_rgb()).quantize(16), "GIF", {}),
        "anim_gif.gif": (frames[0], "GIF", {"save_all": True, "append_images": frames[1:]}),
        "anim_webp.webp": (frames[0], "WEBP", {"save_all": True, "append_images": frames[1:]}),
        "animated_apng.png": (frames[0], "PNG", {"save_all": True, "append_images": frames[1:]}),
        "cmyk.jpg": (Image.fromarray(_rgb()).convert("CMYK"), "JPEG", {}),
        "one_pixel.png": (Image.fromarray(_rgb(1, 1)), "PNG", {}),
    }
    out = {}
    for name, (im, fmt, kw) in cases.items():
        (folder / name).write_bytes(_encoded(im, fmt, **kw))
        out[name] = (im.width * 4, im.height * 4)
    return out


def test_bad_input_corpus(tmp_path, model_path, caplog, capsys):
    src = tmp_path / "in"
    refused = _refused_files(src)
    accepted = _accepted_files(src)
    (tmp_path / "folder_named.png").mkdir()
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "direct_link.png").symlink_to(tmp_path / "nowhere.png")
    direct = {str(tmp_path / "folder_named.png"): "folder named like an image",
              str(tmp_path / "empty_folder"): "folder with no images",
              str(tmp_path / "missing.png"): "path that does not exist",
              str(tmp_path / "nomatch*.png"): "pattern matching nothing",
              str(tmp_path / "direct_link.png"): "broken symbolic link given directly"}
    assert len(refused) + len(direct) >= 22
    out, report = tmp_path / "out", tmp_path / "report.json"
    caplog.set_level(logging.INFO)
    code = _cli(model_path, src, *direct, "-o", out, "--report", report, "--max-output-pixels", "1M")
    assert code == 1
    errors = _errors(caplog)
    for name, what in list(refused.items()) + [(Path(p).name, w) for p, w in direct.items()]:
        lines = [e for e in errors if name in e]
        assert len(lines) == 1, f"{what} ({name}): {lines}"
        assert "\n" not in lines[0] and "Traceback" not in lines[0]
        assert not list(out.glob(Path(name).stem + ".*")), f"{what}: an output was written"
    assert len(errors) == len(refused) + len(direct), errors
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "Traceback" not in capsys.readouterr().err
    for name, size in accepted.items():
        written = list(out.glob(Path(name).stem + ".*"))
        assert len(written) == 1, f"{name}: {written}"
        img = read_image(written[0])
        assert (img.width, img.height) == size, name
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("only the first frame is upscaled" in n for n in notes) == 3
    entries = json.loads(report.read_text())
    status = {Path(e["input"]).name: e["status"] for e in entries}
    assert all(status[n] == "error" for n in refused) and all(status[n] == "ok" for n in accepted)
    assert all(status[Path(p).name] == "error" for p in direct)
    assert any(f"0 skipped (output exists), {len(errors)} failed" in r.getMessage() for r in caplog.records)
    assert not _leftovers(tmp_path)
    # the size checks read the header only: the messages say what to change
    assert any("huge_header.png: 30000x30000 is 900 megapixels, over --max-pixels (50 megapixels)" in e
               for e in errors)
    assert any("too_big_output.png: the result" in e and "--max-output-pixels" in e for e in errors)


@pytest.mark.skipif(IS_ROOT, reason="running as root: a file without read permission is still readable")
def test_unreadable_file(tmp_path, model_path, caplog):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb()).save(src / "ok.png")
    Image.fromarray(_rgb()).save(src / "secret.png")
    (src / "secret.png").chmod(0)
    assert _cli(model_path, src, "-o", tmp_path / "out") == 1
    assert [e for e in _errors(caplog)] == [f"{src / 'secret.png'}: cannot be read (Permission denied)"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ok.png"]


def test_out_of_memory_is_one_line_and_the_batch_goes_on(tmp_path, model_path, caplog, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(_rgb()).save(src / name)
    real = _Upscaler.upscale_image
    failures = {"a.png": MemoryError("Unable to allocate 9.31 GiB for an array"),
                "b.png": RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't "
                                      "allocate memory: you tried to allocate 40000000000 bytes.")}
    seen = iter(["a.png", "b.png", "c.png"])

    def upscale_image(self, img, **kw):
        e = failures.get(next(seen))
        if e is not None:
            raise e
        return real(self, img, **kw)

    monkeypatch.setattr(_Upscaler, "upscale_image", upscale_image)
    assert _cli(model_path, src, "-o", tmp_path / "out") == 1
    errors = _errors(caplog)
    assert len(errors) == 2 and all("out of memory" in e and "--tile" in e for e in errors), errors
    assert "a.png" in errors[0] and "b.png" in errors[1]
    assert not [r for r in caplog.records if r.exc_info]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["c.png"]


# ---------------------------------------------------------------------------------------------
# option errors: exit code 2 before any image is read or the model loaded

@pytest.fixture
def no_compute(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(_Upscaler, "from_pretrained", forbidden)


@pytest.mark.parametrize("option", [["--quality", "0"], ["--quality", "101"], ["--outscale", "0"],
                                    ["--outscale", "nan"], ["--tile", "-1"], ["--tile-overlap", "-2"],
                                    ["--width", "0"], ["--strength", "1.5"], ["--max-pixels", "-1"]])
def test_bad_option_values_are_usage_errors(tmp_path, model_path, capsys, no_compute, option):
    src = tmp_path / "in.png"
    Image.fromarray(_rgb()).save(src)
    with pytest.raises(SystemExit) as e:
        _cli(model_path, src, "-o", tmp_path / "o.png", *option)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option[0]}" in err and "example: superres upscale" in err
    assert not (tmp_path / "o.png").exists()


def test_output_that_cannot_work_is_refused_before_compute(tmp_path, model_path, caplog, no_compute):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(_rgb()).save(a)
    Image.fromarray(_rgb()).save(b)
    # two inputs into a file name: this used to create a folder named two.png
    assert _cli(model_path, a, b, "-o", tmp_path / "two.png") == 2
    assert not (tmp_path / "two.png").exists()
    assert "give one, e.g. -o" in _errors(caplog)[-1]
    # --format contradicting the extension: this used to write WebP bytes into x.png
    assert _cli(model_path, a, "-o", tmp_path / "x.png", "--format", "webp") == 2
    assert "name the output x.webp or drop --format" in _errors(caplog)[-1]
    assert not (tmp_path / "x.png").exists()
    # a folder below a file cannot be made
    (tmp_path / "file.txt").write_text("x")
    assert _cli(model_path, a, b, "-o", tmp_path / "file.txt" / "out") == 2
    assert "file.txt is a file" in _errors(caplog)[-1]
    # /proc takes no files, not even from root
    assert _cli(model_path, a, "-o", "/proc/foo.png") == 2
    assert _errors(caplog)[-1].startswith("cannot create files in /proc")
    assert not _leftovers(tmp_path)


@pytest.mark.skipif(IS_ROOT, reason="running as root: a folder without write permission is still writable")
def test_read_only_output_folder(tmp_path, model_path, caplog, no_compute):
    a = tmp_path / "a.png"
    Image.fromarray(_rgb()).save(a)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    assert _cli(model_path, a, "-o", tmp_path / "ro" / "x.png") == 2
    assert "cannot create files in" in _errors(caplog)[-1]


def test_write_failure_names_the_output(tmp_path, model_path, caplog):
    a = tmp_path / "in" / "a.png"
    a.parent.mkdir()
    Image.fromarray(_rgb()).save(a)
    (tmp_path / "out" / "a.png").mkdir(parents=True)   # the output's name is taken by a folder
    assert _cli(model_path, a.parent, "-o", tmp_path / "out", "--overwrite") == 1
    (line,) = _errors(caplog)
    assert line.startswith(f"{a}: could not write the output {tmp_path / 'out' / 'a.png'} (")
    assert ".tmp" not in line and not _leftovers(tmp_path)


def test_model_that_is_not_weights(tmp_path, caplog):
    a = tmp_path / "a.png"
    Image.fromarray(_rgb()).save(a)
    (tmp_path / "hostname").write_text("buildhost\n")
    assert main(["upscale", str(a), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "hostname")]) == 2
    (line,) = _errors(caplog)
    assert "hostname: not a weights file we can load" in line and "weights_only" not in line


def test_no_input_says_what_to_type(tmp_path, capsys, caplog):
    with pytest.raises(SystemExit) as e:
        main(["upscale"])
    assert e.value.code == 2
    assert "example: superres upscale photo.jpg -o photo_x4.png" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o.png")]) == 1
    assert _errors(caplog) == [f"{tmp_path / 'nope.png'}: no such file or folder",
                               "nothing to upscale; give image files, folders or patterns, e.g. "
                               "`superres upscale photo.jpg -o photo_x4.png`"]


def test_skipped_outputs_are_counted_apart(tmp_path, model_path, caplog):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb()).save(src / "a.png")
    Image.fromarray(_rgb()).save(src / "b.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"kept")
    caplog.set_level(logging.INFO)
    assert _cli(model_path, src, "-o", tmp_path / "out", "--report", tmp_path / "r.json") == 0
    assert "1 written, 1 skipped (output exists), 0 failed" in [r.getMessage() for r in caplog.records]
    assert [e["status"] for e in json.loads((tmp_path / "r.json").read_text())] == ["skipped", "ok"]
    assert (tmp_path / "out" / "a.png").read_bytes() == b"kept"


# ---------------------------------------------------------------------------------------------
# interrupted runs

def _subprocess_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "superres", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_first_output(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()):
            return
        time.sleep(0.02)
    raise AssertionError(f"no output appeared; exit {proc.poll()}")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -9), (signal.SIGTERM, 143)])
def test_kill_and_rerun_leaves_no_temp_files(tmp_path, model_path, sig, code):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(24):
        Image.fromarray(RNG.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(src / f"{i:02d}.png")
    out.mkdir()
    # what an earlier killed run left: our pattern with a process that no longer exists
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = out / f".05.png.superres-{int(dead.stdout)}-x1y2z3w4.tmp"
    stale.write_bytes(b"")
    args = ["upscale", str(src), "-o", str(out), "--model", str(model_path), "--no-progress", "--tile", "0"]
    proc = _subprocess_cli(*args)
    _wait_for_first_output(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    if sig != signal.SIGKILL:
        assert not _leftovers(out), "a signal we handle left a temp file"
        assert "Run the same command again" in err
    proc = _subprocess_cli(*args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert not _leftovers(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    for p in out.iterdir():
        assert read_image(p).width == 192


def test_ctrl_c_while_writing_leaves_no_temp_file(tmp_path, model_path, caplog, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(_rgb()).save(src / name)
    real = upscale_mod.write_image
    calls = []

    def write_image(path, img, **kw):
        calls.append(path)
        if len(calls) == 2:   # Ctrl-C in the middle of the second file's encoding
            monkeypatch.setattr("superres.io.images._write_png", _interrupt)
        return real(path, img, **kw)

    monkeypatch.setattr(upscale_mod, "write_image", write_image)
    out = tmp_path / "out"
    assert _cli(model_path, src, "-o", out, "--report", tmp_path / "r.json") == 130
    assert sorted(p.name for p in out.iterdir()) == ["a.png"] and not _leftovers(tmp_path)
    assert "interrupted by Ctrl-C" in _errors(caplog)[-1]
    assert [e["status"] for e in json.loads((tmp_path / "r.json").read_text())] == ["ok"]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------
# command-line polish

@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["upscale", "--quality", "0", "a.png", "-o", "b.png"],
                                  ["upscale"], ["upscale", "--help"]])
def test_help_version_and_usage_errors_do_not_import_torch(argv):
    code = ("import sys\nfrom superres.apps.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    sys.stderr.write(f'exit={e.code} torch={\"torch\" in sys.modules}')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=60)
    assert proc.stderr.endswith("torch=False"), proc.stderr
    if argv == ["--version"]:
        assert proc.stdout.startswith("superres 0.")


def test_interpolate_takes_model_names(tmp_path, monkeypatch):
    from superres.inference import models

    torch.manual_seed(1)
    for name in ("a", "b"):
        save_weights(tmp_path / f"{name}.safetensors", build_generator("msrresnet", num_feat=8, num_block=1))
    # an absolute file name replaces the pretrained folder in ModelEntry.path
    monkeypatch.setitem(models.MODELS, "tiny-a", models.ModelEntry("tiny-a", str(tmp_path / "a.safetensors"),
                                                                  4, ""))
    monkeypatch.setitem(models.MODELS, "tiny-b", models.ModelEntry("tiny-b", str(tmp_path / "b.safetensors"),
                                                                  4, ""))
    out = tmp_path / "mix.safetensors"
    assert main(["interpolate", "tiny-a", "tiny-b", "--alpha", "0.5", "-o", str(out)]) == 0
    assert out.is_file()


def test_models_all_lists_what_paths_can_load(capsys):
    assert main(["models"]) == 0
    plain = capsys.readouterr().out
    assert main(["models", "--all"]) == 0
    full = capsys.readouterr().out
    assert full.startswith(plain.rstrip("\n")) and full != plain
    for arch in ("msrresnet", "rrdbnet", "compact"):
        assert f"\n  {arch} " in full


def test_eval_no_progress(tmp_path, capsys):
    data = tmp_path / "set"
    data.mkdir()
    for i in range(2):
        Image.fromarray(_rgb(16, 16)).save(data / f"{i}.png")
    assert main(["eval", "--model", "bicubic", "--data", str(data), "--scale", "2", "--no-progress"]) == 0
    assert "eval:" not in capsys.readouterr().err


def test_prepare_skips_images_smaller_than_the_crop(tmp_path, caplog):
    (tmp_path / "hr").mkdir()
    Image.fromarray(_rgb(100, 120)).save(tmp_path / "hr" / "big.png")
    Image.fromarray(_rgb(30, 200)).save(tmp_path / "hr" / "small.png")
    assert main(["prepare", str(tmp_path / "hr"), "-o", str(tmp_path / "sub"), "--crop", "48"]) == 0
    assert not list((tmp_path / "sub").glob("small_*")) and list((tmp_path / "sub").glob("big_*"))
    assert any("small.png: 200x30 is smaller than --crop 48; skipped" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


# ---------------------------------------------------------------------------------------------
# no output or report ever replaces an input or another output of the same run

def _tiny_weights(tmp_path) -> Path:
    path = tmp_path / "tiny.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_weights(path, build_generator("msrresnet", upscale=2, num_feat=8, num_block=1))
    return path


def _img(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(path)
    return path


def test_same_named_inputs_from_two_folders_both_get_an_output(tmp_path):
    """Camera folders DCIM/100 and DCIM/101 both hold IMG_0001.png: each output goes under its input's
    folder name, both are written, and --overwrite cannot make one replace the other."""
    a, b = _img(tmp_path / "DCIM/100/IMG_0001.png", 1), _img(tmp_path / "DCIM/101/IMG_0001.png", 2)
    _img(tmp_path / "DCIM/101/IMG_0002.png", 3)
    out = tmp_path / "out"
    for extra in ([], ["--overwrite"]):
        rc = main(["upscale", str(a.parent), str(b.parent), "-o", str(out) + "/", "--model",
                   str(_tiny_weights(tmp_path)), "--no-progress", *extra])
        assert rc == 0
        got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
        assert got == ["100/IMG_0001.png", "101/IMG_0001.png", "101/IMG_0002.png"]
        one, two = (np.asarray(Image.open(out / d / "IMG_0001.png")) for d in ("100", "101"))
        assert one.shape == (16, 20, 3) and not np.array_equal(one, two)   # two different results


def test_same_named_files_in_two_folders_are_mirrored(tmp_path):
    a, b = _img(tmp_path / "a/x.png", 1), _img(tmp_path / "b/x.png", 2)
    out = tmp_path / "out"
    assert main(["upscale", str(a), str(b), "-o", str(out), "--model", str(_tiny_weights(tmp_path)),
                 "--no-progress"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a/x.png", "b/x.png"]


@pytest.mark.parametrize("which", ["input", "output"])
def test_report_never_replaces_an_image_of_the_run(tmp_path, caplog, which):
    src = _img(tmp_path / "in/x.png", 1)
    out = tmp_path / "out"
    _img(out / "x.png", 9)   # an output from an earlier run, replaced only by its own image
    before = {p: p.read_bytes() for p in (src, out / "x.png")}
    report = src if which == "input" else out / "x.png"
    rc = main(["upscale", str(src), "-o", str(out) + "/", "--overwrite", "--report", str(report),
               "--model", str(_tiny_weights(tmp_path)), "--no-progress"])
    assert rc == 2
    assert {p: p.read_bytes() for p in before} == before
    assert any(f"names an {which} of this run" in r.getMessage() for r in caplog.records)


def test_report_in_an_unwritable_place_is_refused_before_compute(tmp_path, monkeypatch, caplog):
    src = _img(tmp_path / "x.png", 1)
    monkeypatch.setattr(_Upscaler, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    # the report's folder is a file: found before the model loads, not after all the compute
    rc = main(["upscale", str(src), "-o", str(tmp_path / "y.png"), "--report", str(src / "r.json"),
               "--model", str(_tiny_weights(tmp_path)), "--no-progress"])
    assert rc == 2 and not (tmp_path / "y.png").exists()


@pytest.mark.parametrize("how", ["same-name", "folder"])
def test_video_output_never_replaces_its_input(tmp_path, monkeypatch, caplog, how):
    av = pytest.importorskip("av")
    clip = tmp_path / "same.mp4"
    with av.open(str(clip), "w") as c:
        s = c.add_stream("libx264", rate=5)
        s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * i, np.uint8), format="rgb24")
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    before = clip.read_bytes()
    monkeypatch.setattr(_Upscaler, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    monkeypatch.chdir(tmp_path)
    out = "same.mp4" if how == "same-name" else "./"
    rc = main(["upscale", "same.mp4", "-o", out, "--overwrite", "--model", str(_tiny_weights(tmp_path)),
               "--no-progress"])
    assert rc == 2 and clip.read_bytes() == before
    assert any("names the input video" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# silent wrong results and tracebacks

def test_eval_refuses_an_lr_of_another_scale(tmp_path):
    """An x8 LR named x4 used to score a corner crop of the HR (12.9 dB, exit 0)."""
    from superres.evaluation.protocol import load_pairs

    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _img(hr / "a.png", 1)
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(hr / "a.png")
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(_img(lr / "a.png", 2))   # x8, not x4
    with pytest.raises(ValueError, match=r"a.png is 5x4, but .*a.png \(40x32\) at x4 needs an LR of 10x8"):
        load_pairs(hr, 4, lr_dir=lr)
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(lr / "a.png")
    assert load_pairs(hr, 4, lr_dir=lr)[0].hr.shape == (32, 40, 3)


@pytest.mark.parametrize("name", ["фото.png", "🐈 cat.png", 'quote"and\\.png'])
def test_serve_answers_any_file_name(name):
    pytest.importorskip("fastapi")
    from urllib.parse import unquote

    from fastapi.testclient import TestClient

    from superres.apps.serve import ModelPool, ServiceConfig, create_app, content_disposition

    header = content_disposition(name)
    header.encode("latin-1")   # what the server must be able to send
    assert unquote(header.split("filename*=UTF-8''")[1]) == name
    if '"' in name:
        return   # the test client itself percent-encodes quotes in multipart names
    torch.manual_seed(0)
    up = _Upscaler(build_generator("msrresnet", upscale=2, num_feat=8, num_block=1), device="cpu",
                   precision="fp32")
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, "PNG")
    with TestClient(create_app(ModelPool(upscalers={"tiny": up}), ServiceConfig())) as client:
        r = client.post("/v1/upscale", files={"file": (name, png.getvalue())})
    assert r.status_code == 200, r.text
    stem = name.rsplit(".", 1)[0]
    assert unquote(r.headers["content-disposition"].split("filename*=UTF-8''")[1]).startswith(stem)


@pytest.mark.parametrize("item,match", [
    ("log.log_every=0", "log.log_every = 0 must be"), ("log.ckpt_every=0", "log.ckpt_every = 0 must be"),
    ("log.val_every=-1", "log.val_every = -1 must be"), ("optim.lr_g=nan", "optim.lr_g = nan must be"),
    ("optim.lr_d=-1e-4", "optim.lr_d = -0.0001 must be"), ("data.num_workers=-1", "data.num_workers = -1 must be"),
])
def test_training_config_values_that_used_to_crash_are_config_errors(item, match):
    from superres.training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=match):
        load_config(None, [item])


# -- formats we do not read, unusual TIFF samples, EXIF a JPEG cannot hold ------------------------

def _tiff(path, arr):
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)
    return path


def test_unsupported_formats_and_integer_tiffs_get_a_report_line_each(tmp_path, model_path):
    src = tmp_path / "in"
    rng = np.random.default_rng(0)
    _tiff(src / "i16.tif", rng.integers(-3000, 3000, (12, 12)).astype(np.int16))
    _tiff(src / "u32.tif", rng.integers(0, 2**31, (12, 12)).astype(np.uint32))
    (src / "a.avif").write_bytes(b"\0\0\0\x1cftypavif" + b"\0" * 40)
    (src / "b.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 40)
    (src / "c.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg' width='8' height='8'/>")
    (src / "renamed.png").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 40)   # a HEIC by its bytes
    Image.fromarray(rng.integers(0, 255, (12, 12, 3)).astype(np.uint8)).save(src / "ok.png")
    report = tmp_path / "r.json"
    assert _cli(model_path, src, "-o", tmp_path / "out", "--report", report) == 1
    entries = {Path(e["input"]).name: e for e in json.loads(report.read_text())}
    assert set(entries) == {"i16.tif", "u32.tif", "a.avif", "b.heic", "c.svg", "renamed.png", "ok.png"}
    assert entries["ok.png"]["status"] == "ok"
    for name, words in [("i16.tif", "16-bit signed integer samples are not supported"),
                        ("u32.tif", "32-bit unsigned integer samples are not supported"),
                        ("a.avif", "AVIF images are not supported"), ("b.heic", "HEIC images are not supported"),
                        ("c.svg", "SVG (vector) images are not supported"),
                        ("renamed.png", "HEIC images are not supported")]:
        assert entries[name]["status"] == "error" and words in entries[name]["error"], entries[name]
        assert entries[name]["error"].startswith(str(src / name))
    assert not (tmp_path / "out" / "i16.tif").exists()


def test_float_tiff_is_read_as_float_and_comes_back_16_bit(tmp_path, model_path):
    import tifffile

    arr = np.random.default_rng(1).random((10, 12, 3)).astype(np.float32)
    src = _tiff(tmp_path / "f.tif", arr)
    img = read_image(src)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (10, 12, 3)
    assert np.array_equal(img.pixels, arr)
    assert _cli(model_path, src, "-o", tmp_path / "f_x4.tif") == 0
    out = tifffile.imread(tmp_path / "f_x4.tif")
    assert out.shape == (40, 48, 3) and out.dtype == np.uint16


def test_tifffile_shape_note_is_not_copied_into_an_output_of_another_size(tmp_path, model_path):
    import tifffile

    src = _tiff(tmp_path / "s.tif", np.random.default_rng(2).integers(0, 255, (10, 10, 3)).astype(np.uint8))
    with tifffile.TiffFile(src) as t:
        assert '"shape"' in t.pages.first.description   # what tifffile writes by default
    assert _cli(model_path, src, "-o", tmp_path / "s_x4.tif") == 0
    with tifffile.TiffFile(tmp_path / "s_x4.tif") as t:
        assert "shape" not in (t.pages.first.description or "") and t.pages.first.shape == (40, 40, 3)


def test_jpeg_output_drops_exif_over_64_kb_with_a_warning(tmp_path, model_path, caplog):
    exif = Image.Exif()
    exif[0x010E] = "x" * 70000   # ImageDescription: 70 KB of EXIF
    src = tmp_path / "big_exif.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (10, 10, 3)).astype(np.uint8)).save(
        src, exif=exif.tobytes())
    assert _cli(model_path, src, "-o", tmp_path / "o.jpg") == 0
    assert Image.open(tmp_path / "o.jpg").size == (40, 40)
    assert any("does not fit in a JPEG's 64 KB APP1 segment" in r.getMessage() for r in caplog.records)
    assert _cli(model_path, src, "-o", tmp_path / "o.png") == 0   # PNG keeps it
    assert Image.open(tmp_path / "o.png").getexif()[0x010E] == "x" * 70000
