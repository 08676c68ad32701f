"""`segtune serve` against hostile and careless clients, through real sockets: the server runs in its
own process on 127.0.0.1, and urllib, http.client, httpx and raw sockets talk to it. Every refusal is
read by the client as a JSON line (a server that answers early and closes would reset them), and the
server keeps serving."""

import http.client
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from .test_serve import png_bytes, rgb  # noqa: E402

BIG = 64 * 2**20  # over the default 20 MiB limit


@pytest.fixture(scope="module")
def server(serve_model_dir):
    """`segtune serve` in a subprocess, with short timeouts and room for 6 connections."""
    process = subprocess.Popen(
        [sys.executable, "-m", "segtune", "serve", "--model", str(serve_model_dir), "--port", "0", "--body-timeout",
         "1.5", "--keep-alive-timeout", "1", "--max-connections", "6", "--max-batch-size", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port, seen = None, []
    deadline = time.time() + 120
    while port is None and time.time() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        if found := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
            port = int(found.group(1))
        elif process.poll() is not None:
            break
    assert port, "".join(seen)
    yield port
    process.terminate()
    process.wait(30)


def post(port, path, body, headers, timeout=60):
    """urllib, as most Python SDKs send: the whole body, then the answer. -> (status, JSON or bytes)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def raw(port, data: bytes, then=None, timeout=10.0) -> tuple[int | None, dict | None]:
    """Sends `data` on a raw socket (then calls then(sock)), reads one answer -> (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if then is not None:
            then(sock)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                return None, None
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, json.loads(body[:length])


def healthy(port):
    status, body = post(port, "/v1/segment?format=json", png_bytes(rgb(1, 24, 20)), {"Content-Type": "image/png"})
    assert status == 200 and json.loads(body)["width"] == 24


def test_an_oversized_upload_is_answered_to_every_client(server):
    body = b"\x89PNG" + bytes(BIG)
    for _ in range(3):  # urllib: reset by the peer three times of three before the lingering close
        status, answer = post(server, "/v1/segment", body, {"Content-Type": "image/png"})
        assert status == 413 and "limit is 20 MiB" in answer["error"]

    def chunks():  # no Content-Length: chunked, counted as it comes
        for _ in range(BIG // 2**20):
            yield bytes(2**20)

    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=60)
    connection.request("POST", "/v1/segment", body=chunks(), headers={"Content-Type": "image/png"},
                       encode_chunked=True)
    answer = connection.getresponse()
    assert answer.status == 413 and "over the 20 MiB limit" in json.loads(answer.read())["error"]
    connection.close()

    import httpx

    answer = httpx.post(f"http://127.0.0.1:{server}/v1/segment", content=body, headers={"Content-Type": "image/png"},
                        timeout=60)
    assert answer.status_code == 413 and answer.json()["error"]
    # a 200 MB base64 string in the Inference API's JSON
    status, answer = post(server, "/", b'{"inputs": "' + b"A" * 200_000_000 + b'"}', {"Content-Type": "application/json"})
    assert status == 413
    healthy(server)


def test_a_body_that_trickles_in_is_cut_with_408(server):
    def trickle(sock):
        for _ in range(4):  # 4 bytes in 2 s: past the 1.5 s body timeout
            time.sleep(0.5)
            try:
                sock.sendall(b"x")
            except OSError:
                return

    started = time.time()
    status, body = raw(server, b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                               b"Content-Length: 100000\r\n\r\n\x89PNG", then=trickle)
    assert status == 408 and "did not arrive within 1.5 s" in body["error"]
    assert time.time() - started < 15
    healthy(server)


def test_idle_keep_alive_connections_close(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b'"ok"' not in answer:
            answer += sock.recv(65536)
        assert b"200 OK" in answer
        time.sleep(2.0)  # past the 1 s keep-alive timeout
        assert sock.recv(65536) == b""  # closed by the server


def test_connections_past_the_cap_are_answered_503(server):
    idle = [socket.create_connection(("127.0.0.1", server), timeout=10) for _ in range(6)]
    try:
        time.sleep(0.2)
        status, body = raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and "too many open connections (the limit is 6)" in body["error"]
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    healthy(server)


@pytest.mark.parametrize("request_bytes, status, words", [
    (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "malformed HTTP request"),
    (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 9\r\n\r\nabcd", 400,
     "malformed HTTP request"),
    (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 99999999999999\r\n\r\n",
     413, "limit is 20 MiB"),
    (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 8\r\n\r\n\x89PNGabcdEXTRA",
     400, "not an image"),  # Content-Length smaller than the body: the image is cut short
    (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
     b"Content-Length: 60\r\n\r\n--zz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nnever ends", 400,
     None),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20000\r\n\r\n"
     + b"[" * 10000 + b"]" * 10000, 400, "nested too deep"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70000, 400, "malformed HTTP request"),  # a header with no end
])
def test_lying_and_broken_requests_get_a_json_line_and_the_server_goes_on(server, request_bytes, status, words):
    got, body = raw(server, request_bytes)
    assert got == status, body
    assert body["error"] and (words is None or words in body["error"])
    healthy(server)


def test_a_content_length_larger_than_the_body_then_a_closed_connection_costs_nothing(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                     b"\x89PNG")
    healthy(server)


def test_headers_that_never_end_are_cut_with_408(server):
    started = time.time()
    status, body = raw(server, b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nX-Slow: aaaa")  # and nothing more
    assert status == 408 and "headers did not arrive within 1.5 s" in body["error"]
    assert time.time() - started < 10
    healthy(server)
