"""How far segtune's semantic label maps of a mask classifier differ from transformers' own
`post_process_semantic_segmentation`, which (for Mask2Former and MaskFormer) resizes the query masks
to 384x384 before combining them, where segtune combines them at the model's input size
(docs/models.md#mask-classification).

    python -m benchmarks.mask_postprocess [--model DIR] [--data ../shared/data/camvid-mini] [--steps 120]

Without --model it first trains a small Mask2Former (Swin, 4.6 M parameters, random weights) with
`segtune train` on camvid-mini for --steps steps, so the maps are a trained model's, not noise.
Prints the share of pixels where the two label maps disagree and writes results/mask_postprocess.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


from benchmarks.common import RESULTS_DIR, describe, machine

CAMVID_YAML = Path(__file__).resolve().parents[1] / "examples" / "camvid-mini.yaml"  # ../shared/data/camvid-mini
CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid-mini"


def small_mask2former(path: Path) -> Path:
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    torch.manual_seed(0)
    backbone = SwinConfig(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=7, image_size=224,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=64, mask_feature_size=64, hidden_dim=64,
                               encoder_feedforward_dim=128, encoder_layers=2, decoder_layers=4, dim_feedforward=256,
                               num_queries=50, num_labels=11)
    Mask2FormerForUniversalSegmentation(config).save_pretrained(path)
    return path


def compare(model_dir: Path, images: list[Path]) -> list[dict]:
    import torch
    from PIL import Image

    from segtune.inference.segmenter import Segmenter
    from segtune.models.loading import load_processor

    segmenter = Segmenter.from_pretrained(model_dir, device="cpu", mode="whole")
    processor = load_processor(model_dir)
    rows = []
    for path in images:
        image = Image.open(path).convert("RGB")
        ours = segmenter(image)
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            outputs = segmenter.model(pixel_values=inputs["pixel_values"])
        theirs = processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0]
        differ = int((theirs.numpy() != ours).sum())
        rows.append({"image": path.name, "size": [image.height, image.width],
                     "input": list(inputs["pixel_values"].shape[-2:]), "pixels_differ": differ,
                     "share_differ": differ / ours.size})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mask_postprocess", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a trained mask-classifier folder (default: train a small one)")
    parser.add_argument("--data", type=Path, default=CAMVID, help="camvid-mini's folder (its val/ images are compared)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args(argv)
    data = args.data
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from segtune.cli import main as segtune

            base = small_mask2former(Path(tmp) / "base")
            model = Path(tmp) / "run"
            code = segtune(["train", "--data", str(CAMVID_YAML), "--model", str(base), "--output-dir", str(model),
                            "--max_steps", str(args.steps), "--per_device_train_batch_size", "4", "--base-size",
                            "256", "--crop-size", "256", "--eval_strategy", "no", "--save_strategy", "no",
                            "--load_best_model_at_end", "false", "--no-report", "--disable_tqdm", "true"])
            if code:
                return code
        images = sorted((data / "val").glob("*.png"))[: args.images]
        rows = compare(model, images)
        trained = json.loads((model / "metrics.json").read_text()).get("mean_iou") if (model / "metrics.json").is_file() \
            else None
    share = sum(r["pixels_differ"] for r in rows) / sum(r["size"][0] * r["size"][1] for r in rows)
    info = machine()
    result = {"machine": info, "machine_line": describe(info), "model": str(args.model or f"small Mask2Former trained {args.steps} steps"),
              "validation_mean_iou": trained, "images": len(rows), "share_of_pixels_differ": share,
              "worst_image_share": max(r["share_differ"] for r in rows), "rows": rows,
              "seconds": round(time.perf_counter() - started, 1)}
    print(f"{len(rows)} images: segtune's label maps and transformers' post_process_semantic_segmentation (384x384 "
          f"masks) differ on {100 * share:.2f}% of pixels (worst image {100 * result['worst_image_share']:.2f}%); "
          f"model mean IoU {trained}; {describe(info)}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "mask_postprocess.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
