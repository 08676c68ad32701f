"""Every architecture of segtune.architectures through every command, on tiny configs (tests/arch_tiny.py):
train, evaluate, predict (each mode, equal to transformers' post-processing), export parity, report, reload
with plain transformers; the ignore index in each model's own loss; the recipe's parameter groups."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.cli import main

from .arch_tiny import KINDS, save_tiny, tiny_config
from .helpers import make_flat

RUN = ["--base-size", "48", "--crop-size", "32", "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
       "--load_best_model_at_end", "false", "--num-workers", "0",
       "--disable_tqdm", "true", "--no-report", "--per_device_train_batch_size", "2", "--val-split", "0.25"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_flat(tmp_path_factory.mktemp("arch-data") / "data", n=8)  # 32x24 images: not square


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """kind -> a model folder trained by `segtune train` from a local folder of that architecture."""
    done = {}

    def run(kind):
        if kind not in done:
            root = tmp_path_factory.mktemp(kind)
            base = save_tiny(root / "base", kind, num_labels=5)  # another head: train re-heads it to 3
            assert main(["train", "--data", str(data), "--model", str(base), "--output-dir", str(root / "run"),
                         *RUN]) == 0
            done[kind] = root / "run"
        return done[kind]
    return run


def images(data, n=3):
    return sorted((data / "images").iterdir())[:n]


@pytest.mark.parametrize("kind", KINDS)
def test_train_evaluate_predict_export_and_reload(kind, runs, data, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

    from segtune.inference.segmenter import Segmenter
    from segtune.models import architectures

    run = runs(kind)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["mean_iou"] <= 1
    model = AutoModelForSemanticSegmentation.from_pretrained(run).eval()
    arch = architectures.of_config(model.config)
    assert model.config.num_labels == 3 and getattr(model.config, arch.ignore_field) == 255
    processor = AutoImageProcessor.from_pretrained(run)  # the architecture's own type, loadable without segtune
    assert type(processor).__name__.removesuffix("Pil") == arch.processor.removesuffix("Pil")
    assert "architecture" in (run / "README.md").read_text() and model.config.model_type in (run / "README.md").read_text()

    # predict (whole) equals the processor's own post-processing at the image size
    segmenter = Segmenter.from_pretrained(run, mode="whole", num_workers=0)
    for path in images(data):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            outputs = model(**processor(images=image, return_tensors="pt"))
        expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
        np.testing.assert_array_equal(segmenter(image), expected.numpy())
    # the pipeline loads the folder with plain transformers
    result = pipeline("image-segmentation", model=str(run))(Image.open(images(data)[0]).convert("RGB"))
    assert result and all(r["mask"].size == (32, 24) for r in result)

    assert main(["evaluate", "--model", str(run), "--data", str(data), "--output-dir", str(tmp_path / "eval"),
                 "--num-workers", "0"]) == 0
    for mode in (["--mode", "slide", "--crop-size", "32", "--stride", "16"], ["--tta", "--tta-scales", "1", "1.5"]):
        out = tmp_path / f"pred{len(mode)}"
        assert main(["predict", *map(str, images(data)), "--model", str(run), "--output-dir", str(out),
                     "--num-workers", "0", *mode]) == 0
        assert len(list(out.glob("**/*.png"))) >= 3
    export = tmp_path / "export"
    assert main(["export", "--model", str(run), "--output-dir", str(export), "--check-data", str(data),
                 "--check-images", "1"]) == 0
    summary = json.loads((export / "export.json").read_text())
    assert summary["passed"] and summary["check"]["equal_pixels"] >= 0.999


@pytest.mark.parametrize("kind", ["upernet-convnext", "beit"])
def test_report_names_the_architecture(kind, runs, data, tmp_path):
    run = runs(kind)
    assert main(["report", str(run), "--data", str(data), "--output-dir", str(tmp_path / "report"),
                 "--num-workers", "0"]) == 0
    page = next((tmp_path / "report").glob("**/*.html")).read_text()
    assert tiny_config(kind).model_type in page


@pytest.mark.parametrize("kind", KINDS)
def test_the_ignore_index_reaches_the_models_own_loss(kind):
    from transformers import AutoModelForSemanticSegmentation

    from segtune.data.labels import LabelSet
    from segtune.models import architectures
    from segtune.models.loading import load_model

    labels = LabelSet.from_names(["a", "b", "c"])
    config = tiny_config(kind)
    torch.manual_seed(0)
    model = AutoModelForSemanticSegmentation.from_config(config)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        model = load_model(folder, labels, ignore_index=255).eval()
    side = int(config.image_size) if architectures.of_config(config).fixed_size else 32
    torch.manual_seed(1)
    x = torch.rand(2, 3, side, side)
    y = torch.randint(0, 3, (2, side, side))
    y[:, : side // 2] = 255  # half the pixels ignored
    with torch.no_grad():
        out = model(pixel_values=x, labels=y, output_hidden_states=False)
        expected = torch.nn.functional.cross_entropy(
            torch.nn.functional.interpolate(out.logits, size=(side, side), mode="bilinear", align_corners=False),
            y, ignore_index=255)
        auxiliary = getattr(model, "auxiliary_head", None)
        if auxiliary is not None:  # the model adds weight x auxiliary loss: the main one alone is below it
            assert float(out.loss) > float(expected)
            model.config.auxiliary_loss_weight = 0.0
            out = model(pixel_values=x, labels=y)
        assert float(out.loss) == pytest.approx(float(expected), rel=1e-4)
        y[:] = 255  # nothing labelled: a loss that counted ignored pixels would be finite and nonzero
        assert not torch.isfinite(model(pixel_values=x, labels=y).loss) or float(model(pixel_values=x, labels=y).loss) == 0


@pytest.mark.parametrize("kind", [k for k in KINDS if getattr(tiny_config(k), "use_auxiliary_head", False)])
def test_segtunes_own_losses_train_the_auxiliary_head_at_its_weight(kind):
    """--loss other than the model's: the auxiliary head still gets weight x the loss of its logits. With
    segtune's cross-entropy the total equals the model's own loss."""
    from transformers import AutoModelForSemanticSegmentation

    from segtune.models import architectures
    from segtune.training.losses import CrossEntropyLoss, parse_loss_spec
    from segtune.training.trainer import loss_with_auxiliary

    config = tiny_config(kind)
    config.num_labels = 3
    for field in ("semantic_loss_ignore_index", "loss_ignore_index"):
        setattr(config, field, 255)
    torch.manual_seed(0)
    model = AutoModelForSemanticSegmentation.from_config(config).train()
    for module in model.modules():  # no dropout: both forward passes see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    side = int(config.image_size) if architectures.of_config(config).fixed_size else 32
    x, y = torch.rand(2, 3, side, side), torch.randint(0, 3, (2, side, side))
    y[:, : side // 3] = 255
    ours, outputs = loss_with_auxiliary(model, x, y, CrossEntropyLoss(255))
    assert float(ours.detach()) == pytest.approx(float(model(pixel_values=x, labels=y).loss.detach()), rel=1e-4)
    assert model.auxiliary_head._forward_hooks == {}  # the hook is gone
    dice, _ = loss_with_auxiliary(model, x, y, parse_loss_spec("dice", 255))
    dice.backward()
    grads = [p.grad for p in model.auxiliary_head.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_recipe_puts_the_head_at_its_lr_and_norms_without_decay(kind):
    from transformers import AutoModelForSemanticSegmentation

    from segtune.models.architectures import NO_DECAY_NAMES
    from segtune.training.optim import NORM_TYPES, is_head_parameter, param_groups

    model = AutoModelForSemanticSegmentation.from_config(tiny_config(kind))
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.01, head_lr_mult=10)}
    assert {"encoder_decay", "head_decay", "encoder_no_decay", "head_no_decay"} <= set(groups)
    where = {id(p): g for g in groups.values() for p in g["params"]}
    norms = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    assert norms
    for name, p in model.named_parameters():
        group = where[id(p)]
        head = name.startswith(("decode_head.", "auxiliary_head.", "head.", "neck.", "segmentation_head.", "fpn"))
        assert is_head_parameter(name, model) == (head or not name.split(".")[0] in (
            "segformer", "backbone", "dpt", "beit", "data2vec_vision", "mobilevit", "mobilevitv2", "mobilenet_v2")), name
        assert group["lr"] == pytest.approx(1e-2 if is_head_parameter(name, model) else 1e-3)
        if id(p) in norms or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES:
            assert group["weight_decay"] == 0, name


def test_offline_names_build_full_size_configs_and_unknown_ones_list_the_known(data, tmp_path, capsys):
    from segtune.errors import SegtuneError
    from segtune.models.architectures import OFFLINE_NAMES, offline_config

    expected = {"mit-b0": "segformer", "upernet-convnext-tiny": "upernet", "upernet-swin-tiny": "upernet",
                "dpt-large": "dpt", "dpt-hybrid": "dpt", "beit-base": "beit", "data2vec-vision-base": "data2vec-vision",
                "mobilevit-small": "mobilevit", "mobilevitv2-1.0": "mobilevitv2", "deeplabv3-mobilenet-v2": "mobilenet_v2"}
    for name, model_type in expected.items():
        assert offline_config(name).model_type == model_type
    assert set(expected) <= set(OFFLINE_NAMES)
    with pytest.raises(SegtuneError, match="upernet-convnexx: not an offline architecture .known: mit-b0, .*upernet-convnext-tiny"):
        offline_config("upernet-convnexx")
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--model", "mobilevit-smal", "--output-dir", str(tmp_path / "x")]) == 1
    assert "mobilevit-smal: not an offline architecture (known: mit-b0" in capsys.readouterr().err


def test_train_from_an_offline_name(tmp_path, data):
    """A full-size offline architecture (the smallest, MobileViT-XX-small) trains a step from random weights."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "mobilevit-xx-small", "--output-dir", str(out),
                 "--max_steps", "1", "--eval_steps", "1", "--num-workers", "0", "--disable_tqdm", "true", "--no-report",
                 "--val-split", "0.25", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mobilevit" and len(config["id2label"]) == 3
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 512, "width": 512}


