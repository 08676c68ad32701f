"""`segtune serve`: an HTTP API and a web page for a model folder or an exported model (docs/serve.md).

`run_serve(opts)` loads the model (a `segtune.options.ServeOptions`), builds the app
(`app.create_app`) and runs uvicorn. SIGTERM or Ctrl-C: uvicorn stops accepting connections and
waits for the requests in flight, the batcher finishes what is queued, and the command exits 0
(uvicorn would re-raise the signal afterwards; here it does not). uvicorn runs with segtune's HTTP
protocol class (`guard.py`: JSON refusals, the connection cap, the header deadline); the app has the
lingering close and the body deadline. Needs the `serve` extra.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
from pathlib import Path

from ..errors import SegtuneError

GRACEFUL_SECONDS = 30  # the longest a shutdown waits for requests in flight


def create_app(*args, **kwargs):
    """segtune.serve.app.create_app (imported on use: FastAPI is an optional extra)."""
    from .app import create_app as create

    return create(*args, **kwargs)


def _check_extra() -> None:
    missing = []
    for module in ("fastapi", "uvicorn", "prometheus_client", "python_multipart"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise SegtuneError(f"segtune serve needs {', '.join(missing)}: pip install 'segtune[serve]'")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_from(env_name: str | None) -> str | None:
    if not env_name:
        return None
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise SegtuneError(f"--api-key-env {env_name}: the environment variable {env_name} is not set or empty")
    return key


def check_options(opts) -> None:
    for name, low in (("max_batch_size", 1), ("max_queue", 1), ("max_upload_mb", 1e-6), ("max_megapixels", 1e-6),
                      ("body_timeout", 1e-6), ("keep_alive_timeout", 1e-6), ("max_connections", 1)):
        if getattr(opts, name) < low:
            raise SegtuneError(f"--{name.replace('_', '-')} {getattr(opts, name)}: must be positive")
    if opts.batch_timeout_ms < 0:
        raise SegtuneError(f"--batch-timeout-ms {opts.batch_timeout_ms}: must be 0 or more")
    if not 0 <= opts.port <= 65535:
        raise SegtuneError(f"--port {opts.port}: must be 0 to 65535")


def load_segmenter(opts):
    """The Segmenter `segtune predict` would build for these options, batching up to --max-batch-size."""
    from ..inference.bands import band_settings
    from ..inference.segmenter import Segmenter

    model_dir = Path(opts.model).parent if str(opts.model).lower().endswith(".onnx") else opts.model
    if band_settings(model_dir) is not None:  # a multi-band model: TIFF uploads of its bands (bands.py)
        from ..inference.bands import BandSegmenter
        from .bands import BandServing

        return BandServing(BandSegmenter.from_pretrained(opts.model, device=opts.device, dtype=opts.dtype,
                                                         runtime=opts.runtime, threads=opts.threads,
                                                         trust_remote_code=opts.trust_remote_code))
    return Segmenter.from_pretrained(opts.model, device=opts.device, dtype=opts.dtype, runtime=opts.runtime,
                                     threads=opts.threads, streams=opts.streams or 1,  # latency first
                                     trust_remote_code=opts.trust_remote_code,
                                     mode=opts.mode, tta=opts.tta, batch_size=opts.max_batch_size,
                                     fold_head=opts.fold_head)


def tune_malloc() -> bool:
    """glibc only: 2 malloc arenas and a fixed 4 MiB mmap threshold, so that large buffers (images,
    activations) go back to the system when freed instead of fragmenting the heap (a long-running
    server's memory otherwise creeps up: +17% over 300 requests in benchmarks/serve_load.py). Left
    alone where MALLOC_ARENA_MAX or MALLOC_MMAP_THRESHOLD_ is set. True if applied."""
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_arena_max, m_mmap_threshold = -8, -3
        return bool(libc.mallopt(m_arena_max, 2)) and bool(libc.mallopt(m_mmap_threshold, 4 * 2**20))
    except (OSError, AttributeError):
        return False


def run_serve(opts) -> None:
    """Serves until SIGTERM or Ctrl-C, then returns once the requests in flight are answered."""
    _check_extra()
    check_options(opts)
    api_key = api_key_from(opts.api_key_env)
    import uvicorn

    from .guard import protocol

    tune_malloc()
    segmenter = load_segmenter(opts)
    app = create_app(segmenter, max_batch_size=opts.max_batch_size, batch_timeout_ms=opts.batch_timeout_ms,
                     max_upload_mb=opts.max_upload_mb, max_queue=opts.max_queue, max_megapixels=opts.max_megapixels,
                     api_key=api_key, model_name=str(opts.model), body_timeout=opts.body_timeout)
    if not _is_loopback(opts.host) and api_key is None:
        print(f"segtune serve: warning: listening on {opts.host} without --api-key-env: anyone who can reach "
              "this machine can use the model", file=sys.stderr)
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="info" if opts.debug else "warning",
                            timeout_graceful_shutdown=GRACEFUL_SECONDS, access_log=bool(opts.debug),
                            server_header=False, http=protocol(opts.max_connections, opts.body_timeout),
                            timeout_keep_alive=opts.keep_alive_timeout)
    server = Server(config)
    server.run()
    if not server.started:
        raise SegtuneError(f"cannot serve on {opts.host}:{opts.port} (see the message above)")
    print("segtune serve: stopped", flush=True)


class Server:
    """uvicorn.Server that prints the URL once listening and exits normally after SIGTERM/SIGINT."""

    def __new__(cls, config):
        import uvicorn

        class _Server(uvicorn.Server):
            async def startup(self, sockets=None):
                await super().startup(sockets=sockets)
                if self.started and self.servers and self.servers[0].sockets:
                    host, port = self.servers[0].sockets[0].getsockname()[:2]
                    shown = f"[{host}]" if ":" in host else host
                    print(f"segtune serve: http://{shown}:{port}/ (web page; API under /v1; Ctrl-C to stop)",
                          flush=True)

            @contextlib.contextmanager
            def capture_signals(self):
                with super().capture_signals():
                    try:
                        yield
                    finally:  # a graceful stop is the expected end: do not re-raise the signal
                        self._captured_signals.clear()

        return _Server(config)
