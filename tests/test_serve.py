"""`segtune serve`'s HTTP API through FastAPI's TestClient: answers, batching, limits and bad uploads."""

import asyncio
import base64
import io
import json
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from segtune.cli import main
from segtune.data.drawing import save_label_png
from segtune.inference.segmenter import Segmenter
from segtune.serve.app import create_app
from segtune.serve.batcher import Batcher, QueueFull

from .conftest import SERVE_NAMES as NAMES  # noqa: E402


def rgb(seed, width, height):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_bytes(array, fmt="PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def segmenter(serve_model_dir):
    return Segmenter.from_pretrained(serve_model_dir, device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def client(segmenter):
    app = create_app(segmenter, max_upload_mb=0.5, max_megapixels=1.0, model_name="tiny")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_health_and_model(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert [label["name"] for label in info["labels"]] == NAMES
    assert [label["id"] for label in info["labels"]] == [0, 1, 2]
    assert all(len(label["color"]) == 3 and label["hex"].startswith("#") for label in info["labels"])
    assert info["runtime"] == "torch" and info["dtype"] == "float32" and info["input_scale"] == 32
    assert info["model"] == "tiny"


def test_png_is_the_label_map_predict_writes(client, segmenter, tmp_path):
    image = rgb(10, 40, 30)
    r = client.post("/v1/segment", content=png_bytes(image), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    want = segmenter(image)
    got = Image.open(io.BytesIO(r.content))
    assert got.mode == "P" and got.size == (40, 30)
    np.testing.assert_array_equal(np.array(got), want)
    save_label_png(want, tmp_path / "p.png", segmenter.labels.colors)  # what `segtune predict` writes
    assert (tmp_path / "p.png").read_bytes() == r.content


def test_multipart_json_and_overlay(client, segmenter):
    image = rgb(11, 30, 40)
    want = segmenter(image)
    r = client.post("/v1/segment?format=json", files={"file": ("../../etc/x.png", png_bytes(image), "image/png")})
    assert r.status_code == 200
    answer = r.json()
    assert (answer["width"], answer["height"]) == (30, 40)
    ids, counts = np.unique(want, return_counts=True)
    assert [c["id"] for c in answer["classes"]] == ids.tolist()
    assert [c["name"] for c in answer["classes"]] == [NAMES[i] for i in ids]
    assert sum(c["share"] for c in answer["classes"]) == pytest.approx(1.0, abs=1e-5)
    assert [c["pixels"] for c in answer["classes"]] == counts.tolist()
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(base64.b64decode(answer["label_png"])))), want)
    r = client.post("/v1/segment?format=overlay&alpha=0.3", content=png_bytes(image),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    overlay = np.array(Image.open(io.BytesIO(r.content)))
    assert overlay.shape == (40, 30, 3)
    want_overlay = segmenter.overlay(image, want, alpha=0.3).astype(float)  # JPEG on noise: compare mean colours
    np.testing.assert_allclose(overlay.mean(axis=(0, 1)), want_overlay.mean(axis=(0, 1)), atol=3)


def test_mode_and_tta_as_predict(serve_model_dir, tmp_path):
    from transformers import SegformerImageProcessorPil

    model_dir = shutil.copytree(serve_model_dir, tmp_path / "model")
    # TTA's 0.5 scale at 32 pixels is too small for the tiny model: scale 64 here
    SegformerImageProcessorPil(size={"shortest_edge": 64}, do_reduce_labels=False).save_pretrained(model_dir)
    base = Segmenter.from_pretrained(model_dir, device="cpu")
    image = rgb(12, 200, 64)
    with TestClient(create_app(base)) as c:
        for query, options in (("mode=slide", dict(mode="slide")), ("tta=true", dict(tta=True)),
                               ("mode=whole&tta=false", dict(mode="whole"))):
            want = Segmenter.from_pretrained(model_dir, device="cpu", **options)(image)
            r = c.post(f"/v1/segment?{query}", content=png_bytes(image), headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text
            np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(r.content))), want)


