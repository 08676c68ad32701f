"""Which images `segtune predict` segments (files, folders, glob patterns) and, for `--show-gt`,
the ground-truth mask of each, matched by path from a dataset folder."""

from __future__ import annotations

import dataclasses
import glob
from dataclasses import dataclass
from pathlib import Path

from ..data.labels import LabelSet
from ..data.pairs import Sample
from ..data.reading import IMAGE_SUFFIXES, MaskRules
from ..errors import SegtuneError

# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputImage:
    """An image to segment and its output name (stem, or relative path without suffix)."""

    path: Path
    name: str


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def collect_images(inputs: list[str], recursive: bool = False) -> list[InputImage]:
    """Files as given, folders' images (sorted; sub-folders too with `recursive`, their outputs
    then in matching sub-folders), and glob patterns (`*`, `?`, `[...]`, `**`)."""
    found: list[InputImage] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            files = sorted(path.rglob("*") if recursive else path.iterdir())
            images = [p for p in files if _is_image(p)]
            if not images:
                hint = "" if recursive or not any(p.is_dir() for p in files) else " (sub-folders: use --recursive)"
                raise SegtuneError(f"{path}: no images found in this folder{hint}")
            found += [InputImage(p, p.relative_to(path).with_suffix("").as_posix() if recursive else p.stem)
                      for p in images]
        elif path.is_file():
            found.append(InputImage(path, path.stem))
        elif glob.has_magic(item):
            matches = [Path(p) for p in sorted(glob.glob(item, recursive=True))]
            images = [p for p in matches if _is_image(p)]
            if not images:
                raise SegtuneError(f"{item}: no image matches this pattern")
            found += [InputImage(p, p.stem) for p in images]
        else:
            raise SegtuneError(f"{path}: no such file or folder")
    unique, by_name = [], {}
    for entry in found:
        same = by_name.get(entry.name)
        if same is not None and same.path.resolve() == entry.path.resolve():
            continue  # given twice
        if same is not None:
            raise SegtuneError(f"{same.path} and {entry.path}: both would be written as '{entry.name}.png'; "
                               "segment them in separate runs, or give their common folder with --recursive")
        by_name[entry.name] = entry
        unique.append(entry)
    return unique


def ground_truth_masks(path: Path) -> tuple[list, MaskRules | None]:
    """The ground-truth pairs (each has `.stem` and `.read_mask(rules)`) of a plain folder of masks (its
    sub-folders too) or of any dataset `load_data` reads, and that dataset's own mask rules (a data
    file's label_map, ignore_index, reduce_labels, colours); None for a plain folder."""
    from ..data.reading import MASK_SUFFIXES
    from ..data.sources import is_dataset, load_data

    if not is_dataset(path):
        masks = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in MASK_SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        return [Sample(p, p) for p in masks], None
    data = load_data(path)
    return data.train + data.val, data.rules


def _path_parts(pair) -> tuple[str, ...]:
    image = getattr(pair, "image", None)  # `datasets` rows have no file: their stem is the row number
    return Path(image).with_suffix("").parts if image is not None else (pair.stem,)


def match_ground_truth(entries: list[InputImage], pairs: list, source) -> dict:
    """Each image's ground-truth pair, by output name: among the pairs of the image's stem, those whose
    path ends with the image's relative path (--recursive: sub-folders mirrored), else all of them;
    the shortest path of these wins (masks/x.png before masks/vis/x.png). Two equally near pairs, or
    one pair taken by two images, is an error: a wrong mask would be compared silently."""
    by_stem: dict[str, list] = {}
    for pair in pairs:
        by_stem.setdefault(pair.stem, []).append(pair)
    matched, taken = {}, {}
    for e in entries:
        parts = Path(e.name).parts
        candidates = by_stem.get(parts[-1], [])
        candidates = [p for p in candidates if _path_parts(p)[-len(parts):] == parts] or candidates
        if not candidates:
            raise SegtuneError(f"{e.path}: no ground-truth mask for '{e.name}' in {source}")
        nearest = sorted(candidates, key=lambda p: len(_path_parts(p)))
        if len(nearest) > 1 and len(_path_parts(nearest[0])) == len(_path_parts(nearest[1])):
            raise SegtuneError(f"{nearest[0].mask_name} and {nearest[1].mask_name}: both could be the ground truth "
                               f"of {e.path}; give the mask folder whose sub-folders mirror the images'")
        pair = nearest[0]
        if id(pair) in taken:
            raise SegtuneError(f"{taken[id(pair)].path} and {e.path}: both would take the ground truth "
                               f"{pair.mask_name}; give a mask folder whose sub-folders mirror the images'")
        matched[e.name], taken[id(pair)] = pair, e
    return matched


def mask_rules(rules, gt_rules: MaskRules | None, labels: LabelSet) -> MaskRules:
    """`rules` itself when a MaskRules; else the ground truth's own rules (for colour masks without
    colours of their own, the model's class colours) with the fields of a dict `rules` replacing them."""
    if isinstance(rules, MaskRules):
        return rules
    base = gt_rules or MaskRules()
    if base.colors is None and labels.colors_given:
        base = dataclasses.replace(base, colors=labels.colors)
    return dataclasses.replace(base, **(rules or {}))
