"""`segtune serve` with a multi-band model: TIFF (or 16-bit / grey PNG) uploads of the model's band count,
segmented as `segtune predict` segments rasters (inference/bands.py: windows at the raster's own
resolution, overlap averaging), behind the same limits, batcher and answers as an RGB model.

An upload is decoded in memory: a TIFF by rasterio (GDAL's GTiff driver only, from a MemoryFile: no other
format, no path), anything else by Pillow; its pixel count is checked from the header before any pixel
is read. A wrong band count or pixel type is a 422 with one line; a request's `mode` or `tta` does not
apply to a band model and is refused the same way.
"""

from __future__ import annotations

import io

import numpy as np

from ..data.rasters import DTYPES, stretched_rgb
from ..inference.bands import ArrayRaster, BandSegmenter
from .uploads import UploadError, _sniff, decode_image


class BandUpload:
    """A decoded upload: (C, H, W) stored values of the model's bands and where they hold data."""

    def __init__(self, pixels: np.ndarray, valid: np.ndarray):
        self.pixels, self.valid = pixels, valid
        self.height, self.width = valid.shape

    @property
    def preview(self):
        """The first three bands (or the one band), each stretched between its 2nd and 98th percentiles: what
        the overlay answer is drawn on."""
        return stretched_rgb(self.pixels, self.valid)


def _tiff(data: bytes, max_pixels: int):
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile

    try:
        with MemoryFile(data) as memory, memory.open(driver="GTiff") as src:
            if src.width * src.height > max_pixels:
                raise UploadError(413, f"the image is {src.width} x {src.height} = {src.width * src.height / 1e6:.1f} "
                                  f"megapixels; the limit is {max_pixels / 1e6:g}")
            return src.read(), src.nodata, src.dtypes[0]
    except RasterioError as e:
        raise UploadError(400, f"cannot decode the TIFF ({str(e).splitlines()[0][:160]})") from None


def decode_bands(data: bytes, max_pixels: int, settings: dict) -> BandUpload:
    """The upload as the model's bands. 400: empty or undecodable; 415: not an image; 413: over the pixel
    limit; 422: another band count or a pixel type segtune does not read."""
    from ..data.rasters import valid_pixels

    if not data:
        raise UploadError(400, "empty upload: send the image bytes")
    if (what := _sniff(data)) is not None:
        raise UploadError(415, f"this is {what}, not an image; send a TIFF of {settings['count']} bands")
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
        values, nodata, dtype = _tiff(data, max_pixels)
    else:  # a PNG (16-bit, grey) ... through Pillow's checked decoding, as photos are
        from PIL import Image

        image = Image.open(io.BytesIO(data))
        values = np.asarray(decode_image(data, max_pixels) if image.mode not in ("I;16", "I", "F", "L") else
                            _decoded(image, max_pixels))
        values = values[None] if values.ndim == 2 else np.moveaxis(values, -1, 0)
        nodata, dtype = None, values.dtype.name
    if dtype not in DTYPES:
        raise UploadError(422, f"pixel type {dtype}: the model reads {', '.join(DTYPES)}")
    if values.shape[0] != settings["count"]:
        raise UploadError(422, f"the upload has {values.shape[0]} band(s); the model takes images of "
                          f"{settings['count']} (bands {','.join(map(str, settings['bands']))})")
    pixels = values[[b - 1 for b in settings["bands"]]].astype(np.float32)
    return BandUpload(pixels, valid_pixels(pixels, nodata if nodata is not None else settings.get("nodata")))


def _decoded(image, max_pixels: int):
    if image.width * image.height > max_pixels:
        raise UploadError(413, f"the image is {image.width} x {image.height}; the limit is {max_pixels / 1e6:g} "
                          "megapixels")
    image.load()
    return image


class BandServing:
    """A BandSegmenter as the server's batcher and routes ask of a Segmenter: `predict(images, dtype)`, its
    labels, runner, device and dtype; `band_settings` marks it (the app decodes uploads with decode_bands)."""

    mode, tta, scale, processor = "slide", False, None, None

    def __init__(self, segmenter: BandSegmenter):
        self.segmenter = segmenter
        self.band_settings = segmenter.settings
        self.labels, self.runner = segmenter.labels, segmenter.runner

    @property
    def device(self):
        return self.segmenter.device

    @property
    def dtype(self):
        return self.runner.dtype

    @property
    def model(self):
        return getattr(self.runner, "model", None)

    def predict(self, images, dtype=None) -> list[np.ndarray]:
        """(H, W) class ids of each upload (255, or 65535, where it holds no data), in `dtype` (a torch dtype)."""
        out = []
        for image in images:
            label_map = self.segmenter(ArrayRaster(image.pixels, image.valid))
            out.append(label_map if dtype is None else label_map.astype(str(dtype).removeprefix("torch.")))
        return out


def check_request(mode, tta) -> None:
    if mode is not None or tta is not None:
        raise UploadError(422, "mode and tta do not apply to a multi-band model (it is segmented in windows at "
                          "the raster's own resolution)")