def test_inference_api_contract(client, segmenter):
    image = rgb(13, 40, 30)
    want = segmenter(image)
    raw = client.post("/", content=png_bytes(image))  # no Content-Type at all, as InferenceClient may send
    payload = {"inputs": base64.b64encode(png_bytes(image)).decode(), "parameters": {"threshold": 0.5}}
    as_json = client.post("/", json=payload)
    for r in (raw, as_json):
        assert r.status_code == 200, r.text
        answer = r.json()
        assert [a["label"] for a in answer] == [NAMES[i] for i in np.unique(want)]
        for a in answer:
            assert a["score"] is None
            mask = Image.open(io.BytesIO(base64.b64decode(a["mask"])))
            assert mask.mode == "L" and mask.size == (40, 30)
            np.testing.assert_array_equal(np.array(mask), np.where(want == NAMES.index(a["label"]), 255, 0))


def bad_uploads():
    """(name, method, path, request kwargs, statuses accepted): at least 12 ways to send a bad upload."""
    png = png_bytes(rgb(1, 20, 20))
    bomb = png_bytes(np.zeros((1200, 1200), np.uint8))  # 1.44 MP, a few KiB: over the 1 MP limit
    strip = png_bytes(np.zeros((1, 2000, 3), np.uint8))  # 2000 pixels, but 32 x 64000 at the model's scale
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF"
    html = b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"
    image = {"Content-Type": "image/png"}
    return [
        ("empty body", "/v1/segment", dict(content=b"", headers=image), {400}),
        ("text", "/v1/segment", dict(content=b"hello, world", headers={"Content-Type": "text/plain"}), {415}),
        ("svg declared", "/v1/segment", dict(content=svg, headers={"Content-Type": "image/svg+xml"}), {415}),
        ("svg as png", "/v1/segment", dict(content=svg, headers=image), {415}),
        ("pdf as png", "/v1/segment", dict(content=pdf, headers=image), {415}),
        ("html as jpeg", "/v1/segment", dict(content=html, headers={"Content-Type": "image/jpeg"}), {415}),
        ("random bytes", "/v1/segment", dict(content=bytes(range(256)) * 8, headers=image), {400}),
        ("truncated png", "/v1/segment", dict(content=png[: len(png) // 2], headers=image), {400}),
        ("truncated jpeg", "/v1/segment", dict(content=png_bytes(rgb(2, 64, 64), "JPEG")[:600], headers=image),
         {400}),
        ("pixel bomb", "/v1/segment", dict(content=bomb, headers=image), {413}),
        ("thin strip", "/v1/segment", dict(content=strip, headers=image), {413}),
        ("too big", "/v1/segment", dict(content=b"\x89PNG" + bytes(600 * 1024), headers=image), {413}),
        ("multipart without file", "/v1/segment", dict(files={"image": ("a.png", png, "image/png")}), {422}),
        ("multipart svg", "/v1/segment", dict(files={"file": ("a.svg", svg, "image/svg+xml")}), {415}),
        ("multipart broken", "/v1/segment", dict(content=b"--x\r\nnonsense", headers={
            "Content-Type": "multipart/form-data; boundary=x"}), {400, 422}),
        ("multipart no boundary", "/v1/segment", dict(content=b"abc", headers={
            "Content-Type": "multipart/form-data"}), {400}),
        ("bad format", "/v1/segment?format=gif", dict(content=png, headers=image), {422}),
        ("bad mode", "/v1/segment?mode=zoom", dict(content=png, headers=image), {422}),
        ("bad tta", "/v1/segment?tta=maybe", dict(content=png, headers=image), {422}),
        ("bad alpha", "/v1/segment?format=overlay&alpha=2", dict(content=png, headers=image), {422}),
        ("hf json without inputs", "/", dict(json={"parameters": {}}), {422}),
        ("hf json not base64", "/", dict(json={"inputs": "not base64 !!"}), {400}),
        ("hf json url", "/", dict(json={"inputs": "http://127.0.0.1:1/x.png"}), {422}),
        ("hf json broken", "/", dict(content=b"{not json", headers={"Content-Type": "application/json"}), {400}),
        ("hf svg base64", "/", dict(json={"inputs": base64.b64encode(svg).decode()}), {415}),
        ("hf pdf raw", "/", dict(content=pdf), {415}),
    ]


@pytest.mark.parametrize("name,path,kwargs,statuses", bad_uploads(), ids=[b[0] for b in bad_uploads()])
def test_bad_uploads_answer_4xx_json(client, name, path, kwargs, statuses):
    r = client.post(path, **kwargs)
    assert r.status_code in statuses, (name, r.status_code, r.text)
    assert set(r.json()) == {"error"} and r.json()["error"]
    assert client.get("/healthz").status_code == 200  # still serving


def test_metrics_and_errors_everywhere(client):
    client.post("/v1/segment", content=png_bytes(rgb(3, 20, 20)), headers={"Content-Type": "image/png"})
    client.post("/v1/segment", content=b"", headers={"Content-Type": "image/png"})
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = client.get("/v1/segment")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    text = client.get("/metrics").text
    assert 'segtune_requests_total{path="/v1/segment",status="200"}' in text
    assert 'segtune_requests_total{path="/v1/segment",status="400"}' in text
    assert 'segtune_requests_total{path="other",status="404"}' in text
    for name in ("segtune_request_seconds_bucket", "segtune_batch_size_bucket", "segtune_queue_length"):
        assert name in text


def test_api_key(segmenter):
    app = create_app(segmenter, api_key="s3cret")
    image = png_bytes(rgb(4, 20, 20))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200  # probes need no key
        assert c.get("/").status_code == 200  # the page asks for the key itself
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}):
            for method, path in (("get", "/v1/model"), ("post", "/v1/segment"), ("post", "/"), ("get", "/metrics")):
                r = getattr(c, method)(path, headers={"Content-Type": "image/png", **headers},
                                       **({"content": image} if method == "post" else {}))
                assert r.status_code == 401 and "error" in r.json(), (path, headers)
        for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
            r = c.post("/v1/segment", content=image, headers={"Content-Type": "image/png", **headers})
            assert r.status_code == 200


class GatedRunner:
    """Wraps a runner: each call waits for `gate`, and the batch sizes are recorded."""

    def __init__(self, runner):
        self.runner, self.gate, self.sizes, self.entered = runner, threading.Event(), [], threading.Event()
        self.device, self.dtype = runner.device, runner.dtype

    def __call__(self, pixel_values):
        self.entered.set()
        self.gate.wait(30)
        self.sizes.append(len(pixel_values))
        return self.runner(pixel_values)


def gated(segmenter):
    runner = GatedRunner(segmenter.runner)
    return Segmenter(runner, segmenter.processor, segmenter.labels, batch_size=8, num_workers=0), runner


def test_batcher_gathers_waiting_images_and_bounds_the_queue(segmenter):
    slow, runner = gated(segmenter)
    images = [Image.fromarray(rgb(20 + i, 32, 32)) for i in range(6)]
    batches = []

    async def scenario():
        batcher = Batcher(slow, max_batch_size=8, timeout_ms=5, max_queue=5,
                          on_batch=lambda n, s: batches.append(n))
        first = asyncio.ensure_future(batcher.submit(images[0]))
        while not runner.entered.is_set():
            await asyncio.sleep(0.005)
        rest = [asyncio.ensure_future(batcher.submit(im)) for im in images[1:]]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await batcher.submit(images[0])
        runner.gate.set()
        results = await asyncio.gather(first, *rest)
        batcher.close()
        return results

    results = asyncio.run(scenario())
    assert batches == [1, 5] and runner.sizes == [1, 5]
    for image, label_map in zip(images, results):
        np.testing.assert_array_equal(label_map, segmenter(image))


def test_full_queue_answers_503_with_retry_after(segmenter):
    slow, runner = gated(segmenter)
    app = create_app(slow, max_batch_size=1, max_queue=1)
    image = png_bytes(rgb(5, 20, 20))
    answers = []
    with TestClient(app) as c:
        def post():
            answers.append(c.post("/v1/segment", content=image, headers={"Content-Type": "image/png"}))

        threads = [threading.Thread(target=post) for _ in range(4)]
        threads[0].start()
        assert runner.entered.wait(10)  # one in the model, then one queued, then two refused
        for t in threads[1:]:
            t.start()
            time.sleep(0.2)
        deadline = time.time() + 10
        while len(answers) < 2 and time.time() < deadline:
            time.sleep(0.02)
        runner.gate.set()
        for t in threads:
            t.join(30)
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 200, 503, 503], statuses
    busy = [r for r in answers if r.status_code == 503]
    assert all(r.headers["retry-after"] == "1" and "error" in r.json() for r in busy)


