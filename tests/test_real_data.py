"""Real annotations from ../shared/data through the CLI (skipped where that folder is absent)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.cli import main

CAMVID_YAML = Path(__file__).resolve().parents[1] / "examples" / "camvid-mini.yaml"


def test_camvid_ground_truth_scores_perfectly_and_a_shifted_copy_does_not(shared_data, tmp_path):
    valannot = shared_data / "camvid-mini" / "valannot"
    out = tmp_path / "perfect"
    assert main(["evaluate", "--predictions", str(valannot), "--data", str(CAMVID_YAML), "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mean_iou"] == 1.0 and metrics["num_images"] == 26 and len(metrics["per_category_iou"]) == 11

    # Every Road pixel (3) predicted as Pavement (4): Road IoU 0, Pavement IoU = P / (P + R).
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    road = pavement = 0
    for path in sorted(valannot.iterdir()):
        mask = np.array(Image.open(path))
        road += (mask == 3).sum()
        pavement += (mask == 4).sum()
        Image.fromarray(np.where(mask == 3, 4, mask).astype(np.uint8)).save(shifted / path.name)
    out = tmp_path / "scored"
    assert main(["evaluate", "--predictions", str(shifted), "--data", str(CAMVID_YAML), "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["per_category_iou"]["Road"] == 0.0
    assert metrics["per_category_iou"]["Pavement"] == pytest.approx(pavement / (pavement + road))
    assert metrics["per_category_iou"]["Sky"] == 1.0


def test_ade20k_sample_with_builtin_labels_and_reduction(shared_data, tmp_path):
    sample = shared_data / "ade20k-sample"
    args = ["evaluate", "--predictions", str(tmp_path / "preds"), "--data", str(sample), "--labels", "ade20k",
            "--reduce-labels", "--output-dir", str(tmp_path / "out")]
    (tmp_path / "preds").mkdir()
    for path in (sample / "annotations").iterdir():  # predict "wall" (0) everywhere
        Image.fromarray(np.zeros_like(np.array(Image.open(path)))).save(tmp_path / "preds" / path.name)
    assert main(args) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and len(metrics["per_category_iou"]) == 150
    masks = [np.array(Image.open(p)).astype(int) for p in sorted((sample / "annotations").iterdir())]
    wall = sum(((m == 1)).sum() for m in masks)
    labelled = sum((m != 0).sum() for m in masks)
    assert metrics["per_category_iou"]["wall"] == pytest.approx(wall / labelled)
    assert metrics["overall_accuracy"] == pytest.approx(wall / labelled)
    assert metrics["per_category_iou"]["sky"] == 0.0 and metrics["per_category_iou"]["person"] is None
