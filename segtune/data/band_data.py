"""Datasets of multi-band rasters: when a dataset is read band by band, its pairs as `RasterSample`s,
and the checks that run over every file's header before anything is trained or written.

A dataset is read band by band (instead of as 8-bit RGB pictures, reading.py) when `--bands` is given,
or when its first image is a TIFF that an RGB picture cannot hold: georeferenced, more than 4 bands,
or not 8-bit. Plain photos, grey and 16-bit PNGs included, keep the RGB path unless `--bands` asks
(`--bands 1` reads a grey or 16-bit PNG as one band of its own values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SegtuneError
from .pairs import Sample
from .rasters import (GEO_HINT, MaskRaster, Raster, RasterMeta, check_image_meta, check_mask_meta, is_tiff,
                      raster_meta, stretched_rgb)


@dataclass
class BandImage:
    """(C, h, w) float32 values as stored, and where they hold data: what a RasterSample reads."""

    pixels: np.ndarray
    valid: np.ndarray

    @property
    def height(self) -> int:
        return self.pixels.shape[1]

    @property
    def width(self) -> int:
        return self.pixels.shape[2]

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    mode = "bands"


@dataclass(frozen=True)
class RasterSample(Sample):
    """An image raster and its mask raster (or no mask: a raster to predict), read band by band."""

    bands: tuple | None = None

    def raster(self) -> Raster:
        return Raster(self.image, list(self.bands) if self.bands else None)

    def mask_raster(self) -> MaskRaster:
        return MaskRaster(self.mask)

    def read(self, rules, window=None) -> tuple[BandImage, np.ndarray]:
        """The image (or a (y0, y1, x0, x1) window of it) and its class ids; nodata pixels of the image and
        the mask's own nodata value become the ignore index, so neither the loss nor the metric sees them."""
        raster = self.raster()
        y0, y1, x0, x1 = window or (0, raster.height, 0, raster.width)
        pixels, valid = raster.read(y0, y1, x0, x1)
        return BandImage(pixels, valid), self._mask(rules, (y0, y1, x0, x1), valid)

    def read_mask(self, rules, window=None) -> np.ndarray:
        if window is None:
            meta = raster_meta(self.image)
            window = (0, meta.height, 0, meta.width)
        valid = self.raster().read(*window)[1]
        return self._mask(rules, window, valid)

    def preview(self, rules, side: int = 1024):
        """A window (at most side x side, from the centre) as a PIL RGB picture, each of the first three bands
        (or the one band) stretched between its 2nd and 98th percentiles, and its class ids: inspect.png."""
        meta = raster_meta(self.image)
        h, w = min(side, meta.height), min(side, meta.width)
        y0, x0 = (meta.height - h) // 2, (meta.width - w) // 2
        image, mask = self.read(rules, (y0, y0 + h, x0, x0 + w))
        return stretched_rgb(image.pixels, image.valid), mask

    def scan(self, rules, block: int = 1024):
        """What checks.scan learns of a pair, a block at a time (a raster may not fit in memory):
        (problem or None, (w, h), per-class pixel counts, ignored pixels, None). Stored-value facts for the
        label-space checks are not gathered for rasters."""
        try:
            meta = raster_meta(self.image)
            counts, ignored = np.zeros(0, np.int64), 0
            for y in range(0, meta.height, block):
                for x in range(0, meta.width, block):
                    ids = self.read_mask(rules, (y, min(y + block, meta.height), x, min(x + block, meta.width)))
                    skipped = ids == rules.ignore_index
                    values = ids[~skipped]
                    if values.size and values.min() < 0:
                        return f"{self.mask_name}: mask has negative values", None, None, 0, None
                    found = np.bincount(values.ravel())
                    n = max(len(counts), len(found))
                    counts = np.pad(counts, (0, n - len(counts))) + np.pad(found, (0, n - len(found)))
                    ignored += int(skipped.sum())
        except SegtuneError as e:
            return str(e), None, None, 0, None
        return None, (meta.width, meta.height), counts, ignored, None

    def _mask(self, rules, window, valid: np.ndarray) -> np.ndarray:
        values, missing = self.mask_raster().read(*window)
        ids = rules.apply(values, self.mask)
        ids[missing | ~valid] = rules.ignore_index
        return ids


def wants_bands(samples: list, bands) -> bool:
    """Band by band: --bands given, or a first image that is a georeferenced, many-band or not-8-bit TIFF."""
    if bands:
        return True
    if not samples or not hasattr(samples[0], "image") or not is_tiff(samples[0].image):
        return False
    import importlib.util

    if importlib.util.find_spec("rasterio") is None:  # the base install: TIFFs Pillow reads keep the RGB path
        from PIL import Image

        try:
            with Image.open(samples[0].image) as img:
                img.load()
            return False
        except Exception:  # noqa: BLE001 - whatever Pillow refuses (many bands, 16-bit RGB ...): rasterio reads it
            raise SegtuneError(f"{samples[0].image}: a raster Pillow cannot read: reading it needs rasterio: "
                               f"{GEO_HINT}") from None
    meta = raster_meta(samples[0].image)
    return meta.georeferenced or meta.count > 4 or meta.dtype != "uint8"


@dataclass(frozen=True)
class BandLayout:
    """What every image of a band dataset shares: its band count (in the file), the chosen bands, the
    pixel type and the nodata value of the first image."""

    count: int
    bands: tuple  # 1-based, in the model's channel order
    dtype: str
    nodata: float | None

    def to_json(self) -> dict:
        return {"count": self.count, "bands": list(self.bands), "dtype": self.dtype, "nodata": self.nodata}


def check_band_samples(samples: list, bands: list[int] | None, first: RasterMeta | None = None) -> RasterMeta | None:
    """Every header, one line naming the first bad file: dtypes, band counts, band numbers, mask grids."""
    for sample in samples:
        if not hasattr(sample, "image"):
            raise SegtuneError(f"{sample.name}: multi-band data is read from files, not from a `datasets` table")
        meta = raster_meta(sample.image)
        check_image_meta(meta, bands, first)
        first = first or meta
        if sample.mask is not None:
            if hasattr(sample.mask, "draw"):
                raise SegtuneError(f"{sample.mask_name}: multi-band data needs mask rasters, not annotations")
            check_mask_meta(meta, raster_meta(sample.mask))
    return first


def as_band_data(data, bands: list[int] | None) -> BandLayout:
    """Checks every pair of `data` (a SegmentationData) and turns them into RasterSamples, in place."""
    first = check_band_samples(list(data.train) + list(data.val), bands)
    if first is None:
        raise SegtuneError(f"{data.source}: no images found")
    chosen = tuple(bands) if bands else tuple(range(1, first.count + 1))
    for split in ("train", "val"):
        setattr(data, split, [RasterSample(s.image, s.mask, chosen) for s in getattr(data, split)])
    if data.unsplit is not None:
        pairs, val_split, seed = data.unsplit
        data.unsplit = ([RasterSample(s.image, s.mask, chosen) for s in pairs], val_split, seed)
    return BandLayout(first.count, chosen, first.dtype, first.nodata)
