"""`segtune serve` under load, beside `segtune predict` on the same images in the same run.

    python -m benchmarks.serve_load [--clients 16] [--requests 25] [--max-seconds 900] [--no-write]

1. `segtune predict`'s path (`predict_images` on a loaded Segmenter, as the command runs after
   loading the model: label PNG, colour PNG and overlay JPEG per image) on the `--images` real
   CamVid-mini images, timed without start-up: its images/s.
2. `segtune serve --model M --port 0` in its own process on 127.0.0.1 only; `--clients` threads each
   POST `--requests` of those images (each client from its own start) to /v1/segment (label PNG
   answers) with keep-alive. Throughput from the first request to the last, latency p50/p95/p99,
   errors (any non-200), and the server's resident memory (psutil) after request 100 and at the end.
3. A corpus of bad uploads (at least 12), sent while the load runs and again after: each must be
   answered 4xx with a JSON error, and the server must still answer /healthz.
4. The hostile phase: the same load again while `--hostile` clients (8) misbehave on raw sockets and
   urllib until it ends, each at most once a second: 64 MiB uploads, bodies that trickle in,
   Content-Lengths that lie (larger than what is sent, then gone; negative), garbage bytes. The well-behaved clients must see 0 errors
   and a p99 latency within 1.5x the calm run's; the hostile ones' answers are counted by status.

Every request goes to 127.0.0.1; the load is bounded by count and by --max-seconds. The model is
mit-b0 sized, random weights, 12 classes, processor at 512 (as benchmarks.predict_speed). Writes
benchmarks/results/serve_load.json and prints a markdown table. Targets: throughput >= 0.8x
predict's, memory growth <= 10%, 0 errors, every bad upload a 4xx JSON error.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.common import OtherLoad, command, describe, machine, markdown_table, print_report, save_result
from benchmarks.predict_speed import CAMVID, make_model

TARGET_RATIO, TARGET_GROWTH, TARGET_P99 = 0.8, 0.10, 1.5
HOSTILE_KINDS = ("oversized", "slow", "lying", "garbage")


def real_images(count: int) -> list[Path]:
    sources = sorted((CAMVID / "val").glob("*.png")) + sorted((CAMVID / "train").glob("*.png"))
    if not sources:
        raise SystemExit(f"{CAMVID}: no images (../shared/data/camvid-mini is needed)")
    return [sources[i % len(sources)] for i in range(count)]


def bad_corpus() -> list[tuple[str, str, dict]]:
    """(name, path, httpx request keywords): uploads that must be refused with a 4xx."""
    from PIL import Image

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        return buffer.getvalue()

    good = png(np.zeros((64, 64, 3), np.uint8))
    image = {"Content-Type": "image/png"}
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    return [
        ("empty", "/v1/segment", dict(content=b"", headers=image)),
        ("text", "/v1/segment", dict(content=b"hello", headers={"Content-Type": "text/plain"})),
        ("svg declared", "/v1/segment", dict(content=svg, headers={"Content-Type": "image/svg+xml"})),
        ("svg as png", "/v1/segment", dict(content=svg, headers=image)),
        ("pdf as png", "/v1/segment", dict(content=b"%PDF-1.7\n%%EOF", headers=image)),
        ("html as jpeg", "/v1/segment", dict(content=b"<!doctype html><p>x", headers={"Content-Type": "image/jpeg"})),
        ("random bytes", "/v1/segment", dict(content=os.urandom(4096), headers=image)),
        ("truncated png", "/v1/segment", dict(content=good[: len(good) // 2], headers=image)),
        ("pixel bomb", "/v1/segment", dict(content=png(np.zeros((9000, 9000), np.uint8)), headers=image)),
        ("thin strip", "/v1/segment", dict(content=png(np.zeros((1, 8000, 3), np.uint8)), headers=image)),
        ("over 20 MiB", "/v1/segment", dict(content=b"\x89PNG" + bytes(21 * 2**20), headers=image)),
        ("multipart, no file", "/v1/segment", dict(files={"image": ("a.png", good, "image/png")})),
        ("bad format", "/v1/segment?format=bmp", dict(content=good, headers=image)),
        ("hf json, no inputs", "/", dict(json={"parameters": {}})),
        ("hf json, not base64", "/", dict(json={"inputs": "%%%"})),
        ("hf json, url", "/", dict(json={"inputs": "http://127.0.0.1:9/x.png"})),
    ]


def check_bad(url: str, corpus) -> list[dict]:
    import httpx

    rows = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, path, kwargs in corpus:
            r = client.post(path, **kwargs)
            try:
                is_json = set(r.json()) == {"error"}
            except ValueError:
                is_json = False
            rows.append({"upload": name, "status": r.status_code, "ok": 400 <= r.status_code < 500 and is_json})
    return rows


def start_server(model: Path):
    process = subprocess.Popen([sys.executable, "-m", "segtune", "serve", "--model", str(model), "--port", "0",
                                "--device", "cpu", "--host", "127.0.0.1"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if match := re.search(r"(http://127\.0\.0\.1:\d+)/", line):
            threading.Thread(target=process.stdout.read, daemon=True).start()  # keep the pipe drained
            return process, match.group(1)
    process.kill()
    raise SystemExit("segtune serve did not start")


def predict_side(model: Path, images: list[Path]) -> dict:
    from segtune.inference.segmenter import Segmenter
    from segtune.prediction.run import predict_images

    segmenter = Segmenter.from_pretrained(model, device="cpu")
    with tempfile.TemporaryDirectory() as out, OtherLoad() as others:
        start = time.perf_counter()
        predict_images(segmenter, images, Path(out) / "p", progress=False, overwrite=True)
        seconds = time.perf_counter() - start
    return {"images": len(images), "seconds": round(seconds, 2), "images_per_s": round(len(images) / seconds, 3),
            "others_share": others.share}


def hostile_client(url: str, kind: str, stop: threading.Event, outcomes: list, max_attempts: int = 40) -> None:
    """Misbehaves as `kind` until `stop` (at most max_attempts times); each answer's status (or what
    happened instead) goes to `outcomes`."""
    import socket
    import urllib.error
    import urllib.request

    host, port = url.removeprefix("http://").split(":")
    port = int(port)
    for _ in range(max_attempts):
        if stop.is_set():
            return
        try:
            if kind == "oversized":
                request = urllib.request.Request(url + "/v1/segment", data=bytes(64 * 2**20),
                                                 headers={"Content-Type": "image/png"})
                try:
                    urllib.request.urlopen(request, timeout=60)
                    outcome = "200"
                except urllib.error.HTTPError as e:
                    outcome = str(e.code)
            else:
                with socket.create_connection((host, port), timeout=60) as sock:
                    if kind == "slow":  # a body that trickles in, until the server cuts it (408) or the load ends
                        sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                                     b"Content-Length: 1000000\r\n\r\n")
                        sock.settimeout(1.0)
                        answer = b""
                        while not stop.is_set() and not answer:
                            try:
                                sock.sendall(b"x")
                                answer = sock.recv(4096)
                            except TimeoutError:
                                continue
                    elif kind == "lying":  # more promised than sent, then gone; then a negative length
                        sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                                     b"Content-Length: 5000000\r\n\r\n\x89PNG")
                        answer = b"closed"
                        with socket.create_connection((host, port), timeout=60) as other:
                            other.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
                            answer = other.recv(4096)
                    else:  # garbage, then the end of a request's headers
                        noise = np.random.default_rng().integers(0, 256, 4096, dtype=np.uint8).tobytes()
                        sock.sendall(noise + b"\r\n\r\n")
                        answer = sock.recv(4096)
                    match = re.match(rb"HTTP/1\.1 (\d+)", answer)
                    outcome = match.group(1).decode() if match else "closed" if answer in (b"", b"closed") else "other"
        except OSError as e:
            outcome = type(e).__name__
        outcomes.append(outcome)
        stop.wait(1.0)  # one attack a second per client: a flood at loopback speed would measure the CPU instead


def load_side(url: str, pid: int, images: list[Path], clients: int, per_client: int, max_seconds: float,
              corpus, hostile: int = 0) -> dict:
    import httpx
    import psutil

    bodies = {p: p.read_bytes() for p in set(images)}
    server = psutil.Process(pid)
    latencies, errors, lock, done = [], [], threading.Lock(), [0]
    memory = {"rss_after_100_mb": None}
    stop_at = time.perf_counter() + max_seconds

    def client(k: int):
        with httpx.Client(base_url=url, timeout=120) as http:
            for i in range(per_client):
                if time.perf_counter() > stop_at:
                    return
                path = images[(k + i) % len(images)]  # each client the same images, from its own start
                t0 = time.perf_counter()
                try:
                    r = http.post("/v1/segment", content=bodies[path], headers={"Content-Type": "image/png"})
                    status = r.status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    done[0] += 1
                    if status != 200:
                        errors.append(status)
                    if done[0] == 100:
                        memory["rss_after_100_mb"] = server.memory_info().rss / 2**20

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    stop, hostile_outcomes = threading.Event(), {kind: [] for kind in HOSTILE_KINDS}
    attackers = [threading.Thread(target=hostile_client, daemon=True,
                                  args=(url, HOSTILE_KINDS[k % len(HOSTILE_KINDS)], stop,
                                        hostile_outcomes[HOSTILE_KINDS[k % len(HOSTILE_KINDS)]]))
                 for k in range(hostile)]
    bad_during = []
    with OtherLoad() as others:
        start = time.perf_counter()
        for t in attackers + threads:
            t.start()
        time.sleep(2.0)
        bad_during = check_bad(url, corpus)  # while the load runs
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        stop.set()
        for t in attackers:
            t.join(90)
    rss_end = server.memory_info().rss / 2**20
    growth = rss_end / memory["rss_after_100_mb"] - 1 if memory["rss_after_100_mb"] else None
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {"requests": len(latencies), "errors": len(errors), "error_kinds": sorted(set(map(str, errors))),
            "seconds": round(seconds, 2), "images_per_s": round(len(latencies) / seconds, 3),
            "p50_s": round(q[49], 3), "p95_s": round(q[94], 3), "p99_s": round(q[98], 3),
            "rss_after_100_mb": round(memory["rss_after_100_mb"] or 0, 1), "rss_end_mb": round(rss_end, 1),
            "memory_growth": round(growth, 4) if growth is not None else None, "bad_during_load": bad_during,
            "others_share": others.share,
            "hostile": {kind: dict(sorted(Counter(v).items())) for kind, v in hostile_outcomes.items() if v}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--images", type=int, default=25, help="distinct real images (predict runs them once)")
    parser.add_argument("--max-seconds", type=float, default=900, help="the load stops here, done or not")
    parser.add_argument("--hostile", type=int, default=8, help="hostile clients in the second run (0: none)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    import httpx

    started = time.perf_counter()
    images = real_images(args.images)
    corpus = bad_corpus()
    with tempfile.TemporaryDirectory() as work:
        model = make_model(Path(work) / "model")
        predict = predict_side(model, images)
        process, url = start_server(model)
        try:
            load = load_side(url, process.pid, images, args.clients, args.requests, args.max_seconds, corpus)
            attacked = (load_side(url, process.pid, images, args.clients, args.requests, args.max_seconds, corpus,
                                  hostile=args.hostile) if args.hostile else None)
            bad_after = check_bad(url, corpus)
            healthy = httpx.get(url + "/healthz", timeout=30).status_code == 200
        finally:
            process.terminate()
            try:
                rc = process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                rc = None
    ratio = load["images_per_s"] / predict["images_per_s"]
    bad_ok = all(r["ok"] for r in load["bad_during_load"] + bad_after)
    met = {"errors": load["errors"] == 0, "throughput": ratio >= TARGET_RATIO,
           "memory": load["memory_growth"] is not None and load["memory_growth"] <= TARGET_GROWTH,
           "bad_uploads": bad_ok and healthy, "sigterm_exit_0": rc == 0}
    if attacked is not None:
        met["hostile_no_errors"] = attacked["errors"] == 0
        met["hostile_p99"] = attacked["p99_s"] <= TARGET_P99 * load["p99_s"]
    info = machine()
    rows = [
        {"what": f"serve: {load['requests']} requests, {args.clients} clients", "images/s": load["images_per_s"],
         "p50 s": load["p50_s"], "p95 s": load["p95_s"], "p99 s": load["p99_s"], "errors": load["errors"]},
        {"what": f"segtune predict: {predict['images']} images", "images/s": predict["images_per_s"]},
    ]
    if attacked is not None:
        rows.insert(1, {"what": f"serve with {args.hostile} hostile clients: {attacked['requests']} requests",
                        "images/s": attacked["images_per_s"], "p50 s": attacked["p50_s"], "p95 s": attacked["p95_s"],
                        "p99 s": attacked["p99_s"], "errors": attacked["errors"]})
    shares = [s for s in (predict["others_share"], load["others_share"]) if s is not None]
    lines = [f"# serve load: mit-b0 (random weights) at 512, CamVid 480x360, {describe(info)}", "",
             markdown_table(rows), "",
             f"throughput {ratio:.2f}x predict (target >= {TARGET_RATIO}); server memory {load['rss_after_100_mb']} "
             f"-> {load['rss_end_mb']} MiB from request 100 ({100 * (load['memory_growth'] or 0):+.1f}%, target "
             f"<= {100 * TARGET_GROWTH:.0f}%); {len(corpus)} bad uploads during and after the load: "
             f"{'all 4xx JSON errors' if bad_ok else 'NOT all 4xx JSON'}; healthy after: {healthy}; "
             f"SIGTERM exit status {rc}",
             *([f"hostile clients' answers: {attacked['hostile']}; well-behaved p99 {attacked['p99_s']} s against "
                f"{load['p99_s']} s calm ({attacked['p99_s'] / load['p99_s']:.2f}x, target <= {TARGET_P99}x)"]
               if attacked is not None else []),
             f"targets met: {', '.join(k for k, v in met.items() if v) or 'none'}; missed: "
             f"{', '.join(k for k, v in met.items() if not v) or 'none'}"]
    table = print_report(lines, max(shares) if shares else None)
    save_result("serve_load", {"command": command(), "machine": info, "clients": args.clients,
                               "requests_per_client": args.requests, "predict": predict, "serve": load,
                               "serve_hostile": attacked,
                               "bad_after_load": bad_after, "healthy_after": healthy, "ratio": round(ratio, 3),
                               "targets_met": met, "table_md": table,
                               "wall_s": round(time.perf_counter() - started, 1)}, write=not args.no_write)
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
