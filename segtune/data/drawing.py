"""Label maps drawn in their classes' colours: colour masks, overlays, label PNGs and error maps
(numpy arrays and files; the matplotlib figures are reporting's, reporting/charts.py)."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from ..errors import SegtuneError
from .labels import generated_palette

IGNORED_COLOR = (0, 0, 0)
# Error maps: correct pixels show the image darkened to this share, wrong ones red, unscored grey.
ERROR_COLOR, UNSCORED_COLOR, CORRECT_DIM = (255, 0, 0), (128, 128, 128), 0.3


def _known(label_map: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """Pixels holding a class id that the palette covers (not ignored, not out of range)."""
    if not np.issubdtype(label_map.dtype, np.integer):
        raise TypeError(f"label map must hold integer class ids, got dtype {label_map.dtype}")
    return (label_map >= 0) & (label_map < num_classes) & (label_map != ignore_index)


def colorize(label_map: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8; ignored and out-of-palette ids are black."""
    return _draw(None, label_map, palette, ignore_index)[0]


# Pixels drawn at once: the lookups' temporaries take about 30 bytes a pixel, so a 48 MP photo drawn
# whole would hold 1.4 GB of them; in blocks of rows they stay near 30 MB, with the same pixels.
BLOCK_PIXELS = 1 << 20


