"""One row per architecture of segtune.architectures: parameters, GFLOP per image, CPU images/s with torch
and with ONNX Runtime, and the mean IoU after the same short from-scratch budget on the CamVid development
data (docs/models.md).

    python -m benchmarks.models [--names mit-b0,upernet-convnext-tiny] [--steps 50] [--batch 4] [--crop 256]
                                [--images 3] [--quick] [--no-write]

Models are the offline names (full-size configs, random weights: the Hub is not needed). GFLOP: one
forward pass on a 512x512 image (or the fixed square a model takes, BEiT 640, DPT 384, ...), matrix
products and convolutions only (FlopCounterMode, 2 per multiply-add). Speed: batch 1, the same input,
1 untimed and `--images` timed passes, torch float32 and ONNX Runtime (segtune export's graph). mIoU:
`segtune train` from random weights, `--steps` steps of batch `--batch` at crop `--crop` (a fixed-size
model, and UperNet-Swin's backbone, has its image_size set to the crop, so every model sees the same pixels), scored by the
final evaluation on the validation split at the original annotation size. `--quick`: two small models,
a few steps. Writes benchmarks/results/models.json and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import command, machine, markdown_table, peak_rss_mb, save_result

NAMES = ["mit-b0", "upernet-convnext-tiny", "upernet-swin-tiny", "dpt-hybrid", "beit-base", "data2vec-vision-base",
         "mobilevit-small", "mobilevitv2-1.0", "deeplabv3-mobilenet-v2"]
# --set mask: the mask classifiers and UperNet on DINOv2, beside mit-b0, in their own run and results file
MASK_NAMES = ["mit-b0", "eomt-small-512", "eomt-dinov3-small-512", "mask2former-swin-tiny", "maskformer-swin-tiny",
              "upernet-dinov2-small"]
QUICK_NAMES = ["mit-b0", "mobilevit-xx-small"]
CAMVID = Path(__file__).resolve().parents[1] / "examples" / "camvid-mini.yaml"  # /work/shared/data/camvid-mini
CLASSES = 11


def build(name: str, image_size: int | None = None):
    from segtune.models.architectures import auto_class, offline_config
    from segtune.models.masks import original_query_init

    config = offline_config(name)
    config.num_labels = CLASSES
    if image_size and hasattr(config, "image_size"):
        config.image_size = image_size
    backbone = getattr(config, "backbone_config", None)
    if image_size and backbone is not None and hasattr(backbone, "image_size"):  # UperNet-Swin's window grid
        backbone.image_size = image_size
    torch.manual_seed(0)
    model = auto_class(config).from_config(config).eval()
    original_query_init(model)  # as segtune builds an offline MaskFormer
    return model


def input_side(model) -> int:
    from segtune.models.architectures import input_size

    return input_size(model.config) or 512


def gflop(model, side: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from segtune.models.masks import pixel_scores

    with FlopCounterMode(display=False) as counter, torch.no_grad():  # a mask classifier's scores included
        pixel_scores(model, torch.rand(1, 3, side, side))
    return counter.get_total_flops() / 1e9


def speeds(model, side: int, images: int) -> dict:
    """Images/s, torch and ONNX Runtime, on one side x side image at batch 1."""
    from segtune.exporting.run import export_onnx
    from segtune.models.exportable import make_exportable

    from segtune.models.architectures import family
    from segtune.models.masks import pixel_scores

    x = torch.rand(1, 3, side, side)
    out = {}
    with torch.no_grad():
        pixel_scores(model, x)
        start = time.perf_counter()
        for _ in range(images):
            pixel_scores(model, x)  # the per-pixel scores segtune upsamples: a mask classifier's combined masks
    out["torch"] = images / (time.perf_counter() - start)
    backbone = getattr(getattr(model.config, "backbone_config", None), "model_type", "")
    if family(model.config) == "mask" and "swin" in backbone:
        out["onnx"], out["onnx_error"] = None, "segtune export refuses it (Swin's padding fixes the graph's size)"
        return out
    try:
        import copy

        import onnxruntime

        with tempfile.TemporaryDirectory() as tmp:
            exported = copy.deepcopy(model)
            make_exportable(exported)
            path = Path(tmp, "model.onnx")
            from segtune.models.architectures import input_size

            export_onnx(exported, path, x, 18, "benchmark", fixed_size=input_size(model.config) is not None)
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feed = {"pixel_values": x.numpy()}
            session.run(None, feed)
            start = time.perf_counter()
            for _ in range(images):
                session.run(None, feed)
            out["onnx"] = images / (time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - a row with the reason, not a failed benchmark
        out["onnx"], out["onnx_error"] = None, str(e).splitlines()[0][:200]
    return out


def short_training(name: str, steps: int, batch: int, crop: int, data: Path, folder: Path) -> float | None:
    """Mean IoU after `steps` steps from random weights (segtune.api.train)."""
    from segtune import api
    from segtune.models.architectures import OFFLINE_NAMES, input_size

    model = build(name, image_size=crop if OFFLINE_NAMES[name].fixed_size or name.startswith("upernet-swin") else None)
    base = folder / "base"
    model.save_pretrained(base)
    del model
    fixed = input_size(__import__("transformers").AutoConfig.from_pretrained(base)) is not None
    result = api.train(data=str(data), model=str(base), output_dir=str(folder / "run"), crop_size=crop,
                       base_size=crop if fixed else 360, max_steps=steps, eval_steps=steps,
                       per_device_train_batch_size=batch, learning_rate=6e-4, num_workers=0, disable_tqdm=True,
                       report=False, seed=0)
    return result["mean_iou"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default=None, help="comma-separated offline names (default: one per architecture)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--data", default=str(CAMVID))
    parser.add_argument("--quick", action="store_true", help="two small models, 5 steps, 1 timed image")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--set", choices=("pixel", "mask"), default="pixel",
                        help="mask: the mask classifiers (and UperNet-DINOv2) beside mit-b0, to results/models_mask.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.images, args.crop = 5, 1, 128
    names = args.names.split(",") if args.names else (
        QUICK_NAMES if args.quick else MASK_NAMES if args.set == "mask" else NAMES)
    from segtune.models.architectures import OFFLINE_NAMES

    began, rows = time.perf_counter(), []
    for name in names:  # every speed first, in a few minutes: the long trainings after them need no quiet machine
        started = time.perf_counter()
        model = build(name)
        side = input_side(model)
        row = {"name": name, "architecture": OFFLINE_NAMES[name].title, "model_type": model.config.model_type,
               "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "input": side,
               "gflop": gflop(model, side)}
        row.update({f"images_per_s_{k}": v for k, v in speeds(model, side, args.images).items()})
        del model
        row["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    print(f"speeds measured ({time.perf_counter() - began:.0f} s); now the short trainings", file=sys.stderr, flush=True)
    for row in rows:
        if Path(args.data).exists() and args.steps > 0:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="segtune-models-") as tmp:
                row["mean_iou"] = short_training(row["name"], args.steps, args.batch, args.crop, Path(args.data),
                                                 Path(tmp))
            row["training_seconds"] = round(time.perf_counter() - started, 1)
            print(f"{row['name']}: mean IoU {row['mean_iou']:.4f}", file=sys.stderr, flush=True)

    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    table = markdown_table([{
        "architecture": r["architecture"], "offline name": f"`{r['name']}`", "parameters (M)": f"{r['params_m']:.1f}",
        "GFLOP (input)": f"{r['gflop']:.1f} ({r['input']})", "CPU img/s torch": fmt(r["images_per_s_torch"], ".2f"),
        "CPU img/s ONNX": fmt(r.get("images_per_s_onnx"), ".2f"), "mIoU, short budget": fmt(r.get("mean_iou"), ".3f"),
    } for r in rows], align={"architecture": "left", "offline name": "left"})
    notes = (f"Random weights, {CLASSES} classes. Speed: batch 1, float32, 1 untimed + {args.images} timed passes. "
             f"mIoU: {args.steps} steps of batch {args.batch} at crop {args.crop} from scratch on {Path(args.data).name}, "
             "the same budget for every model (fixed-size models with image_size = crop).")
    text = f"{table}\n\n{notes}"
    print(text)
    result = {"command": command(), "machine": machine(), "settings": vars(args), "rows": rows, "notes": notes,
              "table_md": text, "peak_rss_mb": peak_rss_mb(), "wall_s": round(time.perf_counter() - began, 1),
              "summary": [{"what": f"{r['name']}: CPU img/s torch / ONNX, mIoU after the short budget",
                           "segtune": f"{fmt(r['images_per_s_torch'], '.2f')} / {fmt(r.get('images_per_s_onnx'), '.2f')}",
                           "baseline": "", "ratio": None, "ratio_text": fmt(r.get("mean_iou"), ".3f"),
                           "target": "", "met": None} for r in rows]}
    save_result("models_mask" if args.set == "mask" else "models", result, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
