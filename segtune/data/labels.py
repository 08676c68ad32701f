"""Class names and colours: the built-in ADE20K set, or one read from a JSON or CSV file."""

from __future__ import annotations

import csv
import functools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageColor

from ..errors import SegtuneError
from .ade20k import ADE20K_CLASSES, ADE20K_PALETTE


@dataclass(frozen=True, eq=False)
class LabelSet:
    """Class names and one colour per class; index = class id as the model sees it."""

    names: tuple[str, ...]
    colors: np.ndarray  # (N, 3) uint8
    colors_given: bool = False  # chosen by the user (not generated): colour-coded masks may use them

    def __post_init__(self):
        colors = np.array(self.colors, dtype=np.uint8).reshape(-1, 3)
        if len(colors) != len(self.names):
            raise ValueError(f"{len(self.names)} class names but {len(colors)} colours")
        colors.setflags(write=False)  # frozen means the palette too
        object.__setattr__(self, "names", tuple(str(name) for name in self.names))
        object.__setattr__(self, "colors", colors)

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other) -> bool:
        if not isinstance(other, LabelSet):
            return NotImplemented
        return self.names == other.names and np.array_equal(self.colors, other.colors)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @classmethod
    def from_names(cls, names, colors=None) -> LabelSet:
        """`colors`: None, or one per class; None entries get a generated colour."""
        names = tuple(names)
        palette = generated_palette(len(names))
        if colors is not None:
            colors = list(colors)
            if len(colors) != len(names):
                raise ValueError(f"{len(names)} class names but {len(colors)} colours")
            palette = [palette[i] if color is None else color for i, color in enumerate(colors)]
        return cls(names, palette, colors_given=colors is not None and all(c is not None for c in colors))

    @classmethod
    def numbered(cls, n: int) -> LabelSet:
        return cls.from_names(f"class_{i}" for i in range(n))

    @classmethod
    def from_id2label(cls, id2label: dict) -> LabelSet:
        """From a transformers config's id2label (int or str keys); colours are generated."""
        return _from_entries(id2label.items(), "id2label")

    def to_json(self, path) -> None:
        entries = {
            str(i): {"name": name, "color": color.tolist()}
            for i, (name, color) in enumerate(zip(self.names, self.colors))
        }
        Path(path).write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")


def generated_palette(n: int) -> np.ndarray:
    """n distinct, deterministic, well-separated colours as (n, 3) uint8.

    Greedy farthest-point sampling over an RGB grid: each colour is the one farthest from all
    earlier ones, so the first classes differ most and palette(k) == palette(n)[:k].
    Near-black colours are left out because black marks ignored pixels.
    """
    return _farthest_point_palette(n).copy()


@functools.lru_cache(maxsize=16)
def _farthest_point_palette(n: int) -> np.ndarray:
    if n == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    levels = 16  # 3367 candidate colours; a finer grid only when more are wanted
    while len(candidates := _bright_rgb_grid(levels)) < n:
        levels += 8
    chosen = [int(np.argmin(np.abs(candidates - (255, 0, 0)).sum(axis=1)))]  # start at red
    distance = np.linalg.norm(candidates - candidates[chosen[0]], axis=1)
    for _ in range(n - 1):
        chosen.append(int(distance.argmax()))
        distance = np.minimum(distance, np.linalg.norm(candidates - candidates[chosen[-1]], axis=1))
    return np.rint(candidates[chosen]).astype(np.uint8)


def _bright_rgb_grid(levels: int) -> np.ndarray:
    steps = np.linspace(0, 255, levels)
    grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid[grid.max(axis=1) >= 150]  # nothing near black


def ade20k_labels() -> LabelSet:
    return LabelSet(ADE20K_CLASSES, np.array(ADE20K_PALETTE, dtype=np.uint8), colors_given=True)


def load_labels(spec: str | Path) -> LabelSet:
    """"ade20k", or a .json / .csv label file (see the README for the accepted layouts)."""
    if str(spec).lower() == "ade20k":
        return ade20k_labels()
    path = Path(spec)
    readers = {".json": _read_json, ".csv": _read_csv}
    if not path.is_file():
        raise SegtuneError(f"{path}: label file not found (expected 'ade20k', .json or .csv)")
    if path.suffix.lower() not in readers:
        raise SegtuneError(f"{path}: unknown label file type {path.suffix!r} (use .json or .csv)")
    return readers[path.suffix.lower()](path)


