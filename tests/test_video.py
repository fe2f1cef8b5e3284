"""Video upscaling (superres.video) on generated clips with a tiny model."""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av", reason="PyAV is not installed (the [video] extra)")

from superres.archs import build_generator  # noqa: E402
from superres.apps.cli import main  # noqa: E402
from superres.inference.upscaler import Upscaler  # noqa: E402
from superres.apps.video import VideoError, VideoOptions, parts_dir, temporal_difference, upscale_video  # noqa: E402
from superres.inference.weights import save_weights  # noqa: E402

W, H, FPS, SECONDS = 32, 24, 15, 2


def _tiny_model():
    torch.manual_seed(0)
    return build_generator("msrresnet", num_feat=4, num_block=1, upscale=4)


def _tiny() -> Upscaler:
    return Upscaler(_tiny_model(), {"arch": "msrresnet", "scale": 4}, device="cpu", precision="fp32", tile=0)


def _frame(i: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([(xx * 8 + i * 5) % 256, (yy * 10) % 256, ((xx + yy) * 4 + i * 3) % 256],
                    axis=2).astype(np.uint8)


def make_clip(path: Path, *, pts: list[int] | None = None, rotation: int = 0, audio: bool = True,
              time_base: Fraction = Fraction(1, FPS)) -> Path:
    """A clip with a 440 Hz tone track: FPS * SECONDS frames at 1/FPS, or frames at `pts`."""
    pts = pts if pts is not None else list(range(FPS * SECONDS))
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=FPS, options={"crf": "10", "preset": "ultrafast"})
        v.width, v.height, v.pix_fmt, v.time_base = W, H, "yuv420p", time_base
        if rotation:
            v.set_display_rotation(rotation)
        a = None
        if audio:
            a = out.add_stream("aac", rate=44100)
            a.layout = "mono"
        for i, t in enumerate(pts):
            f = av.VideoFrame.from_ndarray(_frame(i), format="rgb24")
            f.pts, f.time_base = t, time_base
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
        if a is not None:
            n = int(44100 * (pts[-1] + 1) * time_base)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 44100)).astype(np.float32)
            for start in range(0, n, 1024):
                f = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
                f.sample_rate, f.pts = 44100, start
                for p in a.encode(f):
                    out.mux(p)
            for p in a.encode(None):
                out.mux(p)
    return path


def _probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(v))
        info = {"size": (frames[0].width, frames[0].height), "frames": len(frames),
                "times": [float(f.pts * f.time_base) for f in frames], "rotation": frames[0].rotation,
                "pixels": [f.to_ndarray(format="rgb24") for f in frames]}
    with av.open(str(path)) as c:
        audio = c.streams.audio
        info["audio"] = None
        if audio:
            fr = list(c.decode(audio[0]))
            info["audio"] = sum(f.samples for f in fr) / fr[0].sample_rate
    return info


def test_clip_4x_same_frames_duration_and_audio(tmp_path):
    src = make_clip(tmp_path / "clip.mp4")
    dst = tmp_path / "out.mp4"
    res = upscale_video(src, dst, _tiny(), VideoOptions(segment_seconds=0.5), progress=False)
    a, b = _probe(src), _probe(dst)
    assert b["size"] == (4 * W, 4 * H)
    assert b["frames"] == a["frames"] == FPS * SECONDS == res["frames"]
    assert res["segments"] == math.ceil(FPS * SECONDS / round(0.5 * FPS))
    # Duration: same last timestamp (within one frame), every frame's time kept.
    np.testing.assert_allclose(b["times"], a["times"], atol=1 / FPS / 2)
    assert b["audio"] is not None and abs(b["audio"] - a["audio"]) < 0.03
    assert not parts_dir(dst).exists()                     # the parts folder is cleaned up
    # The frames are the model's output (up to the codec): compare with the image path.
    want = _tiny().upscale_pixels(a["pixels"][3])
    assert np.abs(b["pixels"][3].astype(int) - want.astype(int)).mean() < 3


