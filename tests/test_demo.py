"""The demo's generated data and the `segtune demo` pipeline (shortened: the full run takes minutes)."""

import json

import numpy as np
import pytest
from PIL import Image

import segtune.demo as demo
from segtune.cli import main
from segtune.data.demo_data import DEMO_CLASSES, DEMO_COLORS, generate_demo_dataset
from segtune.data.drawing import ERROR_COLOR, IGNORED_COLOR, UNSCORED_COLOR
from segtune.data.labels import load_labels


def test_generator_is_deterministic_and_ade20k_shaped(tmp_path):
    a = generate_demo_dataset(tmp_path / "a", seed=5, num_train=6, num_val=2, image_size=64)
    b = generate_demo_dataset(tmp_path / "b", seed=5, num_train=6, num_val=2, image_size=64)
    c = generate_demo_dataset(tmp_path / "c", seed=6, num_train=6, num_val=2, image_size=64)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len([f for f in files if f.parts[0] == "images"]) == 8
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".png")
    assert load_labels(a / "id2label.json").names == tuple(DEMO_CLASSES)
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


def test_demo_classes_have_natural_colours_apart_from_the_error_map_s(tmp_path):
    """id2label.json gives each class its colour, as the label loader reads it: sky a light blue,
    water a deeper one, and no class near the error map's red, the ignored black or the unscored grey."""
    root = generate_demo_dataset(tmp_path / "d", seed=0, num_train=1, num_val=1, image_size=32)
    labels = load_labels(root / "id2label.json")
    assert labels.colors_given and labels.names == tuple(DEMO_CLASSES)
    colors = {name: labels.colors[i].astype(int) for i, name in enumerate(labels.names)}
    assert all(tuple(colors[n]) == DEMO_COLORS[n] for n in DEMO_CLASSES)
    r, g, b = colors["sky"]
    assert b > r + 60 and b >= g > r  # blue-ish, and light
    r, g, b = colors["water"]
    assert b > r + 60 and b > g and colors["water"].sum() < colors["sky"].sum() - 150  # a deeper blue
    assert colors["grass"][1] > max(colors["grass"][[0, 2]]) and colors["tree"][1] > max(colors["tree"][[0, 2]])
    for reference, apart in ((ERROR_COLOR, 100), (IGNORED_COLOR, 100), (UNSCORED_COLOR, 60)):
        near = {n: c.tolist() for n, c in colors.items() if np.linalg.norm(c - reference) < apart}
        assert not near, f"{near} too close to {reference}"
    names = list(colors)
    closest = min(np.linalg.norm(colors[a] - colors[b]) for i, a in enumerate(names) for b in names[i + 1:])
    assert closest > 60  # every two classes tell apart at a glance


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
    # the data's colours travel with the model (labels.json) into the predictions' pictures
    assert load_labels(out / "model" / "labels.json") == load_labels(out / "data" / "id2label.json")
    demo_colors = {tuple(c) for c in DEMO_COLORS.values()}
    color_pngs = sorted((out / "predictions" / "color").glob("*.png"))
    assert len(color_pngs) == 4
    for color_png in color_pngs:
        used = {tuple(c) for c in np.asarray(Image.open(color_png).convert("RGB")).reshape(-1, 3).tolist()}
        assert used <= demo_colors | {IGNORED_COLOR}, used - demo_colors

    (out / "model" / "stale.txt").write_text("old")  # a second demo replaces its own folder
    assert main(["demo", "--output-dir", str(out)]) == 0
    assert not (out / "model" / "stale.txt").exists()


def test_demo_refuses_a_folder_it_did_not_make(short_demo, tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    assert main(["demo", "--output-dir", str(tmp_path)]) == 1
    assert "not made by segtune demo" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "precious"
