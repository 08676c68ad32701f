"""The demo's generated data and the `segtune demo` pipeline (shortened: the full run takes minutes)."""

import json

import numpy as np
import pytest
from PIL import Image

import segtune.demo as demo
from segtune.cli import main
from segtune.demo_data import DEMO_CLASSES, generate_demo_dataset


def test_generator_is_deterministic_and_ade20k_shaped(tmp_path):
    a = generate_demo_dataset(tmp_path / "a", seed=5, num_train=6, num_val=2, image_size=64)
    b = generate_demo_dataset(tmp_path / "b", seed=5, num_train=6, num_val=2, image_size=64)
    c = generate_demo_dataset(tmp_path / "c", seed=6, num_train=6, num_val=2, image_size=64)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len([f for f in files if f.parts[0] == "images"]) == 8
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".png")
    assert json.loads((a / "id2label.json").read_text()) == {str(i): n for i, n in enumerate(DEMO_CLASSES)}
    masks = [np.array(Image.open(p)) for p in sorted((a / "annotations" / "training").iterdir())]
    values = np.unique(np.concatenate([m.ravel() for m in masks]))
    assert values.min() == 0 and values.max() <= len(DEMO_CLASSES) and len(DEMO_CLASSES) >= 6
    assert Image.open(next((a / "images" / "validation").iterdir())).mode == "RGB"


def test_some_classes_share_a_colour(tmp_path):
    """Sky and water have the same mean colour: texture, not colour, tells them apart."""
    root = generate_demo_dataset(tmp_path / "d", seed=0, num_train=20, num_val=1, image_size=96)
    pixels = {1: [], 2: []}  # annotation values of sky and water
    for img_path in sorted((root / "images" / "training").iterdir()):
        image = np.asarray(Image.open(img_path), dtype=float)
        mask = np.array(Image.open(root / "annotations" / "training" / (img_path.stem + ".png")))
        for value in pixels:
            pixels[value].append(image[mask == value])
    sky, water = (np.concatenate(pixels[v]).mean(axis=0) for v in (1, 2))
    assert np.abs(sky - water).max() < 25


@pytest.fixture
def short_demo(monkeypatch):
    monkeypatch.setattr(demo, "DEMO_IMAGE_SIZE", 64)
    monkeypatch.setattr(demo, "DEMO_TRAINING", {
        "learning_rate": 1e-3, "max_steps": 2, "per_device_train_batch_size": 2, "eval_steps": 2,
        "num_train": 6, "num_val": 4, "scale_range": (0.8, 1.25), "dataloader_num_workers": 0,
    })


def test_demo_writes_data_model_predictions_and_metrics(short_demo, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out)]) == 0
    assert (out / "data" / "images" / "training").is_dir() and (out / "model" / "model.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads((out / "model" / "metrics.json").read_text())
    assert len(list((out / "predictions" / "compare").glob("*.png"))) == 4
    assert f"validation mean IoU {metrics['mean_iou']:.4f}" in capsys.readouterr().out

    (out / "model" / "stale.txt").write_text("old")  # a second demo replaces its own folder
    assert main(["demo", "--output-dir", str(out)]) == 0
    assert not (out / "model" / "stale.txt").exists()


def test_demo_refuses_a_folder_it_did_not_make(short_demo, tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    assert main(["demo", "--output-dir", str(tmp_path)]) == 1
    assert "not made by segtune demo" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "precious"
