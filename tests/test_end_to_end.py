"""A tiny SegFormer trained, evaluated and run through the real CLI, then loaded by plain transformers."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.cli import main

TRAIN_ARGS = [
    "--reduce-labels", "--base-size", "64", "--crop-size", "64", "--scale-range", "0.75", "1.5",
    "--max_steps", "8", "--eval_steps", "4", "--learning_rate", "1e-3", "--per_device_train_batch_size", "4",
    "--dataloader-num-workers", "0", "--disable_tqdm", "true", "--seed", "3",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dataset, tiny_model_dir):
    out = tmp_path_factory.mktemp("run") / "model"
    args = ["train", "--data", demo_dataset, "--model", tiny_model_dir, "--output-dir", out, *TRAIN_ARGS]
    assert main([str(a) for a in args]) == 0
    return out


def test_train_writes_a_plain_model_directory(trained):
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "metrics.json",
                 "labels.json", "log.jsonl", "splits.json"):
        assert (trained / name).is_file(), name
    config = json.loads((trained / "config.json").read_text())
    # re-headed from the 3-class checkpoint to the 8 demo classes named by id2label.json
    assert config["id2label"]["0"] == "sky" and len(config["id2label"]) == 8
    assert config["label2id"]["rock"] == 7 and config["semantic_loss_ignore_index"] == 255
    processor = json.loads((trained / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 64} and processor["do_reduce_labels"] is False
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics["per_category_iou"]) == set(config["label2id"]) and 0 <= metrics["mean_iou"] <= 1
    assert metrics["step"] == 8
    card = (trained / "README.md").read_text()
    assert "mean IoU" in card and "| 7 | rock |" in card and "non-commercial" in card
    evals = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines() if "eval_mean_iou" in line]
    assert [e["step"] for e in evals[:2]] == [4, 8]


def test_best_checkpoint_is_really_loaded_at_the_end(trained):
    from transformers import AutoModelForSemanticSegmentation

    state = json.loads(sorted(trained.glob("checkpoint-*"))[-1].joinpath("trainer_state.json").read_text())
    best = AutoModelForSemanticSegmentation.from_pretrained(state["best_model_checkpoint"]).state_dict()
    final = AutoModelForSemanticSegmentation.from_pretrained(trained).state_dict()
    assert all(torch.equal(best[k], final[k]) for k in best)


def test_plain_transformers_loads_it_without_segtune(trained, demo_dataset, tmp_path):
    image = sorted((demo_dataset / "images" / "validation").iterdir())[0]
    script = f"""
import sys, numpy as np
sys.modules["segtune"] = None  # prove nothing of segtune is needed
from transformers import AutoModelForSemanticSegmentation, pipeline
model = AutoModelForSemanticSegmentation.from_pretrained({str(trained)!r})
pipe = pipeline("image-segmentation", model={str(trained)!r})
segments = pipe({str(image)!r})
label_map = np.full(segments[0]["mask"].size[::-1], -1)
for s in segments:
    label_map[np.array(s["mask"]) == 255] = model.config.label2id[s["label"]]
np.save({str(tmp_path / "pipeline.npy")!r}, label_map)
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    pipeline_map = np.load(tmp_path / "pipeline.npy")
    assert len(np.unique(pipeline_map)) >= 2  # equal one-class maps would prove little (3 classes here)

    out = tmp_path / "pred"
    assert main(["predict", "--model", str(trained), str(image), "--output-dir", str(out)]) == 0
    assert np.array_equal(np.array(Image.open(out / f"{image.stem}.png")), pipeline_map)


def test_evaluate_reproduces_the_training_metrics(trained, demo_dataset, tmp_path):
    args = ["evaluate", "--model", trained, "--data", demo_dataset, "--reduce-labels", "--output-dir", tmp_path]
    assert main([str(a) for a in args]) == 0
    got = json.loads((tmp_path / "metrics.json").read_text())
    want = json.loads((trained / "metrics.json").read_text())
    assert got["mean_iou"] == pytest.approx(want["mean_iou"], abs=1e-12)
    assert got["per_category_iou"] == pytest.approx(want["per_category_iou"], abs=1e-12, nan_ok=True)
    assert got["num_images"] == 4


def test_predict_equals_transformers_post_processing_and_scores_the_same(trained, demo_dataset, tmp_path):
    from transformers import AutoModelForSemanticSegmentation, SegformerImageProcessorPil

    out = tmp_path / "pred"
    val_images = demo_dataset / "images" / "validation"
    args = ["predict", "--model", trained, val_images, "--output-dir", out, "--show-gt", demo_dataset, "--reduce-labels"]
    assert main([str(a) for a in args]) == 0

    processor = SegformerImageProcessorPil.from_pretrained(trained)
    model = AutoModelForSemanticSegmentation.from_pretrained(trained).eval()
    classes = set()
    for path in sorted(val_images.iterdir()):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            outputs = model(**processor(images=image, return_tensors="pt"))
        want = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].numpy()
        saved = Image.open(out / f"{path.stem}.png")
        assert saved.mode == "P" and np.array_equal(np.array(saved), want)
        # equal one-class maps would prove little: each image here holds 3 classes, from 1% to 94%
        assert len(np.unique(want)) >= 2
        classes.update(np.unique(want).tolist())
        for sub, suffix in (("color", ".png"), ("overlay", ".jpg"), ("compare", ".png")):
            assert Image.open(out / sub / f"{path.stem}{suffix}").size[0] > 0
    assert len(classes) >= 3
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(abs(sum(r["class_share"].values()) - 1) < 1e-4 for r in records)

    scored = tmp_path / "scored"
    args = ["evaluate", "--predictions", out, "--data", demo_dataset, "--reduce-labels", "--output-dir", scored]
    assert main([str(a) for a in args]) == 0
    got = json.loads((scored / "metrics.json").read_text())
    want = json.loads((trained / "metrics.json").read_text())
    assert got["mean_iou"] == pytest.approx(want["mean_iou"], abs=1e-12)


def test_predict_refuses_a_non_empty_output_folder(trained, demo_dataset, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    image = sorted((demo_dataset / "images" / "validation").iterdir())[0]
    assert main(["predict", "--model", str(trained), str(image), "--output-dir", str(tmp_path)]) == 1
    assert "not empty" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "mine"
