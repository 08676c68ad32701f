"""Images per second of `segtune predict` against `transformers.pipeline("image-segmentation")` and
the seeds' loop (processor, model, `interpolate`, argmax, one image at a time), on the same real
images with the same model, start-up included, and whether they give the same label maps.

    python -m benchmarks.predict_speed [--images 200] [--rounds 1] [--methods seed pipeline segtune-cli ...]

Each method runs in a fresh process timed from outside, so interpreter start, imports and
model loading count. The model is mit-b0 sized (random weights, 12 classes: no Hub here) with
segtune's processor at short side 512. CamVid-mini has 118 distinct images (480x360); the list
cycles through them to reach --images. Writes benchmarks/results/predict_speed.json and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, OtherLoad, command, describe, machine, markdown_table, write_result

CAMVID = REPO.parent / "shared" / "data" / "camvid-mini"
METHODS = {
    "seed": "seeds' loop: processor, model, interpolate, argmax, one image at a time",
    "pipeline": 'transformers.pipeline("image-segmentation"), one image at a time',
    "segtune-api": "Segmenter.predict (batch 4, 2 decode threads), label maps only",
    "segtune-cli": "segtune predict CLI, defaults (on CPU: SegFormer's head folded, batch 1, channels-last): "
                   "label PNG, colour PNG, overlay JPEG per image",
    "segtune-cli-exact": "segtune predict --fold-head false (transformers' own head, batch 4)",
    "segtune-cli-onnx": "segtune predict on the `segtune export` folder, ONNX Runtime fp32",
    "segtune-cli-openvino": "segtune predict on the export folder, OpenVINO fp32 (its throughput choice of streams)",
    "segtune-cli-openvino-bf16": "segtune predict on the export folder, OpenVINO bf16 (CPUs with bf16; its throughput "
                                 "choice of streams, 2 on 2 cores)",
    "segtune-cli-openvino-bf16-1": "the same with --streams 1: one request on every thread",
    "segtune-cli-bf16": "segtune predict --dtype bfloat16 (GPU only)",
}
DEFAULT_METHODS = ["seed", "pipeline", "segtune-api", "segtune-cli", "segtune-cli-exact", "segtune-cli-onnx",
                   "segtune-cli-openvino", "segtune-cli-openvino-bf16", "segtune-cli-openvino-bf16-1"]
EXPORTED = {"segtune-cli-onnx": ["--runtime", "onnxruntime"], "segtune-cli-openvino": ["--runtime", "openvino"],
            "segtune-cli-openvino-bf16": ["--runtime", "openvino", "--dtype", "bfloat16"],
            "segtune-cli-openvino-bf16-1": ["--runtime", "openvino", "--dtype", "bfloat16", "--streams", "1"]}
REFERENCE = "seed"


# ---------------------------------------------------------------- set-up


def make_model(folder: Path) -> Path:
    """mit-b0 with random weights (seeded), 12 classes, and segtune's processor at 512."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from segtune.models.loading import training_processor

    torch.manual_seed(0)
    SegformerForSemanticSegmentation(SegformerConfig(num_labels=12)).save_pretrained(folder)
    training_processor("mit-b0", 512).save_pretrained(folder)
    return folder


def image_folder(folder: Path, count: int) -> list[Path]:
    """`count` links to the CamVid images (cycling), named img_000.png ...: nothing is copied."""
    sources = sorted((CAMVID / "train").glob("*.png")) + sorted((CAMVID / "val").glob("*.png"))
    if not sources:
        raise SystemExit(f"{CAMVID}: no images (../shared/data/camvid-mini is needed)")
    folder.mkdir(parents=True)
    links = []
    for i in range(count):
        link = folder / f"img_{i:03d}.png"
        link.symlink_to(sources[i % len(sources)])
        links.append(link)
    return links


# ---------------------------------------------------------------- the methods (child processes)


