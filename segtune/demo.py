"""`segtune demo`: generated data -> trained model -> metrics -> predictions, offline."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .data.demo_data import DEMO_IMAGE_SIZE, DEMO_TRAINING, generate_demo_dataset
from .errors import SegtuneError

MARKER = ".segtune-demo"  # lets a later demo replace its own output, and nothing else
AUGMENT_KEYS = ("scale_range",)
DATA_KEYS = ("num_train", "num_val")
NUM_PREDICTIONS = 4


def _claim_output_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise SegtuneError(f"{out}: folder is not empty and was not made by segtune demo; choose another --output-dir")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by segtune demo; a new demo run replaces this folder\n")


def run_demo(out: Path, seed: int = 0, bf16: bool | None = None) -> dict:
    from .data.reading import MaskRules
    from .data.transforms import AugmentConfig
    from .inference.segmenter import Segmenter
    from .prediction.run import predict_images
    from .training.arguments import TrainOptions
    from .training.run import run_training

    start = time.time()
    _claim_output_dir(out)
    data_dir = generate_demo_dataset(
        out / "data", seed=seed, **{k: DEMO_TRAINING[k] for k in DATA_KEYS if k in DEMO_TRAINING}
    )
    print(f"demo data written to {data_dir} ({time.time() - start:.0f} s)")
    training = {k: v for k, v in DEMO_TRAINING.items() if k not in AUGMENT_KEYS + DATA_KEYS}
    augment = AugmentConfig(
        base_size=DEMO_IMAGE_SIZE,
        crop_size=DEMO_IMAGE_SIZE,
        scale_range=tuple(DEMO_TRAINING.get("scale_range", (1.0, 1.0))),
    )
    metrics = run_training(
        TrainOptions(
            data=str(data_dir),
            output_dir=out / "model",
            model="mit-b0",  # no pretrained weights offline: the demo trains from scratch
            recipe="plain",  # settings tuned for training from scratch (DEMO_TRAINING); measured so
            reduce_labels=True,  # ADE20K layout: 0 is "other"
            augment=augment,
            training={"seed": seed, **training, **({} if bf16 is None else {"bf16": bf16})},
        )
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    val_images = sorted((data_dir / "images" / "validation").iterdir())[:NUM_PREDICTIONS]
    segmenter = Segmenter.from_pretrained(out / "model")
    predict_images(segmenter, val_images, out / "predictions", show_gt=data_dir, rules=MaskRules(reduce_labels=True))

    minutes = (time.time() - start) / 60
    print(f"\nsegtune demo finished in {minutes:.1f} min: validation mean IoU {metrics['mean_iou']:.4f}")
    print(f"  model: {out / 'model'}  metrics: {out / 'metrics.json'}  predictions: {out / 'predictions'}")
    return metrics
