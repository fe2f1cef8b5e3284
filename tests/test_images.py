"""Image files in and out: formats, bit depth, gray, palette/CMYK, EXIF orientation, ICC, alpha, errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from superres.io.fs import remove_stale_temp_files
from superres.io.images import (ImageData, ImageError, ImageInfo, decode_image, encode_image, image_from_array,
                                image_from_pil, probe_image, read_image, write_image)

RNG = np.random.default_rng(1234)
EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp"}


def _rgb(h=20, w=30, dtype=np.uint8):
    return RNG.integers(0, np.iinfo(dtype).max + 1, (h, w, 3), dtype=dtype)


def _smooth_rgb(h=24, w=32):
    """Smooth content so that lossy formats stay close to it."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 255 // (w + h - 2)],
                    axis=2).astype(np.uint8)


def _pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# ---------------------------------------------------------------------------------------------
# round trips

@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_lossless_round_trip_rgb(tmp_path, fmt):
    x = _rgb()
    path = tmp_path / f"a.{EXT[fmt]}"
    write_image(path, ImageData(x))
    img = read_image(path)
    assert img.format == fmt
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == (20, 30, 3)
    np.testing.assert_array_equal(img.pixels, x)
    # what we wrote is a normal file for PIL too
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), x)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_round_trip_rgb(tmp_path, fmt):
    x = _smooth_rgb()
    path = tmp_path / f"a.{EXT[fmt]}"
    write_image(path, ImageData(x), quality=100)
    img = read_image(path)
    assert img.format == fmt and img.pixels.shape == x.shape and img.pixels.dtype == np.uint8
    assert np.abs(img.pixels.astype(int) - x).mean() < 3


