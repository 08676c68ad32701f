"""The model card (README.md) written beside a trained model."""

from __future__ import annotations

from pathlib import Path

LICENCE_NOTE = (
    "SegFormer weights published by NVIDIA (`nvidia/mit-b*`, `nvidia/segformer-*`) are released under "
    "NVIDIA's licence for research and non-commercial use; a model fine-tuned from them inherits it. "
    "A model trained from a random initialisation carries no such restriction."
)


def public_name(value: str) -> str:
    """A data or model location as a card may show it: Hub ids and relative paths as given; an
    absolute path, or one climbing out with `..`, by its last part (no local folders published)."""
    path = Path(value)
    if path.is_absolute() or value.startswith("~") or ".." in path.parts:
        return path.name or value
    return value


def _public(value):
    return public_name(value) if isinstance(value, (str, Path)) else value


def _fmt(v):
    return "n/a" if v is None else f"{v:.4f}"


def base_model_license(base_model: str) -> str | None:
    """The licence the base model's own card declares (a local folder's README.md, or the Hub's when it
    can be reached); None when there is none or it cannot be read."""
    from huggingface_hub import ModelCard

    from ..hub import hub_reachable, is_hub_name

    readme = Path(base_model, "README.md")
    if not readme.is_file() and not (is_hub_name(base_model) and "/" in base_model and hub_reachable()):
        return None
    try:
        return ModelCard.load(readme if readme.is_file() else base_model).data.license
    except Exception:  # noqa: BLE001 (no card, a card without metadata, the Hub refusing: no licence to copy)
        return None


def card_metadata(*, base_model: str, data: str, metrics: dict, architecture: str, model_name: str,
                  license: str | None = None, split: str = "validation") -> str:
    """The card's YAML header as the Hub reads it (huggingface_hub's ModelCardData): library, task and
    tags; `base_model` when fine-tuned from a Hub model; `datasets` when trained on a Hub dataset;
    `license` (given, else the base model's card's); and `model-index` with the validation mean IoU,
    mean accuracy and overall accuracy, on the dataset they were measured on."""
    from huggingface_hub import EvalResult, ModelCardData

    from ..hub import is_hub_name

    hub_model = "/" in base_model and is_hub_name(base_model)
    hub_data = is_hub_name(data)
    dataset = data if hub_data else public_name(data)
    results = [EvalResult(task_type="image-segmentation", task_name="Semantic Segmentation", dataset_type=dataset,
                          dataset_name=dataset, dataset_split=split, metric_type=key, metric_name=name,
                          metric_value=round(float(metrics[key]), 6))
               for key, name in (("mean_iou", "Mean IoU"), ("mean_accuracy", "Mean Accuracy"),
                                 ("overall_accuracy", "Overall Accuracy")) if metrics.get(key) is not None]
    data_card = ModelCardData(
        library_name="transformers", pipeline_tag="image-segmentation",
        tags=["image-segmentation", "semantic-segmentation", architecture, "segtune"],
        base_model=base_model if hub_model else None, datasets=[data] if hub_data else None,
        license=license or (base_model_license(base_model) if hub_model or Path(base_model).is_dir() else None),
        model_name=model_name if results else None, eval_results=results or None)
    return data_card.to_yaml()


def model_card(*, base_model: str, data: str, class_names, metrics: dict, hyperparameters: dict,
               license: str | None = None, model_name: str = "segtune-model") -> str:
    """Markdown with Hub metadata; `metrics` is the JSON form (per-category dicts, None for NaN)."""
    random_init = not ("/" in base_model or Path(base_model).exists())
    header = card_metadata(base_model=base_model, data=data, metrics=metrics, license=license,
                           architecture=hyperparameters.get("architecture", "segformer"), model_name=model_name)
    lines = ["---", header.rstrip(), "---", "", "# Semantic segmentation model trained with segtune", ""]
    model_name, data_name = public_name(str(base_model)), public_name(str(data))
    origin = f"a randomly initialised `{model_name}`" if random_init else f"`{model_name}`"
    architecture = f", architecture `{hyperparameters['architecture']}`" if "architecture" in hyperparameters else ""
    lines += [f"Trained from {origin}{architecture} on `{data_name}` ({len(class_names)} classes).", ""]
    lines += [
        "## Results (validation, original annotation resolution)",
        "",
        f"- mean IoU: **{_fmt(metrics.get('mean_iou'))}**",
        f"- mean accuracy: {_fmt(metrics.get('mean_accuracy'))}",
        f"- overall accuracy: {_fmt(metrics.get('overall_accuracy'))}",
        "",
        "| id | class | IoU | accuracy |",
        "|---:|---|---:|---:|",
    ]
    ious, accs = metrics.get("per_category_iou", {}), metrics.get("per_category_accuracy", {})
    for i, name in enumerate(class_names):
        lines.append(f"| {i} | {name} | {_fmt(ious.get(name))} | {_fmt(accs.get(name))} |")
    lines += ["", "## Training", "", "| argument | value |", "|---|---|"]
    lines += [f"| {k} | `{_public(v)}` |" for k, v in sorted(hyperparameters.items())]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        'segmenter = pipeline("image-segmentation", model="PATH_OR_HUB_ID")',
        "```",
        "",
        "or `segtune predict --model PATH_OR_HUB_ID IMAGES... --output-dir OUT`.",
        "",
        "## Licence",
        "",
        LICENCE_NOTE,
        "",
    ]
    return "\n".join(lines)
