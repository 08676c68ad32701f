"""Model FLOPs per training image at crop 512, the machine's measured peak matmul rate, and the
fraction of it that real training steps achieve.

    python -m benchmarks.flops [--models mit-b0] [--steps 10] [--warmup 3] [--matmul-size 2048]

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`: matrix products and
convolutions only (2 FLOPs per multiply-add), not elementwise work, norms, softmax, the
loss's upsampling or the optimiser. Its convolution-backward formula ignores `groups` in the
weight gradient (torch 2.13), so a depthwise convolution's backward counts channels-fold too
much (mit-b0: 84 instead of ~41 GFLOP per image); `conv_backward_flops` corrects that.
Writes benchmarks/results/flops.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from benchmarks.common import (OtherLoad, command, describe, machine, markdown_table, peak_rss_mb, quiet, save_result,
                               spread)

CROP, BATCH = 512, 2


def build_model(name: str, num_labels: int):
    """A SegFormer of the named MiT size from its config, random seeded weights (no Hub)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from segtune.models.loading import MIT_ARCHITECTURES

    torch.manual_seed(0)
    return SegformerForSemanticSegmentation(SegformerConfig(**MIT_ARCHITECTURES[name], num_labels=num_labels))


def fake_batch(batch: int, num_labels: int, crop: int = CROP, device="cpu") -> dict:
    g = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(batch, 3, crop, crop, generator=g).to(device),
            "labels": torch.randint(0, num_labels, (batch, crop, crop), generator=g).to(device)}


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """The input gradient and the weight gradient of a convolution each cost what its forward
    pass does (the weight's shape already divides by the groups)."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})


def count_flops(model, batch: dict) -> dict:
    """FLOPs of one forward and one backward pass on `batch` (matmuls and convolutions only)."""
    with flop_counter() as forward:
        loss = model(**batch).loss
    with flop_counter() as backward:
        loss.backward()
    model.zero_grad(set_to_none=True)
    return {"forward": forward.get_total_flops(), "backward": backward.get_total_flops()}


def peak_matmul(device: torch.device, dtype: torch.dtype, n: int, max_others: float, repeats: int = 5,
                rounds: int = 5) -> float:
    """Best FLOP/s of `repeats` back-to-back n x n x n `torch.mm`s, over the `rounds` tries during
    which other processes took at most `max_others` of the CPUs (over all of them if none was)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    torch.mm(a, b, out=out)  # warm-up: library choice, allocation
    sync()
    rates = []
    for _ in range(rounds):
        with OtherLoad() as others:
            start = time.perf_counter()
            for _ in range(repeats):
                torch.mm(a, b, out=out)
            sync()
            rates.append((2 * n**3 * repeats / (time.perf_counter() - start), others.share))
    return max(quiet([r[0] for r in rates], [r[1] for r in rates], max_others)[0])


