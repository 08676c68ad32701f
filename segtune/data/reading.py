"""Reading one image and one mask the same way everywhere, and the rules that turn mask values into
class ids (`MaskRules`): colours -> ids, `binary`, `label_map`, ADE20K reduction, the ignore index."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import SegtuneError
from .label_checks import read_binary

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MASK_SUFFIXES = {".png", ".tif", ".tiff", ".bmp"}
HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


# ---------------------------------------------------------------- images


def to_rgb(img: Image.Image) -> Image.Image:
    """The one conversion used for training, evaluation and prediction.

    EXIF orientation is applied (phones store photos sideways plus a rotation tag, while
    masks are drawn on the upright picture), and 16-bit or float grey images are scaled to
    8 bits rather than clipped, which would turn them nearly white.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in HIGH_DEPTH_MODES:
        pixels = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(pixels / 257.0), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


@contextlib.contextmanager
def bombs_refused():
    """Pillow's decompression-bomb warning raised as an error: an image that large is refused
    before it is decoded (catch BOMB_ERRORS, then raise too_large)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def too_large(where, what: str) -> SegtuneError:
    return SegtuneError(f"{where}: {what} is too large to decode safely (over {Image.MAX_IMAGE_PIXELS / 1e6:.0f} "
                        "megapixels: Pillow's decompression-bomb limit)")


def open_image(path: Path, what: str = "image") -> Image.Image:
    """Opens and fully decodes a file, so a truncated one fails here, with one line naming it."""
    try:
        if path.stat().st_size == 0:
            raise SegtuneError(f"{path}: empty file (0 bytes)")
        with bombs_refused(), Image.open(path) as img:
            img.load()
            return img
    except BOMB_ERRORS:
        raise too_large(path, what) from None
    except UnidentifiedImageError:
        raise SegtuneError(f"{path}: not an image file, or a format Pillow cannot read") from None
    except FileNotFoundError:
        raise SegtuneError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise SegtuneError(f"{path}: cannot read {what} ({e})") from None


def read_image(path: Path) -> Image.Image:
    return to_rgb(open_image(Path(path)))


# ---------------------------------------------------------------- masks


def reduce_labels(mask: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """ADE20K's reduction, as `evaluate` and transformers do it: 0 -> ignore, k -> k-1, 255 stays."""
    out = mask.astype(np.int64) - 1
    out[(mask == 0) | (mask == 255)] = ignore_index
    return out


@dataclass(frozen=True)
class MaskRules:
    """How stored mask values become the class ids the model sees."""

    reduce_labels: bool = False
    ignore_index: int = 255
    label_map: dict | None = None  # stored value -> new value, applied before reduction
    colors: np.ndarray | None = field(default=None, compare=False)  # (N, 3) class colours for RGB masks
    binary: bool = False  # 0/255 masks: values >= 128 -> 1 (foreground), else 0; before label_map

    def apply(self, mask: np.ndarray, name) -> np.ndarray:
        """(H, W) or (H, W, 3+) stored values -> (H, W) int64 class ids."""
        if mask.ndim == 3:
            mask = self._from_rgb(mask[..., :3], name)
        mask = read_binary(mask) if self.binary else mask.astype(np.int64)
        if self.label_map:
            mapped = mask.copy()
            for old, new in self.label_map.items():
                mapped[mask == old] = new
            mask = mapped
        return reduce_labels(mask, self.ignore_index) if self.reduce_labels else mask

    def _from_rgb(self, rgb: np.ndarray, name) -> np.ndarray:
        grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
        if self.colors is None:
            if grey:  # a grey index mask saved as RGB is harmless
                return rgb[..., 0]
            raise SegtuneError(
                f"{name}: mask is a colour (RGB) image; expected a single-channel index mask "
                "(for colour-coded masks give each class's colour in the labels file)"
            )
        codes = _rgb_codes(rgb)
        palette = _rgb_codes(np.asarray(self.colors, dtype=np.uint8))
        order = np.argsort(palette, kind="stable")
        pos = np.clip(np.searchsorted(palette[order], codes), 0, len(palette) - 1)
        known = palette[order][pos] == codes
        if known.all():
            return order[pos]
        if grey:  # not the class colours, but plainly an index mask stored as RGB
            return rgb[..., 0]
        unknown, counts = np.unique(codes[~known], return_counts=True)
        top = int(unknown[counts.argmax()])
        colour = (top >> 16, (top >> 8) & 255, top & 255)
        more = f" (and {len(unknown) - 1} more unknown colours)" if len(unknown) > 1 else ""
        raise SegtuneError(
            f"{name}: mask colour {colour} ({counts.max()} pixels) is not the colour of any class{more}"
        )


def _rgb_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def mask_array(img: Image.Image) -> np.ndarray:
    """Stored values: palette indices for palette images (as Pascal VOC ships them), else pixels."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGBA" or img.mode == "LA":
        img = img.convert(img.mode[:-1])
    return np.array(img)


def read_mask(path: Path, rules: MaskRules | None = None) -> np.ndarray:
    """Returns the mask as an int64 (H, W) array of class ids after `rules`.

    `path` may instead be a mask drawn on demand (annotation-tool exports: sources/coco.py, yolo.py,
    voc.py, labelstudio.py): anything with `draw()` returning the stored values, rasterised here, in
    the data workers, so every command reads it through the same rules."""
    if hasattr(path, "draw"):
        return (rules or MaskRules()).apply(path.draw(), path)
    path = Path(path)
    return (rules or MaskRules()).apply(mask_array(open_image(path, "mask")), path)