def run_child(method: str, model: str, images: list[str], out: str, device: str) -> None:
    """Runs one method over the images; saves the label maps (uint8) to `out` and the loop time."""
    start = time.perf_counter()
    import torch

    maps = []
    if method == "seed":
        import torch.nn.functional as F
        from PIL import Image
        from transformers import AutoModelForSemanticSegmentation, SegformerImageProcessorPil

        processor = SegformerImageProcessorPil.from_pretrained(model)
        net = AutoModelForSemanticSegmentation.from_pretrained(model).to(device).eval()
        ready = time.perf_counter()
        for path in images:
            image = Image.open(path).convert("RGB")
            inputs = processor(images=image, return_tensors="pt").to(device)
            with torch.no_grad():
                logits = net(**inputs).logits
            upsampled = F.interpolate(logits, size=image.size[::-1], mode="bilinear", align_corners=False)
            maps.append(upsampled.argmax(dim=1)[0].cpu().numpy().astype(np.uint8))
    elif method == "pipeline":
        from transformers import pipeline

        pipe = pipeline("image-segmentation", model=model, device=device)
        label2id = pipe.model.config.label2id
        ready = time.perf_counter()
        for path in images:
            segments = pipe(path)
            label_map = np.zeros(segments[0]["mask"].size[::-1], dtype=np.uint8)
            for segment in segments:
                label_map[np.array(segment["mask"]) == 255] = label2id[segment["label"]]
            maps.append(label_map)
    elif method == "segtune-api":
        from segtune.inference.segmenter import Segmenter

        segmenter = Segmenter.from_pretrained(model, device=device)
        ready = time.perf_counter()
        maps = [m.astype(np.uint8) for m in segmenter.predict(images)]
    else:
        raise SystemExit(f"unknown child method {method}")
    end = time.perf_counter()
    np.savez(out, maps=np.stack(maps), ready=ready - start, loop=end - ready)


def run_method(method: str, model: Path, images: list[Path], folder: Path, work: Path, device: str) -> dict:
    """Times one method in a fresh process; returns its figures and label maps."""
    out = work / f"{method}.npz"
    if method.startswith("segtune-cli"):
        pred = work / method
        shutil.rmtree(pred, ignore_errors=True)  # a fresh folder each round: segtune skips images already done
        extra = {"segtune-cli-exact": ["--fold-head", "false"], "segtune-cli-bf16": ["--dtype", "bfloat16"],
                 **EXPORTED}.get(method, [])
        source = model.parent / "export" if method in EXPORTED else model  # exported once, untimed (main)
        cmd = [str(Path(sys.executable).parent / "segtune"), "predict", "--model", str(source), str(folder),
               "--output-dir", str(pred), "--device", device, *extra]
    else:
        listing = work / "images.json"
        listing.write_text(json.dumps([str(p) for p in images]))
        cmd = [sys.executable, "-m", "benchmarks.predict_speed", "--child", method, "--model", str(model),
               "--listing", str(listing), "--out", str(out), "--device", device]
    env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    with OtherLoad() as load:
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{method} failed:\n{result.stderr[-3000:]}")
    if method.startswith("segtune-cli"):
        from PIL import Image

        maps = np.stack([np.array(Image.open(pred / f"{p.stem}.png")) for p in images])
        loop = None
    else:
        saved = np.load(out)
        maps, loop = saved["maps"], float(saved["loop"])
    return {"method": method, "wall_s": wall, "loop_s": loop, "other_load": load.share, "maps": maps}


def model_gflop(model_dir: Path, image: Path) -> float:
    """GFLOP of one forward pass at the size the processor gives `image` (matmuls and convolutions)."""
    import torch
    from PIL import Image

    from benchmarks.flops import flop_counter
    from segtune.inference.segmenter import Segmenter

    seg = Segmenter.from_pretrained(model_dir, device="cpu")
    pixel_values = seg.processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad(), flop_counter() as counter:
        seg.model(pixel_values=pixel_values)
    return counter.get_total_flops() / 1e9


