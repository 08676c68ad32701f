"""Mask classifiers (EoMT on DINOv2 and DINOv3, Mask2Former, MaskFormer) through every command, on tiny
configs: targets built from semantic masks, semantic scores by the formula, --overfit, export parity, reload in
plain transformers, the recipes and EoMT's mask annealing (docs/models.md#mask-classification)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.cli import main
from segtune.data.reading import MaskRules, read_mask
from segtune.models.masks import semantic_scores, semantic_targets

from .arch_tiny import MASK_KINDS, save_tiny

RUN = ["--base-size", "64", "--crop-size", "64", "--num-workers", "0", "--disable_tqdm", "true", "--no-report",
       "--save_strategy", "no", "--load_best_model_at_end", "false", "--val-split", "0.5"]
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """4 pairs of 96x64 colour blocks, one colour per class (3 classes), a corner of one mask ignored (255)."""
    root = tmp_path_factory.mktemp("mask-data")
    (root / "images").mkdir()
    (root / "annotations").mkdir()
    for i in range(4):
        mask = np.zeros((64, 96), np.uint8)
        mask[:, 32:] = 1
        mask[32:, 64:] = 2
        if i % 2:
            mask = mask[:, ::-1].copy()
        Image.fromarray(COLOURS[mask]).save(root / "images" / f"e{i}.png")
        if i == 3:
            mask[:16, :16] = 255
        Image.fromarray(mask).save(root / "annotations" / f"e{i}.png")
    return root


@pytest.fixture(scope="module")
def overfit_runs(tmp_path_factory, easy):
    """kind -> a run of `segtune train --overfit 2` from a tiny saved model of that kind (another head: re-headed)."""
    done = {}

    def run(kind):
        if kind not in done:
            root = tmp_path_factory.mktemp(kind)
            base = save_tiny(root / "base", kind, num_labels=5)
            assert main(["train", "--data", str(easy), "--model", str(base), "--output-dir", str(root / "run"),
                         "--overfit", "2", "--max_steps", "150", "--eval_steps", "25", "--learning_rate", "3e-3",
                         *RUN]) == 0
            done[kind] = root / "run"
        return done[kind]
    return run


# ---------------------------------------------------------------- targets


def test_targets_hold_one_mask_per_class_present_and_no_ignored_pixel():
    labels = torch.tensor([[[0, 0, 2, 255], [2, 2, 255, 7]],  # 7: beyond 3 classes, left out as the metric does
                           [[255, 255, 255, 255], [255, 255, 255, 255]]])  # all ignored: no target at all
    masks, classes = semantic_targets(labels, ignore_index=255, num_classes=3)
    assert classes[0].tolist() == [0, 2]
    assert masks[0].tolist() == [[[1, 1, 0, 0], [0, 0, 0, 0]], [[0, 0, 1, 0], [1, 1, 0, 0]]]
    assert masks[0].dtype == torch.float32 and masks[1].shape == (0, 2, 4) and classes[1].tolist() == []


def test_targets_follow_segtunes_mask_rules_not_the_processors(tmp_path):
    """ADE20K-style: 0 = other. With --reduce-labels 0 is ignored and k becomes k-1; 255 stays ignored (the
    processors' do_reduce_labels makes it class 254)."""
    stored = np.array([[0, 1, 1, 255], [3, 3, 0, 1]], np.uint8)
    Image.fromarray(stored).save(tmp_path / "m.png")
    labels = torch.from_numpy(read_mask(tmp_path / "m.png", MaskRules(reduce_labels=True)))
    masks, classes = semantic_targets(labels[None], ignore_index=255, num_classes=3)
    assert classes[0].tolist() == [0, 2]  # stored 1 and 3
    assert masks[0].tolist() == [[[0, 1, 1, 0], [0, 0, 0, 1]], [[0, 0, 0, 0], [1, 1, 0, 0]]]
    # a label map (stored 3 -> 1) applies before the reduction
    labels = torch.from_numpy(read_mask(tmp_path / "m.png", MaskRules(label_map={3: 2})))
    _, classes = semantic_targets(labels[None], ignore_index=255, num_classes=3)
    assert classes[0].tolist() == [0, 1, 2]


def test_an_image_whose_pixels_are_all_ignored_trains():
    from .arch_tiny import tiny_config
    from segtune.models.architectures import auto_class
    from segtune.models.masks import mask_loss

    for kind in MASK_KINDS:
        config = tiny_config(kind)
        config.num_labels = 3
        model = auto_class(config).from_config(config).train()
        labels = torch.full((2, 32, 32), 255)
        labels[0, :16] = 1
        loss, _ = mask_loss(model, torch.randn(2, 3, 32, 32), labels, 255)
        loss.backward()
        assert torch.isfinite(loss), kind


# ---------------------------------------------------------------- scores


def _formula(class_logits, mask_logits, size):
    """The issue's formula, written out: softmax without no-object x sigmoid of each mask at the input size."""
    probs = torch.softmax(class_logits, -1)[..., :-1]
    masks = torch.sigmoid(torch.nn.functional.interpolate(mask_logits, size=size, mode="bilinear",
                                                          align_corners=False))
    return (probs[..., None, None] * masks[:, :, None]).sum(1)


def test_semantic_scores_are_the_formula():
    torch.manual_seed(0)
    class_logits, mask_logits = torch.randn(2, 5, 4), torch.randn(2, 5, 8, 12)
    torch.testing.assert_close(semantic_scores(class_logits, mask_logits, (32, 48)),
                               _formula(class_logits, mask_logits, (32, 48)))


@pytest.mark.parametrize("kind", ["mask2former", "maskformer"])
def test_label_maps_are_the_formula_on_the_models_own_outputs(kind, tmp_path, shared_data):
    """On real photos (CamVid frames): the Segmenter's label map = the formula on the model's outputs, upsampled
    to the photo's size and arg-maxed."""
    from segtune.inference.segmenter import Segmenter
    from segtune.models.loading import load_processor, training_processor

    base = save_tiny(tmp_path / "m", kind, num_labels=4)
    training_processor(str(base), 64, __import__("transformers").AutoConfig.from_pretrained(base)).save_pretrained(base)
    segmenter = Segmenter.from_pretrained(base, device="cpu", mode="whole")
    photos = sorted((shared_data / "camvid-mini" / "train").glob("*.png"))[:2]
    for photo in photos:
        image = Image.open(photo).convert("RGB")
        pixel_values = load_processor(base)(images=image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = segmenter.model(pixel_values=pixel_values)
        scores = _formula(out.class_queries_logits, out.masks_queries_logits, pixel_values.shape[-2:])
        expected = torch.nn.functional.interpolate(scores, size=(image.height, image.width), mode="bilinear",
                                                   align_corners=False).argmax(1)[0]
        assert np.array_equal(segmenter(image), expected.numpy()), photo.name


# ---------------------------------------------------------------- every command


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_overfit_passes_and_every_command_runs(kind, overfit_runs, easy, tmp_path):
    """The loss, the targets and the scores are wired right: 2 images learned to >= 0.9 mean IoU; then evaluate,
    predict (each mode, TTA, probabilities) and the saved folder in plain transformers."""
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

    run = overfit_runs(kind)
    report = json.loads((run / "metrics.json").read_text())["overfit"]
    assert report["passed"], report
    assert main(["evaluate", "--model", str(run), "--data", str(easy), "--output-dir", str(tmp_path / "ev"),
                 "--no-report"]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_images"] == 2
    for mode in ("whole", "slide"):
        assert main(["predict", str(easy / "images"), "--model", str(run), "--output-dir", str(tmp_path / mode),
                     "--mode", mode]) == 0
    assert main(["predict", str(easy / "images"), "--model", str(run), "--output-dir", str(tmp_path / "tta"),
                 "--tta", "--save-probs"]) == 0
    probs = sorted((tmp_path / "tta").rglob("*.np[yz]"))
    assert probs, "no probabilities written"
    model = AutoModelForUniversalSegmentation.from_pretrained(run)
    processor = AutoImageProcessor.from_pretrained(run)
    assert model.config.id2label == {0: "class_0", 1: "class_1", 2: "class_2"}
    inputs = processor(images=Image.open(easy / "images" / "e0.png"), return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    seg = processor.post_process_semantic_segmentation(outputs, target_sizes=[(64, 96)])[0]
    assert seg.shape == (64, 96)


def test_the_trained_segmenter_matches_the_masks(overfit_runs, easy):
    from segtune.inference.segmenter import Segmenter

    segmenter = Segmenter.from_pretrained(overfit_runs("eomt"), device="cpu")
    for i in (0, 1):
        mask = np.asarray(Image.open(easy / "annotations" / f"e{i}.png"))
        predicted = segmenter(easy / "images" / f"e{i}.png")
        assert (predicted == mask).mean() > 0.9


@pytest.mark.parametrize("kind", ["eomt", "eomt_dinov3"])
def test_eomt_exports_with_parity_and_evaluates_as_torch(kind, overfit_runs, easy, tmp_path):
    pytest.importorskip("onnxruntime")
    run = overfit_runs(kind)
    assert main(["export", "--model", str(run), "--output-dir", str(tmp_path / "onnx"), "--check-data",
                 str(easy)]) == 0
    result = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert result["passed"] and result["check"]["equal_pixels"] > 0.999
    for source, out in ((run, "t"), (tmp_path / "onnx", "o")):
        assert main(["evaluate", "--model", str(source), "--data", str(easy), "--output-dir", str(tmp_path / out),
                     "--no-report"]) == 0
    torch_miou = json.loads((tmp_path / "t" / "metrics.json").read_text())["mean_iou"]
    onnx_miou = json.loads((tmp_path / "o" / "metrics.json").read_text())["mean_iou"]
    assert abs(torch_miou - onnx_miou) <= 1e-3


def test_swin_mask_classifiers_refuse_export_in_one_line(overfit_runs, tmp_path, capsys):
    run = overfit_runs("mask2former")
    assert main(["export", "--model", str(run), "--output-dir", str(tmp_path / "onnx"), "--check-images", "0"]) == 1
    err = capsys.readouterr().err
    assert "cannot be exported" in err and "Traceback" not in err and not (tmp_path / "onnx").exists()


# ---------------------------------------------------------------- refusals, recipes, annealing


def test_oneformer_and_per_pixel_losses_are_refused_in_one_line(tmp_path, easy, capsys):
    from transformers import OneFormerConfig

    OneFormerConfig().save_pretrained(tmp_path / "oneformer")
    assert main(["train", "--data", str(easy), "--model", str(tmp_path / "oneformer"), "--output-dir",
                 str(tmp_path / "o"), *RUN]) == 1
    assert "OneFormer needs a task text input" in capsys.readouterr().err
    base = save_tiny(tmp_path / "m2f", "mask2former")
    assert main(["train", "--data", str(easy), "--model", str(base), "--output-dir", str(tmp_path / "l"),
                 "--loss", "dice", "--max_steps", "1", *RUN]) == 1
    err = capsys.readouterr().err
    assert "--loss and --class-weights are for per-pixel models" in err and "Traceback" not in err


def test_recipes_scale_the_backbone_and_spare_norms_and_embeddings():
    from segtune.models.architectures import auto_class
    from segtune.training.optim import mask_param_groups

    from .arch_tiny import tiny_config

    config = tiny_config("eomt")
    model = auto_class(config).from_config(config)
    groups = mask_param_groups(model, 1e-4, 0.05, "eomt")
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    layers = config.num_hidden_layers
    assert lr_of[id(model.layers[0].mlp.fc1.weight)] == pytest.approx(1e-4 * 0.8 ** (layers - 1))
    assert lr_of[id(model.layers[-1].mlp.fc1.weight)] == pytest.approx(1e-4)
    assert lr_of[id(model.class_predictor.weight)] == pytest.approx(1e-4)
    assert decay_of[id(model.query.weight)] == 0.0 and decay_of[id(model.layers[0].norm1.weight)] == 0.0
    assert decay_of[id(model.embeddings.cls_token)] == 0.0 and decay_of[id(model.mask_head.fc1.weight)] == 0.05
    config = tiny_config("mask2former")
    model = auto_class(config).from_config(config)
    groups = mask_param_groups(model, 1e-4, 0.05, "mask2former")
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    backbone = model.model.pixel_level_module.encoder
    assert all(lr_of[id(p)] == pytest.approx(1e-5) for p in backbone.parameters())
    assert lr_of[id(model.class_predictor.weight)] == pytest.approx(1e-4)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_eomt_mask_annealing_follows_the_papers_schedule():
    from segtune.training.optim import eomt_mask_probability as p

    total, blocks = 600, 4  # block i lets go between (i + 1) * 100 and (i + 2) * 100
    assert [p(99, total, i, blocks) for i in range(4)] == [1.0, 1.0, 1.0, 1.0]
    assert p(150, total, 0, blocks) == pytest.approx(0.5 ** 0.9) and p(150, total, 1, blocks) == 1.0
    assert [p(500, total, i, blocks) for i in range(4)] == [0.0, 0.0, 0.0, 0.0]


def test_a_trained_eomt_runs_without_masked_attention(overfit_runs):
    from transformers import AutoModelForUniversalSegmentation

    model = AutoModelForUniversalSegmentation.from_pretrained(overfit_runs("eomt"))
    assert model.attn_mask_probs.tolist() == [0.0] * model.config.num_blocks


@pytest.mark.parametrize("kind", ["eomt", "mask2former"])
def test_serve_answers_with_the_segmenters_label_map(kind, overfit_runs, easy):
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient

    from segtune.inference.segmenter import Segmenter
    from segtune.serve.app import create_app

    segmenter = Segmenter.from_pretrained(overfit_runs(kind), device="cpu")
    png = (easy / "images" / "e1.png").read_bytes()
    with TestClient(create_app(segmenter)) as client:
        answer = client.post("/v1/segment", content=png, headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(answer.content))),
                                  segmenter(Image.open(easy / "images" / "e1.png")))
    card = (overfit_runs(kind) / "README.md").read_text()
    assert f"| recipe | `{'eomt' if kind == 'eomt' else 'mask2former'}` |" in card
