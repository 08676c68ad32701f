"""`segtune predict --vector FILE`: the predicted classes as polygons with their names, a tile at a time.

Each output tile's label map is polygonised (`rasterio.features.shapes`, 4-connected, in the raster's
CRS) as soon as it is made, so memory holds one tile's polygons; a region crossing a tile border comes
out as one polygon per tile (GIS "dissolve" by class merges them). Nodata pixels give no polygon.

GeoJSON (.geojson, .json) is written with json, feature by feature, with the CRS named in a `crs` member
(RFC 7946 readers assume WGS 84; GDAL and QGIS read the member). GeoPackage (.gpkg) is written through
pyogrio, when it is installed. Each raster is a layer named after it (GeoJSON: one file per raster).
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np

from ..errors import SegtuneError

FORMATS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
logging.getLogger("pyogrio").setLevel(logging.WARNING)  # not a line per layer written


def check_vector_path(path) -> str:
    """The driver for `--vector FILE`, or one line saying what is missing."""
    suffix = Path(str(path)).suffix.lower()
    if suffix not in FORMATS:
        raise SegtuneError(f"--vector {path}: give a .gpkg or .geojson file")
    if FORMATS[suffix] == "GPKG":
        try:
            import pyogrio  # noqa: F401
        except ImportError:
            raise SegtuneError(f"--vector {path}: GeoPackage needs pyogrio: pip install pyogrio "
                               "(or give a .geojson file)") from None
    return FORMATS[suffix]


def _ring_wkb(ring) -> bytes:
    points = np.asarray(ring, np.float64).reshape(-1, 2)
    return struct.pack("<I", len(points)) + points.tobytes()


def polygon_wkb(coordinates) -> bytes:
    """A GeoJSON polygon's rings as little-endian WKB (what pyogrio writes)."""
    return struct.pack("<BII", 1, 3, len(coordinates)) + b"".join(_ring_wkb(r) for r in coordinates)


class VectorWriter:
    """Polygons of each tile's classes into one layer (`add`), then `close`. Writes into a temporary file
    renamed at `close`, so an interrupted run leaves no half-written layer under the final name."""

    def __init__(self, path: Path, layer: str, crs_wkt: str | None, class_names: list[str], nodata: int):
        self.path, self.layer, self.crs, self.names, self.nodata = Path(path), layer, crs_wkt, class_names, nodata
        self.driver = check_vector_path(self.path)
        self.count = 0
        self.partial = self.path.with_name(self.path.name + ".partial" + self.path.suffix)
        if self.driver == "GeoJSON":
            self.partial.unlink(missing_ok=True)
            self.file = open(self.partial, "w")
            header = {"type": "FeatureCollection", "name": layer}
            if crs_wkt:
                header["crs"] = {"type": "name", "properties": {"name": _crs_name(crs_wkt)}}
            self.file.write(json.dumps(header)[:-1] + ', "features": [\n')
        elif not self.path.exists():
            self.partial.unlink(missing_ok=True)
        else:  # another raster's layer is in it already: add this one beside it
            self.partial.unlink(missing_ok=True)
            self.path.replace(self.partial)

    def add(self, label_map: np.ndarray, transform) -> None:
        from rasterio.features import shapes

        geometries, ids = [], []
        for geometry, value in shapes(label_map, mask=label_map != self.nodata, connectivity=4, transform=transform):
            geometries.append(geometry)
            ids.append(int(value))
        if not geometries:
            return
        if self.driver == "GeoJSON":
            for geometry, class_id in zip(geometries, ids):
                feature = {"type": "Feature", "properties": {"class_id": class_id, "class": self._name(class_id)},
                           "geometry": geometry}
                self.file.write(("" if self.count == 0 else ",\n") + json.dumps(feature))
                self.count += 1
            return
        import pyogrio.raw

        wkb = np.array([polygon_wkb(g["coordinates"]) for g in geometries], dtype=object)
        fields = [np.asarray(ids, np.int32), np.asarray([self._name(i) for i in ids], dtype=object)]
        pyogrio.raw.write(self.partial, wkb, fields, ["class_id", "class"], layer=self.layer, driver="GPKG",
                          geometry_type="Polygon", crs=self.crs, append=self.partial.exists())
        self.count += len(ids)

    def _name(self, class_id: int) -> str:
        return self.names[class_id] if 0 <= class_id < len(self.names) else str(class_id)

    def close(self) -> None:
        if self.driver == "GeoJSON":
            self.file.write("\n]}\n")
            self.file.close()
        elif not self.partial.exists():  # no polygon at all: an empty layer, so the file still says so
            import pyogrio.raw

            pyogrio.raw.write(self.partial, np.array([], dtype=object), [np.array([], np.int32), np.array([], object)],
                              ["class_id", "class"], layer=self.layer, driver="GPKG", geometry_type="Polygon",
                              crs=self.crs)
        self.partial.replace(self.path)


def _crs_name(wkt: str) -> str:
    try:
        from rasterio.crs import CRS

        crs = CRS.from_wkt(wkt)
        epsg = crs.to_epsg()
        return f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_string()
    except Exception:  # noqa: BLE001 - an unusual CRS: its WKT, as given
        return wkt