def time_training(model, batch: dict, device: torch.device, steps: int, warmup: int, bf16: bool) -> list[tuple]:
    """(seconds, others' CPU share) of `steps` AdamW training steps after `warmup` untimed ones."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        with OtherLoad() as others:
            start = time.perf_counter()
            step()
            seconds = time.perf_counter() - start
        times.append((seconds, others.share))
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flops", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--models", default="mit-b0", help="comma-separated MiT sizes (default mit-b0)")
    add("--classes", type=int, default=11, help="classes of the head (default 11, CamVid-mini's)")
    add("--steps", type=int, default=10, help="timed training steps of batch 2 (default 10)")
    add("--warmup", type=int, default=3, help="untimed training steps first (default 3)")
    add("--matmul-size", type=int, default=None, help="n of the n x n matmuls (default 2048 on CPU, 8192 on GPU)")
    add("--max-others", type=float, default=0.10, help="keep steps during which others used at most this CPU share")
    add("--no-write", action="store_true", help="print only; leave results/ alone")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    precisions = ["float32"] + (["bfloat16"] if bf16_ok else [])  # bf16 matmuls on CPU are emulated here: not timed
    info = machine()
    print(f"# {describe(info)}", file=sys.stderr)

    peaks = {p: peak_matmul(device, getattr(torch, p), n, args.max_others) for p in precisions}
    for p, v in peaks.items():
        print(f"peak {p} matmul ({n}x{n}): {v / 1e9:.1f} GFLOP/s", file=sys.stderr)

    rows = []
    for name in args.models.split(","):
        model = build_model(name, args.classes).to(device).train()
        counted = count_flops(model, fake_batch(BATCH, args.classes, device=device))
        per_image = {k: v / BATCH for k, v in counted.items()}
        per_image["training"] = per_image["forward"] + per_image["backward"]
        for p in precisions:
            model = build_model(name, args.classes).to(device).train()  # fresh weights and optimiser per precision
            times = time_training(model, fake_batch(BATCH, args.classes, device=device), device, args.steps,
                                  args.warmup, bf16=p == "bfloat16")
            kept, n_quiet = quiet([t[0] for t in times], [t[1] for t in times], args.max_others)
            step_s = spread(kept)
            achieved = per_image["training"] * BATCH / step_s["median"]
            rows.append({"model": name, "precision": p, "flops_per_image": per_image, "step_s": step_s,
                         "quiet_steps": n_quiet, "images_per_s": BATCH / step_s["median"],
                         "achieved_flops_per_s": achieved, "peak_matmul_flops_per_s": peaks[p],
                         "fraction_of_peak": achieved / peaks[p], "steps": times})
            print(f"{name} {p}: {step_s['median']:.3f} s/step, {achieved / 1e9:.1f} GFLOP/s "
                  f"({100 * achieved / peaks[p]:.1f}% of peak)", file=sys.stderr)

    table = markdown_table([{
        "model": r["model"], "precision": r["precision"],
        "GFLOP/image fwd": f"{r['flops_per_image']['forward'] / 1e9:.2f}",
        "GFLOP/image fwd+bwd": f"{r['flops_per_image']['training'] / 1e9:.2f}",
        "s/step (min / median / max)": "{min:.3f} / {median:.3f} / {max:.3f}".format(**r["step_s"]),
        "achieved GFLOP/s": f"{r['achieved_flops_per_s'] / 1e9:.1f}",
        "peak matmul GFLOP/s": f"{r['peak_matmul_flops_per_s'] / 1e9:.1f}",
        "% of peak": f"{100 * r['fraction_of_peak']:.1f}",
        "quiet steps": f"{r['quiet_steps']}/{len(r['steps'])}",
    } for r in rows], align={"model": "left", "precision": "left"})
    notes = (f"Batch {BATCH}, crop {CROP}, {args.classes} classes, random weights; a step is forward + backward + "
             f"AdamW on one batch in memory ({args.warmup} untimed, {args.steps} timed). FLOPs from "
             "FlopCounterMode: matmuls and convolutions only, 2 per multiply-add (grouped-convolution backward "
             "corrected, see the module's doc). Peak: best of 5 (quiet) rounds of 5 back-to-back "
             f"{n}x{n} torch.mm on {device.type}, torch's default settings (as training has them).")
    text = f"Machine: {describe(info)}\n\n{table}\n\n{notes}"
    print(text)
    summary = [{"what": f"training FLOP/s, {r['model']} {r['precision']} ({device.type}), share of peak matmul",
                "segtune": f"{r['flops_per_image']['training'] / 1e9:.1f} GFLOP/img, "
                           f"{r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s",
                "baseline": f"peak {r['peak_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s",
                "ratio": r["fraction_of_peak"], "ratio_text": f"{100 * r['fraction_of_peak']:.0f}% of peak",
                "target": "", "met": None}
               for r in rows]
    result = {"command": command(), "machine": info, "device": device.type,
              "settings": {"batch_size": BATCH, "crop_size": CROP, "classes": args.classes, "steps": args.steps,
                           "warmup": args.warmup, "matmul_size": n, "max_others": args.max_others},
              "peak_matmul_flops_per_s": peaks, "rows": rows, "summary": summary, "notes": notes,
              "peak_rss_mb": peak_rss_mb(), "wall_s": round(time.perf_counter() - began, 1), "table_md": text}
    save_result("flops", result, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
