"""The bounded queue and the batching worker thread between the HTTP handlers and the model.

Handlers decode an upload into a PIL image, then `await batcher.submit(image, mode, tta)`. One
worker thread takes the first waiting job, gathers more for up to `timeout_ms` (never more than
`max_batch_size` in all), groups them by their (mode, tta) and runs each group through one
`Segmenter.predict` call (which batches images of one preprocessed shape into one forward pass).
The answer comes back to the event loop with `call_soon_threadsafe`, so the loop never waits on
the model. A full queue raises `QueueFull` at once (the app answers 503 with Retry-After).
`close()` stops taking new jobs, lets the worker finish those already queued, and joins it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from ..inference.postprocess import label_dtype
from ..inference.segmenter import DEFAULT_SCALES, Segmenter

log = logging.getLogger("segtune.serve")


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already."""


class Closed(Exception):
    """The batcher is shutting down."""


@dataclass
class _Job:
    image: object  # PIL RGB image
    key: tuple  # (mode, tta)
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


def _deliver(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away and the handler was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """`submit(image, mode, tta)` -> (H, W) label map, run in batches by one worker thread.

    `segmenter`: the loaded model with the server's default mode and TTA; requests asking for other
    ones get a Segmenter sharing its runner, processor and labels (`variant`). `on_batch(size,
    seconds)` is called after each model call (metrics)."""

    def __init__(self, segmenter: Segmenter, *, max_batch_size: int = 8, timeout_ms: float = 10.0,
                 max_queue: int = 64, on_batch=None):
        if max_batch_size < 1 or max_queue < 1 or timeout_ms < 0:
            raise ValueError("max_batch_size and max_queue must be at least 1, timeout_ms at least 0")
        self.segmenter, self.max_batch_size, self.timeout = segmenter, max_batch_size, timeout_ms / 1000
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._variants = {(segmenter.mode, segmenter.tta): segmenter}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, name="segtune-batcher", daemon=True)
        self._thread.start()

    @property
    def queue_length(self) -> int:
        return self._queue.qsize()

    def variant(self, mode: str | None, tta: bool | None) -> Segmenter:
        """The Segmenter for a request's mode and TTA (the default one when both are None)."""
        base = self.segmenter
        key = (mode or base.mode, base.tta if tta is None else bool(tta))
        if key not in self._variants:
            self._variants[key] = Segmenter(base.runner, base.processor, base.labels, mode=key[0], tta=key[1],
                                            scales=base.scales if base.tta else DEFAULT_SCALES,
                                            crop_size=base.crop_size, stride=base.stride, flip=base.flip,
                                            batch_size=base.batch_size, num_workers=base.num_workers,
                                            channels_last=base.channels_last)
        return self._variants[key]

    def check_room(self) -> None:
        """Raises QueueFull (or Closed) now, before an upload is read and decoded for nothing."""
        if self._closed.is_set():
            raise Closed("the server is shutting down")
        if self._queue.full():
            raise QueueFull(f"{self._queue.maxsize} requests are waiting already")

    async def submit(self, image, mode: str | None = None, tta: bool | None = None):
        """Waits for the image's label map; raises QueueFull when the queue is full, Closed when shutting down."""
        if self._closed.is_set():
            raise Closed("the server is shutting down")
        loop = asyncio.get_running_loop()
        job = _Job(image, (mode, tta), loop, loop.create_future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are waiting already") from None
        return await job.future

    def close(self, timeout: float | None = 60.0) -> None:
        """No new jobs; the queued ones are finished; the worker is joined."""
        self._closed.set()
        self._queue.put(None)  # wakes the worker (blocks only while the queue is full and the worker drains it)
        self._thread.join(timeout)

    # ------------------------------------------------------------ the worker thread

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, stop = [first], False
        deadline = time.perf_counter() + self.timeout
        while len(jobs) < self.max_batch_size:
            try:
                job = self._queue.get_nowait() if self.timeout == 0 else \
                    self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
        return jobs, stop

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                if self._queue.empty():
                    break
                self._queue.put(None)  # jobs still queued behind the sentinel: do them first
                continue
            jobs, stop = self._gather(first)
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                self._run(key, group)
            first = job = jobs = groups = group = None  # nothing a request sent outlives its answer here
        while True:  # jobs that came in behind the sentinel, before submit saw the close
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._run(job.key, [job])

    def _run(self, key: tuple, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        segmenter = self.variant(*key)
        try:  # label maps in uint8 up to 256 classes: 1 byte a pixel while the answer is encoded
            label_maps = segmenter.predict([job.image for job in jobs], dtype=label_dtype(len(segmenter.labels)))
        except Exception as e:
            if len(jobs) > 1:  # one at a time: only the image that fails gets the error, the others their maps
                for job in jobs:
                    self._run(key, [job])
                return
            log.exception("model call failed for an image")  # answered 500; the worker goes on
            _answer(jobs[0], None, e)
            return
        if self.on_batch is not None:
            self.on_batch(len(jobs), time.perf_counter() - start)
        for job, label_map in zip(jobs, label_maps):
            _answer(job, label_map)


def _answer(job: _Job, result, error: BaseException | None = None) -> None:
    try:
        job.loop.call_soon_threadsafe(_deliver, job.future, result, error)
    except RuntimeError:  # the event loop is closed already: nobody is waiting
        pass
