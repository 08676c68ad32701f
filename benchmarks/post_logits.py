"""Everything after the logits, on the same logits and labels: upsampling to the label size,
argmax and mean IoU. The seed's `compute_metrics` (all logits stacked, upsampled at once, numpy
histogram mean IoU) against segtune's evaluation path (per batch of 2: `upsampled_argmax`, then
`ConfusionMatrix`), with identical results required.

    python -m benchmarks.post_logits [--images 16] [--repeats 3]

The logits are synthetic (no fine-tuned checkpoint can be fetched here), of two kinds:
- trained-like: each image holds a few classes in regions; logits at a quarter of the label size
  are high for the region's class and low, with noise, for the others, as a fine-tuned model's;
- random-like: smooth noise in every class, as from a model with random weights (eval_speed's):
  every class wins somewhere, the worst case for segtune's class pruning (candidate_classes).

Writes benchmarks/results/post_logits.json and prints a markdown table. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import (OtherLoad, alternate, command, describe, machine, markdown_table, print_report, quiet,
                               save_result, spread)
from benchmarks.seed import seed_compute_metrics
from segtune.evaluation.metrics import ConfusionMatrix
from segtune.inference.postprocess import PRUNE_MIN_CLASSES, candidate_classes, prunes_classes, upsampled_argmax

IGNORE = 255
TARGET = 10  # the target for everything after the logits
BATCH = 2  # segtune evaluate's default batch size
CONFIGS = [  # name, classes, label (H, W): ADE20K's 150 classes at a 512 crop, CamVid's 11 at 360x480
    ("ADE20K-like", 150, (512, 512)),
    ("CamVid-like", 11, (360, 480)),
]


def make_logits(kind: str, n: int, classes: int, size, seed: int):
    """n (logits C x H/4 x W/4 float32, label H x W int64) pairs; see the module's docstring."""
    g = torch.Generator().manual_seed(seed)
    h, w = size[0] // 4, size[1] // 4
    logits, labels = [], []
    for _ in range(n):
        present = torch.randperm(classes, generator=g)[: int(torch.randint(3, 9, (1,), generator=g))]
        blocks = present[torch.randint(0, len(present), (h // 8 + 1, w // 8 + 1), generator=g)]
        regions = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)[:h, :w]
        if kind == "trained":
            x = torch.randn(classes, h, w, generator=g) - 4.0
            x.scatter_add_(0, regions[None], torch.full((1, h, w), 10.0))
        else:
            x = torch.randn(classes, h // 4 + 1, w // 4 + 1, generator=g)
            x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        logits.append(F.avg_pool2d(x[None], 3, 1, 1, count_include_pad=False)[0].contiguous())
        label = F.interpolate(regions[None, None].float(), size=size, mode="nearest")[0, 0].long()
        label[torch.rand(size, generator=g) < 0.05] = IGNORE
        labels.append(label)
    return logits, labels


def seed_side(logits, labels, classes: int) -> dict:
    """The tutorial's compute_metrics on the whole evaluation's stacked logits and labels."""
    stacked = (torch.stack(logits).numpy(), torch.stack(labels).numpy())
    metrics = seed_compute_metrics(classes, IGNORE)(stacked)
    return {"mean_iou": metrics["mean_iou"], "per_class": [metrics[f"iou_{i}"] for i in range(classes)]}


def segtune_side(logits, labels, classes: int) -> dict:
    """evaluate_model's work after the model: per batch, upsampled argmax and a matrix update."""
    cm = ConfusionMatrix(classes, IGNORE)
    for start in range(0, len(logits), BATCH):
        batch_labels = torch.stack(labels[start:start + BATCH])
        cm.update(batch_labels, upsampled_argmax(torch.stack(logits[start:start + BATCH]), batch_labels.shape[-2:]))
    metrics = cm.compute()
    return {"mean_iou": metrics["mean_iou"], "per_class": list(metrics["per_category_iou"])}


def same(a: dict, b: dict) -> bool:
    x, y = np.array([a["mean_iou"], *a["per_class"]], float), np.array([b["mean_iou"], *b["per_class"]], float)
    return bool(np.array_equal(np.isnan(x), np.isnan(y)) and np.allclose(x, y, rtol=0, atol=1e-9, equal_nan=True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.post_logits", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--images", type=int, default=16, help="images per setting (default 16)")
    add("--repeats", type=int, default=3, help="timed runs of each side, alternated (default 3)")
    add("--max-others", type=float, default=0.10,
        help="keep runs during which other processes used at most this share of the CPUs (default 0.10)")
    add("--seed", type=int, default=0)
    add("--no-write", action="store_true", help="print only; leave results/ alone")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    whole = OtherLoad().__enter__()
    rows, summary = [], []
    for name, classes, size in CONFIGS:
        for kind in ("trained", "random"):
            logits, labels = make_logits(kind, args.images, classes, size, args.seed)
            prunes = prunes_classes(logits[0][None], size)
            kept = [len(c) if prunes and (c := candidate_classes(x)) is not None else classes for x in logits]
            sides = {"seed": lambda: seed_side(logits, labels, classes),
                     "segtune": lambda: segtune_side(logits, labels, classes)}
            runs, scores = alternate(sides, args.repeats)
            identical = same(scores["seed"], scores["segtune"])
            med = {}
            for side, timed in runs.items():
                values, n_quiet = quiet([t[0] for t in timed], [t[1] for t in timed], args.max_others)
                med[side] = spread(values) | {"quiet": n_quiet, "runs": timed}
            ratio = med["seed"]["median"] / med["segtune"]["median"]
            where = f"{name} {kind}-like logits, {classes} classes, {args.images} labels of {size[1]}x{size[0]}"
            rows.append({"logits": f"{name}, {kind}-like", "classes": classes, "label": f"{size[1]}x{size[0]}",
                         "classes upsampled (median)": f"{int(np.median(kept))} of {classes}",
                         "seed s (median)": f"{med['seed']['median']:.3f}",
                         "segtune s (median)": f"{med['segtune']['median']:.3f}", "x seed": f"{ratio:.1f}",
                         "identical": "yes" if identical else "NO",
                         "quiet runs": f"{med['seed']['quiet']}+{med['segtune']['quiet']}/{2 * args.repeats}",
                         "seed": med["seed"], "segtune": med["segtune"], "kept": kept})
            summary.append({"what": f"after the logits, s ({where}; {'identical' if identical else 'NOT identical'})",
                            "segtune": med["segtune"]["median"], "baseline": med["seed"]["median"], "ratio": ratio,
                            "target": f">= {TARGET}x faster", "met": ratio >= TARGET and identical})
            print(f"  {where}: seed {med['seed']['median']:.3f} s, segtune {med['segtune']['median']:.3f} s, "
                  f"{ratio:.1f}x", file=sys.stderr)
    whole.__exit__(None, None, None)

    columns = ["logits", "classes", "label", "classes upsampled (median)", "seed s (median)", "segtune s (median)",
               "x seed", "identical", "quiet runs"]
    lines = [f"Machine: {describe(machine())}", "",
             markdown_table(rows, columns, align={c: "right" for c in columns[1:]}), "",
             f"seed: the tutorial's compute_metrics on all {args.images} images' logits at once; segtune: "
             f"upsampled_argmax + ConfusionMatrix per batch of {BATCH}. 'classes upsampled': classes that can win "
             "somewhere (segtune.inference.postprocess.candidate_classes), looked for from "
             f"{PRUNE_MIN_CLASSES} classes on; the seed upsamples every class. identical: mean and per-class IoU "
             "equal to 1e-9."]
    text = print_report(lines, whole.share)
    result = {
        "command": command(),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "no_write"}
        | {"batch_size": BATCH, "configs": [{"name": n, "classes": c, "label_hw": s} for n, c, s in CONFIGS]},
        "rows": rows,
        "summary": summary,
        "others_cpu_share": whole.share,
        "wall_s": round(time.perf_counter() - began, 1),
        "table_md": text,
    }
    save_result("post_logits", result, write=not args.no_write)
    return 0 if all("NOT identical" not in s["what"] for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
