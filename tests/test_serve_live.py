"""`segtune serve` on a real uvicorn at 127.0.0.1: InferenceClient, the web page in headless Chromium,
and a graceful SIGTERM of the command itself."""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from segtune.inference.segmenter import Segmenter
from segtune.serve.app import create_app

from .test_serve import NAMES, png_bytes, rgb  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def image_with_regions(width=96, height=72):
    """Blocks of flat colour: the tiny model then labels regions, not noise."""
    image = np.zeros((height, width, 3), np.uint8)
    rng = np.random.default_rng(7)
    for y in range(0, height, 24):
        for x in range(0, width, 32):
            image[y:y + 24, x:x + 32] = rng.integers(0, 256, 3)
    return image


@pytest.fixture(scope="module")
def live_server(serve_model_dir):
    """A real uvicorn on an ephemeral 127.0.0.1 port, in a thread; stopped at the end."""
    import uvicorn

    segmenter = Segmenter.from_pretrained(serve_model_dir, device="cpu")
    config = uvicorn.Config(create_app(segmenter, model_name="tiny"), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not (server.started and server.servers) and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", segmenter
    server.should_exit = True
    thread.join(30)


def test_inference_client(live_server, tmp_path):
    from huggingface_hub import InferenceClient

    url, segmenter = live_server
    image = image_with_regions()
    want = segmenter(image)
    client = InferenceClient(model=url, timeout=60)
    Image.fromarray(image).save(tmp_path / "street.png")
    for given in (png_bytes(image), tmp_path / "street.png"):  # raw bytes, and a file it reads
        answer = client.image_segmentation(given)
        assert [a.label for a in answer] == [NAMES[i] for i in np.unique(want)]
        for a in answer:
            assert a.score is None and a.mask.mode == "L" and a.mask.size == (96, 72)
            np.testing.assert_array_equal(np.array(a.mask), np.where(want == NAMES.index(a.label), 255, 0))
    answer = client.image_segmentation(png_bytes(image), threshold=0.5)  # sent as JSON with parameters
    assert [a.label for a in answer] == [NAMES[i] for i in np.unique(want)]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_web_page_in_chromium(live_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, segmenter = live_server
    image = image_with_regions(160, 120)
    path = tmp_path / "street.png"
    Image.fromarray(image).save(path)
    want = segmenter(image)
    present = [NAMES[i] for i in np.unique(want)]
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('3 classes')")
            page.set_input_files("#file", str(path))
            page.wait_for_selector(".legend-item", timeout=30000)
            names = page.locator(".legend-item .name").all_inner_texts()
            assert sorted(names) == sorted(present)
            shares = page.locator(".legend-item .share").all_inner_texts()
            assert all(s.endswith("%") for s in shares)
            assert page.evaluate("[document.getElementById('view').width, document.getElementById('view').height]") \
                == [160, 120]
            # the overlay is drawn: at opacity 100 each pixel is its class colour
            page.locator("#opacity").fill("100")
            pixel = page.evaluate("Array.from(document.getElementById('view').getContext('2d')"
                                  ".getImageData(5, 5, 1, 1).data)")
            assert pixel[:3] == segmenter.labels.colors[want[5, 5]].tolist()
            page.locator("#opacity").fill("50")
            box = page.locator("#view").bounding_box()
            page.mouse.move(box["x"] + 5 * box["width"] / 160, box["y"] + 5 * box["height"] / 120)
            assert page.locator("#hover").inner_text() == NAMES[want[5, 5]]
            with page.expect_download() as download:
                page.click("#download-label")
            saved = tmp_path / "label.png"
            download.value.save_as(saved)
            np.testing.assert_array_equal(np.array(Image.open(saved)), want)
            with page.expect_download() as download:
                page.click("#download-overlay")
            assert download.value.suggested_filename == "street_overlay.jpg"
            page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)
            # a bad upload shows the server's error, not a crash
            bad = tmp_path / "notes.png"
            bad.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#status.error")
            assert "SVG" in page.locator("#status").inner_text()
        finally:
            browser.close()
    # the 415 of the bad upload is logged by Chromium as a failed resource: the only error allowed
    assert [e for e in errors if "status of 415" not in e] == []
    assert (tmp_path / "serve-page.png").stat().st_size > 0


def test_command_serves_and_stops_gracefully_on_sigterm(serve_model_dir):
    import httpx

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "segtune", "serve", "--model", str(serve_model_dir),
                                "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url, lines, deadline = None, [], time.time() + 90
        while url is None and time.time() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if match := re.search(r"(http://127\.0\.0\.1:\d+)/", line):
                url = match.group(1)
        assert url, "".join(lines)
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        image = png_bytes(rgb(3, 320, 240))
        answers = []

        def post():
            answers.append(httpx.post(url + "/v1/segment", content=image, headers={"Content-Type": "image/png"},
                                      timeout=60).status_code)

        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # connected and in flight
        process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, out
    assert answers == [200] * 4
    assert "stopped" in out
    shutil.rmtree(Path(serve_model_dir) / "__pycache__", ignore_errors=True)
