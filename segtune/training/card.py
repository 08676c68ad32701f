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


def model_card(*, base_model: str, data: str, class_names, metrics: dict, hyperparameters: dict) -> str:
    """Markdown with Hub metadata; `metrics` is the JSON form (per-category dicts, None for NaN)."""
    random_init = not ("/" in base_model or Path(base_model).exists())
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-segmentation",
        f"tags: [image-segmentation, semantic-segmentation, {hyperparameters.get('architecture', 'segformer')}, segtune]",
    ]
    if not random_init and not Path(base_model).exists():
        lines.append(f"base_model: {base_model}")
    lines += ["---", "", "# Semantic segmentation model trained with segtune", ""]
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
