"""Finding the image/mask pairs of a dataset, whatever shape it comes in.

- ADE20K layout: images/{training,validation}/ + annotations/{training,validation}/
- flat: images/ + annotations/, split by `val_split` and `seed`
- a YAML data file naming folders, split list files, suffixes, classes and label rules
- Hugging Face `datasets`: a Hub name, a `save_to_disk` folder or parquet files (hf_sources.py)

Pairing problems (a file without its partner, two files with one name, a listed stem with no
file) are collected in `data.problems` rather than raised, so `inspect` can list them all and
`--skip-bad` can leave them out; the checks in checks.py refuse to train on them otherwise.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import yaml

from .data import IMAGE_SUFFIXES, MASK_SUFFIXES, Sample, SegmentationData
from .errors import SegtuneError
from .labels import LabelSet, _from_entries, load_labels

ADE_SPLITS = {"train": "training", "val": "validation"}


@dataclass
class FolderSpec:
    """One split's images, masks, optional list of stems, and file-name endings."""

    images: Path
    masks: Path
    list_file: Path | None = None
    image_suffix: str | None = None  # e.g. "_leftImg8bit.png"; None: any image extension
    mask_suffix: str | None = None  # e.g. "_gtFine_labelIds.png"; None: any mask extension


def _files(folder: Path, suffix: str | None, extensions: set[str], problems: list) -> dict[str, Path]:
    """Files under `folder` (recursively) by key: the relative path without its suffix.

    Two files with one key (a.jpg and a.png) are a problem; the key is left out, as neither
    is surely the right one.
    """
    found, clashes = {}, set()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if suffix is not None:
            if not p.name.endswith(suffix) or p.name == suffix:
                continue
            key = str(p.relative_to(folder))[: -len(suffix)]
        elif p.suffix.lower() in extensions:
            key = str(p.relative_to(folder).with_suffix(""))
        else:
            continue
        if key in found:
            problems.append(f"{p}: two files share the name '{key}' ({found[key].name}); rename one")
            clashes.add(key)
            continue
        found[key] = p
    return {k: p for k, p in found.items() if k not in clashes}, clashes


