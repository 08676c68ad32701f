"""Runs the benchmarks, each in its own process, then writes benchmarks/results/summary.md: one
row per comparison of segtune against the seed-style way, read from the results JSON files.

    python -m benchmarks [--only train_speed,flops] [--quick] [--summary-only]

The default sizes keep the whole run to about 14 minutes on a quiet 2-core CPU (see
benchmarks/README.md). `--quick` is a smoke run of every module at tiny sizes (about 4 minutes
here); its results go to benchmarks/results/quick/, leaving the real ones alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, RESULTS_DIR, describe, markdown_table

ORDER = ["data_path", "train_speed", "eval_speed", "post_logits", "metric_speed", "predict_speed", "predict_memory",
         "raster_memory", "flops", "models"]
PREDICT_METHODS = ["--methods", "seed", "pipeline", "segtune-cli", "segtune-cli-exact", "segtune-cli-onnx",
                   "segtune-cli-openvino", "segtune-cli-openvino-bf16", "segtune-cli-openvino-bf16-1"]
FULL = {  # about 0.7 + 2.5 + 2.5 + 0.4 + 0.2 + 8 + 0.5 minutes on a quiet 2-core CPU
    "data_path": ["--repeats", "2"],
    "train_speed": ["--steps", "15", "--warmup", "3", "--rounds", "2"],  # 30 timed steps a side, drift cancelled
    "eval_speed": [],
    "post_logits": ["--repeats", "2"],
    "metric_speed": [],
    "predict_speed": ["--images", "200", *PREDICT_METHODS],  # the folder of 200 images, one round
    "predict_memory": [],  # 0.2 / 12 / 48 MP, 11 and 150 classes, before and after issue 29 (about 6 minutes)
    "raster_memory": [],  # a 2,000 and a 16,000 pixel square 4-band GeoTIFF (issue 27), the 16k most of it
    "flops": [],
    "models": [],  # one model per architecture, 50 steps of batch 4 at crop 256 each (docs/models.md)
}
GPU = {  # a GPU is fast: more images and rounds, and every predict method (bf16 included)
    "train_speed": ["--steps", "30", "--warmup", "5", "--rounds", "2"],
    "predict_speed": ["--images", "200", "--rounds", "2"],
}
QUICK = {
    "data_path": ["--batches", "2", "--repeats", "1", "--workers", "0", "--model-steps", "0"],
    "train_speed": ["--steps", "2", "--warmup", "1"],
    "eval_speed": ["--quick"],
    "post_logits": ["--images", "2", "--repeats", "1"],
    "metric_speed": ["--images", "4", "--repeats", "2"],
    "predict_speed": ["--images", "4", "--methods", "seed", "segtune-cli"],
    "predict_memory": ["--sizes", "0.2", "--classes", "11", "--serve"],
    "raster_memory": ["--sizes", "500", "1000"],
    "flops": ["--steps", "2", "--warmup", "1", "--matmul-size", "1024"],
    "models": ["--quick"],
}


# ---------------------------------------------------------------- summary rows, one reader per benchmark


def _row(what, segtune, baseline, ratio, target="", met=None) -> dict:
    return {"what": what, "segtune": segtune, "baseline": baseline, "ratio": ratio, "target": target, "met": met}


def _data_path(r: dict) -> list[dict]:
    paths = {(x["path"], x["workers"]): x["images_per_s"]["median"] for x in r["data_path"]}
    model = r.get("model_step")
    workers = model["workers"] if model else 0
    if ("segtune", workers) not in paths:
        workers = 0
    rows = [_row(f"training data path, images/s (segtune {workers} workers, seed 0)", paths[("segtune", workers)],
                 paths[("seed", 0)], paths[("segtune", workers)] / paths[("seed", 0)])]
    if model:
        gpu = model["criterion_applies"]
        rows.append(_row(f"model step fed by DataLoader / in memory, s/step ({model['device']})",
                         model["loader_s_per_step"]["median"], model["in_memory_s_per_step"]["median"],
                         model["ratio_loader_to_memory"], "<= 1.05 (GPU)", model["within_5_percent"] if gpu else None))
    return rows


def _eval_speed(r: dict) -> list[dict]:
    rows = []
    for c in r["configs"]:
        seg, seed = c["sides"]["segtune"], c["sides"]["seed"]
        where = f"{c['data']}, {seg['images']} images"
        rows.append(_row(f"evaluation seconds, {where}", seg["total_s"], seed["total_s"],
                         seed["total_s"] / seg["total_s"]))
        rows.append(_row(f"evaluation peak RSS MiB, {where}", seg["peak_rss_mib"], seed["peak_rss_mib"],
                         seed["peak_rss_mib"] / seg["peak_rss_mib"]))
    return rows


def _metric_speed(r: dict) -> list[dict]:
    medians = {s["side"].split()[0]: s["spread"]["median"] for s in r["sides"]}
    s, target = r["settings"], r["target"]
    same = "identical" if r.get("identical_1e-9") else "NOT identical"
    return [_row(f"mean IoU seconds, {s['images']} images, {s['classes']} classes ({same})", medians["segtune"],
                 medians["seed"], r["speedup_median"], f">= {target}x faster", r["speedup_median"] >= target)]


def _predict_speed(r: dict) -> list[dict]:
    """Each segtune method against the pipeline (the issue's target: 1.5x on CPU, 5x on a GPU) and
    the seeds' loop, with how many of its label maps equal the seeds' loop's."""
    rows_by_method = {x["method"]: x for x in r["rows"]}
    speed = {m: x["img/s"] for m, x in rows_by_method.items()}
    where = f"{r['images']} images, {r['device']}, start-up included"
    # the targets against the pipeline: segtune's default path, ONNX Runtime and OpenVINO bf16 (issue 13)
    targets = {"segtune-cli": 5.0 if r["device"] == "cuda" else 1.5, "segtune-cli-onnx": 2.5,
               "segtune-cli-openvino-bf16": 4.0}
    rows = []
    for m, v in speed.items():
        if not m.startswith("segtune"):
            continue
        target = targets.get(m)
        same = f"{rows_by_method[m]['images identical']} maps identical"
        for base in ("pipeline", "seed"):
            if base in speed:
                ratio = v / speed[base]
                rows.append(_row(f"predict images/s, {m} vs {'pipeline' if base == 'pipeline' else 'seeds loop'} "
                                 f"({where}; {same})", v, speed[base], ratio,
                                 f">= {target:g}x" if base == "pipeline" and target else "",
                                 ratio >= target if base == "pipeline" and target else None))
    return rows


READERS = {"data_path": _data_path, "eval_speed": _eval_speed, "metric_speed": _metric_speed,
           "predict_speed": _predict_speed}  # train_speed, post_logits and flops write their own "summary" rows


def summary_rows(name: str, result: dict | None, failed: bool = False) -> list[dict]:
    """The comparisons in one benchmark's JSON: its own "summary" rows if it has them, else read
    from its figures; a one-line note when it is missing, failed or unreadable."""
    if failed:
        return [_row(f"(results/{name}.json)", "FAILED in this run", "", None)]
    if result is None:
        return [_row(f"(no results/{name}.json)", "not run", "", None)]
    try:
        return result["summary"] if "summary" in result else READERS[name](result)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError) as e:
        return [_row(name, f"unreadable ({type(e).__name__}: {e})", "", None)]


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def build_summary(results_dir: Path = RESULTS_DIR, failed=()) -> str:
    """The markdown summary of every results JSON in `results_dir` (missing ones: "not run")."""
    results = {}
    for name in ORDER:
        path = Path(results_dir) / f"{name}.json"
        results[name] = json.loads(path.read_text()) if path.exists() else None
    rows = []
    for name in ORDER:
        for row in summary_rows(name, results[name], name in failed):
            ratio = row.get("ratio")
            rows.append({"benchmark": name, "what": row["what"], "segtune": _cell(row["segtune"]),
                         "seed / baseline": _cell(row["baseline"]),
                         "ratio": row.get("ratio_text") or ("" if ratio is None else f"{ratio:.2f}x"),
                         "target": _cell(row.get("target")), "met?": _cell(row.get("met"))})
    machines, lines = {}, []
    for name, r in results.items():
        if r and "machine" in r:
            machines.setdefault(describe(r["machine"]), []).append(name)
    for line, names in machines.items():
        lines.append(f"Machine: {line}" + (f" ({', '.join(names)})" if len(machines) > 1 else ""))
    table = markdown_table(rows, align={c: "left" for c in rows[0]} | {"ratio": "right"})
    runs = []
    for name, r in results.items():
        if r:
            git = (r.get("machine") or {}).get("git") or {}
            commit = (git.get("commit") or "?")[:7] + (" (dirty)" if git.get("dirty") else "")
            wall = f", {r['wall_s']} s" if r.get("wall_s") is not None else ""
            runs.append(f"- `{name}`: written {r.get('written', '?')}, commit {commit}{wall}: `{r.get('command', '')}`")
    return "\n".join(["# Benchmarks: segtune vs the seed-style way", "", *lines, "", table, "",
                      "ratio: segtune / baseline for rates and the loader/memory step ratio, baseline / segtune "
                      "for seconds and memory (higher is better for segtune there); met? blank where the issue sets "
                      "no target or it applies to another device. Details in each benchmark's JSON and in "
                      "benchmarks/README.md.", "", "Runs:", *runs]) + "\n"


