"""Annotation-tool exports, read as they are: which format a data file or folder is, and its loader.

COCO JSON (coco.py), YOLO segmentation labels (yolo.py), Pascal VOC / CVAT mask folders (voc.py)
and Label Studio brush PNGs (labelstudio.py). Their masks are drawn on demand (data.reading.read_mask), so
every command and the checks read them as they read mask files.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import SegtuneError
from ..pairs import SegmentationData
from .coco import load_coco_yaml
from .labelstudio import is_label_studio, load_label_studio_folder, load_label_studio_yaml
from .voc import is_voc, load_voc
from .yolo import is_yolo, load_yolo

FORMATS = ("coco", "yolo", "voc", "cvat", "label-studio")


def export_format(path: Path, spec: dict) -> str | None:
    """A data file's format: its `format` key, or an Ultralytics layout; None for segtune's own."""
    fmt = spec.get("format")
    if fmt is None:
        return "yolo" if is_yolo(path, spec) else None
    if fmt not in FORMATS:
        raise SegtuneError(f"{path}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return fmt


def load_export(fmt: str, path: Path, spec: dict, root: Path, val_split: float, seed: int,
                rules: dict) -> SegmentationData:
    if fmt == "coco":
        return load_coco_yaml(path, spec, root, val_split, seed, rules)
    if fmt == "yolo":
        return load_yolo(path, spec, val_split, seed, rules)
    if fmt == "label-studio":
        return load_label_studio_yaml(path, spec, root, val_split, seed, rules)
    if not is_voc(root):  # voc, cvat: the folder is `path`
        raise SegtuneError(f"{root}: not a VOC / CVAT folder (expected SegmentationClass/, JPEGImages/ and "
                           "ImageSets/Segmentation/)")
    data = load_voc(root, val_split, seed)
    data.source = path
    return data


def folder_loader(path: Path):
    """The loader of an export folder `load_data` recognises with no data file, or None."""
    if is_voc(path):
        return load_voc
    if is_label_studio(path):
        return load_label_studio_folder
    return None