def _read_list(path: Path) -> list[str]:
    """One entry per line (a stem, or 'image mask' paths as CamVid ships them); # comments."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SegtuneError(f"{path}: cannot read split list ({e})") from None
    entries = [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise SegtuneError(f"{path}: split list is empty")
    return entries


def pair_folder(spec: FolderSpec, problems: list | None = None) -> list[Sample]:
    """Matches images to masks by key; partners missing are recorded in `problems`."""
    problems = [] if problems is None else problems
    if not spec.images.is_dir():
        raise SegtuneError(f"{spec.images}: image folder not found")
    if not spec.masks.is_dir():
        raise SegtuneError(f"{spec.masks}: mask folder not found")
    if spec.images.resolve() == spec.masks.resolve() and spec.image_suffix == spec.mask_suffix:
        raise SegtuneError(f"{spec.images}: images and masks share this folder: give image_suffix and mask_suffix")
    images, image_clashes = _files(spec.images, spec.image_suffix, IMAGE_SUFFIXES, problems)
    masks, mask_clashes = _files(spec.masks, spec.mask_suffix, MASK_SUFFIXES, problems)
    if spec.images.resolve() == spec.masks.resolve():  # one folder: an image name may also match as a mask
        images = {k: p for k, p in images.items() if p not in masks.values()}
    if not images:
        wanted = spec.image_suffix or ", ".join(sorted(IMAGE_SUFFIXES))
        raise SegtuneError(f"{spec.images}: no images found (looked for {wanted})")
    keys = list(images)
    if spec.list_file is not None:
        by_name = {}
        for key in images:
            by_name.setdefault(Path(key).name, []).append(key)
        keys = []
        for entry in _read_list(spec.list_file):
            stem = Path(entry).name
            if spec.image_suffix and stem.endswith(spec.image_suffix):
                stem = stem[: -len(spec.image_suffix)]
            elif Path(stem).suffix.lower() in IMAGE_SUFFIXES:
                stem = Path(stem).stem
            key = entry if entry in images else stem if stem in images else None
            if key is None and len(by_name.get(stem, [])) == 1:
                key = by_name[stem][0]
            if key is None:
                problems.append(f"{spec.list_file}: '{entry}' is listed but has no image in {spec.images}")
            else:
                keys.append(key)
    pairs = []
    for key in keys:
        if key in mask_clashes:
            continue
        if key in masks:
            pairs.append(Sample(images[key], masks[key]))
            continue
        look_for = key + (spec.mask_suffix or ".png")
        other = next((q for q in (spec.masks / key).parent.glob(glob.escape(Path(key).name) + ".*") if q.is_file()),
                     None)
        if other is not None and spec.mask_suffix is None:  # e.g. a JPEG mask: lossy, corrupts class ids
            problems.append(
                f"{images[key]}: image has no mask ({other.name} is not a mask file: use "
                f"{', '.join(sorted(MASK_SUFFIXES))})"
            )
        else:
            problems.append(f"{images[key]}: image has no mask ({spec.masks / look_for} is missing)")
    if spec.list_file is None:
        for key, p in masks.items():
            if key not in images and key not in image_clashes and spec.images.resolve() != spec.masks.resolve():
                problems.append(f"{p}: mask has no image in {spec.images}")
    return pairs


def split_samples(samples: list, val_split: float, seed: int, source, problems=()) -> tuple[list, list]:
    """The seeds' split: `datasets.Dataset.train_test_split(test_size=val_split, seed=seed)`.

    `problems`: the pairing problems, named first when they leave too few pairs to split.
    """
    from datasets import Dataset

    if len(samples) < 2:
        more = [f"... and {len(problems) - 20} more problems"] if len(problems) > 20 else []
        raise SegtuneError("\n".join([*problems[:20], *more, f"{source}: only {len(samples)} pair, too few to split"]))
    try:
        parts = Dataset.from_dict({"i": list(range(len(samples)))}).train_test_split(test_size=val_split, seed=seed)
    except ValueError as e:  # val_split outside (0, 1), or leaving one side empty
        raise SegtuneError(f"{source}: cannot split {len(samples)} pairs with val_split={val_split} ({e})") from None
    return [samples[i] for i in parts["train"]["i"]], [samples[i] for i in parts["test"]["i"]]


def labels_beside(root: Path) -> LabelSet | None:
    for name in ("id2label.json", "labels.json"):
        if (root / name).is_file():
            return load_labels(root / name)
    return None


# ---------------------------------------------------------------- YAML data files

YAML_KEYS = {"path", "train", "val", "train_masks", "val_masks", "train_list", "val_list", "image_suffix",
             "mask_suffix", "names", "colors", "ignore_index", "reduce_labels", "label_map", "dataset", "config",
             "train_split", "eval_split", "image_column", "label_column", "streaming"}


def _yaml_spec(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SegtuneError(f"{path}: cannot read data file ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not ({"train", "val", "dataset"} & spec.keys()):
        raise SegtuneError(f"{path}: data file needs 'train' and/or 'val' entries, or a 'dataset'")
    unknown = sorted(set(spec) - YAML_KEYS)
    if unknown:
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
    colors = labels.colors if labels is not None and spec.get("colors") is not None else None
    return dict(labels=labels, ignore_index=ignore_index, reduce_labels=reduce,
                label_map=_label_map(path, spec.get("label_map")), mask_colors=colors)


def _from_yaml(path: Path, val_split: float, seed: int, suffixes: dict, **hf_options) -> SegmentationData:
    spec = {**_yaml_spec(path), **suffixes}  # the command line wins
    rules = _yaml_rules(path, spec)
    root = (path.parent / spec.get("path", ".")).resolve()
    if "dataset" in spec:
        from .hf_sources import load_hf

        target = spec["dataset"]
        local = root / target if isinstance(target, str) and (root / target).exists() else None
        options = {k: spec[k] for k in ("config", "train_split", "eval_split", "image_column", "label_column",
                                         "streaming") if k in spec}
        options.update(hf_options)  # the command line wins
        data = load_hf(str(local or target), val_split=val_split, seed=seed, **options)
        data.source = path
        for key, value in rules.items():
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
    val_is_split = val is None
    unsplit = (train, val_split, seed) if val_is_split else None
    if val_is_split:
        train, val = split_samples(train, val_split, seed, path, problems)
    return SegmentationData(source=path, train=train, val=val, problems=problems, val_is_split=val_is_split,
                            unsplit=unsplit, **rules)


# ---------------------------------------------------------------- entry point


def _is_hf_source(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return True
    # Parquet where the Hub keeps it (top level or data/), and not an image folder holding a stray export.
    if (path / "images").is_dir() and (path / "annotations").is_dir():
        return False
    return any(path.glob("*.parquet")) or any((path / "data").rglob("*.parquet"))


def load_data(path: str | Path, val_split: float = 0.2, seed: int = 42, *, image_suffix: str | None = None,
              mask_suffix: str | None = None, **hf_options) -> SegmentationData:
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
        from .hf_sources import load_hf  # a Hub dataset name such as "scene_parse_150"

        return load_hf(path_text, val_split=val_split, seed=seed, **hf_options)
    if path.is_file() and path.suffix.lower() in {".yaml", ".yml"}:
        return _from_yaml(path, val_split, seed, suffixes, **hf_options)
    if _is_hf_source(path):
        from .hf_sources import load_hf

        return load_hf(path_text, val_split=val_split, seed=seed, **hf_options)
    if path.is_file():
        raise SegtuneError(f"{path}: expected a dataset folder, a YAML data file (.yaml) or parquet file(s)")
    images, annotations = path / "images", path / "annotations"
    if not images.is_dir() or not annotations.is_dir():
        raise SegtuneError(
            f"{path}: not a dataset folder: expected images/ and annotations/ (flat, or with training/ and "
            "validation/ inside), a `datasets` save_to_disk folder, parquet files (at the top or in data/), "
            "or pass a YAML data file"
        )
    if hf_options:
        raise SegtuneError(f"{path}: --{next(iter(hf_options)).replace('_', '-')} applies to `datasets` sources "
                           "(Hub names, save_to_disk folders, parquet), not to image folders")
    problems = []

    def pairs(sub: str) -> list[Sample]:
        return pair_folder(FolderSpec(images / sub, annotations / sub, None, image_suffix, mask_suffix), problems)

    if any((images / d).is_dir() for d in ADE_SPLITS.values()):
        splits = {split: pairs(folder) for split, folder in ADE_SPLITS.items() if (images / folder).is_dir()}
        train, val = splits.get("train", []), splits.get("val")
    else:
        train, val = pairs(""), None
    val_is_split = val is None
    unsplit = (train, val_split, seed) if val_is_split else None
    if val_is_split:
        train, val = split_samples(train, val_split, seed, path, problems)
    return SegmentationData(source=path, train=train, val=val, labels=labels_beside(path), problems=problems,
                            val_is_split=val_is_split, unsplit=unsplit)