def _read_json(path: Path) -> LabelSet:
    def reject_duplicate_keys(pairs):  # json.loads would silently keep the last of two equal ids
        duplicates = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]
        if duplicates:
            raise SegtuneError(f"{path}: duplicate key {duplicates[0]!r}")
        return dict(pairs)

    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=reject_duplicate_keys)
    except (OSError, UnicodeDecodeError) as e:
        raise SegtuneError(f"{path}: cannot read label file: {e}") from None
    except json.JSONDecodeError as e:
        raise SegtuneError(f"{path}: invalid JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("id2label"), dict):
        data = data["id2label"]  # a whole transformers config.json
    if isinstance(data, list):
        entries = list(enumerate(data))
    elif isinstance(data, dict):
        entries = list(data.items())
    else:
        raise SegtuneError(f"{path}: expected a JSON object {{id: name}} or a list of names")
    return _from_entries(entries, path)


def _read_csv(path: Path) -> LabelSet:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: tolerate Excel's BOM
            reader = csv.DictReader(f, skipinitialspace=True)
            if reader.fieldnames is None:
                raise SegtuneError(f"{path}: empty file")
            reader.fieldnames = [column.strip().lower() for column in reader.fieldnames]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SegtuneError(f"{path}: cannot read label file: {e}") from None
    columns = set(reader.fieldnames)
    if not {"id", "name"} <= columns:
        raise SegtuneError(f"{path}: CSV header needs 'id' and 'name' columns: {reader.fieldnames}")

    def color_of(row):
        if {"r", "g", "b"} <= columns:
            rgb = [row["r"], row["g"], row["b"]]
            return None if not any(rgb) else [(c or "").strip() for c in rgb]
        return (row.get("color") or "").strip() or None

    entries = [(row["id"], {"name": row["name"], "color": color_of(row)}) for row in rows]
    return _from_entries(entries, path)


def _from_entries(entries, source) -> LabelSet:
    """(id, name or {"name", "color"}) pairs with ids exactly 0..N-1 in any order -> LabelSet."""
    by_id = {}
    for raw_id, value in entries:
        class_id = _parse_id(raw_id, source)
        if class_id in by_id:
            raise SegtuneError(f"{source}: duplicate id {class_id}")
        by_id[class_id] = _parse_entry(value, f"{source}: id {class_id}")
    if not by_id:
        raise SegtuneError(f"{source}: no classes")
    missing = sorted(set(range(len(by_id))) - by_id.keys())
    if missing:
        unexpected = sorted(by_id.keys() - set(range(len(by_id))))
        raise SegtuneError(
            f"{source}: ids must be exactly 0..{len(by_id) - 1}: "
            f"missing id {missing[0]}, found id {unexpected[0]}"
        )
    names, colors = zip(*(by_id[i] for i in range(len(by_id))))
    return LabelSet.from_names(names, colors)


def _parse_id(raw_id, source) -> int:
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        return raw_id
    if isinstance(raw_id, str) and raw_id.strip().removeprefix("-").isdecimal():
        return int(raw_id)
    raise SegtuneError(f"{source}: non-integer id {raw_id!r}")


def _parse_entry(value, where) -> tuple[str, tuple[int, int, int] | None]:
    """A name, or {"name": ..., "color": ...} -> (name, colour or None)."""
    if isinstance(value, dict):
        name, color = value.get("name"), value.get("color")
    else:
        name, color = value, None
    if not isinstance(name, str) or not name.strip():
        raise SegtuneError(f"{where}: expected a name or {{'name': ..., 'color': ...}}: {value!r}")
    return name.strip(), None if color is None else _parse_color(color, where)


def _parse_color(value, where) -> tuple[int, int, int]:
    """[r, g, b], "#rrggbb" or "r g b" (0-255 each) -> (r, g, b)."""
    rgb = value
    if isinstance(value, str) and value.strip().startswith("#"):
        try:
            rgb = ImageColor.getrgb(value.strip())
        except ValueError:
            rgb = None
    elif isinstance(value, str):
        rgb = value.replace(",", " ").split()
    if isinstance(rgb, (list, tuple)) and len(rgb) == 3:
        rgb = [int(c) if isinstance(c, str) and c.isdecimal() else c for c in rgb]
        if all(type(c) is int and 0 <= c <= 255 for c in rgb):
            return tuple(rgb)
    raise SegtuneError(f"{where}: bad colour {value!r} (use [r,g,b], '#rrggbb' or 'r g b', 0-255)")
