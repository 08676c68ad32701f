"""`segtune predict` with a multi-band model: each raster's label map as a GeoTIFF, made a tile at a time.

For each input raster, OUT/<name>.tif: one band of class ids (uint8, or uint16 past 254 classes), tiled
(256 x 256 blocks) and deflate-compressed, with the input's CRS, transform and a nodata value (255 or
65535) where the input had none, and the class colours as its colour table; `--probabilities` adds
OUT/<name>_probabilities.tif, a uint8 round(p x 255) band per class (named after it); `--vector FILE`
polygonises the classes (vectors.py). Windows are read lazily and each output tile is written as soon
as it is made (inference/bands.py), so memory does not grow with the raster
(benchmarks/raster_memory.py). Files are written under a temporary name and renamed when complete:
a run stopped half-way leaves no half-written raster under the final name.

Under torchrun or `accelerate launch` the tiles of each raster are split between the processes
(tile t goes to rank t % N); each writes its tiles into a part file of its own, and rank 0 copies them
into the one GeoTIFF, equal to a single process's (each tile is computed the same way wherever it runs).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from ..data.rasters import Raster, check_image_meta, raster_meta, rasterio_or_fail
from ..errors import SegtuneError
from ..inference.bands import BandSegmenter
from .inputs import collect_images
from .ranks import Processes, read_records, record_key
from .vectors import VectorWriter, check_vector_path

BLOCK = 256  # GeoTIFF block side
GDAL_CACHE_MB = 128


def _profile(meta, count: int, dtype, nodata) -> dict:
    from rasterio.transform import Affine

    return dict(driver="GTiff", width=meta.width, height=meta.height, count=count, dtype=np.dtype(dtype).name,
                crs=meta.crs, transform=Affine(*meta.transform) if meta.transform else None, nodata=nodata,
                tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate",
                BIGTIFF="IF_SAFER", SPARSE_OK=True)


def check_raster_input(path: Path, settings: dict):
    """The input's header against what the model was trained on: one line naming the file."""
    meta = raster_meta(path)
    check_image_meta(meta, None)  # its pixel type; its bands are the model's, below
    if meta.count != settings["count"]:
        raise SegtuneError(f"{path}: {meta.count} bands, but the model was trained on files of {settings['count']} "
                           f"(bands {','.join(map(str, settings['bands']))})")
    return meta


def _window_counts(segmenter: BandSegmenter, raster, boxes) -> list[int]:
    """How many slide windows start in each tile: the progress bar counts windows, each once."""
    from ..inference.geometry import axis_windows

    def starts(size, lo, hi):
        return sum(lo <= a < hi for a, _ in axis_windows(size, segmenter.crop_size, segmenter.stride))

    return [starts(raster.height, y0, y1) * starts(raster.width, x0, x1) for y0, y1, x0, x1 in boxes]


