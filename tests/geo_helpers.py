"""Synthetic GeoTIFFs for the multi-band tests: a projected CRS, a transform, nodata (rasterio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CRS = "EPSG:32618"  # UTM 18N, as the RGB.byte.tif sample
ORIGIN = (500000.0, 4100000.0)
RESOLUTION = 10.0


def transform(origin=ORIGIN, resolution=RESOLUTION):
    from affine import Affine

    return Affine(resolution, 0.0, origin[0], 0.0, -resolution, origin[1])  # north up


def write_geotiff(path: Path, array: np.ndarray, nodata=None, crs=CRS, origin=ORIGIN, resolution=RESOLUTION,
                  **profile) -> Path:
    """(C, H, W) or (H, W) `array` as a GeoTIFF of its dtype."""
    import rasterio

    array = np.asarray(array)
    array = array[None] if array.ndim == 2 else array
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype=array.dtype, crs=crs, transform=transform(origin, resolution), nodata=nodata,
                       **profile) as dst:
        dst.write(array)
    return path


def signal_pair(seed: int, size=(48, 64), bands: int = 4, signal_band: int = 4, nodata_rows: int = 0):
    """(C, H, W) uint16 image and (H, W) uint8 mask: class 1 where band `signal_band` is high (rectangles),
    0 elsewhere; the other bands are noise over the whole 16-bit range. The first `nodata_rows` rows are
    nodata (0 in every band) and 255 in the mask."""
    rng = np.random.default_rng(seed)
    h, w = size
    mask = np.zeros((h, w), np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
        mask[y:y + rng.integers(8, 16), x:x + rng.integers(8, 16)] = 1
    image = rng.integers(1, 60000, (bands, h, w)).astype(np.uint16)
    image[signal_band - 1] = np.where(mask == 1, 40000, 8000) + rng.integers(0, 2000, (h, w))
    if nodata_rows:
        image[:, :nodata_rows] = 0
        mask[:nodata_rows] = 255
    return image, mask


def make_geo_dataset(root: Path, n: int = 6, size=(48, 64), bands: int = 4, signal_band: int = 4,
                     nodata_rows: int = 0) -> Path:
    """images/ + annotations/ of `n` GeoTIFF pairs (each its own origin), nodata 0 in the images."""
    for i in range(n):
        image, mask = signal_pair(i, size, bands, signal_band, nodata_rows)
        origin = (ORIGIN[0] + 1000 * i, ORIGIN[1])
        write_geotiff(root / "images" / f"tile_{i:02d}.tif", image, nodata=0, origin=origin)
        write_geotiff(root / "annotations" / f"tile_{i:02d}.tif", mask, nodata=255, origin=origin)
    return root
