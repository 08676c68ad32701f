"""Finding the image/mask pairs of a dataset, whatever shape it comes in: `load_data`.

- ADE20K layout or flat images/ + annotations/ folders (folders.py)
- a YAML data file naming folders, split list files, suffixes, classes and label rules (datafile.py)
- Hugging Face `datasets`: a Hub name, a `save_to_disk` folder or parquet files (hf.py), listed
  ahead or streamed (stream.py)
- annotation-tool exports (exports.py): COCO JSON (coco.py), YOLO segmentation labels (yolo.py),
  Pascal VOC / CVAT mask folders (voc.py), Label Studio brush PNGs (labelstudio.py)

It returns a `SegmentationData` (every pair listed) or, for a stream, a `StreamedData` (both in
data.py). The modules depend one way: this one -> datafile -> folders and hf -> splits (the
seeds' split, shared by all) -> data, labels, errors.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import SegtuneError
from ..pairs import SegmentationData, StreamedData
from .coco import load_coco_file
from .datafile import YAML_KEYS, _from_yaml
from .exports import folder_loader
from .folders import FolderSpec, is_layout, load_layout, pair_folder
from .hf import is_hf_source, load_hf
from .splits import labels_beside, split_samples

__all__ = ["FolderSpec", "SegmentationData", "StreamedData", "YAML_KEYS", "is_dataset", "labels_beside", "load_data",
           "load_hf", "pair_folder", "split_samples"]


def is_dataset(path: str | Path) -> bool:
    """Whether `load_data` takes `path` for a dataset (a data file, a Hub name, a dataset folder in a
    layout it knows) rather than a plain folder of images or of masks. One test for every command that
    accepts either (predict --show-gt, export --check-data), so they agree on every format."""
    path = Path(path)
    if not path.is_dir():
        return True
    return is_layout(path) or is_hf_source(path) or folder_loader(path) is not None


def load_data(path: str | Path, val_split: float = 0.2, seed: int = 42, *, image_suffix: str | None = None,
              mask_suffix: str | None = None, **hf_options) -> SegmentationData | StreamedData:
    """Finds the pairs of a dataset given as a folder, a data file, or a `datasets` source.

    `hf_options` (config, train_split, eval_split, image_column, label_column, streaming)
    apply to `datasets` sources only.
    """
    path_text = str(path)
    path = Path(path)
    hf_options = {k: v for k, v in hf_options.items() if v not in (None, False)}
    suffixes = {k: v for k, v in (("image_suffix", image_suffix), ("mask_suffix", mask_suffix)) if v}
    if not path.exists():
        if path_text.startswith(("/", ".", "~")) or path.suffix:  # clearly meant as a local path
            raise SegtuneError(f"{path}: no such file or folder")
        return load_hf(path_text, val_split=val_split, seed=seed, **hf_options)  # a Hub name: "scene_parse_150"
    if path.is_file() and path.suffix.lower() in {".yaml", ".yml"}:
        return _from_yaml(path, val_split, seed, suffixes, **hf_options)
    if path.is_file() and path.suffix.lower() == ".json":  # a COCO export
        if hf_options:
            raise SegtuneError(f"{path}: --{next(iter(hf_options)).replace('_', '-')} applies to `datasets` "
                               "sources, not to a COCO JSON file")
        return load_coco_file(path, val_split, seed)
    if is_hf_source(path):
        return load_hf(path_text, val_split=val_split, seed=seed, **hf_options)
    if path.is_file():
        raise SegtuneError(f"{path}: expected a dataset folder, a YAML data file (.yaml), a COCO JSON file "
                           "or parquet file(s)")
    export = folder_loader(path) if not is_layout(path) else None  # VOC / CVAT, Label Studio
    if export is None and not is_layout(path):
        raise SegtuneError(
            f"{path}: not a dataset folder: expected images/ and annotations/ (flat, or with training/ and "
            "validation/ inside), a `datasets` save_to_disk folder, parquet files (at the top or in data/), "
            "a VOC / CVAT folder (SegmentationClass/, JPEGImages/, ImageSets/Segmentation/), Label Studio "
            "images/ and masks/, or pass a YAML data file"
        )
    if hf_options:
        raise SegtuneError(f"{path}: --{next(iter(hf_options)).replace('_', '-')} applies to `datasets` sources "
                           "(Hub names, save_to_disk folders, parquet), not to image folders")
    if export is not None:
        return export(path, val_split, seed)
    return load_layout(path, val_split, seed, image_suffix, mask_suffix)