def test_exportable_pooling_equals_torchs_adaptive_pooling():
    from segtune.models.exportable import ExportableAdaptiveAvgPool

    for shape in [(2, 3, 17, 23), (1, 4, 6, 6), (1, 2, 5, 40)]:
        x = torch.randn(*shape)
        for size in (1, 2, 3, 6):
            torch.testing.assert_close(ExportableAdaptiveAvgPool(size)(x), torch.nn.functional.adaptive_avg_pool2d(x, size))


def test_fold_head_is_refused_in_one_line_where_it_is_not_exact(runs, data, tmp_path, capsys):
    run = runs("upernet-convnext")
    capsys.readouterr()
    assert main(["predict", str(images(data)[0]), "--model", str(run), "--output-dir", str(tmp_path / "o"),
                 "--fold-head", "true"]) == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]  # no progress bars
    assert len(err) == 1 and "--fold-head: only for SegFormer" in err[0]


def test_serve_answers_for_a_non_segformer_model(runs, data):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from segtune.inference.segmenter import Segmenter
    from segtune.serve.app import create_app

    segmenter = Segmenter.from_pretrained(runs("mobilenet_v2"), num_workers=0)
    with TestClient(create_app(segmenter, model_name="mobilenet")) as client:
        image = Image.open(images(data)[0]).convert("RGB")
        answer = client.post("/v1/segment", content=images(data)[0].read_bytes(), headers={"Content-Type": "image/png"})
        assert answer.status_code == 200, answer.text
        np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(answer.content))), segmenter(image))
