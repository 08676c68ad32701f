"""Training images per second: `segtune train`'s path (its own `run_training`, recipe, dataset and
defaults) against the seed-style path (the tutorial's Dataset and TrainingArguments on a plain
`Trainer`), on the same data and model (mit-b0 from its config, random seeded weights), crop 512,
batch 2. segtune runs three times: with its defaults (bf16 autocast where the CPU or GPU runs native
bf16 faster than float32, docs/train.md#precision), in float32 (`--bf16 false`) and in bf16 (`--bf16
true`), so the precision's share of the gain, and whether the default picked the faster one, shows
in the same run.

    python -m benchmarks.train_speed [--data examples/camvid-mini.yaml] [--steps 30] [--warmup 3] [--rounds 1]
    python -m benchmarks.train_speed --cpu-isa avx2 --sides segtune-fp32 segtune-bf16   # a CPU without bf16

`--cpu-isa avx2` runs the children as on a CPU without AVX-512 (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA):
there bf16 is emulated, and segtune's default is float32.

Each side trains in its own fresh process (sides alternate when there are several rounds); a
Trainer callback times every optimiser step: `--warmup` untimed steps, then `--steps` timed ones.
Writes benchmarks/results/train_speed.json and prints a markdown table. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from benchmarks.common import (REPO, OtherLoad, command, describe, machine, markdown_table, peak_rss_mb, quiet,
                               save_result, spread)

DEFAULT_DATA = REPO / "examples" / "camvid-mini.yaml"
SIDES = ("segtune", "segtune-fp32", "segtune-bf16", "seed")
DEFAULT_SIDES = ("segtune", "segtune-fp32", "segtune-bf16", "seed")  # the default is either of the two: both shown
BATCH, CROP = 2, 512
TARGET = {"cpu": 1.0, "cpu-bf16": 1.5, "cuda": 2.0}  # the issues': no slower on a CPU, 1.5x with native bf16,
# twice as fast on a GPU


class Finished(Exception):
    """Raised when training ends, to skip what follows it in `run_training` (final evaluation, saving)."""


class StepTimer(TrainerCallback):
    """Times every optimiser step: `step_s` from the end of the previous step to the end of this one
    (fetching the batch included), `compute_s` from on_step_begin (batch in hand) to on_step_end,
    with the share of the CPUs other processes took meanwhile. Records what the Trainer runs with."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.steps, self.settings, self.last_end, self.load = [], {}, None, None

    def _now(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.settings = trainer_settings(args, model, optimizer, lr_scheduler)

    def on_step_begin(self, args, state, control, **kwargs):
        self.begin = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        end = self._now()
        if self.load is not None:
            self.load.__exit__(None, None, None)
            self.steps.append({"step_s": end - self.last_end, "compute_s": end - self.begin,
                               "others_cpu_share": self.load.share})
        self.last_end, self.load = end, OtherLoad().__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        raise Finished


def trainer_settings(args, model, optimizer, lr_scheduler) -> dict:
    """What the Trainer trains with: precision, data loading, optimiser, memory format."""
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    return {
        "device": str(args.device),
        "bf16": args.bf16, "fp16": args.fp16, "tf32": args.tf32, "torch_compile": args.torch_compile,
        "channels_last": bool(convs) and all(w.is_contiguous(memory_format=torch.channels_last)
                                             and not w.is_contiguous() for w in convs),
        "dataloader_num_workers": args.dataloader_num_workers,
        "dataloader_pin_memory": args.dataloader_pin_memory,
        "dataloader_persistent_workers": args.dataloader_persistent_workers,
        "optimizer": type(inner).__name__,
        "optimizer_fused": inner.defaults.get("fused"), "optimizer_foreach": inner.defaults.get("foreach"),
        "param_groups": len(inner.param_groups),
        "lr_scheduler": type(lr_scheduler).__name__, "logging_steps": args.logging_steps,
        "gradient_checkpointing": args.gradient_checkpointing,
    }


# ---------------------------------------------------------------- the two sides (child processes)

NO_EVAL = dict(eval_strategy="no", save_strategy="no", load_best_model_at_end=False, disable_tqdm=True)


def run_segtune(data: str, out: Path, max_steps: int, seed: int, timer: StepTimer, **precision) -> None:
    """`segtune train --data DATA --model mit-b0 --max_steps N` with evaluation and saving off
    (`precision`: bf16=False for the float32 side; else segtune's default)."""
    from segtune.training.arguments import TrainOptions
    from segtune.training.run import run_training

    logging.getLogger("segtune").setLevel(logging.ERROR)  # "random weights" is the point here
    opts = TrainOptions(data=data, output_dir=out, model="mit-b0", report=False, callbacks=[timer],
                        training=dict(max_steps=max_steps, seed=seed, **NO_EVAL, **precision))
    try:
        run_training(opts)
    except Finished:
        pass


def run_seed(data: str, out: Path, max_steps: int, seed: int, timer: StepTimer) -> None:
    """The tutorial's Dataset, TrainingArguments and plain Trainer, on the same pairs and model."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, Trainer

    from benchmarks.seed import SeedDataset, seed_processor, seed_training_arguments
    from segtune.data.checks import checked_labels
    from segtune.data.sources import load_data
    from segtune.models.loading import MIT_ARCHITECTURES

    loaded = load_data(data)  # only to list the same training pairs and classes as segtune's side
    labels = checked_labels(loaded, loaded.labels, splits=("train",))
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(SegformerConfig(
        **MIT_ARCHITECTURES["mit-b0"], num_labels=len(labels), id2label=labels.id2label, label2id=labels.label2id,
        semantic_loss_ignore_index=loaded.ignore_index))
    dataset = SeedDataset([(s.image, s.mask) for s in loaded.train], seed_processor())
    args = seed_training_arguments(out, max_steps=max_steps, seed=seed, **NO_EVAL)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[timer])
    try:
        trainer.train()
    except Finished:
        pass


def child(side: str, data: str, max_steps: int, seed: int, out_json: str) -> None:
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix=f"segtune-train-speed-{side}-") as work:
        run, extra = {"segtune": (run_segtune, {}), "segtune-fp32": (run_segtune, {"bf16": False}),
                      "segtune-bf16": (run_segtune, {"bf16": True}), "seed": (run_seed, {})}[side]
        run(data, Path(work) / "run", max_steps, seed, timer, **extra)
    Path(out_json).write_text(json.dumps({"steps": timer.steps, "settings": timer.settings}))


def run_side(side: str, args, work: Path, r: int) -> dict:
    out = work / f"{side}-{r}.json"
    cmd = [sys.executable, "-m", "benchmarks.train_speed", "--child", side, "--data", args.data, "--out", str(out),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed)]
    env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    if args.cpu_isa:  # torch's kernels and oneDNN's both held to that instruction set
        env.update(ATEN_CPU_CAPABILITY=args.cpu_isa.lower(), ONEDNN_MAX_CPU_ISA=args.cpu_isa.upper())
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"train_speed: the {side} side failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["steps"] = result["steps"][args.warmup - 1:]  # the first step has no interval: warm-up counts it
    result["wall_s"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data", default=str(DEFAULT_DATA), help="dataset folder or YAML data file (default: %(default)s)")
    add("--steps", type=int, default=30, help="timed optimiser steps per side and round (default 30)")
    add("--warmup", type=int, default=3, help="untimed steps first, DataLoader start-up included (default 3)")
    add("--rounds", type=int, default=1, help="rounds of (segtune, seed), alternating the order (default 1)")
    add("--max-others", type=float, default=0.10,
        help="keep steps during which other processes used at most this share of the CPUs (default 0.10)")
    add("--seed", type=int, default=0)
    add("--sides", nargs="+", choices=SIDES, default=list(DEFAULT_SIDES),
        help="what to run: segtune's defaults, segtune in float32 / bf16, the seed (default: %(default)s)")
    add("--cpu-isa", choices=["avx2"], help="run as on a CPU without AVX-512 (and so without native bf16); "
        "writes train_speed_avx2.json")
    add("--no-write", action="store_true", help="print only; leave results/ alone")
    add("--child", choices=SIDES, help=argparse.SUPPRESS)
    add("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.child:
        child(args.child, args.data, args.warmup + args.steps, args.seed, args.out)
        return 0

    began = time.perf_counter()
    info = machine()
    dev = info["device"]
    print(f"# train speed: {args.data}, mit-b0, batch {BATCH}, crop {CROP}, {dev}; {describe(info)}", file=sys.stderr)
    chosen = list(dict.fromkeys(args.sides))
    runs = {side: [] for side in chosen}
    with tempfile.TemporaryDirectory(prefix="segtune-train-speed-") as work:
        for r in range(args.rounds):
            for side in chosen if r % 2 == 0 else chosen[::-1]:
                result = run_side(side, args, Path(work), r)
                runs[side].append(result)
                med = spread(s["step_s"] for s in result["steps"])["median"]
                print(f"  round {r + 1} {side}: {BATCH / med:.2f} images/s (median), {result['wall_s']:.0f} s",
                      file=sys.stderr)

    sides = {}
    for side, results in runs.items():
        steps = [s for res in results for s in res["steps"]]
        kept, n_quiet = quiet(steps, [s["others_cpu_share"] for s in steps], args.max_others)
        sides[side] = {
            "images_per_s": spread(BATCH / s["step_s"] for s in kept),
            "compute_images_per_s": spread(BATCH / s["compute_s"] for s in kept),
            "quiet_steps": n_quiet, "steps_total": len(steps),
            "settings": results[0]["settings"], "rounds": results,
        }
    # the reference: the seed's Trainer where it ran, else the first side (e.g. fp32 against bf16)
    base = "seed" if "seed" in sides else chosen[0]
    main_side = "segtune" if "segtune" in sides else chosen[-1]

    def median(side):
        return sides[side]["images_per_s"]["median"]

    ratio = median(main_side) / median(base)
    native_bf16 = dev == "cpu" and bool(sides[main_side]["settings"].get("bf16")) and not args.cpu_isa
    target = TARGET["cpu-bf16"] if native_bf16 else TARGET.get(dev, 1.0)
    comparable = bool(sides[main_side]["quiet_steps"] and sides[base]["quiet_steps"]) or args.max_others >= 1

    def row(side):
        s = sides[side]
        return {"path": side, "images/s (min / median / max)": "{min:.2f} / {median:.2f} / {max:.2f}".format(
                    **s["images_per_s"]),
                "compute only, images/s (median)": f"{s['compute_images_per_s']['median']:.2f}",
                f"x {base}": f"{median(side) / median(base):.2f}",
                "quiet steps": f"{s['quiet_steps']}/{s['steps_total']}"}

    settings_keys = list(sides[chosen[0]]["settings"])
    settings_table = markdown_table([{"setting": k, **{side: str(sides[side]["settings"].get(k)) for side in chosen}}
                                     for k in settings_keys], align={k: "left" for k in ("setting", *chosen)})
    isa = f", CPU held to {args.cpu_isa.upper()}" if args.cpu_isa else ""
    verdict = f"{main_side} / {base} (median images/s): {ratio:.2f}x{isa}"
    if base == "seed":
        verdict += f", target >= {target:g}x on {dev}" + (" with native bf16: " if native_bf16 else ": ") + (
            ("met" if ratio >= target else "NOT met") if comparable else "NOT comparable (no quiet steps on one side)")
    text = "\n".join([f"Machine: {describe(info)}{isa}", "", markdown_table([row(s) for s in chosen], align={
        "path": "left"}), "", verdict, "", "What each side trained with:", "", settings_table])
    print(text)
    met = (ratio >= target if comparable else None) if base == "seed" else None
    result = {
        "command": command(), "machine": info, "device": dev, "cpu_isa": args.cpu_isa,
        "settings": {"data": args.data, "model": "mit-b0 (from its config, random weights seeded)",
                     "batch_size": BATCH, "crop_size": CROP, "steps": args.steps, "warmup": args.warmup,
                     "rounds": args.rounds, "seed": args.seed, "max_others": args.max_others, "sides": chosen},
        "sides": sides, "baseline": base, "ratio": ratio,
        "ratios": {side: median(side) / median(base) for side in chosen},
        "target": target if base == "seed" else None, "met": met, "comparable": comparable,
        "summary": [{"what": f"training images/s (mit-b0, batch {BATCH}, crop {CROP}, {dev}{isa}, {main_side} "
                             f"against {base})" + ("" if comparable else ", NOT comparable: no quiet steps on one side"),
                     "segtune": median(main_side), "baseline": median(base), "ratio": ratio,
                     "target": f">= {target:g}x" if base == "seed" else None, "met": met}],
        "peak_rss_mb": peak_rss_mb(), "wall_s": round(time.perf_counter() - began, 1), "table_md": text,
    }
    save_result("train_speed" + (f"_{args.cpu_isa}" if args.cpu_isa else ""), result, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