def test_variable_frame_rate_timestamps_are_kept(tmp_path):
    pts = [0, 1, 2, 5, 6, 10, 11, 12, 20, 21]              # gaps: a VFR clip in 1/30 s units
    src = make_clip(tmp_path / "vfr.mkv", pts=pts, audio=False, time_base=Fraction(1, 30))
    dst = tmp_path / "vfr_x4.mkv"
    upscale_video(src, dst, _tiny(), VideoOptions(segment_seconds=0.1), progress=False)
    a, b = _probe(src), _probe(dst)
    assert b["frames"] == len(pts)
    np.testing.assert_allclose(b["times"], a["times"], atol=1e-3)


def test_rotation_metadata_is_kept(tmp_path):
    src = make_clip(tmp_path / "rot.mp4", rotation=90, audio=False)
    dst = tmp_path / "rot_x4.mp4"
    upscale_video(src, dst, _tiny(), progress=False)
    a, b = _probe(src), _probe(dst)
    assert a["rotation"] == 90 and b["rotation"] == 90
    assert b["size"] == (4 * W, 4 * H)                     # stored unrotated, displayed rotated


def test_interrupted_then_resumed_gives_the_same_frames(tmp_path):
    src = make_clip(tmp_path / "clip.mp4")
    whole = tmp_path / "whole.mp4"
    opts = VideoOptions(segment_seconds=0.5)
    upscale_video(src, whole, _tiny(), opts, progress=False)

    dst = tmp_path / "resumed.mp4"

    def die(done, total):
        if done == 12:                                     # inside the 2nd segment (7-14)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upscale_video(src, dst, _tiny(), opts, progress=False, on_frame=die)
    assert not dst.exists()                                # nothing that looks complete
    parts = parts_dir(dst)
    assert sorted(p.name for p in parts.glob("seg_*.mkv")) == ["seg_00000.mkv"]
    res = upscale_video(src, dst, _tiny(), opts, resume=True, progress=False)
    assert res["reused_segments"] == 1 and res["upscaled_frames"] == FPS * SECONDS - 8
    assert not list(tmp_path.glob(".*tmp*")) and not parts.exists()
    a, b = _probe(whole), _probe(dst)
    assert a["frames"] == b["frames"]
    for x, y in zip(a["pixels"], b["pixels"]):
        np.testing.assert_array_equal(x, y)
    assert a["times"] == b["times"] and abs(a["audio"] - b["audio"]) < 1e-6


def test_resume_refuses_other_settings(tmp_path):
    src = make_clip(tmp_path / "clip.mp4", audio=False)
    dst = tmp_path / "out.mp4"

    def die(done, total):
        if done == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upscale_video(src, dst, _tiny(), VideoOptions(segment_seconds=0.5), progress=False, on_frame=die)
    with pytest.raises(VideoError, match="made with other settings, model or input"):
        upscale_video(src, dst, _tiny(), VideoOptions(segment_seconds=0.5, crf=30), resume=True,
                      progress=False)
    # tiles that overlap differently meet at other seams: not the same frames either
    other_overlap = _tiny()
    other_overlap.tile_overlap += 4
    with pytest.raises(VideoError, match="made with other settings, model or input"):
        upscale_video(src, dst, other_overlap, VideoOptions(segment_seconds=0.5), resume=True, progress=False)


def test_cli_video_end_to_end_and_errors(tmp_path, caplog):
    src = make_clip(tmp_path / "clip.mp4", audio=False)
    model = tmp_path / "tiny.safetensors"
    save_weights(model, _tiny_model())
    out = tmp_path / "o.mp4"
    assert main(["upscale", str(src), "-o", str(out), "--model", str(model), "--no-progress",
                 "--crf", "23", "--preset", "ultrafast"]) == 0
    assert _probe(out)["size"] == (4 * W, 4 * H)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o2.mp4"), "--model", str(model),
                 "--crf", "99", "--no-progress"]) == 2
    assert "--crf 99: must be between 0 and 63" in caplog.text
    assert main(["upscale", str(src), "-o", str(tmp_path / "o3.png"), "--model", str(model),
                 "--no-progress"]) == 2
    assert "needs a video extension" in caplog.text