def test_format_option_overrides_extension(tmp_path):
    path = tmp_path / "no_ext_match.bin"
    write_image(path, ImageData(_rgb()), format="png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_unknown_output_extension_is_an_error(tmp_path):
    with pytest.raises(ImageError, match="xyz"):
        write_image(tmp_path / "a.xyz", ImageData(_rgb()))


# ---------------------------------------------------------------------------------------------
# 16 bits

@pytest.mark.parametrize("fmt", ["png", "tif"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_16bit_round_trip_is_exact(tmp_path, fmt, channels, with_alpha):
    x = RNG.integers(0, 65536, (9, 13, channels), dtype=np.uint16)
    a = RNG.integers(0, 65536, (9, 13), dtype=np.uint16) if with_alpha else None
    path = tmp_path / f"a.{fmt}"
    write_image(path, ImageData(x, a))
    img = read_image(path)
    assert img.pixels.dtype == np.uint16 and img.bit_depth == 16
    # 16-bit gray+alpha TIFF is written as RGBA on purpose (PIL cannot read the gray+alpha form)
    got = img.pixels[..., :1] if (fmt == "tif" and channels == 1 and with_alpha) else img.pixels
    np.testing.assert_array_equal(got, x)
    if with_alpha:
        np.testing.assert_array_equal(img.alpha, a)
    else:
        assert img.alpha is None


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16bit_decided_by_file_depth_not_values(tmp_path, fmt):
    # every value fits in 8 bits, yet the file is 16-bit, so the image stays 16-bit
    x = RNG.integers(0, 256, (8, 10, 3), dtype=np.uint16)
    path = tmp_path / f"small.{fmt}"
    write_image(path, ImageData(x))
    img = read_image(path)
    assert img.pixels.dtype == np.uint16
    np.testing.assert_array_equal(img.pixels, x)
    out = tmp_path / f"again.{fmt}"
    write_image(out, img)
    assert read_image(out).pixels.dtype == np.uint16


def test_16bit_png_written_by_pil_gray_and_rgb_by_pil_reader(tmp_path):
    g = RNG.integers(0, 256, (10, 12), dtype=np.uint16)   # small values, 16-bit file
    im = Image.frombytes("I;16", (12, 10), g.astype("<u2").tobytes())
    path = tmp_path / "g16.png"
    im.save(path)
    img = read_image(path)
    assert img.pixels.dtype == np.uint16 and img.channels == 1
    np.testing.assert_array_equal(img.pixels[..., 0], g)
    # our 16-bit RGB PNG is big-endian as the standard says: PIL's 8-bit view is the high bytes
    x = RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    write_image(tmp_path / "c16.png", ImageData(x))
    with Image.open(tmp_path / "c16.png") as im2:
        np.testing.assert_array_equal(np.asarray(im2), (x >> 8).astype(np.uint8))


def test_16bit_tiff_from_pil(tmp_path):
    g = RNG.integers(0, 65536, (10, 12), dtype=np.uint16)
    Image.frombytes("I;16", (12, 10), g.astype("<u2").tobytes()).save(tmp_path / "g.tif")
    img = read_image(tmp_path / "g.tif")
    assert img.pixels.dtype == np.uint16
    np.testing.assert_array_equal(img.pixels[..., 0], g)


# ---------------------------------------------------------------------------------------------
# gray, palette, CMYK, alpha

@pytest.mark.parametrize("fmt", ["png", "jpg", "tif", "bmp"])
def test_grayscale_stays_grayscale(tmp_path, fmt):
    g = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (12, 1))[..., None]
    path = tmp_path / f"g.{fmt}"
    write_image(path, ImageData(g), quality=100)
    img = read_image(path)
    assert img.channels == 1
    assert np.abs(img.pixels.astype(int) - g).max() <= 2
    with Image.open(path) as im:
        assert im.mode == "L"


def test_gray_pil_image_stays_gray():
    im = Image.fromarray(RNG.integers(0, 256, (5, 6), dtype=np.uint8), "L")
    img = decode_image(_pil_bytes(im, "PNG"))
    assert img.channels == 1 and img.alpha is None


def test_palette_converted_to_rgb(tmp_path):
    x = _rgb()
    p = Image.fromarray(x).quantize(16)
    img = decode_image(_pil_bytes(p, "PNG"), "p.png")
    assert img.channels == 3 and img.alpha is None and img.pixels.dtype == np.uint8
    np.testing.assert_array_equal(img.pixels, np.asarray(p.convert("RGB")))


def test_palette_with_transparency_gets_alpha():
    x = _rgb()
    p = Image.fromarray(x).quantize(16)
    img = decode_image(_pil_bytes(p, "PNG", transparency=0), "pt.png")
    assert img.channels == 3 and img.alpha is not None
    idx = np.asarray(p)
    np.testing.assert_array_equal(img.alpha == 0, idx == 0)
    assert set(np.unique(img.alpha)) <= {0, 255}


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_converted_to_rgb(fmt):
    x = _smooth_rgb()
    cmyk = Image.fromarray(x).convert("CMYK")
    img = decode_image(_pil_bytes(cmyk, fmt, **({"quality": 100} if fmt == "JPEG" else {})), "c")
    assert img.channels == 3 and img.pixels.dtype == np.uint8
    assert np.abs(img.pixels.astype(int) - np.asarray(cmyk.convert("RGB")).astype(int)).mean() < 3
    assert img.icc_profile is None   # a CMYK profile would not describe RGB pixels


@pytest.mark.parametrize("fmt", ["png", "webp", "tif", "bmp"])
def test_alpha_kept(tmp_path, fmt):
    x, a = _smooth_rgb(), RNG.integers(0, 256, (24, 32), dtype=np.uint8)
    a[:4] = 0
    a[-4:] = 255
    path = tmp_path / f"rgba.{fmt}"
    write_image(path, ImageData(x, a), quality=100)
    img = read_image(path)
    assert img.alpha is not None, f"{fmt}: alpha lost"
    assert np.abs(img.alpha.astype(int) - a).max() <= 1
    assert img.channels == 3


def test_gray_alpha_png(tmp_path):
    g, a = RNG.integers(0, 256, (6, 7, 1), dtype=np.uint8), RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    write_image(tmp_path / "la.png", ImageData(g, a))
    img = read_image(tmp_path / "la.png")
    assert img.channels == 1
    np.testing.assert_array_equal(img.pixels, g)
    np.testing.assert_array_equal(img.alpha, a)


def test_jpeg_drops_alpha_but_writes():
    img = decode_image(encode_image(ImageData(_smooth_rgb(), np.full((24, 32), 7, np.uint8)), "jpg"))
    assert img.alpha is None and img.channels == 3


# ---------------------------------------------------------------------------------------------
# EXIF orientation, EXIF and ICC carried

def _exif(orientation: int) -> Image.Exif:
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = "TestMaker"
    return ex


@pytest.mark.parametrize("orientation,op", [
    (3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]), (5, lambda a: a.swapaxes(0, 1))])
def test_exif_orientation_applied_png(orientation, op):
    x = _rgb(20, 30)
    img = decode_image(_pil_bytes(Image.fromarray(x), "PNG", exif=_exif(orientation)), "o.png")
    np.testing.assert_array_equal(img.pixels, op(x))
    # PIL agrees on what the orientation means
    with Image.open(io.BytesIO(_pil_bytes(Image.fromarray(x), "PNG", exif=_exif(orientation)))) as im:
        np.testing.assert_array_equal(img.pixels, np.asarray(ImageOps.exif_transpose(im)))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF"])
def test_exif_orientation_6_rotates(fmt):
    x = _smooth_rgb(24, 32)
    kw = {} if fmt == "TIFF" else {"quality": 100}
    img = decode_image(_pil_bytes(Image.fromarray(x), fmt, exif=_exif(6), **kw), f"o.{fmt}")
    assert img.pixels.shape == (32, 24, 3)
    assert np.abs(img.pixels.astype(int) - np.rot90(x, -1)).mean() < 4


@pytest.mark.parametrize("out_fmt", ["jpg", "png", "webp"])
def test_exif_carried_with_orientation_reset(tmp_path, out_fmt):
    x = _smooth_rgb(24, 32)
    src = tmp_path / "in.jpg"
    Image.fromarray(x).save(src, quality=100, exif=_exif(6))
    img = read_image(src)
    assert img.exif is not None
    out = tmp_path / f"out.{out_fmt}"
    write_image(out, img)
    with Image.open(out) as im:
        assert im.size == (24, 32)   # rotated pixels ...
        ex = im.getexif()
        assert ex.get(0x0112) == 1   # ... and orientation 1, so viewers do not rotate twice
        assert ex.get(0x010F) == "TestMaker"
    assert read_image(out).pixels.shape == (32, 24, 3)


@pytest.mark.parametrize("out_fmt", ["jpg", "png", "webp", "tif"])
def test_icc_carried(tmp_path, out_fmt):
    icc = _srgb_icc()
    src = tmp_path / "in.png"
    Image.fromarray(_smooth_rgb()).save(src, icc_profile=icc)
    img = read_image(src)
    assert img.icc_profile == icc
    write_image(tmp_path / f"out.{out_fmt}", img)
    with Image.open(tmp_path / f"out.{out_fmt}") as im:
        assert im.info.get("icc_profile") == icc
    assert read_image(tmp_path / f"out.{out_fmt}").icc_profile == icc


def test_rgb_icc_not_attached_to_gray_output():
    img = ImageData(np.zeros((4, 4, 1), np.uint8), icc_profile=_srgb_icc())
    assert decode_image(encode_image(img, "png")).icc_profile is None


def test_image_from_pil_keeps_icc():
    im = Image.fromarray(_rgb())
    im.info["icc_profile"] = _srgb_icc()
    assert image_from_pil(im).icc_profile == _srgb_icc()


# ---------------------------------------------------------------------------------------------
# bad files

def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _png_bytes():
    return encode_image(ImageData(_rgb()), "png")


@pytest.mark.parametrize("name,make", [
    ("empty.png", lambda: b""),
    ("text.png", lambda: b"this is not an image at all, just some text\n" * 3),
    ("truncated.png", lambda: _png_bytes()[: len(_png_bytes()) // 2]),
    ("truncated.jpg", lambda: (lambda j: j[: len(j) // 2])(encode_image(ImageData(_rgb(64, 64)), "jpg"))),
    ("garbage.tif", lambda: b"II*\x00" + bytes(RNG.integers(0, 256, 200, dtype=np.uint8))),
    ("header_only.png", lambda: _png_bytes()[:40]),
])
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")   # PIL's own warning on the garbage TIFF
def test_bad_files_raise_image_error_naming_the_file(tmp_path, name, make):
    path = _write(tmp_path / name, make())
    with pytest.raises(ImageError) as e:
        read_image(path)
    assert str(path) in str(e.value)


def test_truncated_16bit_png_raises_image_error(tmp_path):
    data = encode_image(ImageData(RNG.integers(0, 65536, (30, 30, 3), dtype=np.uint16)), "png")
    path = _write(tmp_path / "t16.png", data[: len(data) - 30])
    with pytest.raises(ImageError, match="t16.png"):
        read_image(path)


def test_missing_file_and_folder_raise_image_error(tmp_path):
    with pytest.raises(ImageError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)


# ---------------------------------------------------------------------------------------------
# reliability (issue 14): GIF, animations, non-files, header probing, temp files

def test_static_gif_reads():
    # PIL's GIF tiles carry (bits, interlace, ...) instead of a raw mode: this was a TypeError
    im = Image.fromarray(_smooth_rgb()).quantize(16)
    img = decode_image(_pil_bytes(im, "GIF"), "x.gif")
    assert (img.width, img.height, img.channels) == (32, 24, 3) and img.format == "GIF"
    assert np.array_equal(img.pixels, np.asarray(im.convert("RGB")))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_gives_its_first_frame_with_a_note(fmt, caplog):
    frames = [Image.new("RGB", (16, 12), (60 * i, 255 - 60 * i, 20)) for i in range(3)]
    data = _pil_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
    img = decode_image(data, "anim." + fmt.lower())
    assert (img.width, img.height) == (16, 12)
    assert np.abs(img.pixels.astype(int) - (0, 255, 20)).max() <= 2
    notes = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert notes == [f"anim.{fmt.lower()}: animated {fmt} with 3 frames; only the first frame is upscaled"]


def test_probe_reads_the_header_only(tmp_path):
    import struct
    import zlib

    # a PNG that claims 40000 x 30000 pixels: decoding it would need gigabytes
    ihdr = struct.pack(">IIBBBBB", 40000, 30000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk
                                        + struct.pack(">I", zlib.crc32(chunk)))
    info = probe_image(tmp_path / "huge.png")
    assert (info.width, info.height, info.frames, info.format) == (40000, 30000, 1, "PNG")
    frames = [Image.new("RGB", (5, 4), (i, i, i)) for i in range(4)]
    (tmp_path / "a.png").write_bytes(_pil_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:]))
    assert probe_image(tmp_path / "a.png").frames == 4
    (tmp_path / "a.gif").write_bytes(_pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    assert probe_image(tmp_path / "a.gif") == ImageInfo(5, 4, 4, "GIF")
    (tmp_path / "t.jpg").write_text("<html>not found</html>")
    with pytest.raises(ImageError, match=r"t\.jpg: not an image file"):
        probe_image(tmp_path / "t.jpg")


def test_non_files_are_refused_by_type(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")   # reading it would block forever
    with pytest.raises(ImageError, match=r"pipe\.png: not a regular file"):
        read_image(tmp_path / "pipe.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageError, match=r"link\.png: broken symbolic link .*gone\.png"):
        read_image(tmp_path / "link.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match=r"dir\.png: is a folder"):
        probe_image(tmp_path / "dir.png")


def test_write_error_names_the_output_not_the_temp_file(tmp_path):
    target = tmp_path / "missing_folder" / "out.png"
    with pytest.raises(OSError) as e:
        write_image(target, ImageData(_rgb()))
    assert e.value.filename == str(target) and ".tmp" not in str(e.value)


def test_stale_temp_files_of_dead_runs_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".a.png.superres-{dead_pid}-abc_1234.tmp"
    legacy = tmp_path / ".b.png.k3j_x9q2.tmp"
    live = tmp_path / f".c.png.superres-{os.getppid()}-abcd1234.tmp"   # a running process's
    mine = tmp_path / f".d.png.superres-{os.getpid()}-abcd1234.tmp"
    keep = [live, mine, tmp_path / ".e.png.k3j_x9q2.tmp", tmp_path / "notes.tmp",
            tmp_path / f".a.png.superres-{dead_pid}-toolongname.tmp"]
    for p in [stale, legacy] + keep:
        p.write_bytes(b"")
    removed = remove_stale_temp_files(tmp_path, {"b.png"})
    assert sorted(removed) == sorted([stale, legacy])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)


def test_write_image_leaves_no_temp_file_when_interrupted(tmp_path, monkeypatch):
    import superres.io.images as images_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(images_mod, "_write_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "x.png", ImageData(_rgb()))
    assert list(tmp_path.iterdir()) == []


def _exif_with_thumbnail(orientation: int) -> tuple[bytes, bytes]:
    """(EXIF with Make, the orientation and an IFD1 thumbnail, the thumbnail's JPEG bytes).

    Built by hand because PIL writes no IFD1; little-endian TIFF layout: IFD0 (2 entries) at 8, the
    Make string at 38, IFD1 (2 entries) at 48, the thumbnail at 78.
    """
    import struct

    thumb = _pil_bytes(Image.fromarray(_smooth_rgb(6, 8)), "JPEG")
    make = b"TestMaker\x00"
    ifd0 = struct.pack("<H", 2) + struct.pack("<HHII", 0x010F, 2, len(make), 38) \
        + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 48)
    ifd1 = struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, 78) \
        + struct.pack("<HHII", 0x0202, 4, 1, len(thumb)) + struct.pack("<I", 0)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd0 + make + ifd1 + thumb, thumb


def _thumbnail_of(path) -> dict:
    from PIL import ExifTags

    with Image.open(path) as im:
        return dict(im.getexif().get_ifd(ExifTags.IFD.IFD1))


def test_rotated_jpeg_drops_its_unrotated_exif_thumbnail(tmp_path):
    x = _smooth_rgb(24, 32)
    exif, thumb = _exif_with_thumbnail(6)
    src = tmp_path / "in.jpg"
    Image.fromarray(x).save(src, quality=100, exif=exif)
    assert _thumbnail_of(src).get(0x0202) == len(thumb)   # the input really has one
    img = read_image(src)
    out = tmp_path / "out.jpg"
    write_image(out, img)
    assert _thumbnail_of(out) == {}   # it showed the stored, unturned picture
    with Image.open(out) as im:
        assert im.size == (24, 32) and im.getexif().get(0x010F) == "TestMaker"


def test_upright_jpeg_keeps_its_exif_thumbnail(tmp_path):
    exif, thumb = _exif_with_thumbnail(1)
    src = tmp_path / "in.jpg"
    Image.fromarray(_smooth_rgb(24, 32)).save(src, quality=100, exif=exif)
    write_image(tmp_path / "out.jpg", read_image(src))
    assert _thumbnail_of(tmp_path / "out.jpg").get(0x0202) == len(thumb)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_output_keeps_descriptive_exif(tmp_path, dtype):
    src = tmp_path / "in.jpg"
    Image.fromarray(_smooth_rgb(24, 32)).save(src, quality=100, exif=_exif(6))
    img = read_image(src)
    img.pixels = img.pixels.astype(dtype) * (257 if dtype == np.uint16 else 1)
    out = tmp_path / "out.tif"
    write_image(out, img)
    with Image.open(out) as im:   # another reader sees the tag ...
        assert im.getexif().get(0x010F) == "TestMaker"
    back = read_image(out)        # ... and so do we, with the turned pixels at full depth
    np.testing.assert_array_equal(back.pixels, img.pixels)
    again = Image.Exif()
    again.load(b"Exif\x00\x00" + back.exif)
    assert again.get(0x010F) == "TestMaker"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_output_keeps_camera_settings_and_gps(tmp_path, dtype):
    """The EXIF directory (exposure, aperture, ISO, dates) and the GPS directory survive a JPEG ->
    TIFF upscale, at 8 and 16 bits, for Pillow and tifffile alike."""
    import tifffile

    exif = Image.Exif()
    exif[0x010F] = "TestMaker"
    camera = exif.get_ifd(0x8769)
    camera.update({0x829A: 1 / 125, 0x829D: 2.8, 0x8827: 400, 0x9003: "2024:05:06 07:08:09"})
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.5)})
    src = tmp_path / "in.jpg"
    Image.fromarray(_smooth_rgb(24, 32)).save(src, quality=100, exif=exif)
    img = read_image(src)
    img.pixels = img.pixels.astype(dtype) * (257 if dtype == np.uint16 else 1)
    out = tmp_path / "out.tif"
    write_image(out, img)
    with Image.open(out) as im:
        got = im.getexif()
        assert got.get(0x010F) == "TestMaker"
        assert dict(got.get_ifd(0x8769)) == {0x829A: 0.008, 0x829D: 2.8, 0x8827: 400, 0x9003: "2024:05:06 07:08:09"}
        assert dict(got.get_ifd(0x8825)) == {1: "N", 2: (52.0, 31.0, 12.5)}
    with tifffile.TiffFile(out) as tf:
        assert {"ExifTag", "GPSTag", "Make"} <= {t.name for t in tf.pages[0].tags}
    np.testing.assert_array_equal(read_image(out).pixels, img.pixels)


@pytest.mark.parametrize("kw,premultiplied", [
    ({"compression": "lzw"}, False), ({"compression": "zlib", "planarconfig": "separate"}, False),
    ({"compression": "lzw"}, True)])
def test_16bit_rgba_tiff_from_other_writers(tmp_path, kw, premultiplied):
    """LZW (what image editors write), planar layout and premultiplied alpha, in full 16 bits."""
    import tifffile

    px, alpha = _rgb(12, 10, np.uint16), np.full((12, 10), 65535, np.uint16)
    alpha[0, :] = 32768
    stored = np.concatenate([px, alpha[..., None]], axis=2)
    if premultiplied:
        stored[..., :3] = np.round(px * (alpha[..., None] / 65535.0)).astype(np.uint16)
    if kw.get("planarconfig") == "separate":
        stored = np.moveaxis(stored, -1, 0)
    tifffile.imwrite(tmp_path / "x.tif", stored, photometric="rgb",
                     extrasamples=("assocalpha" if premultiplied else "unassalpha",), **kw)
    img = read_image(tmp_path / "x.tif")
    assert img.pixels.dtype == np.uint16
    np.testing.assert_array_equal(img.alpha, alpha)
    if premultiplied:   # divided out again: within rounding of the half-transparent row
        assert np.abs(img.pixels.astype(int) - px).max() <= 2
        np.testing.assert_array_equal(img.pixels[1:], px[1:])
    else:
        np.testing.assert_array_equal(img.pixels, px)


def test_png_level_trades_bytes_for_time_never_pixels():
    img = image_from_array(_smooth_rgb(48, 64))
    fast, small = encode_image(img, "png", png_level=1), encode_image(img, "png", png_level=9)
    assert len(fast) > len(small)
    for data in (fast, small, encode_image(img, "png")):
        np.testing.assert_array_equal(decode_image(data).pixels, img.pixels)
    with pytest.raises(ImageError, match=r"png_level=10; allowed values: 0..9"):
        encode_image(img, "png", png_level=10)


@pytest.mark.parametrize("depth", [np.uint8, np.uint16])
def test_png_strips_encode_on_threads_to_the_same_valid_bytes(monkeypatch, depth):
    """The encoder compresses strips on threads: many strips, any thread count, one byte stream,
    whose zlib checksum zlib itself verifies and whose pixels PIL and our decoder read back."""
    import zlib

    from superres.io import images as images_mod
    rng = np.random.default_rng(3)
    px = rng.integers(0, np.iinfo(depth).max, (61, 37, 3), dtype=depth)
    alpha = rng.integers(0, np.iinfo(depth).max, (61, 37), dtype=depth)
    img = ImageData(px, alpha=alpha)
    monkeypatch.setattr(images_mod, "_PNG_STRIP_BYTES", 37 * 8 * 7)   # 7 (or 3) rows a strip
    outputs = {}
    for threads in (1, 2, 5):
        monkeypatch.setattr(images_mod, "_png_threads", lambda strips, n=threads: n)
        outputs[threads] = encode_image(img, "png")
    assert outputs[1] == outputs[2] == outputs[5] == encode_image(img, "png", threads=3)
    data = outputs[1]
    idat = b"".join(body for kind, body in images_mod._png_chunks(data, "t") if kind == b"IDAT")
    rows = zlib.decompress(idat)           # raises on a bad Adler-32 or a broken deflate stream
    assert len(rows) == 61 * (1 + 37 * 4 * np.dtype(depth).itemsize)
    back = decode_image(data)
    np.testing.assert_array_equal(back.pixels, px)
    np.testing.assert_array_equal(back.alpha, alpha)
    if depth == np.uint8:
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), np.dstack([px, alpha]))
