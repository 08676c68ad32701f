"""COCO JSON (instances or stuff), as CVAT, Label Studio, Roboflow and COCO itself export it.

    segtune train --data annotations.json        # images by file_name, from the JSON's folder or images/ beside
    # or a data file: format: coco, train: {images: ..., annotations: ...}, val: ..., background: ignore

Each annotation's `segmentation` is polygons, compressed RLE (string counts) or uncompressed RLE
(list counts), crowd or not. The masks are not written anywhere: a `CocoMask` holds one image's
annotations and is rasterised with pycocotools when a data worker reads the pair (data.read_mask).

Class ids: the categories sorted by id. Pixels no annotation covers are `background: class` (a class
`background` with id 0, categories 1..K; the default) or `background: ignore` (the ignore index,
categories 0..K-1). Where annotations overlap, the smaller one is on top: they are drawn in
decreasing area order.

Bad annotations (an image that is not listed, an unknown category, a polygon of fewer than 3 points,
an RLE of another size than its image) are problems, one line each naming the image and annotation
ids; their image is left out, as the folder layouts leave out an image without a mask.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import SegtuneError
from ..labels import LabelSet
from ..pairs import SegmentationData
from .splits import labels_beside, with_validation

BACKGROUNDS = ("class", "ignore")


def _quiet_pycocotools() -> None:
    """pycocotools' decode trips NumPy 2's copy-keyword deprecation on every call: harmless, and a
    warning per mask would bury the one-line problems."""
    message = "__array__ implementation doesn't accept a copy"
    if not any(f[0] == "ignore" and f[1] is not None and f[1].pattern == message for f in warnings.filters):
        # only when absent: filterwarnings removes and re-inserts, and a decode in another thread between
        # the two would warn
        warnings.filterwarnings("ignore", message, DeprecationWarning)


def background_mode(where, value) -> str:
    value = "class" if value is None else value
    if value not in BACKGROUNDS:
        raise SegtuneError(f"{where}: 'background' must be 'class' or 'ignore', not {value!r}")
    return value


def class_names(where, names: list[str], background: str) -> LabelSet:
    """The model's classes: `background` first when uncovered pixels are a class of their own."""
    names = (["background"] if background == "class" else []) + [str(n) for n in names]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise SegtuneError(f"{where}: class name '{twice}' appears twice (as a category, or as the background)")
    return LabelSet.from_names(names)


def coco_classes(where, cats: list, background: str) -> tuple[LabelSet, dict]:
    """The classes and each category id's stored value. With `background: class`, a category named
    `background` (as some tools export one) is that class, id 0, rather than a second one."""
    if background == "ignore":
        return class_names(where, [n for _, n in cats], background), {cid: i for i, (cid, _) in enumerate(cats)}
    names, value_of = [], {}
    for cid, name in cats:
        if name == "background":
            value_of[cid] = 0
        else:
            names.append(name)
            value_of[cid] = len(names)
    return class_names(where, names, background), value_of


def draw_shapes(height: int, width: int, shapes, fill: int, where: str = "") -> np.ndarray:
    """(class value, pycocotools segmentation[, annotation id]) -> (H, W) stored values; larger areas
    drawn first, so the smaller of two overlapping annotations ends on top. `where` names the image."""
    from pycocotools import mask as mask_utils  # lazily: `import segtune` stays quick

    _quiet_pycocotools()
    out = np.full((height, width), fill, np.int64)
    drawn = []
    for i, (value, segmentation, *aid) in enumerate(shapes):
        try:  # compressed counts are checked only here: pycocotools refuses a corrupt string
            rle = to_rle(segmentation, height, width)
            drawn.append((-int(mask_utils.area(rle)), i, value, mask_utils.decode(rle).astype(bool)))
        except (ValueError, TypeError, OverflowError) as e:
            raise SegtuneError(f"{where}{f', annotation {aid[0]}' if aid else ''}: cannot draw its segmentation "
                               f"({e})") from None
    for _, _, value, on in sorted(drawn, key=lambda d: d[:2]):  # ties: the later annotation on top
        out[on] = value
    return out


