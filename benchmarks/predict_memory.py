"""Peak memory and time of `segtune predict` on one photo of 0.2, 12 and 48 MP, with an 11- and a
150-class model, before (the code of `--before`, a commit from before issue 29: logits upsampled to
the photo in one call, outputs drawn whole) and after (this checkout: strips of rows, label maps in
uint8, drawing in blocks), side by side in one run.

    python -m benchmarks.predict_memory [--before REV] [--sizes 0.2 12 48] [--classes 11 150] [--no-write]

Each run is a fresh process (`segtune.cli.main(["predict", ...])`) on the same photo and model, so
its peak resident memory (ru_maxrss) is its own; "before" imports segtune from a git worktree of
REV. The models are mit-b0 with random weights (the 150 classes are ADE20K's), the photos a CamVid
frame resized (a real scene's logits, not noise). The label maps of both sides are compared pixel
for pixel.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, command, describe, machine, markdown_table, save_result

SHARED = REPO.parent / "shared" / "data" / "camvid-mini" / "val"
BEFORE = "334aebc"  # issue 25's layout, before issue 29's changes to predict
SIZES = {0.2: (480, 360), 12: (4000, 3000), 48: (8000, 6000)}  # megapixels -> (width, height)

CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])  # the checkout whose segtune runs
from segtune.cli import main
start = time.perf_counter()
code = main(["predict", sys.argv[2], "--model", sys.argv[3], "--output-dir", sys.argv[4], "--overwrite", *sys.argv[5:]])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"code": code, "seconds": seconds, "peak_rss_mib": peak}))
"""


SERVE_CHILD = """
import io, json, resource, sys
sys.path.insert(0, sys.argv[1])
from fastapi.testclient import TestClient
from segtune.inference.segmenter import Segmenter
from segtune.serve.app import create_app
app = create_app(Segmenter.from_pretrained(sys.argv[3], device="cpu"), max_upload_mb=200, max_megapixels=50)
body = open(sys.argv[2], "rb").read()
with TestClient(app) as client:
    client.post("/v1/segment", content=open(sys.argv[4], "rb").read(), headers={"Content-Type": "image/jpeg"})
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # warm: after a small request
    answer = client.post("/v1/segment?format=" + sys.argv[5], content=body, headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == 200, answer.text
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"base_mib": base, "peak_mib": peak}))
"""


def serve_request_mib(checkout: Path, photo: Path, small: Path, model: Path, format: str) -> dict:
    """Peak memory a server (the app, in process, through its ASGI test client) takes for one request
    with `photo`, over what it held after a small one."""
    done = subprocess.run([sys.executable, "-c", SERVE_CHILD, str(checkout), str(photo), str(model), str(small),
                           format], capture_output=True, text=True, cwd=checkout, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"serve {checkout} on {photo.name}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_model(path: Path, classes: int) -> Path:
    from segtune.data.labels import LabelSet, ade20k_labels
    from segtune.models.loading import load_model, training_processor

    labels = ade20k_labels() if classes == 150 else LabelSet.from_names([f"class{i}" for i in range(classes)])
    model = load_model("mit-b0", labels)
    model.save_pretrained(path)
    training_processor("mit-b0", 512, model.config).save_pretrained(path)
    labels.to_json(path / "labels.json")
    return path


def make_photo(path: Path, size: tuple[int, int]) -> Path:
    from PIL import Image

    frame = Image.open(sorted(SHARED.glob("*.png"))[0]).convert("RGB")
    frame.resize(size, Image.BICUBIC).save(path, quality=92)
    return path


def run_side(checkout: Path, photo: Path, model: Path, out: Path, *extra: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(checkout), str(photo), str(model), str(out), *extra],
                          capture_output=True, text=True, cwd=checkout, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{checkout} on {photo.name}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help="the commit to compare with (default: before issue 29)")
    parser.add_argument("--sizes", type=float, nargs="+", default=sorted(SIZES), choices=sorted(SIZES))
    parser.add_argument("--classes", type=int, nargs="+", default=[11, 150])
    # 48 MP before issue 29 takes 22 GB per request: more than a 24 GB machine can spare beside the rest
    parser.add_argument("--serve", type=float, nargs="*", default=[12], choices=sorted(SIZES),
                        help="also one `segtune serve` request per size (the most classes, png and overlay answers)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    print(f"machine: {describe(info)}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tmp / "before"), args.before], cwd=REPO,
                       check=True)
        checkouts = {"before": tmp / "before", "after": REPO}
        try:
            rows = measure(args, tmp, checkouts)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "before")], cwd=REPO, check=False)
    predict_rows = [r for r in rows if "serve" not in r]
    serve_rows = [r for r in rows if "serve" in r]
    table = markdown_table(predict_rows) + ("\n\n" + markdown_table(serve_rows) if serve_rows else "")
    print(table)
    save_result("predict_memory", {"command": command(), "machine": info, "before": args.before, "rows": rows,
                                   "summary": summary(predict_rows), "table_md": table,
                                   "wall_s": round(time.perf_counter() - started, 1)}, write=not args.no_write)
    return 0