def test_temporal_difference():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 10, np.uint8)
    assert temporal_difference([a, b, a]) == 10.0
    assert temporal_difference([a]) == 0.0


def test_batched_frames_match_one_by_one(tmp_path):
    up = _tiny()
    frames = [_frame(i) for i in range(5)]
    one = [up.upscale_pixels(f) for f in frames]
    many = up.upscale_frames(frames)
    assert len(many) == 5
    small = Upscaler(_tiny_model(), {"arch": "msrresnet", "scale": 4}, device="cpu", precision="fp32",
                     tile=40)                     # 32x24 frames: one fits a 40-px tile, 2 fit its area
    assert [x.shape for x in small.upscale_frames(frames)] == [(4 * H, 4 * W, 3)] * 5
    for a, b in zip(one, many):
        assert a.shape == b.shape == (4 * H, 4 * W, 3) and b.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1      # fp32 may differ in the last bit
    # A clip through --batch-frames 4 has the same frames and timing as frame by frame.
    src = make_clip(tmp_path / "clip.mp4", audio=False)
    upscale_video(src, tmp_path / "b1.mp4", up, VideoOptions(segment_seconds=0.5, batch=1), progress=False)
    res = upscale_video(src, tmp_path / "b4.mp4", up, VideoOptions(segment_seconds=0.5, batch=4), progress=False)
    a, b = _probe(tmp_path / "b1.mp4"), _probe(tmp_path / "b4.mp4")
    assert res["upscaled_frames"] == a["frames"] == b["frames"] and a["times"] == b["times"]
    diffs = [np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a["pixels"], b["pixels"])]
    assert max(diffs) < 0.5


def test_codec_container_and_option_errors_come_before_any_compute(tmp_path, caplog, monkeypatch):
    src = make_clip(tmp_path / "clip.mp4")
    model = tmp_path / "tiny.safetensors"
    save_weights(model, _tiny_model())

    def no_compute(self, *a, **k):
        raise AssertionError("the model ran before the options were checked")

    monkeypatch.setattr(Upscaler, "upscale_frames", no_compute)
    cases = [(["-o", str(tmp_path / "x.webm")], "'webm' format does not support 'libx264'"),
             (["-o", str(tmp_path / "x.avi")], "x.avi cannot work with --codec libx264"),
             (["-o", str(tmp_path / "p.mp4"), "--pix-fmt", "yuv999"], "--pix-fmt yuv999: not a pixel format"),
             (["-o", str(tmp_path / "q.mp4"), "--preset", "turbo"], "--preset turbo: allowed values: ultrafast")]
    for extra, words in cases:
        caplog.clear()
        assert main(["upscale", str(src), *extra, "--model", str(model), "--no-progress"]) == 2, extra
        assert words in caplog.text, (extra, caplog.text)
        assert "Traceback" not in caplog.text
    # nothing left behind: no output, no parts folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "tiny.safetensors"]


def test_a_video_without_frames_is_refused(tmp_path, caplog):
    full = make_clip(tmp_path / "full.mkv", audio=False)
    src = tmp_path / "empty.mkv"
    src.write_bytes(full.read_bytes()[:700])   # the header and stream, no whole frame
    full.unlink()
    model = tmp_path / "tiny.safetensors"
    save_weights(model, _tiny_model())
    code = main(["upscale", str(src), "-o", str(tmp_path / "e_x4.mkv"), "--model", str(model), "--no-progress"])
    assert code == 2 and "empty.mkv: the video stream has no frames that decode" in caplog.text and "Traceback" not in caplog.text
    assert not (tmp_path / "e_x4.mkv").exists() and not list(tmp_path.glob(".*.parts"))
