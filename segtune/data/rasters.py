"""Rasters of any band count, dtype and size: GeoTIFF/TIFF through rasterio (the `segtune[geo]` extra),
16-bit PNG and grey images through Pillow, read a window at a time.

A raster is read as (bands, rows, cols) float32 values as stored (no rescaling: the per-band
normalisation, band_stats.py, is learnt from them) plus a (rows, cols) validity mask: a pixel is
nodata where every chosen band holds the file's nodata value (GDAL's per-dataset reading of it), or
is NaN. Band numbers are 1-based, as GDAL numbers them (`--bands 4,3,2,8`).

Every check of a file against the others (band count, dtype, a band number out of range, a mask on
another grid) raises SegtuneError with one line naming the file, before anything is written.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SegtuneError

TIFF_SUFFIXES = {".tif", ".tiff"}
# read as float32: exact up to 2^24 (every 8- and 16-bit value); larger 32-bit integers and float64 round
DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
GEO_HINT = "pip install 'segtune[geo]' (rasterio)"
PIL_MODES = {"L": (1, "uint8"), "I;16": (1, "uint16"), "I;16L": (1, "uint16"), "I;16B": (1, "uint16"),
             "I;16N": (1, "uint16"), "I": (1, "int32"), "F": (1, "float32"), "RGB": (3, "uint8"),
             "RGBA": (4, "uint8"), "LA": (2, "uint8")}


def rasterio_or_fail(path):
    try:
        import rasterio
    except ImportError:
        raise SegtuneError(f"{path}: reading TIFF rasters needs rasterio: {GEO_HINT}") from None
    return rasterio


def parse_bands(text, option: str = "--bands") -> list[int] | None:
    """'4,3,2,8' -> [4, 3, 2, 8] (1-based); None or '' or 'all' -> None (every band)."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "all")):
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        bands = [int(str(b).strip()) for b in items]
    except ValueError:
        raise SegtuneError(f"{option} {text}: give 1-based band numbers separated by commas, e.g. 4,3,2") from None
    if not bands or min(bands) < 1:
        raise SegtuneError(f"{option} {text}: band numbers start at 1 (GDAL's numbering)")
    if len(set(bands)) != len(bands):
        raise SegtuneError(f"{option} {text}: a band is named twice")
    return bands


@dataclass(frozen=True)
class RasterMeta:
    """What a file's header says: its grid, bands and nodata."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None = None  # WKT
    transform: tuple | None = None  # GDAL's 6 affine coefficients (a, b, c, d, e, f)
    nodata: float | None = None
    georeferenced: bool = False

    def same_grid(self, other: RasterMeta) -> str | None:
        """Why `other` (a mask) is not on this raster's grid, or None."""
        if (self.width, self.height) != (other.width, other.height):
            return f"is {other.width}x{other.height} but its image {self.path.name} is {self.width}x{self.height}"
        if self.crs != other.crs and None not in (self.crs, other.crs):
            return f"has another CRS than its image {self.path.name}"
        if (self.transform is not None and other.transform is not None
                and not np.allclose(self.transform, other.transform, rtol=0, atol=1e-9)):
            return f"has another transform (origin or resolution) than its image {self.path.name}"
        return None


def is_tiff(path) -> bool:
    return Path(str(path)).suffix.lower() in TIFF_SUFFIXES


def raster_meta(path) -> RasterMeta:
    """The header of a TIFF (rasterio) or of any other image (Pillow)."""
    path = Path(path)
    if not path.is_file():
        raise SegtuneError(f"{path}: file not found")
    if is_tiff(path):
        rasterio = rasterio_or_fail(path)
        try:
            with rasterio.open(path) as src:
                dtypes = set(src.dtypes)
                transform = tuple(src.transform)[:6]
                geo = src.crs is not None or not src.transform.is_identity
                return RasterMeta(path, src.width, src.height, src.count, src.dtypes[0] if len(dtypes) == 1 else
                                  "mixed " + "/".join(sorted(dtypes)), src.crs.to_wkt() if src.crs else None,
                                  transform if geo else None, src.nodata, geo)
        except rasterio.errors.RasterioError as e:
            raise SegtuneError(f"{path}: cannot read raster ({str(e).splitlines()[0]})") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            count, dtype = PIL_MODES.get(img.mode, (None, img.mode))
            return RasterMeta(path, img.width, img.height, count or len(img.getbands()), dtype)
    except (UnidentifiedImageError, OSError) as e:
        raise SegtuneError(f"{path}: not an image file, or a format Pillow cannot read ({e})") from None


def check_image_meta(meta: RasterMeta, bands: list[int] | None, first: RasterMeta | None = None) -> None:
    """One line naming the file: an unknown dtype, a band count unlike the first file's, a band out of range."""
    if meta.dtype not in DTYPES:
        raise SegtuneError(f"{meta.path}: pixel type {meta.dtype} is not one segtune reads ({', '.join(DTYPES)})")
    if first is not None and meta.count != first.count:
        raise SegtuneError(f"{meta.path}: {meta.count} bands, but {first.path.name} has {first.count}: "
                           "every image needs the same bands")
    if bands and max(bands) > meta.count:
        raise SegtuneError(f"{meta.path}: --bands {','.join(map(str, bands))} names band {max(bands)}, "
                           f"but the file has {meta.count} band(s)")


