"""The FastAPI app of `segtune serve`: routes, errors as JSON, API key, Prometheus metrics.

`create_app(segmenter, ...)` serves one loaded Segmenter. Requests are decoded and answered in
Starlette's thread pool; the model runs in the batcher's worker thread (batcher.py), so the event
loop only moves bytes. Every error is `{"error": "..."}` with its status; a bad upload is a 4xx,
never a 500 (uploads.py decides which).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..inference.postprocess import class_counts
from ..inference.segmenter import MODES, Segmenter
from .batcher import Batcher, Closed, QueueFull
from .guard import Guard
from .uploads import UploadError, decode_image, multipart_field, read_body, refused_type

log = logging.getLogger("segtune.serve")

FORMATS = ("png", "json", "overlay")
PATHS = ("/", "/healthz", "/v1/model", "/v1/segment", "/metrics")  # metric labels: anything else is "other"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


# ---------------------------------------------------------------- encoding the answers


def label_png(label_map: np.ndarray, segmenter: Segmenter) -> bytes:
    """The label map as `segtune predict` writes it (visualize.save_label_png), in memory."""
    from ..data.drawing import save_label_png

    buffer = io.BytesIO()
    buffer.name = "label.png"  # Pillow picks the format from the name
    save_label_png(label_map, buffer, segmenter.labels.colors)
    return buffer.getvalue()


def class_shares(label_map: np.ndarray, segmenter: Segmenter) -> list[dict]:
    labels = segmenter.labels
    counts = class_counts(label_map)
    ids = np.flatnonzero(counts)
    out = []
    for i, count in zip(ids.tolist(), counts[ids].tolist()):
        known = 0 <= i < len(labels)
        color = labels.colors[i].tolist() if known else [0, 0, 0]
        out.append({"id": i, "name": labels.names[i] if known else str(i), "color": color,
                    "pixels": count, "share": round(count / label_map.size, 6)})
    return out


def overlay_jpeg(image, label_map: np.ndarray, segmenter: Segmenter, alpha: float) -> bytes:
    """The overlay as `segtune predict` draws it: a block of rows at a time, straight into the picture."""
    from ..data.drawing import drawn_image

    buffer = io.BytesIO()
    drawn_image(label_map, segmenter.labels.colors, image, alpha=alpha).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def hf_masks(label_map: np.ndarray, segmenter: Segmenter) -> list[dict]:
    """The Inference API's image-segmentation answer: one 0/255 'L' PNG per class present, no score."""
    out = []
    for entry in class_shares(label_map, segmenter):
        buffer = io.BytesIO()
        Image.fromarray(np.where(label_map == entry["id"], 255, 0).astype(np.uint8), mode="L").save(buffer, "PNG")
        out.append({"label": entry["name"], "score": None, "mask": base64.b64encode(buffer.getvalue()).decode()})
    return out


def runtime_name(segmenter: Segmenter) -> str:
    runner = segmenter.runner
    name = getattr(runner, "runtime", None) or getattr(runner, "name", None)
    return str(name) if name else type(runner).__name__.removesuffix("Runner").lower() or "custom"


# ---------------------------------------------------------------- metrics