def predict_raster(segmenter: BandSegmenter, path: Path, out: Path, *, probabilities: bool = False,
                   vector: Path | None = None, progress: bool = True, group: Processes | None = None) -> dict:
    """Writes `out` (and its probabilities, and the vector layer); returns the predictions.jsonl record."""
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform
    from tqdm.auto import tqdm

    rasterio = rasterio_or_fail(path)
    group = group or Processes()
    meta = check_raster_input(path, segmenter.settings)
    raster = Raster(path, segmenter.settings["bands"], meta)
    boxes = segmenter.tile_boxes(raster.height, raster.width)
    mine = list(range(group.rank, len(boxes), group.size))
    names = segmenter.labels.names
    several = group.size > 1
    outputs = {"labels": out}
    if probabilities:
        outputs["probabilities"] = out.with_name(out.stem + "_probabilities.tif")
    parts = {key: _partial(p, group.rank if several else None) for key, p in outputs.items()}
    profiles = {"labels": _profile(meta, 1, segmenter.label_dtype, segmenter.nodata),
                "probabilities": _profile(meta, len(names), np.uint8, None)}
    counts = np.zeros(len(names), np.int64)
    bar = tqdm(total=sum(_window_counts(segmenter, raster, [boxes[i] for i in mine])), unit="window",
               desc=f"{path.name}" + (f" (rank {group.rank} of {group.size})" if several else ""),
               disable=not progress or group.rank != 0, leave=False, dynamic_ncols=True)
    files = {key: rasterio.open(parts[key], "w", **profiles[key]) for key in outputs}
    try:
        for box, label_map, probs in segmenter.tiles(raster, probabilities, boxes=[boxes[i] for i in mine]):
            y0, y1, x0, x1 = box
            window = Window(x0, y0, x1 - x0, y1 - y0)
            files["labels"].write(label_map, 1, window=window)
            if probabilities:
                quantised = np.rint(probs * 255).astype(np.uint8)
                quantised[:, label_map == segmenter.nodata] = 0  # no data, no score
                files["probabilities"].write(quantised, window=window)
            counts += np.bincount(label_map[label_map != segmenter.nodata].ravel(), minlength=len(names))[:len(names)]
            bar.update(_window_counts(segmenter, raster, [box])[0])
    finally:
        for f in files.values():
            f.close()
        bar.close()
    if several:  # rank 0 gathers every rank's tiles into the one file
        counts = _merge_parts(group, outputs, profiles, boxes, counts)
    if group.rank == 0:
        for key, target in outputs.items():  # complete: under the final name
            _describe(_partial(target), key, segmenter)
            os.replace(_partial(target), target)
        if vector is not None:
            _polygonise(out, vector, path.stem, meta, segmenter, window_transform, rasterio)
    total = int(counts.sum())
    record = {"image": str(path), "label_map": str(out), "size": [raster.width, raster.height], "mode": "slide",
              "tiles": len(boxes), "crs": meta.crs, "transform": list(meta.transform) if meta.transform else None,
              "class_share": {names[i]: round(int(c) / total, 6) for i, c in enumerate(counts) if c and total}}
    if probabilities:
        record["probabilities"] = str(outputs["probabilities"])
    if vector is not None:
        record["vector"] = str(vector)
    return record


def _partial(path: Path, rank: int | None = None) -> Path:
    """Where `path` is written until complete (a rank's part of it, under several processes)."""
    return path.with_name(path.name + (f".rank{rank}" if rank is not None else "") + ".partial")


def _merge_parts(group: Processes, outputs: dict, profiles: dict, boxes: list, counts: np.ndarray) -> np.ndarray:
    """Every rank's part files -> OUT/<name>.tif.partial on rank 0 (tile t from rank t % N); the class counts
    summed over the ranks. Part files are removed."""
    import rasterio
    import torch
    from rasterio.windows import Window

    group.barrier()
    total = torch.from_numpy(counts.copy())
    torch.distributed.all_reduce(total)
    if group.rank == 0:
        for key, target in outputs.items():
            merged = _partial(target)
            sources = [rasterio.open(_partial(target, r)) for r in range(group.size)]
            try:
                with rasterio.open(merged, "w", **profiles[key]) as dst:
                    for t, (y0, y1, x0, x1) in enumerate(boxes):
                        window = Window(x0, y0, x1 - x0, y1 - y0)
                        dst.write(sources[t % group.size].read(window=window), window=window)
            finally:
                for src in sources:
                    src.close()
            for r in range(group.size):
                _partial(target, r).unlink(missing_ok=True)
    group.barrier()
    return total.numpy()


def _describe(path: Path, key: str, segmenter: BandSegmenter) -> None:
    """Class names and colours into the GeoTIFF: a colour table and names for GIS tools."""
    import rasterio

    names, colors = segmenter.labels.names, segmenter.labels.colors
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(classes=json.dumps(names), segtune_nodata=segmenter.nodata)
        if key == "labels":
            dst.set_band_description(1, "class")
            if segmenter.label_dtype == np.uint8:
                dst.write_colormap(1, {i: tuple(int(v) for v in colors[i % len(colors)]) + (255,)
                                       for i in range(len(names))})
        else:
            for i, name in enumerate(names):
                dst.set_band_description(i + 1, name)


