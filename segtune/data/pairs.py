"""One image/mask pair, on disk or a row of a `datasets` table, read the same way everywhere
(reading.py), and the datasets pairs form.

A mask goes through `MaskRules` once, in this order: colour-coded RGB -> class ids (when the
classes' colours are known), `binary` (0/255 -> 0/1), `label_map`, ADE20K reduction, and the
ignore index. Finding the pairs is the `sources` package's job; checking them all is `checks.py`'s.

A dataset is either `SegmentationData` (every pair listed ahead, so it can be checked, split and
indexed) or `StreamedData` (rows read as they come); both carry the classes and the mask rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import SegtuneError
from .labels import LabelSet
from .reading import BOMB_ERRORS, MaskRules, bombs_refused, mask_array, read_image, read_mask, to_rgb, too_large

# ---------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """An image file and its mask file (no mask: an image to predict), or a mask drawn from annotations."""

    image: Path
    mask: Path | None = None  # or an object with draw() and a name (read_mask)

    @property
    def name(self) -> str:
        return str(self.image)

    @property
    def stem(self) -> str:
        return self.image.stem

    @property
    def mask_name(self) -> str:
        return str(self.mask)

    def read(self, rules: MaskRules) -> tuple[Image.Image, np.ndarray]:
        return read_image(self.image), read_mask(self.mask, rules)

    def read_mask(self, rules: MaskRules) -> np.ndarray:
        return read_mask(self.mask, rules)


DECODE_ERRORS = (Image.DecompressionBombError, OSError, SyntaxError, ValueError)  # OSError: unreadable, truncated


@dataclass(frozen=True, eq=False)
class RowSample:
    """Row `index` of a `datasets.Dataset`, with its image and mask columns."""

    table: object  # datasets.Dataset (memory-mapped Arrow, cheap to pickle into workers)
    index: int
    image_column: str
    label_column: str
    source: str  # e.g. "scene_parse_150[train]", for messages
    origin: tuple[str, int] | None = None  # (split name, row number in it) in the dataset as stored

    @property
    def name(self) -> str:
        return f"{self.source} row {self.index}"

    @property
    def stem(self) -> str:
        """Unique per stored row, so that the same row chosen for two splits shows as the same name."""
        return f"{self.origin[0]}_{self.origin[1]:06d}" if self.origin else f"{self.index:06d}"

    mask_name = name

    def read(self, rules: MaskRules) -> tuple[Image.Image, np.ndarray]:
        try:
            with bombs_refused():
                row = self.table[self.index]  # `datasets` decodes the row's image columns here
        except (*DECODE_ERRORS, *BOMB_ERRORS):
            raise self._decode_error() from None
        return decode_row(row, self.image_column, self.label_column, self.name, rules)

    def _decode_error(self) -> SegtuneError:
        """One line naming the row and the column that `datasets` could not decode."""
        for column in (self.image_column, self.label_column):
            try:
                with bombs_refused():
                    self.table.select_columns([column])[self.index]
            except BOMB_ERRORS:
                return too_large(self.name, f"column '{column}'")
            except UnidentifiedImageError:
                return SegtuneError(f"{self.name}: column '{column}' is not an image, or a format Pillow cannot read")
            except DECODE_ERRORS as e:
                return SegtuneError(f"{self.name}: cannot read column '{column}' as an image ({e})")
        return SegtuneError(f"{self.name}: cannot read the row")

    def read_mask(self, rules: MaskRules) -> np.ndarray:
        return self.read(rules)[1]


def decode_row(row: dict, image_column: str, label_column: str, name: str, rules: MaskRules):
    """A `datasets` row (PIL images, or arrays) -> (RGB image, class ids)."""
    image, mask = row[image_column], row[label_column]
    for column, value in ((image_column, image), (label_column, mask)):
        # Decoded already (the warning range only warns, and a caller's filter may not hold in threads):
        # refused as the files are, one line naming the row.
        if isinstance(value, Image.Image) and value.width * value.height > (Image.MAX_IMAGE_PIXELS or np.inf):
            raise too_large(name, f"column '{column}'")
    try:
        if not isinstance(image, Image.Image):  # an array: numpy, or nested lists (which arrive as int64)
            pixels = np.asarray(image)
            if pixels.dtype.kind not in "biuf":
                raise TypeError(f"values of type {pixels.dtype}")
            low, high = (pixels.min(), pixels.max()) if pixels.size else (0, 0)
            if low < 0 or high > 65535:
                raise ValueError(f"values {low}..{high} are outside 0..65535")
            if pixels.dtype == np.uint16 or high > 255:  # 16-bit: scaled as to_rgb scales them, not wrapped
                pixels = np.round(pixels / 257.0)
            image = Image.fromarray(pixels.astype(np.uint8))
        image = to_rgb(image)
    except (OSError, ValueError, TypeError) as e:
        raise SegtuneError(f"{name}: cannot read column '{image_column}' as an image ({e})") from None
    if mask is None:
        raise SegtuneError(f"{name}: column '{label_column}' is empty")
    try:
        mask = mask_array(mask) if isinstance(mask, Image.Image) else np.asarray(mask, dtype=np.int64)
    except (OSError, ValueError, TypeError) as e:  # e.g. ragged nested lists
        raise SegtuneError(f"{name}: cannot read column '{label_column}' as a mask ({e})") from None
    if not (mask.ndim == 2 or mask.ndim == 3 and mask.shape[2] in (3, 4)):
        raise SegtuneError(f"{name}: column '{label_column}' has shape {mask.shape}: expected (height, width) "
                           "class ids or (height, width, 3) colours")
    return image, rules.apply(mask, name)


def check_sizes(sample, image: Image.Image, mask: np.ndarray) -> None:
    if mask.shape[:2] != (image.height, image.width):
        raise SegtuneError(
            f"{sample.mask_name}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image.width}x{image.height}"
        )


# ---------------------------------------------------------------- datasets


@dataclass(kw_only=True)
class DataRules:
    """The classes and the rules for reading masks (ids as the model sees them), which data files,
    id2label.json files and the command line set on either kind of dataset."""

    labels: LabelSet | None = None  # from the data file or an id2label.json beside the data
    ignore_index: int = 255
    reduce_labels: bool = False
    label_map: dict | None = None
    mask_colors: np.ndarray | None = None  # class colours for colour-coded masks
    binary: bool = False  # 0/255 masks read as background 0 / foreground 1 (label_checks.read_binary)

    def read_colours_of(self, labels: LabelSet | None) -> None:
        """Colour-coded masks are read through the classes' colours, when the user chose them."""
        if labels is not None and self.mask_colors is None and labels.colors_given:
            self.mask_colors = labels.colors

    @property
    def rules(self) -> MaskRules:
        return MaskRules(self.reduce_labels, self.ignore_index, self.label_map, self.mask_colors, self.binary)


