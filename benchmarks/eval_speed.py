"""Seconds and peak resident memory to score validation images: segtune's evaluation
(`evaluate_model`: upsample + argmax + confusion matrix per image, at the original annotation
size) vs the seeds' `Trainer.evaluate` with the tutorial's `compute_metrics` (all logits kept,
upsampled at once, numpy histogram mean IoU).

    python -m benchmarks.eval_speed [--generated 26,500] [--gen-size 256] [--input-size 512] [--quick]

Each side runs in a fresh process, so its peak RSS is its own. Writes
benchmarks/results/eval_speed.json and prints a markdown table. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, OtherLoad, command, describe, machine, markdown_table, print_report, save_result

CAMVID = REPO / "examples" / "camvid-mini.yaml"
GEN_CLASSES = 12
BATCH_SIZE = 2  # the seeds' per_device_eval_batch_size and `segtune evaluate`'s default
SIDES = {
    "seed": "Trainer.evaluate + the tutorial's compute_metrics; processor resizes image and mask to SxS",
    "segtune": "evaluate_model with segtune's processor (short side S, aspect kept), original-size masks",
    "segtune-square": "evaluate_model with the seed's processor (SxS input), original-size masks",
}


# ---------------------------------------------------------------- set-up (parent)


def generate(root: Path, n: int, size: int, seed: int) -> Path:
    """n photo-free synthetic pairs of size x size: coloured rectangles of GEN_CLASSES classes on a
    background, with noise, and 255 (ignored) on a band around each rectangle. Returns a data file."""
    from PIL import Image

    palette = np.random.default_rng(seed).integers(0, 256, (GEN_CLASSES, 3))
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        mask = np.full((size, size), rng.integers(GEN_CLASSES), np.uint8)
        for _ in range(rng.integers(2, 6)):
            y0, x0 = rng.integers(0, size - 8, 2)
            y1, x1 = y0 + rng.integers(8, size // 2), x0 + rng.integers(8, size // 2)
            mask[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = 255
            mask[y0:y1, x0:x1] = rng.integers(GEN_CLASSES)
        image = palette[np.where(mask == 255, 0, mask)] + rng.normal(0, 20, (size, size, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{i:05d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:05d}.png")
    data_file = root / "data.yaml"
    names = ", ".join(f"c{k}" for k in range(GEN_CLASSES))
    data_file.write_text(f"val: images\nval_masks: masks\nnames: [{names}]\nignore_index: 255\n")
    return data_file


def make_model(data_file: Path, folder: Path, seed: int) -> Path:
    """mit-b0 with random weights (seeded; no Hub), headed for the data's classes and ignore index."""
    import torch

    from segtune.data.sources import load_data
    from segtune.models.loading import load_model

    data = load_data(data_file)
    torch.manual_seed(seed)
    load_model("mit-b0", data.labels, data.ignore_index).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- one side (child process)


def run_side(side: str, data_file: str, model_dir: str, size: int, limit: int) -> dict:
    """Scores the first `limit` validation pairs as `side` does; times the model's forward passes
    and everything after the logits separately (hooks and wrappers; behaviour unchanged)."""
    import resource

    import torch
    from transformers import SegformerForSemanticSegmentation

    from segtune.data.sources import load_data

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_data(data_file)
    samples = data.val[:limit]
    names = data.labels.names
    model = SegformerForSemanticSegmentation.from_pretrained(model_dir).to(dev)
    clock = {"model": 0.0, "post": 0.0}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            clock[key] += time.perf_counter() - start
            return out
        return wrapper

    def forward_started(*_):  # hooks must return None, or they replace the inputs / outputs
        sync()
        clock["forward_start"] = time.perf_counter()

    def forward_ended(*_):
        sync()
        clock["model"] += time.perf_counter() - clock["forward_start"]

    model.register_forward_pre_hook(forward_started)
    model.register_forward_hook(forward_ended)

    if side == "seed":
        from benchmarks.seed import (SeedDataset, seed_compute_metrics, seed_processor, seed_trainer,
                                     seed_training_arguments)

        pairs = [(s.image, s.mask) for s in samples]
        dataset = SeedDataset(pairs, seed_processor(size={"height": size, "width": size}))
        compute_metrics = timed(seed_compute_metrics(len(names), data.ignore_index, dict(enumerate(names))), "post")
        with tempfile.TemporaryDirectory(prefix="seed-eval-") as out_dir:  # the Trainer wants one
            trainer = seed_trainer(model, seed_training_arguments(out_dir, disable_tqdm=True), dataset,
                                   compute_metrics)
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            start = time.perf_counter()
            metrics = trainer.evaluate()
            total = time.perf_counter() - start
        mean_iou = metrics["eval_mean_iou"]
        pixels = (size, size)
    else:
        import segtune.evaluation.scoring as ev
        from benchmarks.seed import seed_processor
        from segtune.inference.preprocess import ProcessorTransform
        from segtune.models.loading import training_processor

        # the per-image post-logits steps, looked up by evaluate_model at call time
        ev.upsampled_argmax = timed(ev.upsampled_argmax, "post")
        ev.ConfusionMatrix.update = timed(ev.ConfusionMatrix.update, "post")
        processor = (training_processor("mit-b0", size) if side == "segtune"
                     else seed_processor(size={"height": size, "width": size}))
        dataset = ev.EvalDataset(samples, ProcessorTransform(processor), data.rules)
        pixels = tuple(dataset[0]["pixel_values"].shape[-2:])
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        cm = ev.evaluate_model(model, dataset, len(names), data.ignore_index, BATCH_SIZE, num_workers=0,
                               progress=False)
        mean_iou = timed(cm.compute, "post")()["mean_iou"]
        total = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"side": side, "images": len(samples), "input_hw": pixels, "total_s": total, "model_s": clock["model"],
            "post_logits_s": clock["post"], "peak_rss_mib": rss_after / 1024,
            "peak_rss_before_eval_mib": rss_before / 1024, "mean_iou": float(mean_iou), "device": dev.type}


