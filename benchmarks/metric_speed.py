"""Seconds to compute mean IoU over the same predictions for 150 classes: segtune's ConfusionMatrix
(one update per image, then compute) vs `evaluate`'s mean_iou algorithm (a numpy histogram loop,
benchmarks.seed.seed_mean_iou), and whether they give identical results (to 1e-9).

    python -m benchmarks.metric_speed [--images 50] [--classes 150] [--repeats 7]

Writes benchmarks/results/metric_speed.json and prints a markdown table. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks.common import (OtherLoad, alternate, command, describe, machine, markdown_table, peak_rss_mb,
                               print_report, quiet, save_result, spread)
from benchmarks.seed import seed_mean_iou
from segtune.evaluation.metrics import ConfusionMatrix

IGNORE = 255
TARGET = 20  # the target speed-up
KEYS = ["mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy"]


def make_maps(n: int, classes: int, seed: int):
    """n (prediction, label) pairs of ADE20K-like sizes (short side 512, long side up to 768), as the
    seed's compute_metrics gets them (int64). Labels are blocks of random classes with about 5%
    ignored pixels; predictions agree on about 70% of pixels. A tenth of the classes never occur
    in the labels, and some of those not in the predictions either, so NaN IoU and accuracy occur."""
    rng = np.random.default_rng(seed)
    present = rng.permutation(classes)[: classes - classes // 10]
    preds, labels = [], []
    for _ in range(n):
        h, w = 512, int(rng.integers(512, 769))
        if rng.random() < 0.5:
            h, w = w, h
        blocks = present[rng.integers(0, len(present), (h // 32 + 1, w // 32 + 1))]
        label = np.kron(blocks, np.ones((32, 32), np.int64))[:h, :w]
        label[rng.random((h, w)) < 0.05] = IGNORE
        wrong = rng.random((h, w)) < 0.3
        pred = np.where(wrong, rng.integers(0, classes - classes // 20, (h, w)), np.where(label == IGNORE, 0, label))
        preds.append(pred.astype(np.int64))
        labels.append(label)
    return preds, labels


def segtune_mean_iou(preds, labels, classes: int) -> dict:
    cm = ConfusionMatrix(classes, IGNORE)
    for pred, label in zip(preds, labels):
        cm.update(torch.from_numpy(label), torch.from_numpy(pred))
    return cm.compute()


def differences(a: dict, b: dict) -> dict:
    """Largest absolute difference per key (NaN where both are NaN counts as equal), and whether
    the NaN positions match."""
    out = {}
    for k in KEYS:
        x, y = np.atleast_1d(np.asarray(a[k], np.float64)), np.atleast_1d(np.asarray(b[k], np.float64))
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        both = ~nan_x & ~nan_y
        out[k] = {"max_abs_diff": float(np.max(np.abs(x[both] - y[both]), initial=0.0)),
                  "nan_positions_match": bool(np.array_equal(nan_x, nan_y)), "nans": int(nan_x.sum())}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metric_speed", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--images", type=int, default=50, help="prediction/label pairs (default 50)")
    add("--classes", type=int, default=150, help="number of classes (default 150, ADE20K's)")
    add("--repeats", type=int, default=7, help="timed runs of each side, alternated (default 7)")
    add("--warmup", type=int, default=1, help="untimed runs of each side first (default 1)")
    add("--max-others", type=float, default=0.10,
        help="keep runs during which other processes used at most this share of the CPUs (default 0.10)")
    add("--threads", type=int, default=None,
        help="torch threads for segtune's side (default: torch's own; numpy's histogram uses one)")
    add("--seed", type=int, default=0)
    add("--no-write", action="store_true", help="print only; leave results/ alone")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    preds, labels = make_maps(args.images, args.classes, args.seed)
    pixels = sum(p.size for p in preds)
    print(f"{args.images} maps, {pixels / 1e6:.1f} M pixels, {args.classes} classes", file=sys.stderr)
    sides = {
        "seed (numpy histogram loop)": lambda: seed_mean_iou(preds, labels, args.classes, IGNORE),
        "segtune (ConfusionMatrix)": lambda: segtune_mean_iou(preds, labels, args.classes),
    }
    whole = OtherLoad().__enter__()
    runs, _ = alternate(sides, args.repeats, args.warmup)  # {side: [(seconds, others' share)]}
    whole.__exit__(None, None, None)

    rows, medians = [], {}
    for name, timed in runs.items():
        kept, n_quiet = quiet([t[0] for t in timed], [t[1] for t in timed], args.max_others)
        s = spread(kept)
        medians[name] = s["median"]
        rows.append({"side": name, "s min": f"{s['min']:.4f}", "s median": f"{s['median']:.4f}",
                     "s max": f"{s['max']:.4f}", "Mpixel/s (median)": f"{pixels / 1e6 / s['median']:.1f}",
                     "quiet runs": f"{n_quiet}/{len(timed)}", "spread": s, "runs": timed})
    seed_name, segtune_name = sides
    speedup = medians[seed_name] / medians[segtune_name]
    diffs = differences(sides[seed_name](), sides[segtune_name]())
    worst = max(d["max_abs_diff"] for d in diffs.values())
    identical = worst <= 1e-9 and all(d["nan_positions_match"] for d in diffs.values())

    columns = ["side", "s min", "s median", "s max", "Mpixel/s (median)", "quiet runs"]
    lines = [f"Machine: {describe(machine())}", "",
             f"{args.images} maps, {pixels / 1e6:.1f} M pixels, {args.classes} classes, ignore index {IGNORE}", "",
             markdown_table(rows, columns, align={c: "right" for c in columns[1:]}), "",
             f"segtune / seed speed-up (median): {speedup:.1f}x (target {TARGET}x: "
             f"{'met' if speedup >= TARGET else 'NOT met'})",
             f"results identical to 1e-9: {identical} (largest difference {worst:.1e}; NaN classes: "
             f"{diffs['per_category_iou']['nans']} IoU, {diffs['per_category_accuracy']['nans']} accuracy, "
             f"positions {'match' if all(d['nan_positions_match'] for d in diffs.values()) else 'DIFFER'})"]
    text = print_report(lines, whole.share)
    result = {
        "command": command(),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "no_write"} | {"pixels": pixels},
        "sides": [{k: v for k, v in r.items() if k in ("side", "spread", "runs")} for r in rows],
        "speedup_median": speedup,
        "target": TARGET,
        "differences": diffs,
        "identical_1e-9": identical,
        "others_cpu_share": whole.share,
        "peak_rss_mb": peak_rss_mb(),
        "wall_s": round(time.perf_counter() - began, 1),
        "table_md": text,
    }
    save_result("metric_speed", result, write=not args.no_write)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