@dataclass
class SegmentationData(DataRules):
    """Pairs per split, all known ahead, plus the rules for reading masks."""

    source: Path | str
    train: list
    val: list
    problems: list = field(default_factory=list)  # (sample or path, message) found while pairing
    mask_max: dict = field(default_factory=dict)  # filled by checks: largest class id per split
    findings: list = field(default_factory=list)  # filled by checks: label_checks.Finding, label-space checks
    val_is_split: bool = False  # True when val was drawn from the training pairs by val_split/seed
    unsplit: tuple | None = None  # (every pair, val_split, seed) when val_is_split: to split again
    band_layout: object = None  # band_data.BandLayout when the pairs are read band by band (multi-band rasters)


@dataclass
class StreamedData(DataRules):
    """A dataset read as a stream, for data larger than memory or disk: its rows are met as training
    reaches them, so there are no pairs to list, check, split or index ahead, and its classes must
    be known beforehand."""

    source: Path | str
    stream: object  # sources.stream.StreamingSource: the training (or None) and validation streams


class PairDataset:
    """Reads pair i as (RGB image, mask of class ids); subclasses turn it into model inputs."""

    def __init__(self, samples: list, transform, rules: MaskRules):
        self.samples, self.transform, self.rules = samples, transform, rules

    def __len__(self):
        return len(self.samples)

    def load(self, i: int):
        sample = self.samples[i]
        image, mask = sample.read(self.rules)
        check_sizes(sample, image, mask)
        return image, mask
