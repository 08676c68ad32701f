"""Answering every client, hostile ones too: what the HTTP server does below the app.

- **Lingering close** (nginx's `lingering_close`): an answer given before the request body has all
  arrived (a 413 for a 64 MiB upload) is written, then the rest of the body is read and dropped,
  for at most `linger_seconds`, before the answer ends and the connection closes. Closing with
  unread bytes makes the kernel reset the connection, and a client still sending (Python's urllib,
  requests, most SDKs) then never reads the answer. Nothing read is kept.
- **Body timeout**: the whole body must arrive within `body_timeout` seconds of the request's
  headers, else 408 with a JSON line (a body that trickles in, a Content-Length larger than what is
  sent), and the connection closes.
- **Open connections** past `max_connections` are answered 503 (JSON, `Retry-After`), and closed;
  a connection whose request headers have not all come within `body_timeout` seconds of opening
  (a slowloris on the headers, or bytes that never form a request) gets 408 and is closed.
- **Malformed requests** that the HTTP parser refuses before any app runs (two different
  Content-Lengths, a negative one, a broken request line, headers too large) get a JSON 400 too.

`Guard` is an ASGI middleware (in every app, the test client's too); `protocol(max_connections)` is
the uvicorn HTTP protocol class `segtune serve` runs with (uvicorn's h11 one, with the last two).
"""

from __future__ import annotations

import asyncio
import json

from .uploads import UploadError

LINGER_SECONDS = 10.0  # longest wait for the rest of a refused body (nginx: lingering_time 30 s)


def _has_body(scope) -> bool:
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length", b"").strip()
    return (length not in (b"", b"0")) or b"chunked" in headers.get(b"transfer-encoding", b"").lower()


class Guard:
    """The ASGI middleware above: the body deadline and the lingering close, per request."""

    def __init__(self, app, body_timeout: float = 30.0, linger_seconds: float = LINGER_SECONDS):
        self.app, self.body_timeout, self.linger_seconds = app, body_timeout, linger_seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        state = {"done": not _has_body(scope), "deadline": loop.time() + self.body_timeout}

        async def guarded_receive():
            if state["done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, state["deadline"] - loop.time()))
            except TimeoutError:
                raise UploadError(408, f"the request body did not arrive within {self.body_timeout:g} s") from None
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                state["done"] = True
            return message

        async def guarded_send(message):
            if message["type"] == "http.response.start" and not state["done"]:
                # answered before the whole body came: this connection ends with the answer
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            elif message["type"] == "http.response.body" and not message.get("more_body") and not state["done"]:
                await send({**message, "more_body": True})  # the client can read the answer already
                await self._drain(receive, loop)
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)

    async def _drain(self, receive, loop) -> None:
        """Reads and drops what is left of the body, for at most linger_seconds."""
        end = loop.time() + self.linger_seconds
        while (left := end - loop.time()) > 0:
            try:
                message = await asyncio.wait_for(receive(), left)
            except TimeoutError:
                return
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return


def json_error(status: int, message: str, close: bool = True, extra: tuple = ()):
    """An ASGI app answering every request with one JSON error line."""
    body = json.dumps({"error": message}).encode()

    async def app(scope, receive, send):
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def protocol(max_connections: int, body_timeout: float = 30.0):
    """uvicorn's h11 HTTP protocol, answering in JSON where it refuses: a connection past
    `max_connections` open ones gets 503 (after its body is drained, as Guard does), and a request
    the parser cannot read gets 400."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    busy = Guard(json_error(503, f"too many open connections (the limit is {max_connections}); retry shortly",
                            extra=((b"retry-after", b"1"),)), body_timeout=body_timeout)

    late = json.dumps({"error": f"the request headers did not arrive within {body_timeout:g} s"}).encode()

    class Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.app = busy  # every request on this connection
            self._headers_due = self.loop.call_later(body_timeout, self._headers_late)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and self._headers_due is not None:  # a request's headers came
                self._headers_due.cancel()
                self._headers_due = None

        def connection_lost(self, exc) -> None:
            if self._headers_due is not None:
                self._headers_due.cancel()
            super().connection_lost(exc)

        def _headers_late(self) -> None:
            self._headers_due = None
            if self.cycle is None and not self.transport.is_closing():  # raw bytes: h11 has no request to answer
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(late), late))
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": "malformed HTTP request: the request line or headers do not parse "
                                        "(a Content-Length that is no number, or two that differ, ...)"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))

    return Protocol