TARGET_MIB = 1536  # issue 29: at most 1.5 GiB for a 48 MP photo with 150 classes, on this 2-core machine


def summary(rows: list[dict]) -> list[dict]:
    """Rows for benchmarks/results/summary.md: peak memory and time of each size, after against before."""
    out = []
    for r in rows:
        head = "" if r["fold_head"] == "auto" else ", --fold-head false"
        where = f"{r['classes']} classes, {r['megapixels']:g} MP{head}; {r['equal_pixels']}/{r['pixels']} pixels equal"
        target = r["classes"] == 150 and r["megapixels"] == 48 and r["fold_head"] == "auto"
        out.append({"what": f"predict peak RSS MiB, {where}", "segtune": r["after_peak_mib"],
                    "baseline": r["before_peak_mib"], "ratio": r["before_peak_mib"] / r["after_peak_mib"],
                    "target": f"<= {TARGET_MIB} MiB" if target else "",
                    "met": r["after_peak_mib"] <= TARGET_MIB if target else None})
        out.append({"what": f"predict seconds, {where}", "segtune": r["after_s"], "baseline": r["before_s"],
                    "ratio": r["before_s"] / r["after_s"], "target": "no slower" if r["megapixels"] >= 12 else "",
                    "met": None})
    return out


def measure(args, tmp: Path, checkouts: dict) -> list[dict]:
    from PIL import Image

    rows = []
    for classes in args.classes:
        model = make_model(tmp / f"model{classes}", classes)
        # the default (the folded head on CPU), and for the middle size transformers' own head too
        runs = [(mp, "auto") for mp in args.sizes] + [(mp, "false") for mp in args.sizes if mp == 12]
        for mp, fold in runs:
            photo = make_photo(tmp / f"photo{mp}.jpg", SIZES[mp])
            sides = {side: run_side(checkouts[side], photo, model, tmp / f"out-{side}",
                                    *(["--fold-head", "false"] if fold == "false" else [])) for side in checkouts}
            maps = [np.array(Image.open(tmp / f"out-{side}" / f"{photo.stem}.png")) for side in checkouts]
            row = {"classes": classes, "megapixels": mp, "fold_head": fold, "size": "x".join(map(str, SIZES[mp])),
                   "before_peak_mib": round(sides["before"]["peak_rss_mib"]),
                   "after_peak_mib": round(sides["after"]["peak_rss_mib"]),
                   "before_s": round(sides["before"]["seconds"], 2), "after_s": round(sides["after"]["seconds"], 2),
                   "equal_pixels": int((maps[0] == maps[1]).sum()), "pixels": int(maps[0].size)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
        if classes == max(args.classes):
            small = make_photo(tmp / "small.jpg", SIZES[0.2])
            for mp in args.serve:
                photo = make_photo(tmp / f"photo{mp}.jpg", SIZES[mp])
                for format in ("png", "overlay"):
                    sides = {side: serve_request_mib(checkouts[side], photo, small, model, format)
                             for side in checkouts}
                    row = {"classes": classes, "megapixels": mp, "size": "x".join(map(str, SIZES[mp])),
                           "serve": format, **{f"{side}_request_mib": round(v["peak_mib"] - v["base_mib"])
                                               for side, v in sides.items()}}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    return rows


if __name__ == "__main__":
    sys.exit(main())