# ---------------------------------------------------------------- runs and report (parent)


def spawn(side: str, data_file: Path, model_dir: Path, size: int, limit: int) -> dict:
    """One side in a fresh interpreter; its JSON result, plus the process's wall time and others' CPU share."""
    cmd = [sys.executable, "-m", "benchmarks.eval_speed", "--child", side, "--child-data", str(data_file),
           "--child-model", str(model_dir), "--child-size", str(size), "--child-limit", str(limit)]
    with OtherLoad() as others:
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result | {"process_wall_s": wall, "others_cpu_share": others.share}


def median_run(runs: list[dict]) -> dict:
    """Per-figure median over repeats (a single run stays as it is)."""
    keys = ("total_s", "model_s", "post_logits_s", "peak_rss_mib", "peak_rss_before_eval_mib", "process_wall_s")
    return runs[0] | {k: statistics.median(r[k] for r in runs) for k in keys}


def table(configs: list[dict]) -> str:
    rows = []
    for c in configs:
        seed = c["sides"]["seed"]
        for side, r in c["sides"].items():
            rows.append({
                "data": c["data"], "N": r["images"], "side": side, "input": "x".join(map(str, r["input_hw"])),
                "total s": f"{r['total_s']:.2f}", "model s": f"{r['model_s']:.2f}",
                "post-logits s": f"{r['post_logits_s']:.3f}",
                "post-logits x": f"{seed['post_logits_s'] / r['post_logits_s']:.1f}",
                "total x": f"{seed['total_s'] / r['total_s']:.2f}",
                "peak RSS MiB": f"{r['peak_rss_mib']:.0f}",
                "during eval +MiB": f"{r['peak_rss_mib'] - r['peak_rss_before_eval_mib']:.0f}",
                "mean IoU": f"{r['mean_iou']:.6f}",
                "others %": "" if r["others_cpu_share"] is None else f"{100 * r['others_cpu_share']:.0f}",
            })
    return markdown_table(rows, align={k: "right" for k in rows[0] if k not in ("data", "side", "input")})