def check_mask_meta(image: RasterMeta, mask: RasterMeta) -> None:
    if mask.dtype not in DTYPES or mask.dtype.startswith("float"):
        raise SegtuneError(f"{mask.path}: mask pixel type {mask.dtype}: a mask holds integer class ids")
    problem = image.same_grid(mask)
    if problem:
        raise SegtuneError(f"{mask.path}: mask {problem}")


# ---------------------------------------------------------------- reading windows


class Raster:
    """One file, read a window at a time: `read(y0, y1, x0, x1)` -> ((C, h, w) float32, (h, w) valid).

    TIFFs are read through rasterio, a window each call (one open handle per thread: GDAL handles are
    not thread-safe, and not picklable, so DataLoader workers open their own); other images through
    Pillow, decoded whole once (they are photo-sized)."""

    def __init__(self, path, bands: list[int] | None = None, meta: RasterMeta | None = None):
        self.path = Path(path)
        self.meta = meta or raster_meta(self.path)
        check_image_meta(self.meta, bands)
        self.bands = list(bands) if bands else list(range(1, self.meta.count + 1))
        self.height, self.width = self.meta.height, self.meta.width
        self._local = threading.local()
        self._pixels = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_local"), state.pop("_pixels")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _local=threading.local(), _pixels=None)

    @property
    def count(self) -> int:
        return len(self.bands)

    @property
    def nodata(self):
        return self.meta.nodata

    def _dataset(self):
        src = getattr(self._local, "src", None)
        if src is None or src.closed:
            src = self._local.src = rasterio_or_fail(self.path).open(self.path)
        return src

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        if is_tiff(self.path):
            from rasterio.windows import Window

            try:
                values = self._dataset().read(self.bands, window=Window(x0, y0, x1 - x0, y1 - y0), out_dtype="float32")
            except Exception as e:  # rasterio's errors: a truncated or corrupt block
                first = str(e).splitlines()[0]
                raise SegtuneError(f"{self.path}: cannot read window rows {y0}..{y1} ({first})") from None
        else:
            values = self._whole()[:, y0:y1, x0:x1]
        return values, valid_pixels(values, self.meta.nodata)

    def _whole(self) -> np.ndarray:
        if self._pixels is None:
            from .reading import open_image

            img = open_image(self.path)
            array = np.asarray(img)
            array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
            self._pixels = array[[b - 1 for b in self.bands]].astype(np.float32)
        return self._pixels

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        return self.read(0, self.height, 0, self.width)


def valid_pixels(values: np.ndarray, nodata) -> np.ndarray:
    """(h, w) True where a pixel holds data: not NaN, and not nodata in every band."""
    valid = ~np.isnan(values).all(axis=0) if values.dtype.kind == "f" else np.ones(values.shape[1:], bool)
    if nodata is not None and not np.isnan(nodata):
        valid &= ~(values == np.float32(nodata)).all(axis=0)
    return valid


class MaskRaster:
    """A mask file's class ids, a window at a time: `read(y0, y1, x0, x1)` -> ((h, w) stored values as int64,
    (h, w) True where the mask's own nodata value stands: ignored)."""

    def __init__(self, path, meta: RasterMeta | None = None):
        self.path = Path(path)
        self.meta = meta or raster_meta(self.path)
        self._local = threading.local()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_local")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _local=threading.local())

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        if is_tiff(self.path):
            from rasterio.windows import Window

            src = getattr(self._local, "src", None)
            if src is None or src.closed:
                src = self._local.src = rasterio_or_fail(self.path).open(self.path)
            values = src.read(1, window=Window(x0, y0, x1 - x0, y1 - y0)).astype(np.int64)
        else:
            from .reading import mask_array, open_image

            values = mask_array(open_image(self.path, "mask"))[y0:y1, x0:x1].astype(np.int64)
            if values.ndim == 3:
                values = values[..., 0]
        nodata = self.meta.nodata
        missing = values == int(nodata) if nodata is not None and not np.isnan(nodata) else np.zeros(values.shape, bool)
        return values, missing


def stretched_rgb(pixels: np.ndarray, valid: np.ndarray):
    """A PIL RGB picture of (C, h, w) band values: the first three bands (or the one band), each stretched
    between its 2nd and 98th percentiles over the valid pixels; nodata black. For inspect.png and overlays."""
    from PIL import Image

    bands = pixels[:3] if pixels.shape[0] >= 3 else pixels[:1].repeat(3, 0)
    rgb = np.zeros((*valid.shape, 3), np.uint8)
    for c, band in enumerate(bands):
        values = band[valid]
        lo, hi = np.percentile(values, (2, 98)) if values.size else (0.0, 1.0)
        rgb[..., c] = np.clip((band - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
    rgb[~valid] = 0
    return Image.fromarray(rgb)
