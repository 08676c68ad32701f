"""Accuracy of bf16 autocast against float32 training (issue 17): the CamVid recipe command of
docs/train.md, mit-b0 from random weights, with 3 seeds in each precision, each run in its own
`segtune train` process. The mean IoU is the run's final validation score (float32: evaluation
never runs under autocast, docs/train.md#precision); the time is the Trainer's `train_runtime`.

    python -m benchmarks.precision_runs [--seeds 0 1 2] [--max-steps 800] [--runs-dir /tmp/precision-runs]

Writes benchmarks/results/precision_runs.json and prints the table. The runs are kept in --runs-dir
(outside the repository); a run whose metrics.json is already there is read, not run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, command, machine, markdown_table, save_result

DATA = REPO / "examples" / "camvid-mini.yaml"
RECIPE = ["--model", "mit-b0", "--recipe", "segformer", "--base-size", "256", "--crop-size", "256",
          "--per_device_train_batch_size", "4", "--eval_steps", "200"]


def run(precision: str, seed: int, steps: int, folder: Path) -> dict:
    out = folder / f"{precision}-seed{seed}"
    if not (out / "metrics.json").is_file():
        subprocess.run([sys.executable, "-m", "segtune", "train", "--data", str(DATA), *RECIPE,
                        "--max_steps", str(steps), "--seed", str(seed), "--bf16", str(precision == "bf16").lower(),
                        "--output-dir", str(out), "--overwrite", "--disable_tqdm", "true"], check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    runtime = next((r["train_runtime"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
                    if "train_runtime" in r), None)
    return {"precision": precision, "seed": seed, "mean_iou": metrics["mean_iou"], "train_runtime_s": runtime,
            "folder": str(out)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=800)
    parser.add_argument("--runs-dir", default="/tmp/precision-runs")
    args = parser.parse_args(argv)
    began, folder = time.perf_counter(), Path(args.runs_dir)
    rows = [run(p, s, args.max_steps, folder) for s in args.seeds for p in ("fp32", "bf16")]
    by = {p: [r["mean_iou"] for r in rows if r["precision"] == p] for p in ("fp32", "bf16")}
    spread = {p: {"min": min(v), "mean": statistics.mean(v), "max": max(v)} for p, v in by.items()}
    within = spread["fp32"]["min"] <= spread["bf16"]["mean"] <= spread["fp32"]["max"]
    table = markdown_table([{
        "precision": p, **{f"seed {r['seed']}": f"{r['mean_iou']:.4f} ({r['train_runtime_s']:.0f} s)"
                           for r in rows if r["precision"] == p},
        "mean": f"{spread[p]['mean']:.4f}"} for p in ("fp32", "bf16")])
    text = (f"{table}\n\nvalidation mean IoU (train_runtime); bf16's mean "
            f"{'lies within' if within else 'is outside'} the float32 runs' spread "
            f"({spread['fp32']['min']:.4f} .. {spread['fp32']['max']:.4f})")
    print(text)
    save_result("precision_runs", {
        "command": command(), "machine": machine(), "settings": vars(args), "recipe": RECIPE, "rows": rows,
        "spread": spread, "bf16_within_fp32_spread": within, "table_md": text,
        "wall_s": round(time.perf_counter() - began, 1),
        "summary": [{"what": "CamVid recipe, validation mean IoU, bf16 against float32 (3 seeds each)",
                     "segtune": round(spread["bf16"]["mean"], 4), "baseline": round(spread["fp32"]["mean"], 4),
                     "ratio": None, "target": "within the float32 spread", "met": within}]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