def to_rle(segmentation, height: int, width: int) -> dict:
    """One annotation's segmentation as a single compressed RLE, as pycocotools' COCO.annToRLE does."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        return mask_utils.merge(mask_utils.frPyObjects([list(map(float, p)) for p in segmentation], height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


@dataclass(frozen=True, eq=False)
class CocoMask:
    """One image's annotations, rasterised on demand (data.read_mask calls `draw`)."""

    source: Path  # the JSON file
    image_id: object
    file_name: str
    height: int
    width: int
    shapes: tuple  # (class value, segmentation), in the file's order
    fill: int  # the value of pixels no annotation covers

    def __str__(self) -> str:
        return f"{self.source}: image {self.image_id} ({self.file_name})"

    def draw(self) -> np.ndarray:
        return draw_shapes(self.height, self.width, self.shapes, self.fill, str(self))


def _shape_problem(segmentation, height: int, width: int) -> str | None:
    try:
        return _problem(segmentation, height, width)
    except (TypeError, ValueError):  # e.g. a size of strings, counts that are not numbers
        return "segmentation is neither polygons nor RLE"


def _problem(segmentation, height: int, width: int) -> str | None:
    if isinstance(segmentation, list):
        if not segmentation:
            return "segmentation is an empty list of polygons"
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(isinstance(v, int | float) for v in polygon):
                return "segmentation is neither polygons nor RLE"
            if len(polygon) < 6 or len(polygon) % 2:
                return f"polygon with {len(polygon) // 2} point(s) (at least 3 needed)"
        return None
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if not (isinstance(size, list) and len(size) == 2) or not isinstance(segmentation["counts"], list | str):
            return "segmentation is neither polygons nor RLE"
        if [int(size[0]), int(size[1])] != [height, width]:
            return f"RLE size {size[1]}x{size[0]} differs from the image's {width}x{height}"
        if isinstance(segmentation["counts"], list) and sum(segmentation["counts"]) != height * width:
            return f"uncompressed RLE counts cover {sum(segmentation['counts'])} pixels, not {height * width}"
        return None
    return "segmentation is neither polygons nor RLE"