def test_serve_command_line(serve_model_dir, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for option in ("--max-batch-size", "--batch-timeout-ms", "--max-upload-mb", "--max-queue", "--api-key-env",
                   "--runtime", "--dtype", "--host", "--port"):
        assert option in text
    assert main(["serve"]) == 1
    assert "--model is required" in capsys.readouterr().err
    monkeypatch.delenv("SEGTUNE_TEST_KEY", raising=False)
    assert main(["serve", "--model", str(serve_model_dir), "--api-key-env", "SEGTUNE_TEST_KEY"]) == 1
    assert "SEGTUNE_TEST_KEY is not set" in capsys.readouterr().err


def test_real_images(client, segmenter, shared_data):
    paths = sorted((shared_data / "camvid-mini" / "val").glob("*.png"))[:2]
    if not paths:
        pytest.skip("no CamVid images")
    for path in paths:
        r = client.post("/v1/segment?format=json", content=path.read_bytes(), headers={"Content-Type": "image/png"})
        # 960 x 720 is 0.69 MP, under this client's 1 MP limit; its 0.5 MiB body limit may refuse the file
        if len(path.read_bytes()) > 0.5 * 2**20:
            assert r.status_code == 413
            continue
        assert r.status_code == 200
        answer = r.json()
        label_map = np.array(Image.open(io.BytesIO(base64.b64decode(answer["label_png"]))))
        np.testing.assert_array_equal(label_map, segmenter(path))
        assert json.dumps(answer)


def test_serves_an_exported_model(serve_model_dir, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from segtune.options import ServeOptions
    from segtune.serve import load_segmenter

    export = tmp_path / "export"
    assert main(["export", "--model", str(serve_model_dir), "--output-dir", str(export), "--check-images", "0"]) == 0
    segmenter = load_segmenter(ServeOptions(model=str(export), device="cpu"))
    image = rgb(14, 48, 40)
    with TestClient(create_app(segmenter)) as c:
        assert c.get("/v1/model").json()["runtime"] == "onnxruntime"
        r = c.post("/v1/segment", content=png_bytes(image), headers={"Content-Type": "image/png"})
        assert r.status_code == 200
        want = Segmenter.from_pretrained(export, runtime="onnxruntime")(image)
        np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(r.content))), want)


def test_serve_folds_the_segformer_head_as_predict_does(serve_model_dir):
    """--fold-head auto (the default): folded for a SegFormer run by torch on a CPU, as segtune predict;
    --fold-head false keeps transformers' own head; both answer the label maps predict writes."""
    from segtune.options import ServeOptions
    from segtune.serve import load_segmenter

    image = rgb(15, 40, 56)
    for fold, expected in ((None, True), (False, False)):
        segmenter = load_segmenter(ServeOptions(model=str(serve_model_dir), device="cpu", fold_head=fold))
        assert segmenter.fold_head is expected
        want = Segmenter.from_pretrained(serve_model_dir, device="cpu", fold_head=fold)(image)
        with TestClient(create_app(segmenter)) as c:
            r = c.post("/v1/segment", content=png_bytes(image), headers={"Content-Type": "image/png"})
            assert r.status_code == 200
            np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(r.content))), want)
