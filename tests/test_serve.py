"""`superres serve`: the HTTP API through FastAPI's TestClient, with tiny models.

The browser test is tests/test_serve_browser.py; the load test is at the end of this file.
"""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the [serve] extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="httpx (FastAPI's TestClient) is not installed (it is in [dev])")
from fastapi.testclient import TestClient  # noqa: E402

from superres.archs import build_generator  # noqa: E402
from superres.apps.serve import ModelPool, Service, ServiceConfig, create_app  # noqa: E402
from superres.inference.upscaler import Upscaler  # noqa: E402


def _tiny(scale: int = 4) -> Upscaler:
    torch.manual_seed(0)
    model = build_generator("msrresnet", num_feat=4, num_block=1, upscale=scale)
    return Upscaler(model, {"arch": "msrresnet", "scale": scale}, device="cpu", precision="fp32", tile=0)


class _Slow(torch.nn.Module):
    """Nearest x4 that takes `delay` seconds per tile: a job that lasts long enough to watch."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.hparams = {"upscale": 4}

    def forward(self, x):
        time.sleep(self.delay)
        return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")


def _slow(delay: float = 0.05, tile: int = 16) -> Upscaler:
    return Upscaler(_Slow(delay), {"arch": "slow", "scale": 4}, device="cpu", precision="fp32", tile=tile)


def _png(size=(24, 16), mode="RGB", fmt="PNG", **save) -> bytes:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0]) if mode in ("L", "I;16") else (size[1], size[0], len(mode))
    arr = rng.integers(0, 65535 if mode == "I;16" else 255, size=shape)
    im = Image.fromarray(arr.astype(np.uint16 if mode == "I;16" else np.uint8))
    assert im.mode == mode
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


@pytest.fixture()
def make_client():
    clients = []

    def make(upscalers=None, **cfg) -> TestClient:
        pool = ModelPool(upscalers=upscalers or {"tiny": _tiny()})
        client = TestClient(create_app(pool, ServiceConfig(**cfg)))
        client.__enter__()   # runs the lifespan: starts the worker
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def _post(client, data: bytes, name="x.png", path="/v1/upscale", **fields):
    return client.post(path, files={"file": (name, data)}, data={k: str(v) for k, v in fields.items()})


# ---------------------------------------------------------------------------------------------
# formats and the I/O contract

@pytest.mark.parametrize("fmt, media", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                        ("TIFF", "image/tiff"), ("BMP", "image/bmp")])
def test_each_format_comes_back_in_its_own_format_at_4x(make_client, fmt, media):
    client = make_client()
    r = _post(client, _png(fmt=fmt), name=f"a.{fmt.lower()}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.format == fmt and im.size == (96, 64)


def test_output_matches_the_python_api(make_client):
    up = _tiny()
    client = make_client({"tiny": up})
    data = _png()
    r = _post(client, data)
    want = up.upscale(np.asarray(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), want)


def test_alpha_16bit_gray_and_orientation_are_kept(make_client):
    client = make_client()
    with Image.open(io.BytesIO(_post(client, _png(mode="RGBA")).content)) as im:
        assert im.mode == "RGBA" and im.size == (96, 64)
    with Image.open(io.BytesIO(_post(client, _png(mode="I;16")).content)) as im:
        assert im.mode.startswith("I;16") or im.mode == "I"
        assert np.asarray(im).max() > 255                 # still 16-bit samples
    with Image.open(io.BytesIO(_post(client, _png(mode="L")).content)) as im:
        assert im.mode == "L"
    exif = Image.Exif()
    exif[0x0112] = 6                                      # rotate 90 degrees clockwise on display
    rotated = _png(size=(24, 16), fmt="JPEG", exif=exif.tobytes())
    with Image.open(io.BytesIO(_post(client, rotated, name="r.jpg").content)) as im:
        assert im.size == (64, 96)                        # orientation applied, sides swapped
        assert im.getexif().get(0x0112, 1) == 1


def test_fields_outscale_format_quality(make_client):
    client = make_client()
    r = _post(client, _png(), outscale=2, format="jpg", quality=50)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert 'filename="x_x2.jpg"' in r.headers["content-disposition"]
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.size == (48, 32)


# ---------------------------------------------------------------------------------------------
# limits and bad input: the status and a message naming the limit

def test_body_over_the_upload_limit_is_413_before_decoding(make_client):
    client = make_client(max_upload_mb=0.01)
    r = _post(client, b"\x89PNG" + bytes(20_000))
    assert r.status_code == 413
    assert "limit is 0.01 MB" in r.json()["detail"]


def test_pixels_over_the_limit_are_413_from_the_header(make_client):
    client = make_client(max_pixels=100)
    r = _post(client, _png(size=(24, 16)))
    assert r.status_code == 413
    assert r.json()["detail"] == "x.png is 24x16 = 384 pixels; the limit is 100 pixels (--max-pixels)"


def test_decompression_bomb_is_413(make_client):
    client = make_client(max_pixels=10**12)
    im = Image.new("1", (20000, 20000))                   # 400 MP: over twice Pillow's bomb limit
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    r = _post(client, buf.getvalue())
    assert r.status_code == 413 and "decompression bomb" in r.json()["detail"].lower()


@pytest.mark.parametrize("data, status, words", [
    (b"hello, I am text", 415, "not an image in a format we read"),
    (b"", 422, "empty file"),
    (_png()[:60], 422, "corrupt or truncated"),
])
def test_bad_files(make_client, data, status, words):
    r = _post(make_client(), data)
    assert r.status_code == status
    assert words in r.json()["detail"]


@pytest.mark.parametrize("fields, words", [
    ({"model": "nope"}, "model 'nope' is not served here; allowed values: tiny"),
    ({"model": "../../etc/passwd"}, "is not served here"),
    ({"model": "/etc/hostname"}, "is not served here"),
    ({"outscale": "0"}, "outscale = 0: must be greater than 0"),
    ({"outscale": "abc"}, "outscale = 'abc': not a number"),
    ({"outscale": "100"}, "must be between 0 and 8"),
    ({"quality": "0"}, "quality = 0: must be between 1 and 100"),
    ({"format": "gif"}, "format = 'gif'; allowed values: png, jpeg, webp, tiff, bmp"),
    ({"strength": "0.5"}, "has no PSNR twin"),
    ({"strength": "2"}, "strength = 2: must be between 0 and 1"),
])
def test_bad_fields_are_422_naming_the_value(make_client, fields, words):
    r = _post(make_client(), _png(), **fields)
    assert r.status_code == 422
    assert words in r.json()["detail"]


def test_models_health_and_docs(make_client):
    client = make_client()
    models = client.get("/v1/models").json()
    assert models["models"] == [{"name": "tiny", "scale": 4, "description": "tiny: x4", "strength": False,
                                 "default": True, "adaptive": False}]
    assert models["limits"]["max_pixels"] == 4_000_000
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/upscale", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result", "/v1/models",
            "/healthz"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and "<title>superres" in page.text
    assert "http://" not in page.text and "https://" not in page.text   # no CDN


# ---------------------------------------------------------------------------------------------
# jobs

def _wait(client, job_id, states=("done", "failed", "cancelled"), timeout=30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")


def test_job_lifecycle(make_client):
    client = make_client()
    r = _post(client, _png(), path="/v1/jobs")
    assert r.status_code == 202
    job_id = r.json()["id"]
    job = _wait(client, job_id)
    assert job["state"] == "done" and job["progress"] == 1.0 and (job["width"], job["height"]) == (96, 64)
    res = client.get(f"/v1/jobs/{job_id}/result")
    assert res.status_code == 200
    assert Image.open(io.BytesIO(res.content)).size == (96, 64)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200      # frees the result
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get("/v1/jobs/unknown").status_code == 404


def test_an_idle_worker_gives_the_heap_back(make_client, monkeypatch):
    """CPU tiles keep freed memory for reuse; the server hands it back once nothing is queued, so
    one big upload does not hold the process at its peak until it exits."""
    from superres.inference import core as inference

    released = []
    monkeypatch.setattr(inference, "release_host_memory", lambda: released.append(time.monotonic()) or True)
    client = make_client()
    job_id = _post(client, _png(), path="/v1/jobs").json()["id"]
    assert _wait(client, job_id)["state"] == "done"
    deadline = time.monotonic() + 5
    while not released and time.monotonic() < deadline:   # the worker's finally runs after `done`
        time.sleep(0.01)
    assert len(released) == 1


def test_progress_then_cancel_between_tiles(make_client):
    client = make_client({"slow": _slow(0.05, tile=8)})     # 64x64 in 8-px tiles: 64 tiles, ~3 s
    job_id = _post(client, _png(size=(64, 64)), path="/v1/jobs").json()["id"]
    job = _wait(client, job_id, states=("running",))
    t0 = time.monotonic()
    while client.get(f"/v1/jobs/{job_id}").json()["progress"] == 0 and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    assert 0 < client.get(f"/v1/jobs/{job_id}").json()["progress"] < 1
    assert client.get(f"/v1/jobs/{job_id}/result").status_code == 409     # not done yet
    client.delete(f"/v1/jobs/{job_id}")
    job = _wait(client, job_id)
    assert job["state"] == "cancelled"
    assert time.monotonic() - t0 < 2.5          # stopped at a tile, long before the 64 tiles' end


def test_health_answers_during_a_long_job(make_client):
    client = make_client({"slow": _slow(0.05, tile=8)})
    job_id = _post(client, _png(size=(64, 64)), path="/v1/jobs").json()["id"]
    _wait(client, job_id, states=("running",))
    t0 = time.monotonic()
    health = client.get("/healthz").json()
    assert time.monotonic() - t0 < 0.5
    assert health["busy"] is True
    client.delete(f"/v1/jobs/{job_id}")


def test_full_queue_is_503_with_retry_after(make_client):
    client = make_client({"slow": _slow(0.05, tile=8)}, queue=1)
    first = _post(client, _png(size=(64, 64)), path="/v1/jobs").json()["id"]
    _wait(client, first, states=("running",))             # the worker holds it; the queue is empty
    second = _post(client, _png(), path="/v1/jobs")
    assert second.status_code == 202                       # fills the one queue slot
    third = _post(client, _png(), path="/v1/jobs")
    assert third.status_code == 503 and third.headers["retry-after"] == "5"
    assert "queue is full (1 jobs waiting" in third.json()["detail"]
    client.delete(f"/v1/jobs/{first}")
    assert _wait(client, second.json()["id"])["state"] == "done"


def test_finished_jobs_expire(make_client):
    client = make_client(job_ttl=0.2)
    job_id = _post(client, _png(), path="/v1/jobs").json()["id"]
    assert _wait(client, job_id)["state"] == "done"
    deadline = time.monotonic() + 30   # wait for the expiry, not for a fixed time
    while (r := client.get(f"/v1/jobs/{job_id}")).status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r.status_code == 404 and "expire after 0.2 s" in r.json()["detail"]


def test_shutdown_cancels_queued_and_running_jobs():
    service = Service(ModelPool(upscalers={"slow": _slow(0.05, tile=8)}), ServiceConfig(queue=4))
    service.start()
    from superres.apps.serve import Job
    jobs = [service.submit(Job(id=str(i), data=_png(size=(64, 64)), filename="a.png", model="slow",
                               strength=None, outscale=None, format=None, quality=95)) for i in range(3)]
    t0 = time.monotonic()
    while jobs[0].state != "running" and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    service.shutdown(timeout=5)
    assert not service._worker.is_alive()
    assert [j.state for j in jobs] == ["cancelled"] * 3
    assert time.monotonic() - t0 < 3                      # did not run the 3 x 64 tiles


def test_a_failing_model_fails_the_job_not_the_worker(make_client):
    class Broken(torch.nn.Module):
        hparams = {"upscale": 4}

        def forward(self, x):
            raise RuntimeError("boom")

    up = Upscaler(Broken(), {"arch": "broken", "scale": 4}, device="cpu", precision="fp32", tile=0)
    client = make_client({"broken": up, "tiny": _tiny()})
    r = _post(client, _png(), model="broken")
    assert r.status_code == 500 and "RuntimeError: boom" in r.json()["detail"]
    assert _post(client, _png(), model="tiny").status_code == 200   # the worker is still alive


