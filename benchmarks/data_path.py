"""Images per second of segtune's training data path (decode + augment + collate), beside the
seed-style path (`SegformerImageProcessor` per sample inside a Dataset), and a model step on
tensors in memory vs fed by the DataLoader.

    python -m benchmarks.data_path [--data examples/camvid-mini.yaml] [--batches 20] [--repeats 5]

Writes benchmarks/results/data_path.json and prints a markdown table. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
import warnings

import torch
from torch.utils.data import DataLoader
from transformers import default_data_collator

from benchmarks.common import (REPO, OtherLoad, command, describe, machine, markdown_table, peak_rss_mb, quiet,
                               save_result, spread)
from benchmarks.seed import SeedDataset, seed_processor

DEFAULT_DATA = REPO / "examples" / "camvid-mini.yaml"
BATCH_SIZE = 2  # the seeds' per_device_train_batch_size, and segtune's default
RIGHT = {c: "right" for c in ("images/s (min / median / max)", "first batch s (median)", "x seed@0", "quiet runs",
                              "s/step min", "s/step median", "s/step max", "quiet steps")}


# ---------------------------------------------------------------- the two data paths


def segtune_dataset(data_path, crop_size: int):
    """segtune's training dataset, built as `segtune train` builds it (mit-b0, no Hub)."""
    from segtune.data.checks import checked_labels
    from segtune.data.pairs import StreamedData
    from segtune.data.sources import load_data
    from segtune.data.transforms import AugmentConfig, train_transform
    from segtune.models.loading import training_processor
    from segtune.training.trainer import TrainDataset

    data = load_data(data_path)
    if isinstance(data, StreamedData):
        raise SystemExit(f"{data_path}: streamed datasets are not benchmarked here")
    labels = checked_labels(data, data.labels, splits=("train", "val"))  # as train does; gives the classes
    cfg = AugmentConfig(crop_size=crop_size)
    processor = training_processor("mit-b0", cfg.base_size)
    augment = train_transform(cfg, processor.image_mean, processor.image_std, data.ignore_index)
    return data, labels, TrainDataset(data.train, augment, data.rules)


def training_order(dataset, num_samples: int, seed: int) -> list[int]:
    """`num_samples` indices in the order training draws them: shuffled epochs, one after another.

    For segtune's TrainDataset this is the Trainer's own sampler (segtune.training.trainer.EpochSampler,
    which puts the epoch inside the index so each epoch's augmentation differs), else plain
    shuffles of range(n) as the Trainer's default RandomSampler gives.
    """
    from segtune.training import run as train

    n, order, epoch = len(dataset), [], 0
    epoch_sampler = getattr(sys.modules.get("segtune.training.trainer"), "EpochSampler", None)
    if epoch_sampler is not None and isinstance(dataset, train.TrainDataset):
        dataset.seed = seed  # as SegmentationTrainer sets it from args.seed
        sampler = epoch_sampler(n, seed)
    else:
        sampler = None
    while len(order) < num_samples:
        if sampler is not None:
            sampler.set_epoch(epoch)
            order += list(sampler)
        else:
            order += torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        epoch += 1
    return order[:num_samples]


def make_loader(dataset, workers: int, num_samples: int, seed: int) -> DataLoader:
    """A loader as the Trainer builds one from segtune's defaults (batch 2, training order, default
    collator, pinned memory and persistent workers on GPU), for `num_samples` samples."""
    from segtune.training.arguments import TRAINING_DEFAULTS

    return DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        sampler=training_order(dataset, num_samples, seed),
        collate_fn=default_data_collator,
        num_workers=workers,
        pin_memory=TRAINING_DEFAULTS["dataloader_pin_memory"],
        persistent_workers=TRAINING_DEFAULTS["dataloader_persistent_workers"] and workers > 0,
    )


def run_loader(dataset, workers: int, warmup: int, batches: int, seed: int) -> dict:
    """One pass: time to first batch (worker start-up included), then images/s over `batches`
    batches after `warmup` batches (the first one among them)."""
    with OtherLoad() as others:
        loader = make_loader(dataset, workers, (warmup + batches) * BATCH_SIZE, seed)
        start = time.perf_counter()
        it = iter(loader)
        next(it)
        first = time.perf_counter() - start
        for _ in range(warmup - 1):
            next(it)
        start, images = time.perf_counter(), 0
        for batch in it:
            images += batch["pixel_values"].shape[0]
        elapsed = time.perf_counter() - start
        del it, loader
    return {"first_batch_s": first, "images_per_s": images / elapsed, "images": images,
            "others_cpu_share": others.share}