def peaks(device: str) -> dict[str, float]:
    """The measured matmul peak, GFLOP/s, in float32 and bfloat16 (2048-sized, during quiet moments)."""
    import torch

    from benchmarks.flops import peak_matmul

    dev = torch.device(device)
    return {name: peak_matmul(dev, dtype, 2048, max_others=0.05) / 1e9
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each method, in alternating order; the median wall time counts")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--listing", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.model, json.loads(Path(args.listing).read_text()), args.out, args.device)
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    methods = args.methods or DEFAULT_METHODS + (["segtune-cli-bf16"] if device == "cuda" else [])
    if REFERENCE not in methods:
        methods = [REFERENCE] + methods
    info = machine()
    print(f"# predict speed: {args.images} CamVid images (480x360), mit-b0 at short side 512, {device}")
    print(f"# {describe(info)}\n")
    work = Path(tempfile.mkdtemp(prefix="segtune-predict-speed-"))
    try:
        model = make_model(work / "model")
        images = image_folder(work / "images", args.images)
        if any(m in EXPORTED for m in methods):  # the export (with its parity check) is not timed
            segtune = str(Path(sys.executable).parent / "segtune")
            subprocess.run([segtune, "export", "--model", str(model), "--output-dir", str(model.parent / "export")],
                           check=True, cwd=REPO, capture_output=True)
        runs, walls = {}, {m: [] for m in methods}
        for round_ in range(args.rounds):
            # The order alternates so slow drift of the machine's speed hits every method alike; the
            # seeds' loop (the reference label maps) runs in the first round only.
            order = methods if round_ % 2 == 0 else methods[::-1]
            for method in order:
                if round_ and method == REFERENCE:
                    continue
                r = run_method(method, model, images, work / "images", work, device)
                runs.setdefault(method, r)
                walls[method].append(r["wall_s"])
                print(f"round {round_ + 1} {method}: {r['wall_s']:.1f} s ({args.images / r['wall_s']:.2f} img/s), "
                      f"other load {r['other_load'] if r['other_load'] is None else round(r['other_load'], 2)}",
                      flush=True)
        for method, r in runs.items():
            r["walls"], r["wall_s"] = walls[method], statistics.median(walls[method])
        gflop, peak = model_gflop(model, images[0]), peaks(device)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    reference = runs[REFERENCE]["maps"]
    pipeline_speed = args.images / runs["pipeline"]["wall_s"] if "pipeline" in runs else None
    rows = []
    for method, r in runs.items():
        same = r["maps"] == reference
        speed = args.images / r["wall_s"]
        rows.append({
            "method": method,
            "img/s": round(speed, 3),
            "ms/img": round(1000 * r["wall_s"] / args.images, 1),
            "wall s": round(r["wall_s"], 1),
            "runs": len(r["walls"]),
            "start-up s": None if r["loop_s"] is None else round(r["wall_s"] - r["loop_s"], 1),
            "x pipeline": None if pipeline_speed is None else round(speed / pipeline_speed, 2),
            "pixels equal to seed %": round(100 * float(same.mean()), 6),
            "pixels differing": int(same.size - same.sum()),
            "images identical": f"{int(same.reshape(len(same), -1).all(axis=1).sum())}/{len(same)}",
            # model work over the whole command's time, against the machine's matmul peak in its precision
            "GFLOP/s": round(gflop * speed, 1),
            "% of peak": round(100 * gflop * speed / peak["bf16" if "bf16" in method else "fp32"], 1),
            "other load": None if r["other_load"] is None else round(r["other_load"], 2),
        })
    table = markdown_table(rows, align={"method": "left", "images identical": "right"})
    print("\n" + table)
    print("\n" + "\n".join(f"- {m}: {METHODS[m]}" for m in runs))
    path = write_result("predict_speed", {
        "command": command(), "machine": info, "device": device, "images": args.images,
        "distinct_images": len(set(p.resolve() for p in images)), "methods": {m: METHODS[m] for m in runs},
        "rows": rows, "table": table, "gflop_per_image": round(gflop, 2),
        "peak_gflops": {k: round(v, 1) for k, v in peak.items()},
    })
    print(f"model: {gflop:.1f} GFLOP per image (forward); matmul peak fp32 {peak['fp32']:.0f}, "
          f"bf16 {peak['bf16']:.0f} GFLOP/s")
    print(f"\nwritten to {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