def _lookup(label_map, palette, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(colours (H, W, 3) uint8, known (H, W) bool): one table lookup per pixel, unknown ids sent to an
    extra black row (several times faster than masked assignment; `predict` draws every image)."""
    label_map, palette = np.asarray(label_map), np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    known = _known(label_map, len(palette), ignore_index)
    colours = np.zeros((len(palette) + 1, 3), dtype=np.uint8)
    colours[:-1] = palette
    colours[-1] = IGNORED_COLOR
    return colours[np.where(known, label_map, len(palette))], known


def _blocks(image, label_map, palette, ignore_index: int, alpha: float = 0.5):
    """(rows, colours, overlay or None when `image` is None) per block of BLOCK_PIXELS, top to bottom.
    `image`: a PIL image (its rows are taken a block at a time too) or an (H, W, 3) array."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    label_map = np.asarray(label_map)
    height, width = label_map.shape
    if image is not None:
        size = (image.height, image.width) if isinstance(image, Image.Image) else np.asarray(image).shape[:2]
        if tuple(size) != (height, width):
            raise SegtuneError(f"image is {tuple(size)} (H, W) but label map is {label_map.shape}")
    step = max(1, BLOCK_PIXELS // max(1, width))
    for top in range(0, height, step):
        rows = slice(top, min(top + step, height))
        colours, known = _lookup(label_map[rows], palette, ignore_index)
        if image is None:
            yield rows, colours, None
            continue
        pixels = (as_rgb(image.crop((0, rows.start, width, rows.stop))) if isinstance(image, Image.Image)
                  else as_rgb(np.asarray(image)[rows]))
        yield rows, colours, _blend(pixels, colours, known, alpha)


def _draw(image, label_map, palette, ignore_index: int, alpha: float = 0.5):
    """(colour mask, overlay or None when `image` is None) as (H, W, 3) uint8 arrays."""
    height, width = np.asarray(label_map).shape
    colours = np.empty((height, width, 3), dtype=np.uint8)
    blended = np.empty((height, width, 3), dtype=np.uint8) if image is not None else None
    for rows, colour_rows, blended_rows in _blocks(image, label_map, palette, ignore_index, alpha):
        colours[rows] = colour_rows
        if blended is not None:
            blended[rows] = blended_rows
    return colours, blended


def drawn_image(label_map, palette, image=None, alpha: float = 0.5, ignore_index: int = 255) -> Image.Image:
    """The colour mask (no `image`) or the overlay on `image`, as a PIL RGB image made a block of rows
    at a time: no full-size array besides the picture itself (`predict` draws photos of 48 MP)."""
    height, width = np.asarray(label_map).shape
    picture = Image.new("RGB", (width, height))
    for rows, colours, blended in _blocks(image, label_map, palette, ignore_index, alpha):
        picture.paste(Image.fromarray(colours if image is None else blended), (0, rows.start))
    return picture


def as_rgb(image) -> np.ndarray:
    if not isinstance(image, Image.Image):
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
            return image
        image = Image.fromarray(image)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def overlay(image, label_map, palette, alpha: float = 0.5, ignore_index: int = 255) -> np.ndarray:
    """Blend the colour mask over the image with weight `alpha`; ignored pixels stay as is."""
    return colorize_and_overlay(image, label_map, palette, alpha, ignore_index)[1]


def colorize_and_overlay(image, label_map, palette, alpha: float = 0.5, ignore_index: int = 255):
    """(colorize(...), overlay(...)) from one lookup of the colours."""
    return _draw(image, label_map, palette, ignore_index, alpha)


def _blend(image: np.ndarray, colours: np.ndarray, known: np.ndarray, alpha: float) -> np.ndarray:
    # rint((1 - alpha) * pixel + alpha * colour) in float64 for every pair of uint8 values, looked up:
    # the same numbers as computing it per pixel, several times faster.
    table = _blend_table(float(alpha))
    blended = table.take((image.astype(np.uint16) << 8) | colours)
    return np.where(known[..., None], blended, image)


@functools.lru_cache(maxsize=8)
def _blend_table(alpha: float) -> np.ndarray:
    values = np.arange(256, dtype=np.float64)
    return np.rint((1.0 - alpha) * values[:, None] + alpha * values[None, :]).astype(np.uint8).ravel()


def error_map(image, ground_truth, prediction, ignore_index: int = 255) -> np.ndarray:
    """(H, W, 3) uint8: wrong pixels red, pixels not scored (ground truth = ignore index) grey,
    correct ones the image darkened (to CORRECT_DIM), so errors stand out where they are."""
    image, gt, pred = as_rgb(image), np.asarray(ground_truth), np.asarray(prediction)
    if not (image.shape[:2] == gt.shape == pred.shape):
        raise SegtuneError(f"image {image.shape[:2]}, ground truth {gt.shape} and prediction {pred.shape} "
                           "(H, W) must match")
    ignored = gt == ignore_index
    out = np.rint(image * CORRECT_DIM).astype(np.uint8)
    out[(gt != pred) & ~ignored] = ERROR_COLOR
    out[ignored] = UNSCORED_COLOR
    return out


def save_label_png(label_map: np.ndarray, path, palette: np.ndarray | None = None) -> None:
    """Write class ids as pixel values, readable back exactly with np.array(Image.open(path)).

    Up to 256 classes (ids 0..255, 255 usually "ignore"): a palette ('P') PNG coloured with
    `palette` (generated if None) so it also looks right in an image viewer. More classes:
    a 16-bit grayscale PNG (ids 0..65535; use an ignore index other than 255 then).
    """
    label_map = np.asarray(label_map)
    lowest, highest = label_map.min(initial=0), label_map.max(initial=0)
    if lowest < 0 or highest > 65535:
        raise ValueError(f"class ids must be 0..65535 to fit a PNG, got {lowest}..{highest}")
    if highest > 255 or (palette is not None and len(palette) > 256):
        Image.fromarray(label_map.astype(np.uint16)).save(path)
        return
    colors = np.zeros((256, 3), dtype=np.uint8)  # ids with no class colour (e.g. 255): black
    class_colors = generated_palette(255) if palette is None else np.asarray(palette, np.uint8)
    colors[: len(class_colors)] = class_colors
    image = Image.fromarray(label_map.astype(np.uint8))
    image.putpalette(colors.tobytes())  # turns the 'L' image into 'P', indices unchanged
    image.save(path)