def data_path_section(paths: dict, workers_list, warmup, batches, repeats, seed, max_others) -> list[dict]:
    """Every (path, workers) setting `repeats` times, interleaved so drift hits all alike; the
    figures are those of the runs during which other processes used at most `max_others` of the
    CPUs (all runs where none was that quiet)."""
    settings = [(name, w) for name in paths for w in workers_list]
    runs = {s: [] for s in settings}
    for r in range(repeats):
        for name, w in settings:
            result = run_loader(paths[name], w, warmup, batches, seed + r)
            runs[(name, w)].append(result)
            print(f"  repeat {r + 1}/{repeats} {name:8s} workers={w}: {result['images_per_s']:6.1f} images/s, "
                  f"first batch {result['first_batch_s']:.3f} s{_others(result['others_cpu_share'])}", file=sys.stderr)
    rows = []
    for (name, w), results in runs.items():
        kept, n_quiet = quiet(results, [r["others_cpu_share"] for r in results], max_others)
        rows.append({
            "path": name,
            "workers": w,
            "images_per_s": spread(r["images_per_s"] for r in kept),
            "first_batch_s": spread(r["first_batch_s"] for r in kept),
            "quiet_runs": n_quiet,
            "others_cpu_share": _median_or_none(r["others_cpu_share"] for r in kept),
            "images_per_s_all_runs": spread(r["images_per_s"] for r in results),
            "runs": results,
        })
    base = next((r for r in rows if r["path"] == "seed" and r["workers"] == 0), None)
    for row in rows:
        row["ratio_to_seed_0"] = row["images_per_s"]["median"] / base["images_per_s"]["median"] if base else None
    return rows


def _median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _others(share) -> str:
    return "" if share is None else f", other processes {100 * share:.0f}% of the CPUs"