def _polygonise(out: Path, vector: Path, layer: str, meta, segmenter, window_transform, rasterio) -> None:
    """The label GeoTIFF written, read back a tile at a time into the vector layer."""
    from rasterio.windows import Window

    writer = VectorWriter(vector, layer, meta.crs, segmenter.labels.names, segmenter.nodata)
    with rasterio.open(out) as src:
        for y0, y1, x0, x1 in segmenter.tile_boxes(src.height, src.width):
            window = Window(x0, y0, x1 - x0, y1 - y0)
            writer.add(src.read(1, window=window), window_transform(window, src.transform))
    writer.close()


def run_raster_prediction(opts, inputs: list[str]) -> list[dict]:
    """`segtune predict` with a multi-band model: every input raster into OUT (predictions.jsonl, predict.json)."""
    started = time.perf_counter()
    ignored = [name for name, given in (("--tta", opts.tta), ("--save-probs", opts.save_probs),
                                        ("--show-gt", opts.show_gt), ("--mode", opts.mode != "auto")) if given]
    if ignored:
        raise SegtuneError(f"{' '.join(ignored)}: for RGB models; a multi-band model segments rasters in windows at "
                           "their own resolution (--probabilities writes its class scores)")
    images = collect_images(inputs, recursive=opts.recursive)
    output_dir = Path(opts.output_dir)  # checked by run.py: a folder of other files is refused
    vector = Path(opts.vector) if opts.vector else None
    if vector is not None:
        check_vector_path(vector)
    segmenter = BandSegmenter.from_pretrained(opts.model, device=opts.device, dtype=opts.dtype,
                                              trust_remote_code=opts.trust_remote_code, runtime=opts.runtime,
                                              threads=opts.threads, crop_size=opts.crop_size,
                                              stride=opts.stride, batch_size=opts.batch_size)
    for entry in images:  # every header first: a bad file stops the run before anything is written
        check_raster_input(entry.path, segmenter.settings)
    group = Processes()
    if group.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        if vector is not None and vector.exists():
            vector.unlink()  # this run's layers only
    group.barrier()
    records, done = [], {} if opts.overwrite else read_records(output_dir / "predictions.jsonl")
    # GDAL caches the blocks it reads and writes up to 5% of the RAM: bounded lower, so that memory reaches
    # its plateau within the first rasters' tiles rather than growing with a large raster
    from rasterio.errors import NotGeoreferencedWarning

    with rasterio_or_fail(images[0].path).Env(GDAL_CACHEMAX=GDAL_CACHE_MB), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a PNG in, a GeoTIFF without a grid out: as meant
        for entry in images:
            vector_file = vector
            if vector is not None and check_vector_path(vector) == "GeoJSON" and len(images) > 1:
                vector_file = vector.with_name(f"{vector.stem}_{entry.name}{vector.suffix}")  # one layer a file
            out = output_dir / f"{entry.name}.tif"
            out.parent.mkdir(parents=True, exist_ok=True)
            earlier = done.get(record_key(out))
            if earlier is not None and out.is_file() and vector is None and \
                    (not opts.probabilities or Path(earlier.get("probabilities", "")).is_file()):
                records.append(earlier)  # segmented by an earlier run into this folder (--overwrite redoes it)
                continue
            records.append(predict_raster(segmenter, entry.path, out, probabilities=opts.probabilities,
                                          vector=vector_file, group=group))
    if group.rank == 0:
        (output_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        seconds = time.perf_counter() - started
        summary = {"images": len(records), "segmented": len(records), "failed": [], "model": str(opts.model),
                   "runtime": getattr(segmenter.runner, "runtime", "torch"), "mode": "slide",
                   "bands": segmenter.settings["bands"],
                   "crop_size": segmenter.crop_size, "stride": segmenter.stride, "tile": segmenter.tile,
                   "processes": group.size, "device": str(segmenter.device), "seconds": round(seconds, 3)}
        (output_dir / "predict.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{len(records):,} rasters segmented into {output_dir} (GeoTIFF label maps"
              + (", probabilities" if opts.probabilities else "") + (f", polygons in {vector}" if vector else "") + ")")
    group.close()
    return records
