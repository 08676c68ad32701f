"""Peak memory and time of `segtune predict` on a 2,000 and a 16,000 pixel square 4-band uint16 GeoTIFF, in
one run: memory must not grow with the raster (issue 27's target: peak RSS at 16k / at 2k <= 1.3).

    python -m benchmarks.raster_memory [--sizes 2000 16000] [--model tiny|mit-b0] [--no-write]

Each size is a fresh process (`segtune.cli.main(["predict", ...])`), so its peak resident memory
(ru_maxrss) is its own. The rasters are made here, a block at a time (tiled, deflate): smooth 16-bit
bands with a grid of squares and a nodata margin; the 16k one is 256 megapixels, 2 GB of band values
uncompressed, more than the process ever holds. The model is a SegFormer built for 4 channels with
random weights (`tiny`: the tests' tiny encoder, so the run takes minutes; `mit-b0`: the real encoder,
slower), its band settings as `segtune train` writes them; windows of 512, stride 341. Each output is
checked: a tiled GeoTIFF with the input's CRS and transform, nodata where the input has none.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, command, describe, machine, markdown_table, save_result
from benchmarks.predict_memory import run_side  # a fresh `segtune predict` process: its peak RSS

TARGET_RATIO = 1.3
def make_model(path: Path, kind: str, bands: int = 4) -> Path:
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil

    from segtune.data.labels import LabelSet
    from segtune.models.channels import with_channels

    torch.manual_seed(0)
    names = ["background", "building", "water"]
    sizes = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
                 decoder_hidden_size=32) if kind == "tiny" else {}
    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=len(names), **sizes))
    with_channels(model, bands, [0, 1, 2], pretrained=False)
    model.save_pretrained(path)
    settings = {"bands": list(range(1, bands + 1)), "count": bands, "dtype": "uint16", "nodata": 0.0,
                "mean": [2000.0] * bands, "std": [800.0] * bands, "clip": [None] * bands, "crop_size": 512}
    processor = SegformerImageProcessorPil(do_resize=False, do_rescale=False, image_mean=settings["mean"],
                                           image_std=settings["std"])
    processor.segtune_bands = settings
    processor.save_pretrained(path)
    LabelSet.from_names(names).to_json(path / "labels.json")
    return path


def make_raster(path: Path, side: int, bands: int = 4, block: int = 1024) -> Path:
    """A `side` x `side` 4-band uint16 GeoTIFF (UTM 18N, 0.5 m pixels) written a block at a time."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    profile = dict(driver="GTiff", width=side, height=side, count=bands, dtype="uint16", crs="EPSG:32618",
                   transform=Affine(0.5, 0, 500000.0, 0, -0.5, 4100000.0), nodata=0, tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, side, block):
            for x in range(0, side, block):
                h, w = min(block, side - y), min(block, side - x)
                yy, xx = np.mgrid[y:y + h, x:x + w]
                squares = ((yy // 300) + (xx // 300)) % 2
                values = np.stack([1000 + 2000 * squares + (yy + xx * (b + 1)) % 500 for b in range(bands)])
                values[:, xx < 100] = 0  # a nodata margin on the left
                dst.write(values.astype(np.uint16), window=Window(x, y, w, h))
    return path


def check_output(raster: Path, out: Path) -> dict:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(raster) as src, rasterio.open(out / f"{raster.stem}.tif") as dst:
        same = dst.crs == src.crs and dst.transform == src.transform and (dst.width, dst.height) == (src.width,
                                                                                                   src.height)
        corner = dst.read(1, window=Window(0, 0, 200, 200))
        return {"same_grid": bool(same), "tiled": bool(dst.profile.get("tiled")),
                "compression": dst.compression.name if dst.compression else None,
                "nodata_margin_kept": bool((corner[:, :100] == dst.nodata).all()
                                           and (corner[:, 100:] != dst.nodata).all()),
                "output_mib": round((out / f"{raster.stem}.tif").stat().st_size / 2**20, 1)}


def measure(args, tmp: Path) -> list[dict]:
    """One row per size: a fresh `segtune predict` process on a raster made for it (then deleted)."""
    model = make_model(tmp / "model", args.model)
    rows = []
    for side in args.sizes:
        raster = make_raster(tmp / f"scene{side}.tif", side)
        result = run_side(REPO, raster, model, tmp / f"out{side}")
        rows.append({"side": side, "megapixels": round(side * side / 1e6, 1), "model": args.model,
                     "peak_rss_mib": round(result["peak_rss_mib"]), "seconds": round(result["seconds"], 1),
                     "megapixels_per_s": round(side * side / 1e6 / result["seconds"], 2),
                     **check_output(raster, tmp / f"out{side}")})
        print(json.dumps(rows[-1]), file=sys.stderr)
        raster.unlink()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 16000])
    parser.add_argument("--model", choices=["tiny", "mit-b0"], default="tiny")
    parser.add_argument("--no-write", action="store_true")
    args, started, info = parser.parse_args(argv), time.perf_counter(), machine()
    print(f"machine: {describe(info)}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args, Path(tmp))
    table = markdown_table(rows)
    print(table)
    small, large = min(rows, key=lambda r: r["side"]), max(rows, key=lambda r: r["side"])
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    print(f"\npeak RSS {large['side']} / {small['side']}: {ratio:.3f} (target <= {TARGET_RATIO})")
    summary = [{"what": f"predict peak RSS MiB, {large['side']}^2 vs {small['side']}^2 4-band GeoTIFF",
                "segtune": large["peak_rss_mib"], "baseline": small["peak_rss_mib"], "ratio": round(ratio, 3),
                "target": f"<= {TARGET_RATIO}", "met": ratio <= TARGET_RATIO}]
    save_result("raster_memory", {"command": command(), "machine": info, "rows": rows, "ratio": ratio,
                                  "summary": summary, "table_md": table,
                                  "wall_s": round(time.perf_counter() - started, 1)}, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
