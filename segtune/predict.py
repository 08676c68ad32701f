"""Running a saved model on new images: label maps, colour masks, overlays, comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .data import IMAGE_SUFFIXES, read_image, read_mask, to_rgb
from .errors import SegtuneError
from .evaluate import upsampled_argmax
from .labels import LabelSet, load_labels
from .model import load_processor


class Segmenter:
    """A model plus its saved processor: image in, (H, W) class ids out."""

    def __init__(self, model, processor, labels: LabelSet):
        self.model, self.processor, self.labels = model.eval(), processor, labels

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "auto", trust_remote_code: bool = False):
        from transformers import AutoModelForSemanticSegmentation

        try:
            model = AutoModelForSemanticSegmentation.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        except OSError as e:
            raise SegtuneError(f"{model_dir}: cannot load model: {str(e).splitlines()[0]}") from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        labels_file = Path(model_dir, "labels.json")
        labels = load_labels(labels_file) if labels_file.is_file() else LabelSet.from_id2label(model.config.id2label)
        return cls(model.to(device), load_processor(model_dir), labels)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def __call__(self, image) -> np.ndarray:
        """Accepts a PIL image, an (H, W, 3) uint8 array or a path."""
        from PIL import Image

        if isinstance(image, (str, Path)):
            image = read_image(Path(image))
        else:
            image = to_rgb(Image.fromarray(image) if isinstance(image, np.ndarray) else image)
        pixel_values = self.processor(images=image, return_tensors="pt")["pixel_values"].to(self.device)
        logits = self.model(pixel_values=pixel_values).logits[0]
        return upsampled_argmax(logits, (image.height, image.width)).cpu().numpy()


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given; folders contribute their images (sorted)."""
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise SegtuneError(f"{path}: no images found in this folder")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise SegtuneError(f"{path}: no such file or folder")
    return found


def ground_truth_masks(path: Path) -> dict[str, Path]:
    """Masks by image stem, from a dataset (folder layout or YAML file) or a plain folder of masks."""
    from .data import MASK_SUFFIXES, load_data

    if path.is_file() or (path / "annotations").is_dir():
        data = load_data(path)
        return {s.image.stem: s.mask for s in data.train + data.val}
    if not path.is_dir():
        raise SegtuneError(f"{path}: no such ground-truth folder or data file")
    return {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in MASK_SUFFIXES}


def predict_images(
    segmenter: Segmenter,
    images: list[Path],
    output_dir: Path,
    *,
    alpha: float = 0.5,
    show_gt: Path | None = None,
    reduce_labels: bool = False,
    ignore_index: int = 255,
) -> list[dict]:
    """Writes, per image: OUT/<stem>.png (class ids), color/, overlay/ (and compare/); returns records."""
    from PIL import Image
    from tqdm.auto import tqdm

    from .visualize import colorize, comparison_figure, overlay, save_label_png

    palette = segmenter.labels.colors
    for sub in ("color", "overlay") + (("compare",) if show_gt else ()):
        (output_dir / sub).mkdir(parents=True, exist_ok=True)
    gt_masks = ground_truth_masks(show_gt) if show_gt else {}
    records = []
    for path in tqdm(images, desc="predicting", unit="img"):
        image = read_image(path)
        label_map = segmenter(image)
        stem = path.stem
        save_label_png(label_map, output_dir / f"{stem}.png", palette)
        Image.fromarray(colorize(label_map, palette)).save(output_dir / "color" / f"{stem}.png")
        Image.fromarray(overlay(image, label_map, palette, alpha=alpha)).save(output_dir / "overlay" / f"{stem}.jpg")
        ids, counts = np.unique(label_map, return_counts=True)
        record = {
            "image": str(path),
            "label_map": str(output_dir / f"{stem}.png"),
            "class_share": {segmenter.labels.names[i]: round(c / label_map.size, 6) for i, c in zip(ids, counts)},
        }
        if show_gt:
            gt_path = gt_masks.get(stem)
            if gt_path is None:
                raise SegtuneError(f"{path}: no ground-truth mask for '{stem}' in {show_gt}")
            gt = read_mask(gt_path, reduce_labels, ignore_index)
            comparison_figure(
                np.asarray(image), gt, label_map, segmenter.labels, output_dir / "compare" / f"{stem}.png",
                ignore_index=ignore_index, title=path.name,
            )
            record["ground_truth"] = str(gt_path)
        records.append(record)
    with open(output_dir / "predictions.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records