def _read_json(path: Path) -> dict:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SegtuneError(f"{path}: cannot read COCO JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("images"), list) \
            or not isinstance(spec.get("categories"), list) or not isinstance(spec.get("annotations", []), list):
        raise SegtuneError(f"{path}: not a COCO JSON file (expected lists 'images', 'annotations', 'categories')")
    return spec


def categories(path: Path, spec: dict) -> list[tuple[object, str]]:
    """(id, name) sorted by id."""
    try:
        found = sorted(((c["id"], str(c["name"])) for c in spec["categories"]), key=lambda c: c[0])
    except (KeyError, TypeError) as e:
        raise SegtuneError(f"{path}: each category needs an 'id' and a 'name' ({e!r} missing or wrong)") from None
    if not found:
        raise SegtuneError(f"{path}: no categories")
    return found


def coco_pairs(path: Path, images_dir: Path | None, background: str, ignore_index: int, problems: list,
               cats: list | None = None, spec: dict | None = None) -> list:
    """The pairs of one COCO JSON: (Sample(image file, CocoMask)). `cats`: the classes shared by the splits;
    `spec`: the file, read already."""
    from ..pairs import Sample

    spec = spec or _read_json(path)
    cats = cats or categories(path, spec)
    _, value_of = coco_classes(path, cats, background)
    fill = 0 if background == "class" else ignore_index
    images, bad = {}, set()
    for entry in spec["images"]:
        try:
            size = [entry.get(k) for k in ("height", "width")]
            size = [v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None for v in size]
            images[entry["id"]] = (str(entry["file_name"]), *size)
        except (KeyError, TypeError):
            raise SegtuneError(f"{path}: each image needs an 'id' and a 'file_name' (got {entry!r:.80})") from None
    shapes: dict = {iid: [] for iid in images}
    for ann in spec.get("annotations", []):
        aid, iid = (ann.get("id"), ann.get("image_id")) if isinstance(ann, dict) else (None, None)
        where = f"{path}: image {iid}, annotation {aid}"
        if iid not in images:
            problems.append(f"{where}: the image is not in 'images'")
            continue
        _, height, width = images[iid]
        if not height or not width:  # the image's own line says so
            continue
        if ann.get("category_id") not in value_of:
            problems.append(f"{where}: unknown category id {ann.get('category_id')!r}")
            bad.add(iid)
            continue
        problem = _shape_problem(ann.get("segmentation"), int(height or 0), int(width or 0))
        if problem:
            problems.append(f"{where}: {problem}")
            bad.add(iid)
            continue
        shapes[iid].append((value_of[ann["category_id"]], ann["segmentation"], aid))
    pairs = []
    for iid, (file_name, height, width) in images.items():
        if iid in bad:
            continue
        found = _find_image(path, images_dir, file_name)
        if found is None:
            roots = [images_dir] if images_dir is not None else [path.parent, path.parent / "images"]
            problems.append(f"{path}: image {iid} ({file_name}): file not found in {' or '.join(map(str, roots))}")
            continue
        if not height or not width:
            problems.append(f"{path}: image {iid} ({file_name}): no valid 'height' and 'width' in 'images'")
            continue
        pairs.append(Sample(found, CocoMask(path, iid, file_name, int(height), int(width), tuple(shapes[iid]), fill)))
    return pairs


def _find_image(path: Path, images_dir: Path | None, file_name: str) -> Path | None:
    roots = [images_dir] if images_dir is not None else [path.parent, path.parent / "images"]
    for root in roots:
        for candidate in (root / file_name, root / Path(file_name).name):
            if candidate.is_file():
                return candidate
    return None


def load_coco_file(path: Path, val_split: float, seed: int) -> SegmentationData:
    """`--data FILE.json`: one file, split by the seeds; uncovered pixels are the class `background`."""
    problems, spec = [], _read_json(path)
    cats = categories(path, spec)
    pairs = coco_pairs(path, None, "class", 255, problems, cats, spec)
    labels = labels_beside(path.parent) or coco_classes(path, cats, "class")[0]
    return with_validation(path, pairs, None, val_split, seed, problems, labels=labels)


def load_coco_yaml(path: Path, spec: dict, root: Path, val_split: float, seed: int, rules: dict) -> SegmentationData:
    """A data file with `format: coco`: train/val as {images: folder, annotations: file.json}."""
    background = background_mode(path, spec.get("background"))
    problems, splits, cats = [], {}, None
    for split in ("train", "val"):
        entry = spec.get(split)
        if entry is None:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("annotations"), str) \
                or not isinstance(entry.get("images", ""), str) or set(entry) - {"images", "annotations"}:
            raise SegtuneError(f"{path}: '{split}' must be {{images: folder, annotations: file.json}} for COCO")
        json_path = root / entry["annotations"]
        if not json_path.is_file():
            raise SegtuneError(f"{json_path}: COCO JSON not found")
        images = root / entry["images"] if "images" in entry else None
        if images is not None and not images.is_dir():
            raise SegtuneError(f"{images}: image folder not found")
        coco = _read_json(json_path)
        here = categories(json_path, coco)
        if cats is not None and [n for _, n in here] != [n for _, n in cats]:
            raise SegtuneError(f"{json_path}: its categories differ from the training file's; the splits must "
                               "share one class list")
        cats = here
        splits[split] = coco_pairs(json_path, images, background, rules["ignore_index"], problems, cats, coco)
    labels = rules.get("labels") or coco_classes(path, cats, background)[0]
    rules = {**rules, "labels": labels}
    return with_validation(path, splits.get("train", []), splits.get("val"), val_split, seed, problems, **rules)
