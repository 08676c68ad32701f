"""YAML data files: folders (or a `datasets` source), split list files, suffixes, classes and
the rules for reading masks, in one file beside the data.

    path: .                      # the folders below are relative to it (itself to this file)
    train: images/train          # or {images: ..., masks: ..., list: ...}
    train_masks: masks/train
    val: images/val              # no val: val_split of the training pairs, as the seeds split
    names: [road, car]           # or {0: road, 1: car}; colors: for colour-coded masks
    ignore_index: 255
    label_map: {11: 255}
    binary: true                 # 0/255 masks: background 0, foreground 1 (values >= 128)
    # or: dataset: scene_parse_150 (a Hub name, a save_to_disk folder or parquet), with
    # config, train_split, eval_split, image_column, label_column, streaming
    # or: format: coco | yolo | voc | cvat | label-studio, with background: class | ignore (exports.py);
    # an Ultralytics data.yaml is recognised as it is

The command line's suffixes and `datasets` options win over the file's.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ...errors import SegtuneError
from ..labels import LabelSet, _from_entries
from ..pairs import SegmentationData, StreamedData
from .exports import export_format, load_export
from .folders import FolderSpec, pair_folder
from .hf import load_hf
from .splits import with_validation
from .yolo import is_yolo

YAML_KEYS = {"path", "train", "val", "train_masks", "val_masks", "train_list", "val_list", "image_suffix",
             "mask_suffix", "names", "colors", "ignore_index", "reduce_labels", "label_map", "binary", "dataset",
             "config", "train_split", "eval_split", "image_column", "label_column", "streaming", "format",
             "background"}


def _yaml_spec(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SegtuneError(f"{path}: cannot read data file ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not ({"train", "val", "dataset"} & spec.keys()) \
            and spec.get("format") not in ("voc", "cvat"):  # a VOC / CVAT folder has its own splits
        raise SegtuneError(f"{path}: data file needs 'train' and/or 'val' entries, or a 'dataset'")
    unknown = sorted(set(spec) - YAML_KEYS)
    if unknown and not is_yolo(path, spec):  # an Ultralytics file has keys of its own (nc, test, ...)
        raise SegtuneError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(YAML_KEYS))})")
    for key in ("path", "train_masks", "val_masks", "train_list", "val_list", "image_suffix", "mask_suffix"):
        if key in spec and not isinstance(spec[key], str):
            raise SegtuneError(f"{path}: '{key}' must be a folder or file name, not {spec[key]!r}")
    return spec


def _folder_spec(path: Path, spec: dict, root: Path, split: str) -> FolderSpec | None:
    entry = spec.get(split)
    if entry is None:
        return None
    if isinstance(entry, dict):
        bad = sorted(set(entry) - {"images", "masks", "list"})
        if bad:
            raise SegtuneError(f"{path}: unknown key '{bad[0]}' in '{split}' (use images, masks, list)")
        images, masks, listing = entry.get("images"), entry.get("masks"), entry.get("list")
    else:
        images, masks, listing = entry, spec.get(f"{split}_masks"), spec.get(f"{split}_list")
    if images is None or masks is None:
        raise SegtuneError(f"{path}: '{split}' needs an image folder and a mask folder ({split}_masks)")
    if not all(isinstance(v, str) for v in (images, masks) + ((listing,) if listing else ())):
        raise SegtuneError(f"{path}: '{split}' folders must be folder names, not {images!r} / {masks!r}")
    return FolderSpec(root / images, root / masks, root / listing if listing else None,
                      spec.get("image_suffix"), spec.get("mask_suffix"))


def _label_map(path: Path, value) -> dict[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise SegtuneError(f"{path}: 'label_map' must be a mapping of stored value: new value, e.g. {{11: 255}}")
    out = {}
    for old, new in value.items():
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (old, new)):
            raise SegtuneError(f"{path}: 'label_map' entry {old!r}: {new!r} must map integers >= 0")
        out[old] = new
    return out


def _yaml_rules(path: Path, spec: dict) -> dict:
    """The class and mask-value entries shared by folder and `datasets` data files."""
    labels = None
    if "names" in spec:
        names = spec["names"]
        if isinstance(names, dict):  # ids must be exactly 0..N-1: a gap would shift every later name
            names = _from_entries([(k, str(v)) for k, v in names.items()], f"{path}: names").names
        if not isinstance(names, list | tuple) or not names:
            raise SegtuneError(f"{path}: 'names' must be a list of class names or a mapping of id: name")
        try:
            labels = LabelSet.from_names([str(n) for n in names], spec.get("colors"))
        except (ValueError, TypeError) as e:
            raise SegtuneError(f"{path}: bad 'colors' ({e})") from None
    elif "colors" in spec:
        raise SegtuneError(f"{path}: 'colors' needs 'names'")
    ignore_index, reduce = spec.get("ignore_index", 255), spec.get("reduce_labels", False)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise SegtuneError(f"{path}: 'ignore_index' must be an integer, not {ignore_index!r}")
    if not isinstance(reduce, bool):  # bool("false") would be True
        raise SegtuneError(f"{path}: 'reduce_labels' must be true or false, not {reduce!r}")
    binary = spec.get("binary", False)
    if not isinstance(binary, bool):
        raise SegtuneError(f"{path}: 'binary' must be true or false, not {binary!r}")
    colors = labels.colors if labels is not None and spec.get("colors") is not None else None
    return dict(labels=labels, ignore_index=ignore_index, reduce_labels=reduce,
                label_map=_label_map(path, spec.get("label_map")), mask_colors=colors, binary=binary)


def _from_yaml(path: Path, val_split: float, seed: int, suffixes: dict,
               **hf_options) -> SegmentationData | StreamedData:
    """The dataset a data file describes: its folders, or the `datasets` source it names."""
    spec = {**_yaml_spec(path), **suffixes}  # the command line wins
    rules = _yaml_rules(path, spec)
    root = (path.parent / spec.get("path", ".")).resolve()
    fmt = export_format(path, spec)  # COCO, YOLO, VOC / CVAT, Label Studio (sources/exports.py)
    if fmt is not None:
        return load_export(fmt, path, spec, root, val_split, seed, rules)
    if "dataset" in spec:
        target = spec["dataset"]
        local = root / target if isinstance(target, str) and (root / target).exists() else None
        options = {k: spec[k] for k in ("config", "train_split", "eval_split", "image_column", "label_column",
                                         "streaming") if k in spec}
        options.update(hf_options)  # the command line wins
        data = load_hf(str(local or target), val_split=val_split, seed=seed, **options)
        data.source = path
        for key, value in rules.items():  # the file's rules; its names, when given, over an id2label.json
            if key != "labels" or value is not None:
                setattr(data, key, value)
        return data
    if hf_options:
        raise SegtuneError(f"{path}: --{next(iter(hf_options)).replace('_', '-')} applies to `datasets` sources, "
                           "and this data file names folders")
    problems = []
    train, val = [], None
    for split in ("train", "val"):
        folder = _folder_spec(path, spec, root, split)
        if folder is not None:
            pairs = pair_folder(folder, problems)
            train, val = (pairs, val) if split == "train" else (train, pairs)
    return with_validation(path, train, val, val_split, seed, problems, **rules)
