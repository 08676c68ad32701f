"""Segmenting multi-band rasters of any size, a tile at a time, in memory that does not grow with the raster.

A band model's processor config carries `segtune_bands` (written by `segtune train`): the bands it takes,
their per-band clip and mean/std (data/band_stats.py), the nodata value, and the window (crop) size it
was trained on. Rasters are segmented at their own resolution (no resizing: a pixel keeps its ground
size) by slide inference: `crop_size` windows every `stride` pixels on MMSeg's grid
(geometry.slide_windows), each window's logits upsampled to the window, summed, and divided by the
number of windows covering each pixel, as the Segmenter's slide mode does.

To keep memory flat, the output is made a tile (TILE x TILE pixels) at a time: for each tile the
windows of the global grid that touch it are summed, and only the tile's part of their logits. Each
pixel gets exactly the windows, in the same order, that a whole-raster slide would give it. A window
touching a later tile (to the right, or in the next row) keeps its model logits until then
(WindowCache), so each window is run once; the cache is bounded (CACHE_BYTES), past which a shared
window is run again rather than kept.
Windows smaller than the crop (a raster smaller than it) are padded with 0, the normalised mean,
as training pads its crops. Pixels with no data (nodata in every band) come out as the nodata class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..data.band_stats import BandPreprocess
from ..errors import SegtuneError
from ..models import architectures
from ..models.masks import probabilities as class_probabilities
from .geometry import axis_windows, default_stride
from .postprocess import class_argmax
from .runners import TorchRunner

TILE = 1024
CACHE_BYTES = 256 * 2**20  # shared windows' logits kept between tiles (WindowCache)
SETTINGS_KEY = "segtune_bands"


def band_settings(processor_or_dir) -> dict | None:
    """The `segtune_bands` of a processor (or of a model folder's preprocessor_config.json), or None:
    an RGB model."""
    if isinstance(processor_or_dir, (str, Path)):
        path = Path(processor_or_dir) / "preprocessor_config.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text()).get(SETTINGS_KEY)
        except (OSError, ValueError):
            return None
    return getattr(processor_or_dir, SETTINGS_KEY, None)


def label_nodata(num_classes: int) -> tuple[np.dtype, int]:
    """The label raster's type and nodata value: uint8 and 255 up to 255 classes, else uint16 and 65535."""
    return (np.dtype(np.uint8), 255) if num_classes < 255 else (np.dtype(np.uint16), 65535)


class ArrayRaster:
    """An in-memory (C, H, W) array as a raster (`read(y0, y1, x0, x1)`), for Python callers and serve."""

    def __init__(self, pixels: np.ndarray, valid: np.ndarray | None = None, nodata=None):
        from ..data.rasters import valid_pixels

        self.pixels = np.asarray(pixels, np.float32)
        if self.pixels.ndim == 2:
            self.pixels = self.pixels[None]
        self.valid = valid if valid is not None else valid_pixels(self.pixels, nodata)
        self.count, self.height, self.width = self.pixels.shape

    def read(self, y0, y1, x0, x1):
        return self.pixels[:, y0:y1, x0:x1], self.valid[y0:y1, x0:x1]


class WindowCache:
    """The model's logits of windows that later tiles share, up to `limit` bytes: a window crossing into the
    tile on the right, or into the next row of tiles, is run once. Past the limit (a very wide raster, many
    classes) a window is not kept and is run again, so memory stays bounded whatever the raster."""

    def __init__(self, limit: int):
        self.limit, self.used, self.kept = limit, 0, {}

    def __contains__(self, window) -> bool:
        return window in self.kept

    def get(self, window) -> torch.Tensor:
        return self.kept[window]

    def put(self, window, logits: torch.Tensor) -> None:
        if window in self.kept:
            return
        size = logits.numel() * logits.element_size()
        if self.used + size <= self.limit:
            self.kept[window] = logits.clone()  # not a view of the batch, which would hold it all
            self.used += size

    def drop(self, window) -> None:
        logits = self.kept.pop(window, None)
        if logits is not None:
            self.used -= logits.numel() * logits.element_size()


class BandSegmenter:
    """A band model and its settings: a raster in, its label map (and class probabilities) out, a tile
    at a time (`tiles`) or whole (`__call__`, for arrays that fit in memory)."""

    def __init__(self, model, settings: dict, labels, *, crop_size: int | None = None, stride: int | None = None,
                 batch_size: int | None = None, tile: int = TILE, cache_bytes: int = CACHE_BYTES):
        self.runner = TorchRunner(model) if isinstance(model, torch.nn.Module) else model
        config = architectures.runner_config(self.runner)  # a mask classifier's scores: normalised by their sum
        self.family = architectures.family(config) if config is not None else "pixel"
        self.settings, self.labels = settings, labels
        self.preprocess = BandPreprocess(settings)
        self.crop_size = int(crop_size or settings.get("crop_size") or 512)
        self.stride = int(stride or default_stride(self.crop_size))
        if self.crop_size < 1 or not 0 < self.stride <= self.crop_size:
            raise SegtuneError(f"--crop-size {self.crop_size} --stride {self.stride}: need 0 < stride <= crop size")
        self.batch_size = batch_size or (16 if self.device.type == "cuda" else 4)
        self.tile, self.cache_bytes = max(int(tile), 1), int(cache_bytes)
        self.label_dtype, self.nodata = label_nodata(len(labels))

    @classmethod
    def from_pretrained(cls, model_dir, device: str = "auto", dtype=None, trust_remote_code: bool = False,
                        runtime: str = "auto", threads: int | None = None, **options):
        """A band model folder, or its export (`segtune export`: run by ONNX Runtime or OpenVINO), loaded as a
        Segmenter loads any model (its runner and labels)."""
        from .segmenter import Segmenter

        from .onnx_runners import onnx_path

        exported = onnx_path(model_dir)
        settings = band_settings(exported.parent if exported is not None else model_dir)
        if settings is None:
            raise SegtuneError(f"{model_dir}: not a multi-band model (its preprocessor_config.json has no "
                               f"{SETTINGS_KEY})")
        loaded = Segmenter.from_pretrained(model_dir, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                           runtime=runtime, threads=threads, mode="whole", fold_head=False,
                                           channels_last=False)
        return cls(loaded.runner, settings, loaded.labels, **options)

    @property
    def device(self) -> torch.device:
        return torch.device(self.runner.device)

    @property
    def band_count(self) -> int:
        return len(self.settings["mean"])

    def tile_boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(y0, y1, x0, x1) of the output tiles, row by row."""
        return [(y, min(y + self.tile, height), x, min(x + self.tile, width))
                for y in range(0, height, self.tile) for x in range(0, width, self.tile)]

    def __call__(self, raster, probabilities: bool = False):
        """Label map (H, W) (and (C, H, W) float32 probabilities) of a whole raster or (C, H, W) array."""
        if isinstance(raster, np.ndarray):
            raster = ArrayRaster(raster, nodata=self.settings.get("nodata"))
        labels = np.empty((raster.height, raster.width), self.label_dtype)
        probs = np.empty((len(self.labels), raster.height, raster.width), np.float32) if probabilities else None
        for (y0, y1, x0, x1), label_map, tile_probs in self.tiles(raster, probabilities):
            labels[y0:y1, x0:x1] = label_map
            if probabilities:
                probs[:, y0:y1, x0:x1] = tile_probs
        return (labels, probs) if probabilities else labels

    def tiles(self, raster, probabilities: bool = False, boxes=None) -> Iterator:
        """((y0, y1, x0, x1), label map, probabilities or None) per output tile (`boxes`: those tiles only)."""
        cache = WindowCache(self.cache_bytes)
        for box in boxes if boxes is not None else self.tile_boxes(raster.height, raster.width):
            scores, valid = self.tile_scores(raster, box, cache)
            label_map = class_argmax(scores).numpy().astype(self.label_dtype)
            label_map[~valid] = self.nodata
            yield box, label_map, class_probabilities(scores, self.family).numpy() if probabilities else None

    @torch.inference_mode()
    def tile_scores(self, raster, box, cache: WindowCache | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """(classes, h, w) averaged window logits of one tile, and its (h, w) validity. The windows a tile
        shares with the tiles after it are kept in `cache` (as the model's logits), not run again."""
        y0, y1, x0, x1 = box
        rows = [w for w in axis_windows(raster.height, self.crop_size, self.stride) if w[0] < y1 and w[1] > y0]
        cols = [w for w in axis_windows(raster.width, self.crop_size, self.stride) if w[0] < x1 and w[1] > x0]
        windows = [(a, b, c, d) for a, b in rows for c, d in cols]
        cache = cache if cache is not None else WindowCache(0)
        todo = [w for w in windows if w not in cache]
        # read the tile and the windows still to run: their pixels, and the tile's validity
        ry0, ry1 = min([y0] + [w[0] for w in todo]), max([y1] + [w[1] for w in todo])
        rx0, rx1 = min([x0] + [w[2] for w in todo]), max([x1] + [w[3] for w in todo])
        pixels, valid = raster.read(ry0, ry1, rx0, rx1)
        if pixels.shape[0] != self.band_count:
            raise SegtuneError(f"{getattr(raster, 'path', 'input')}: {pixels.shape[0]} bands, but the model takes "
                               f"{self.band_count}")
        logits = {w: cache.get(w) for w in windows if w in cache}
        if todo:
            region = torch.from_numpy(self.preprocess(pixels, valid))
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                crops = torch.stack([self._padded(region[:, a - ry0:b - ry0, c - rx0:d - rx0]) for a, b, c, d in chunk])
                out = torch.as_tensor(self.runner(crops.to(self.device, self.runner.dtype))).float().to(self.device)
                logits.update(zip(chunk, out))
        total = count = None
        for a, b, c, d in windows:  # in the grid's order, as one whole-raster slide sums them
            window_logits = F.interpolate(logits[a, b, c, d][None], size=(self.crop_size, self.crop_size),
                                          mode="bilinear", align_corners=False)[0]
            if total is None:
                total = torch.zeros((window_logits.shape[0], y1 - y0, x1 - x0), device=self.device)
                count = torch.zeros((1, y1 - y0, x1 - x0), device=self.device)
            ta, tb, tc, td = max(a, y0), min(b, y1), max(c, x0), min(d, x1)  # the window's part of the tile
            total[:, ta - y0:tb - y0, tc - x0:td - x0] += window_logits[:, ta - a:tb - a, tc - c:td - c]
            count[:, ta - y0:tb - y0, tc - x0:td - x0] += 1
        for w in windows:  # kept while a later tile (to the right, or in the next row) needs it
            if w[3] > x1 or w[1] > y1:
                cache.put(w, logits[w])
            else:
                cache.drop(w)
        return (total / count).cpu(), valid[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0]

    def _padded(self, crop: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = self.crop_size - crop.shape[-2], self.crop_size - crop.shape[-1]
        return F.pad(crop, (0, pad_w, 0, pad_h)) if pad_h or pad_w else crop
