"""`segtune inspect` on multi-band rasters: per-band statistics (those `train` would learn: band_stats.py),
the CRS, the resolution and the share of nodata pixels, read a block at a time."""

from __future__ import annotations

from .band_stats import band_statistics
from .rasters import raster_meta


def raster_report(data, progress=None) -> dict:
    """inspect.json's "rasters": the band layout, each band's statistics over the training split, the CRSs,
    resolutions and nodata share over every raster."""
    layout = data.band_layout
    samples = list(data.train) + list(data.val)
    metas = [raster_meta(s.image) for s in samples]
    crss = sorted({m.crs or "none" for m in metas})
    resolutions = sorted({(abs(m.transform[0]), abs(m.transform[4])) if m.transform else (1.0, 1.0) for m in metas})
    stats = band_statistics([s.raster() for s in (data.train or data.val)], layout.dtype, progress=progress)
    pixels = sum(m.width * m.height for m in metas[:len(data.train or data.val)])
    valid = stats["valid_pixels"][0]
    return {
        **layout.to_json(),
        "crs": [_crs_name(c) for c in crss],
        "resolution": [list(r) for r in resolutions],
        "nodata_share": round(1 - valid / max(1, pixels), 6),
        "statistics_of": "train" if data.train else "val",
        "per_band": [{"band": band, "mean": stats["mean"][i], "std": stats["std"][i], "min": stats["min"][i],
                      "max": stats["max"][i], "clip": stats["clip"][i], "normalisation": stats["why"][i]}
                     for i, band in enumerate(layout.bands)],
    }


def _crs_name(wkt: str) -> str:
    if wkt == "none":
        return "none (not georeferenced)"
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


def print_raster_report(report: dict) -> None:
    print(f"\nrasters: {report['count']} band(s) of {report['dtype']}, using bands "
          f"{','.join(map(str, report['bands']))}; CRS {', '.join(report['crs'])}; resolution "
          f"{', '.join(f'{x:g} x {y:g}' for x, y in report['resolution'])}; nodata {report['nodata_share']:.1%} "
          f"of the {report['statistics_of']} pixels (value {report['nodata']})")
    print(f"  {'band':>4}  {'mean':>10}  {'std':>10}  {'min':>10}  {'max':>10}  clip")
    for b in report["per_band"]:
        clip = f"{b['clip'][0]:g}..{b['clip'][1]:g}" if b["clip"] else "none"
        print(f"  {b['band']:>4}  {b['mean']:>10.4g}  {b['std']:>10.4g}  {b['min']:>10.4g}  {b['max']:>10.4g}  {clip}")
