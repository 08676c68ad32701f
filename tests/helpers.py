"""Small on-disk datasets for the data and bad-input tests (plain functions, no fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
W, H = 32, 24  # image size: width x height


def write_image(path: Path, seed: int = 0, size=(W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def write_mask(path: Path, values=None, seed: int = 0, size=(W, H), num_classes: int = 3) -> Path:
    """A single-channel uint8 PNG; `values`: an (H, W) array, else random ids < num_classes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if values is None:
        values = np.random.default_rng(seed + 1000).integers(0, num_classes, (size[1], size[0]))
    Image.fromarray(np.asarray(values, dtype=np.uint8), mode="L").save(path)
    return path


def write_pairs(images: Path, masks: Path, stems, suffix: str = ".png", num_classes: int = 3) -> None:
    for i, stem in enumerate(stems):
        write_image(images / f"{stem}{suffix}", seed=i)
        write_mask(masks / f"{stem}.png", seed=i, num_classes=num_classes)


def make_flat(root: Path, n: int = 8, num_classes: int = 3, suffix: str = ".png") -> Path:
    """images/ + annotations/ with stems img_00 .. img_{n-1}."""
    write_pairs(root / "images", root / "annotations", [f"img_{i:02d}" for i in range(n)], suffix, num_classes)
    return root


def make_ade(root: Path, n_train: int = 6, n_val: int = 3, num_classes: int = 3) -> Path:
    """ADE20K layout: images/{training,validation}/*.jpg + annotations/{training,validation}/*.png."""
    write_pairs(root / "images" / "training", root / "annotations" / "training",
                [f"ADE_train_{i:08d}" for i in range(n_train)], ".jpg", num_classes)
    write_pairs(root / "images" / "validation", root / "annotations" / "validation",
                [f"ADE_val_{i:08d}" for i in range(n_val)], ".jpg", num_classes)
    return root


def stems(samples) -> list[str]:
    return [s.image.stem for s in samples]