class Metrics:
    """The app's own Prometheus registry (so that several apps in one process do not clash)."""

    def __init__(self, max_batch_size: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("segtune_requests", "HTTP requests answered, by path and status",
                                ["path", "status"], registry=self.registry)
        self.latency = Histogram("segtune_request_seconds", "request latency, by path", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, max_batch_size})
        self.batch_size = Histogram("segtune_batch_size", "images per model call", buckets=sizes,
                                    registry=self.registry)
        self.model_seconds = Histogram("segtune_model_seconds", "seconds per model call (a batch)",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_length = Gauge("segtune_queue_length", "requests waiting for the model", registry=self.registry)
        self.in_flight = Gauge("segtune_requests_in_flight", "requests being answered", registry=self.registry)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.model_seconds.observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every answer by path and status and times it (plain ASGI: the body still streams)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        path = path if path in PATHS else "other"
        status, start = [500], time.perf_counter()

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


# ---------------------------------------------------------------- the app


def create_app(segmenter: Segmenter, *, max_batch_size: int = 8, batch_timeout_ms: float = 10.0,
               max_upload_mb: float = 20.0, max_queue: int = 64, max_megapixels: float = 40.0,
               api_key: str | None = None, model_name: str | None = None, body_timeout: float = 30.0):
    """The FastAPI app serving `segtune`'s HTTP API and web page for one loaded Segmenter.

    FastAPI is imported with this module: `segtune.serve` imports it only to serve. The batcher
    starts with the app's lifespan and, at shutdown, finishes the queued requests."""
    limit, max_pixels = int(max_upload_mb * 2**20), int(max_megapixels * 1e6)
    metrics = Metrics(max_batch_size)
    # Decoding and encoding run in a few threads of their own, not Starlette's 40: on a few cores more
    # would not be faster, and each would hold its own decoded images (and malloc arena) at once.
    workers = max(2, min(4, os.cpu_count() or 2))
    state = {"batcher": None, "pool": None}

    async def in_pool(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(state["pool"], fn, *args)

    @asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(segmenter, max_batch_size=max_batch_size, timeout_ms=batch_timeout_ms,
                          max_queue=max_queue, on_batch=metrics.on_batch)
        metrics.queue_length.set_function(lambda: batcher.queue_length)
        state["batcher"] = batcher
        state["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="segtune-serve")
        try:
            yield
        finally:
            state["batcher"] = None
            await run_in_threadpool(batcher.close)
            state["pool"].shutdown(wait=True)

    app = FastAPI(title="segtune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(Guard, body_timeout=body_timeout)  # outermost: the body deadline, the lingering close
    app.state.metrics = metrics

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(UploadError)
    async def upload_error(request, exc: UploadError):
        return error(exc.status, exc.message, {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                    for e in exc.errors()]
        return error(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(QueueFull)
    async def queue_full(request, exc):
        return error(503, f"busy: {exc}; retry shortly", {"Retry-After": "1"})

    @app.exception_handler(Closed)
    async def closed(request, exc):
        return error(503, str(exc), {"Retry-After": "5", "Connection": "close"})

    @app.exception_handler(Exception)
    async def unexpected(request, exc):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__})")

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise UploadError(401, "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')")

    bands = getattr(segmenter, "band_settings", None)  # a multi-band model (serve/bands.py)

    async def label_map_of(image, mode=None, tta=None):
        batcher = state["batcher"]
        if batcher is None:
            raise Closed("the server is not running")
        if bands is not None:
            from .bands import check_request

            check_request(mode, tta)
        return await batcher.submit(image, mode, tta)

    async def image_from(data: bytes):
        if bands is not None:
            from .bands import decode_bands

            return await in_pool(decode_bands, data, max_pixels, bands)
        return await in_pool(decode_image, data, max_pixels, segmenter.scale)

    async def upload(request: Request) -> bytes:
        """The image bytes: the raw body, or the multipart field `file`."""
        if state["batcher"] is not None:
            state["batcher"].check_room()
        content_type = request.headers.get("content-type", "")
        if (media := refused_type(content_type)) is not None:
            raise UploadError(415, f"Content-Type {media} is not a raster image; send image/png, image/jpeg ...")
        body = await read_body(request, limit)
        if content_type.lower().startswith("multipart/form-data"):
            body, part_type = multipart_field(body, content_type)
            if (media := refused_type(part_type)) is not None:
                raise UploadError(415, f"the field 'file' is {media}, not a raster image")
        return body

    # ------------------------------------------------------------ routes

    @app.get("/healthz")
    async def healthz():
        if state["batcher"] is None:
            return error(503, "the model is not loaded")
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info(request: Request):
        check_key(request)
        labels = segmenter.labels
        return {
            "model": model_name, "runtime": runtime_name(segmenter),
            "dtype": str(segmenter.dtype).removeprefix("torch."),
            "device": str(segmenter.device), "input_scale": segmenter.scale, "mode": segmenter.mode,
            "tta": segmenter.tta, "max_batch_size": max_batch_size, "max_upload_mb": max_upload_mb,
            "max_megapixels": max_megapixels, "api_key_required": api_key is not None,
            "labels": [{"id": i, "name": name, "color": labels.colors[i].tolist(),
                        "hex": "#%02x%02x%02x" % tuple(labels.colors[i].tolist())}
                       for i, name in enumerate(labels.names)],
        }

    @app.get("/metrics")
    async def prometheus(request: Request):
        check_key(request)
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/segment")
    async def segment(request: Request, format: str = "png", mode: str | None = None, tta: bool | None = None,
                      alpha: float = 0.5):
        check_key(request)
        if format not in FORMATS:
            raise UploadError(422, f"format={format[:40]}: choose {', '.join(FORMATS)}")
        if mode is not None and mode not in MODES:
            raise UploadError(422, f"mode={mode[:40]}: choose {', '.join(MODES)}")
        if not 0.0 <= alpha <= 1.0:
            raise UploadError(422, f"alpha={alpha}: give an opacity from 0 to 1")
        image = await image_from(await upload(request))
        label_map = await label_map_of(image, mode, tta)
        if format == "png":
            content = await in_pool(label_png, label_map, segmenter)
            return Response(content, media_type="image/png")
        if format == "overlay":
            content = await in_pool(overlay_jpeg, getattr(image, "preview", image), label_map, segmenter, alpha)
            return Response(content, media_type="image/jpeg")

        def answer():
            return {"width": int(label_map.shape[1]), "height": int(label_map.shape[0]),
                    "classes": class_shares(label_map, segmenter),
                    "label_png": base64.b64encode(label_png(label_map, segmenter)).decode()}

        return await in_pool(answer)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE, headers={"Cache-Control": "no-cache"})

    @app.post("/")
    async def inference_api(request: Request):
        """The Hugging Face Inference API's image segmentation: raw bytes, or {"inputs": base64, "parameters"}."""
        check_key(request)
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith("application/json"):
            if state["batcher"] is not None:
                state["batcher"].check_room()
            body = await read_body(request, limit * 4 // 3 + 4096)  # base64 is 4/3 of the bytes
            data = hf_inputs(body)
        else:
            data = await upload(request)
            if data[:1] == b"{" and not content_type.startswith("image/"):  # JSON sent without its type
                data = hf_inputs(data)
        if len(data) > limit:
            raise UploadError(413, f"the image is over the {limit / 2**20:g} MiB limit")
        label_map = await label_map_of(await image_from(data))
        return await in_pool(hf_masks, label_map, segmenter)

    return app


def hf_inputs(body: bytes) -> bytes:
    """The image bytes of an Inference API JSON body; its `parameters` (thresholds, subtask) do not apply."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UploadError(400, f"the JSON body does not parse ({e})") from None
    except RecursionError:  # [[[[... thousands deep
        raise UploadError(400, "the JSON body is nested too deep") from None
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(inputs, str) or not inputs:
        raise UploadError(422, 'expected {"inputs": "<base64 image>", "parameters": {...}}')
    if inputs.startswith("data:") and "," in inputs[:200]:  # a data: URL
        inputs = inputs.split(",", 1)[1]
    if inputs.startswith(("http://", "https://")):
        raise UploadError(422, "image URLs are not fetched; send the image bytes, base64-encoded")
    try:
        return base64.b64decode(inputs, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(400, "'inputs' is not base64") from None


PAGE = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