def summary(configs: list[dict]) -> list[dict]:
    """The issue's comparisons, as rows for `python -m benchmarks`' summary.md."""
    def row(what, segtune, seed, ratio, target="", met=None):
        return {"what": what, "segtune": segtune, "baseline": seed, "ratio": ratio, "target": target, "met": met}

    rows = []
    for c in configs:
        seed, where = c["sides"]["seed"], f"{c['data']}, {c['sides']['seed']['images']} images"
        equal = c["sides"].get("segtune-square", c["sides"]["segtune"])  # the run at the seed's input size
        rows.append(row(f"evaluation after the logits, s ({where})", equal["post_logits_s"], seed["post_logits_s"],
                        seed["post_logits_s"] / equal["post_logits_s"], ">= 10x faster",
                        seed["post_logits_s"] >= 10 * equal["post_logits_s"]))
        rows.append(row(f"whole evaluation at equal input size, s ({where})", equal["total_s"], seed["total_s"],
                        seed["total_s"] / equal["total_s"], "no slower", equal["total_s"] <= seed["total_s"]))
        if "segtune-square" in c["sides"]:
            seg = c["sides"]["segtune"]
            rows.append(row(f"whole evaluation, segtune at short side {c['size']}, s ({where})", seg["total_s"],
                            seed["total_s"], seed["total_s"] / seg["total_s"]))
        rows.append(row(f"evaluation peak RSS MiB ({where})", equal["peak_rss_mib"], seed["peak_rss_mib"],
                        seed["peak_rss_mib"] / equal["peak_rss_mib"]))
    generated = [c for c in configs if c["data"].startswith("generated")]
    if len(generated) > 1:  # flat: segtune's peak grows by at most 10% from the fewest images to the most
        few, many = generated[0]["sides"], generated[-1]["sides"]
        growth = {side: many[side]["peak_rss_mib"] - few[side]["peak_rss_mib"] for side in ("segtune", "seed")}
        rows.append(row(f"peak RSS growth MiB, {few['seed']['images']} -> {many['seed']['images']} generated images",
                        growth["segtune"], growth["seed"], None, "flat (<= 10%)",
                        growth["segtune"] <= 0.1 * few["segtune"]["peak_rss_mib"]))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_speed", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--camvid", default=str(CAMVID), help="real data file (default: %(default)s); '' skips it")
    add("--camvid-images", type=int, default=0, help="score only the first N real pairs (default: all)")
    add("--input-size", type=int, default=512, help="S for the real data: seed SxS, segtune short side S (default 512)")
    add("--generated", default="26,500", help="numbers of generated pairs to score, comma-separated; '' skips")
    add("--gen-size", type=int, default=256,
        help="side of the square generated images, also the input size of every side on them (default 256)")
    add("--repeats", type=int, default=1, help="fresh processes per side and setting; medians reported (default 1)")
    add("--quick", action="store_true", help="smoke run: 2 real pairs at S=128, 2 and 6 generated of 64x64")
    add("--seed", type=int, default=0)
    add("--no-write", action="store_true", help="print only; leave results/ alone")
    for name in ("child", "child-data", "child-model", "child-size", "child-limit"):
        add(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_side(args.child, args.child_data, args.child_model, int(args.child_size),
                                  int(args.child_limit))))
        return 0
    if args.quick:
        args.camvid_images, args.input_size, args.generated, args.gen_size = 2, 128, "2,6", 64

    began = time.perf_counter()
    counts = [int(n) for n in args.generated.split(",") if n]
    configs = []
    whole = OtherLoad().__enter__()
    with tempfile.TemporaryDirectory(prefix="eval-speed-") as tmp:
        tmp = Path(tmp)
        plans = []  # (label, data file, model dir, size, limit, sides)
        if args.camvid:
            model = make_model(Path(args.camvid), tmp / "camvid-model", args.seed)
            plans.append(("camvid-mini val", Path(args.camvid), model, args.input_size, args.camvid_images or 10**9,
                          ["seed", "segtune", "segtune-square"]))
        if counts:
            data_file = generate(tmp / "generated", max(counts), args.gen_size, args.seed)
            print(f"generated {max(counts)} pairs of {args.gen_size}x{args.gen_size}", file=sys.stderr)
            model = make_model(data_file, tmp / "gen-model", args.seed)
            # square images: segtune's short-side resize and the seed's SxS resize give the same input
            plans += [(f"generated {args.gen_size}x{args.gen_size}", data_file, model, args.gen_size, n,
                       ["seed", "segtune"]) for n in counts]
        for label, data_file, model, size, limit, sides in plans:
            runs = {side: [] for side in sides}
            for r in range(args.repeats):
                for side in sides if r % 2 == 0 else reversed(sides):  # alternate against drift
                    runs[side].append(spawn(side, data_file, model, size, limit))
                    x = runs[side][-1]
                    print(f"  {label} N={x['images']} {side}: {x['total_s']:.2f} s, post-logits "
                          f"{x['post_logits_s']:.3f} s, peak {x['peak_rss_mib']:.0f} MiB", file=sys.stderr)
            configs.append({"data": label, "size": size, "sides": {s: median_run(runs[s]) for s in sides},
                            "runs": runs})
    whole.__exit__(None, None, None)

    info = machine()
    lines = [f"Machine: {describe(info)}", "", table(configs), "",
             "post-logits x / total x: the seed's seconds over this side's (higher is faster than the seed). "
             "+MiB: peak RSS growth during the evaluation call. others %: CPU share other processes took "
             "while this side ran."]
    for c in configs:
        seed = c["sides"]["seed"]
        for side, r in c["sides"].items():
            if side != "seed":
                same = abs(seed["mean_iou"] - r["mean_iou"]) <= 1e-9
                lines.append(f"{c['data']}, N={r['images']}: mean IoU seed vs {side}: " + (
                    "identical (to 1e-9)" if same else f"differ by {abs(seed['mean_iou'] - r['mean_iou']):.1e}"))
        if c["data"].startswith("camvid"):
            lines.append("  (expected: the seed's processor resizes the masks to its input size and scores there; "
                         "segtune scores at the original annotation size)")
    text = print_report(lines, whole.share)
    result = {
        "command": command(),
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("child") and k != "no_write"}
        | {"batch_size": BATCH_SIZE, "sides": SIDES},
        "configs": configs,
        "summary": summary(configs),
        "others_cpu_share": whole.share,
        "wall_s": round(time.perf_counter() - began, 1),
        "table_md": text,
    }
    save_result("eval_speed", result, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