def stage_breakdown(dataset, n: int, passes: int, seed: int, max_others: float) -> dict:
    """CPU milliseconds per image in each step of segtune's data path (PairDataset.load, each of
    the transform's steps, the collator), as in a DataLoader worker: one process, one torch
    thread. CPU time is steadier than wall time when other work shares the machine; per step,
    the median over the quiet passes of `n` images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torch sets it in DataLoader workers
    clock = time.process_time
    steps = dataset.transform.transforms
    names = ["decode image + mask", *(type(t).__name__ for t in steps), "collate (per image)"]
    results = []
    try:
        for p in range(passes):
            rng = random.Random(seed + p)  # as TrainDataset: each draw from the generator handed over
            totals = dict.fromkeys(names, 0.0)
            items = []
            with OtherLoad() as others:
                for i in range(n):
                    t0 = clock()
                    image, mask = dataset.load((p * n + i) % len(dataset))
                    totals[names[0]] += clock() - t0
                    for step in steps:
                        t0 = clock()
                        image, mask = step(image, mask, rng)
                        totals[type(step).__name__] += clock() - t0
                    items.append({"pixel_values": image, "labels": mask})
                    if len(items) == BATCH_SIZE:
                        t0 = clock()
                        default_data_collator(items)
                        totals[names[-1]] += clock() - t0
                        items = []
            results.append(({k: 1000 * v / n for k, v in totals.items()}, others.share))
    finally:
        torch.set_num_threads(threads)
    kept, _ = quiet([r[0] for r in results], [r[1] for r in results], max_others)
    return {k: statistics.median(r[k] for r in kept) for k in names}


# ---------------------------------------------------------------- a model step, for context


def model_section(dataset, labels, ignore_index, steps: int, warmup: int, rounds: int, seed: int,
                  max_others: float, budget_s: float) -> dict:
    """mit-b0 forward + backward + AdamW step at batch 2: on one batch already on the device vs
    fed from the DataLoader with segtune's default workers (rounds of each, alternated); the
    figures are those of the steps during which others used at most `max_others` of the CPUs.
    While either side has fewer than `steps` such steps, more rounds run, up to `budget_s` seconds."""
    from segtune.models.loading import load_model
    from segtune.training.arguments import TRAINING_DEFAULTS

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = TRAINING_DEFAULTS["dataloader_num_workers"]
    torch.manual_seed(seed)
    logging.getLogger("segtune").setLevel(logging.ERROR)  # "random weights" is the point here
    model = load_model("mit-b0", labels, ignore_index).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAINING_DEFAULTS["learning_rate"])

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def to_device(batch):
        return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}

    def train_step(batch):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed_step(batch_source):
        """(seconds for the step, seconds waiting for the batch, others' CPU share meanwhile)."""
        with OtherLoad() as others:
            sync()
            start = time.perf_counter()
            batch = batch_source()
            waited = time.perf_counter() - start
            train_step(batch)
            sync()
        return time.perf_counter() - start, waited, others.share

    in_memory = to_device(next(iter(make_loader(dataset, 0, BATCH_SIZE, seed))))
    memory_steps, loader_steps = [], []

    def n_quiet(timed):
        return quiet(timed, [t[2] for t in timed], max_others)[1]

    for _ in range(3):  # first steps of a fresh model and optimiser are slow (allocations, kernel choice)
        train_step(in_memory)
    sync()

    def memory_block(r):
        times = [timed_step(lambda: in_memory) for _ in range(warmup + steps)][warmup:]
        memory_steps.extend(times)
        print(f"  round {r + 1}: in memory {_step_summary(times)}", file=sys.stderr)

    def loader_block(r):
        it = iter(make_loader(dataset, workers, (warmup + steps) * BATCH_SIZE, seed + 100 + r))
        times = [timed_step(lambda: to_device(next(it))) for _ in range(warmup + steps)][warmup:]
        del it
        loader_steps.extend(times)
        print(f"  round {r + 1}: from loader {_step_summary(times)}", file=sys.stderr)

    began, r = time.perf_counter(), 0
    # `rounds` rounds, then more while either side has fewer than `steps` quiet steps and time is left;
    # the order alternates (memory, loader, loader, memory, ...) so a slow drift favours neither
    while r < rounds or (min(n_quiet(memory_steps), n_quiet(loader_steps)) < steps
                         and time.perf_counter() - began < budget_s):
        for block in (memory_block, loader_block) if r % 2 == 0 else (loader_block, memory_block):
            block(r)
        r += 1
    rounds = r
    memory_kept, memory_quiet = quiet(memory_steps, [t[2] for t in memory_steps], max_others)
    loader_kept, loader_quiet = quiet(loader_steps, [t[2] for t in loader_steps], max_others)
    memory, loader = spread(t[0] for t in memory_kept), spread(t[0] for t in loader_kept)
    ratio = loader["median"] / memory["median"]
    comparable = bool(memory_quiet and loader_quiet) or max_others >= 1
    return {
        "model": "mit-b0 (random weights, %d classes)" % len(labels),
        "device": dev.type,
        "batch_size": BATCH_SIZE,
        "workers": workers,
        "steps_per_round": steps,
        "warmup_steps_per_round": warmup,
        "rounds": rounds,
        "in_memory_s_per_step": memory,
        "loader_s_per_step": loader,
        "loader_wait_s_per_step": spread(t[1] for t in loader_kept),
        "quiet_steps": {"in_memory": memory_quiet, "loader": loader_quiet},
        "ratio_loader_to_memory": ratio,
        "comparable": comparable,  # False: no quiet steps on one side, so the ratio measures the others' load
        "within_5_percent": ratio <= 1.05,
        "criterion_applies": dev.type == "cuda",  # the criterion is for a GPU
        "steps": {"in_memory": memory_steps, "loader": loader_steps},  # (s/step, s waiting, others' share)
    }


def _step_summary(times) -> str:
    shares = [t[2] for t in times if t[2] is not None]
    others = f", other processes {100 * max(shares):.0f}% of the CPUs at most" if shares else ""
    return f"{spread(t[0] for t in times)['median']:.3f} s/step (median){others}"


# ---------------------------------------------------------------- report


def table_rows(rows: list[dict]) -> list[dict]:
    def mmm(s, fmt):
        return f"{fmt.format(s['min'])} / {fmt.format(s['median'])} / {fmt.format(s['max'])}"

    return [{
        "path": r["path"],
        "workers": r["workers"],
        "images/s (min / median / max)": mmm(r["images_per_s"], "{:.1f}"),
        "first batch s (median)": f"{r['first_batch_s']['median']:.3f}",
        "x seed@0": f"{r['ratio_to_seed_0']:.2f}" if r["ratio_to_seed_0"] is not None else "",
        "quiet runs": f"{r['quiet_runs']}/{len(r['runs'])}",
    } for r in rows]


def model_table(m: dict) -> list[dict]:
    def row(name, s, n_quiet):
        return {"model step (batch 2)": name, "s/step min": f"{s['min']:.3f}", "s/step median": f"{s['median']:.3f}",
                "s/step max": f"{s['max']:.3f}", "quiet steps": n_quiet}

    total = m["steps_per_round"] * m["rounds"]
    q = m["quiet_steps"]
    return [row("tensors in memory", m["in_memory_s_per_step"], f"{q['in_memory']}/{total}"),
            row(f"from DataLoader, {m['workers']} worker(s)", m["loader_s_per_step"], f"{q['loader']}/{total}"),
            row("  of which waiting for the batch", m["loader_wait_s_per_step"], "")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_path", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data", default=str(DEFAULT_DATA), help="dataset folder or YAML data file (default: %(default)s)")
    add("--batches", type=int, default=20, help="timed batches of %d per run (default 20)" % BATCH_SIZE)
    add("--warmup", type=int, default=2, help="untimed batches first, worker start-up included (default 2)")
    add("--repeats", type=int, default=5, help="runs per setting, for min/median/max (default 5)")
    add("--workers", default="0,1,2", help="DataLoader workers to try, comma-separated (default 0,1,2)")
    add("--crop-size", type=int, default=512, help="crop (segtune) and resize (seed) size (default 512)")
    add("--model-steps", type=int, default=5, help="timed model steps per round; 0 skips the model")
    add("--model-warmup", type=int, default=1, help="untimed model steps per round (default 1)")
    add("--model-rounds", type=int, default=2,
        help="rounds of (in memory, from loader) blocks at least, alternated against drift (default 2)")
    add("--model-budget", type=float, default=90,
        help="seconds the model part may go on adding rounds until both sides have --model-steps "
        "quiet steps (default 90)")
    add("--max-others", type=float, default=0.10,
        help="keep runs and steps during which other processes used at most this share of the CPUs "
        "(default 0.10; 1 keeps all)")
    add("--seed", type=int, default=0)
    add("--no-write", action="store_true", help="print only; leave results/ alone")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.batches < 1 or args.repeats < 1:
        parser.error("--warmup, --batches and --repeats must be at least 1")
    workers_list = [int(w) for w in args.workers.split(",")]

    warnings.filterwarnings("ignore", message=".*torchvision.*")
    began = time.perf_counter()
    data, labels, segtune_set = segtune_dataset(args.data, args.crop_size)
    seed_set = SeedDataset([(s.image, s.mask) for s in data.train],
                           seed_processor(size={"height": args.crop_size, "width": args.crop_size}))
    print(f"data: {args.data}: {len(segtune_set)} training pairs; batch {BATCH_SIZE}, crop {args.crop_size}",
          file=sys.stderr)
    info = machine()
    load_before = info["load_average"]
    if load_before and load_before[0] > 0.5 * (info["cpus_usable"] or 1):
        print(f"warning: the machine has been busy (load average {load_before[0]} over the last minute); "
              "runs and steps disturbed by other processes are left out (see --max-others)", file=sys.stderr)

    whole = OtherLoad().__enter__()
    rows = data_path_section({"segtune": segtune_set, "seed": seed_set}, workers_list, args.warmup, args.batches,
                             args.repeats, args.seed, args.max_others)
    stages = stage_breakdown(segtune_set, 20, args.repeats, args.seed, args.max_others)
    model = None
    if args.model_steps > 0:
        model = model_section(segtune_set, labels, data.ignore_index, args.model_steps, args.model_warmup,
                              args.model_rounds, args.seed, args.max_others, args.model_budget)

    whole.__exit__(None, None, None)
    info["load_average"] = {"before": load_before, "after": machine()["load_average"]}  # others' work skews figures
    table = markdown_table(table_rows(rows), align={"path": "left", "workers": "right"} | RIGHT)
    lines = [f"Machine: {describe(info)}", "", table, "",
             "segtune data path, CPU ms per image as in a worker (1 thread): "
             + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
             + f" (total {sum(stages.values()):.1f})"]
    if model:
        lines += ["", markdown_table(model_table(model), align=RIGHT), "",
                  f"loader / in memory (median s/step): {model['ratio_loader_to_memory']:.3f}"
                  + ("" if model["criterion_applies"] else " (the 5% criterion is for a GPU; this is a CPU)")
                  + ("" if model["comparable"] else
                     "; NOT comparable: one side had no quiet step, so this mostly measures other processes")]
    if whole.share is not None:
        lines += ["", f"Other processes used {100 * whole.share:.0f}% of the machine's CPU time during the run "
                      f"(hypervisor steal {100 * whole.steal:.0f}%). Figures are from the runs and steps during "
                      f"which they used at most {100 * args.max_others:.0f}% ('quiet'; all of them where none was)."]
    text = "\n".join(lines)
    print(text)
    result = {
        "command": command(),
        "machine": info,
        "settings": {"data": args.data, "train_pairs": len(segtune_set), "batch_size": BATCH_SIZE,
                     "crop_size": args.crop_size, "batches": args.batches, "warmup_batches": args.warmup,
                     "repeats": args.repeats, "workers": workers_list, "seed": args.seed,
                     "max_others": args.max_others, "model_steps": args.model_steps,
                     "model_budget_s": args.model_budget,
                     "model_warmup": args.model_warmup, "model_rounds": args.model_rounds},
        "data_path": rows,
        "segtune_stage_ms_per_image": stages,
        "model_step": model,
        "others_cpu_share": whole.share,
        "steal_share": whole.steal,
        "peak_rss_mb": peak_rss_mb(),
        "wall_s": round(time.perf_counter() - began, 1),
        "table_md": text,
    }
    save_result("data_path", result, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
