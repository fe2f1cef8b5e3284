"""The web page of `superres serve` in a real browser: Playwright drives the system's Chromium
(Debian's `chromium` package; `.ci/run` installs it). No browser is ever downloaded.

The screenshot goes to test-artifacts/serve_page.png (repo root, ignored by git) for a person to
look at; docs/serve_page.png is a reviewed copy of it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the [serve] extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the [serve] extra is not installed (pip install -e '.[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (it is in [dev])")


from superres.archs import build_generator  # noqa: E402
from conftest import start_live_server  # noqa: E402
from superres.apps.serve import ModelPool, ServiceConfig, create_app  # noqa: E402
from superres.inference.upscaler import Upscaler  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SUPERRES_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("no system Chromium (apt-get install -y chromium; .ci/run does it); Playwright must not "
                "download one", allow_module_level=True)


@pytest.fixture(scope="module")
def server():
    torch.manual_seed(0)
    model = build_generator("msrresnet", num_feat=4, num_block=1, upscale=4)
    up = Upscaler(model, {"arch": "msrresnet", "scale": 4}, device="cpu", precision="fp32", tile=16)
    port, stop = start_live_server(create_app(ModelPool(upscalers={"tiny": up}), ServiceConfig()))
    yield f"http://127.0.0.1:{port}"
    stop()


def test_upload_progress_result_slider_download(server, tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    img = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=2) + rng.integers(0, 20, (48, 64, 3))
    src = tmp_path / "photo.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(src)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})   # a phone-sized screen
            page.goto(server)
            sync_api.expect(page.locator("#model option")).to_have_count(1)
            assert page.locator("#model-hint").inner_text() == "tiny: x4"
            assert page.locator("#go").is_disabled()
            page.set_input_files("#file", str(src))
            assert "photo.png" in page.locator("#file-name").inner_text()
            page.keyboard.press("Tab")                    # keyboard: focus moves on from the file input
            page.click("#go")
            sync_api.expect(page.locator("#result")).to_be_visible(timeout=30_000)
            sync_api.expect(page.locator("#status")).to_have_text("Done.")
            size = page.evaluate("() => [document.getElementById('after').naturalWidth, "
                                 "document.getElementById('after').naturalHeight]")
            assert size == [256, 192]
            assert "256 × 192 pixels" in page.locator("#result-info").inner_text()
            # The slider moves the divider: the "before" image is clipped to the slider's position.
            page.focus("#divider")
            for _ in range(20):
                page.keyboard.press("ArrowLeft")
            assert page.locator("#divider").input_value() == "30"
            clip = page.evaluate("() => document.getElementById('before').style.clipPath")
            assert clip == "inset(0px 70% 0px 0px)"
            # The download link carries the result under a sensible name.
            assert page.get_attribute("#download", "download") == "photo_x4.png"
            with page.expect_download() as dl:
                page.click("#download")
            saved = tmp_path / "dl.png"
            dl.value.save_as(saved)
            with Image.open(saved) as im:
                assert im.size == (256, 192)
            # The page's width fits the phone: nothing scrolls sideways.
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
            out = REPO / "test-artifacts"
            out.mkdir(exist_ok=True)
            page.screenshot(path=str(out / "serve_page.png"), full_page=True)
            assert Image.open(out / "serve_page.png").size[0] == 390

            # Errors are shown in the page in plain words.
            bad = tmp_path / "notes.png"
            bad.write_bytes(b"this is not an image")
            page.set_input_files("#file", str(bad))
            page.click("#go")
            sync_api.expect(page.locator("#error")).to_contain_text(
                "Sorry, that did not work: notes.png is not an image in a format we read", timeout=10_000)
        finally:
            browser.close()