def write_summary(results_dir: Path = RESULTS_DIR, failed=()) -> Path:
    path = Path(results_dir) / "summary.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_summary(results_dir, failed))
    return path


# ---------------------------------------------------------------- runner


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, results in benchmarks/results/quick/")
    parser.add_argument("--summary-only", action="store_true", help="rewrite summary.md from the JSON files only")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else ORDER
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")

    env = dict(os.environ)
    results_dir = RESULTS_DIR
    if args.quick:
        results_dir = REPO / "benchmarks" / "results" / "quick"
        env["SEGTUNE_BENCH_RESULTS"] = str(results_dir)
    failed = []
    if not args.summary_only:
        import torch

        gpu = torch.cuda.is_available()
        began = time.perf_counter()
        for name in names:
            extra = QUICK[name] if args.quick else (GPU.get(name, FULL[name]) if gpu else FULL[name])
            cmd = [sys.executable, "-m", f"benchmarks.{name}", *extra]
            print(f"\n=== {' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
            print(f"=== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - start:.0f} s",
                  flush=True)
            if rc != 0:
                failed.append(name)
        print(f"\nall benchmarks: {time.perf_counter() - began:.0f} s", flush=True)
    path = write_summary(results_dir, failed)
    print("\n" + path.read_text())
    print(f"wrote {path.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
