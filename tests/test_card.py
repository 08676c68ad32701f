"""The model card's metadata as the Hub reads it: huggingface_hub parses it, and its model-index gives
back the validation metrics through EvalResult, with the dataset they were measured on."""

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from segtune.cli import main
from segtune.training.card import model_card

METRICS = {"mean_iou": 0.61234567, "mean_accuracy": 0.7, "overall_accuracy": 0.912345,
           "per_category_iou": {"a": 0.5, "b": None}, "per_category_accuracy": {"a": 0.6, "b": None}}


def card_of(data, **kwargs):
    options = dict(base_model="nvidia/mit-b0", data=str(data), class_names=["a", "b"], metrics=METRICS,
                   hyperparameters={"architecture": "segformer"}, model_name="my-model")
    return ModelCard(model_card(**{**options, **kwargs}))


@pytest.fixture
def local_data(tmp_path):
    (tmp_path / "my-data").mkdir()
    return tmp_path / "my-data"


def test_the_hub_reads_the_metrics_back_from_the_model_index(local_data):
    card = card_of(local_data, license="apache-2.0")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-segmentation"
    assert card.data.base_model == "nvidia/mit-b0" and card.data.license == "apache-2.0"
    assert "segtune" in card.data.tags and card.data.datasets is None  # a local folder is no Hub dataset
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "my-model"
    values = {r.metric_type: r.metric_value for r in results}
    assert values == {"mean_iou": 0.612346, "mean_accuracy": 0.7, "overall_accuracy": 0.912345}
    assert {(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split) for r in results} == \
        {("image-segmentation", "my-data", "my-data", "validation")}
    assert "mean IoU: **0.6123**" in card.text  # the body as before


def test_a_hub_dataset_is_named_and_a_random_start_has_no_base_model(tmp_path):
    card = card_of("scene_parse_150", base_model="mit-b0")
    assert card.data.base_model is None and card.data.datasets == ["scene_parse_150"]
    assert card.data.license is None  # none given, no base model card to read it from
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert {r.dataset_type for r in results} == {"scene_parse_150"}
    # a local path never reaches the card, nor does a base model folder's path
    (tmp_path / "secret" / "data").mkdir(parents=True)
    card = card_of(tmp_path / "secret" / "data")
    assert str(tmp_path) not in str(card) and card.data.eval_results[0].dataset_name == "data"


def test_the_licence_comes_from_the_base_models_card_unless_given(tmp_path, local_data):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n# a model\n")
    assert card_of(local_data, base_model=str(base)).data.license == "mit"
    assert card_of(local_data, base_model=str(base), license="other").data.license == "other"
    assert card_of(local_data, base_model=str(base)).data.base_model is None  # a local folder is no Hub id


def test_train_writes_the_card_with_its_licence_and_metrics(demo_dataset, tiny_model_dir, tmp_path):
    import json

    out = tmp_path / "run"
    argv = ["train", "--data", demo_dataset, "--model", tiny_model_dir, "--output-dir", out, "--reduce-labels",
            "--max_steps", "2", "--eval_steps", "2", "--base-size", "64", "--crop-size", "64", "--license", "cc-by-4.0",
            "--num-workers", "0", "--no-report"]
    assert main([str(a) for a in argv]) == 0
    card = ModelCard.load(out / "README.md")
    metrics = json.loads((out / "metrics.json").read_text())
    assert card.data.license == "cc-by-4.0"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["mean_iou"] == pytest.approx(metrics["mean_iou"], abs=1e-6)
    assert results["overall_accuracy"] == pytest.approx(metrics["overall_accuracy"], abs=1e-6)
    assert card.data.eval_results[0].dataset_name == "data" and card.data.model_name == "run"
