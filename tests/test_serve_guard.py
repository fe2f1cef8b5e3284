"""The service's limits hold against any client: body size and time whatever the framing, Host and
Origin checks, security headers, /docs offline, and a prompt answer to waiting requests on SIGTERM."""
from __future__ import annotations

import io
import select
import socket
import tempfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the [serve] extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the [serve] extra is not installed (pip install -e '.[serve]')")


from fastapi.testclient import TestClient  # noqa: E402

from conftest import start_live_server  # noqa: E402
from superres.apps.serve import (  # noqa: E402
    Job,
    ModelPool,
    RequestError,
    Service,
    ServiceConfig,
    allowed_hosts,
    create_app,
)
from superres.archs import build_generator  # noqa: E402
from superres.inference.upscaler import Upscaler  # noqa: E402


def _tiny() -> Upscaler:
    torch.manual_seed(0)
    model = build_generator("msrresnet", num_feat=4, num_block=1, upscale=4)
    return Upscaler(model, {"arch": "msrresnet", "scale": 4}, device="cpu", precision="fp32", tile=0)


class _Slow(torch.nn.Module):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay, self.hparams = delay, {"upscale": 4}

    def forward(self, x):
        time.sleep(self.delay)
        return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")


def _png(size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3)).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def live_server():
    """A real uvicorn server in a thread (raw sockets can then send what no HTTP client would)."""
    stops = []

    def start(**cfg):
        port, stop = start_live_server(create_app(ModelPool(upscalers={"tiny": _tiny()}), ServiceConfig(**cfg)))
        stops.append(stop)
        return port

    yield start
    for stop in stops:
        stop()


def _response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (it does, after a refusal)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    return data


def test_a_chunked_upload_over_the_limit_is_refused_early_and_never_spooled_to_disk(live_server, monkeypatch):
    rolled = []
    real_rollover = tempfile.SpooledTemporaryFile.rollover
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover",
                        lambda self: rolled.append(1) or real_rollover(self))
    port = live_server(max_upload_mb=1)
    boundary = b"superresboundary"
    head = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n")
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n")
        chunk = b"\0" * 65536
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            while sent < 200 * 2**20:   # a 200 MB upload, unless the server answers first
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        reply = _response(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"1 MB limit" in reply
    # refused after about the limit: what the client got out before the answer is the limit plus
    # what the sockets' buffers held, far below the 200 MB it meant to send
    assert sent < 24 * 2**20, sent
    assert not rolled   # no part of it went to a temp file on disk


def test_a_body_that_stops_arriving_gets_408(live_server):
    port = live_server(body_timeout=0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        t0 = time.monotonic()
        reply = _response(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert time.monotonic() - t0 < 8


def test_host_and_origin_checks():
    cfg = ServiceConfig(allowed_hosts=allowed_hosts("127.0.0.1", None), allowed_origins=("http://tool.example",))
    with TestClient(create_app(ModelPool(upscalers={"tiny": _tiny()}), cfg), base_url="http://localhost:8000") as client:
        assert client.get("/healthz").status_code == 200
        # a page whose DNS name was rebound to this machine sends its own name as Host
        r = client.get("/healthz", headers={"Host": "evil.example:8000"})
        assert r.status_code == 421 and "--allow-host" in r.json()["detail"]
        files = {"file": ("x.png", _png())}
        r = client.post("/v1/upscale", files=files, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
        assert client.post("/v1/upscale", files=files, headers={"Origin": "null"}).status_code == 403
        assert client.post("/v1/upscale", files=files, headers={"Origin": "http://localhost:8000"}).status_code == 200
        assert client.post("/v1/upscale", files=files, headers={"Origin": "http://tool.example"}).status_code == 200
        assert client.post("/v1/upscale", files=files).status_code == 200   # no Origin: not a browser page
    assert allowed_hosts("0.0.0.0", None) is None
    assert allowed_hosts("0.0.0.0", ["Photos.Lan:8000"]) == ("0.0.0.0", "photos.lan")
    assert "localhost" in allowed_hosts("localhost", None)


def test_security_headers_and_offline_docs():
    with TestClient(create_app(ModelPool(upscalers={"tiny": _tiny()}), ServiceConfig())) as client:
        page = client.get("/")
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert client.get("/v1/models").headers["x-content-type-options"] == "nosniff"
        docs = client.get("/docs")
        assert docs.status_code == 200 and "cdn" not in docs.text.lower()
        if "/static/swagger/" in docs.text:   # the swagger-ui-bundle package is installed
            assert client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200


def _job(i: int) -> Job:
    return Job(id=f"j{i}", data=_png((64, 64)), filename="x.png", model="slow", strength=None, outscale=None,
               format=None, quality=95)


def test_shutdown_answers_every_waiting_job_at_once():
    slow = Upscaler(_Slow(0.2), {"arch": "slow", "scale": 4}, device="cpu", precision="fp32", tile=16)
    service = Service(ModelPool(upscalers={"slow": slow}), ServiceConfig())
    service.start()
    jobs = [service.submit(_job(i)) for i in range(4)]
    t0 = time.monotonic()
    while service.running is None:
        assert time.monotonic() - t0 < 10
        time.sleep(0.01)
    service.begin_shutdown()
    # the queued ones are answered now; the running one stops at its next tile
    assert all(j.done.is_set() and j.state == "cancelled" for j in jobs[1:])
    assert jobs[0].done.wait(5) and jobs[0].state == "cancelled"
    with pytest.raises(RequestError) as e:
        service.submit(_job(9))
    assert e.value.status == 503 and "shutting down" in e.value.message
    service.shutdown()


def test_uploads_of_unsupported_formats_say_so_and_float_tiff_is_served():
    import tifffile

    with TestClient(create_app(ModelPool(upscalers={"tiny": _tiny()}), ServiceConfig())) as client:
        r = client.post("/v1/upscale", files={"file": ("p.heic", b"\0\0\0\x18ftypheic" + b"\0" * 40)})
        assert r.status_code == 415 and "HEIC images are not supported" in r.json()["detail"]
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.random.default_rng(0).integers(-5, 5, (8, 8)).astype(np.int16))
        r = client.post("/v1/upscale", files={"file": ("s.tif", buf.getvalue())})
        assert r.status_code == 415 and "signed integer samples" in r.json()["detail"]
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.random.default_rng(0).random((8, 8, 3)).astype(np.float32))
        r = client.post("/v1/upscale", files={"file": ("f.tif", buf.getvalue())})
        assert r.status_code == 200 and tifffile.imread(io.BytesIO(r.content)).shape == (32, 32, 3)
