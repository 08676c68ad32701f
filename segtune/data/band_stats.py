"""Per-band normalisation, learnt from the training rasters in one streamed pass.

Each band's valid pixels (nodata left out) are counted into a histogram of its stored integer
values (uint8, uint16, int16: exact, 65,536 bins at most) or, for other types, a seeded random
sample of at most SAMPLE_SIZE values a band, plus exact sums. Memory holds one block and
these counts, whatever the size of the rasters.

Clipping, where the data asks for it: a band whose full range (min..max) is more than CLIP_RATIO
times the span of its central 98% (1st..99th percentile) has long tails, such as saturated pixels,
clouds, specular glints or sensor spikes in 16-bit imagery. Normalised by mean/std alone, those few
values would stretch the std and squeeze the bulk of the band into a fraction of a unit; such a band
is clipped to its 1st..99th percentiles first, and mean/std are those of the clipped values. A band
without long tails (a normal distribution's range is about 2x its 98% span; a uniform one's 1.02x)
is normalised by its plain mean/std. Which bands were clipped, and why, goes in the processor config.
"""

from __future__ import annotations

import numpy as np

from ..errors import SegtuneError

BLOCK = 1024  # pixels a side of the blocks read
SAMPLE_SIZE = 1 << 20
CLIP_RATIO = 3.0
PERCENTILES = (1.0, 99.0)
_INT_OFFSET = {"uint8": 0, "uint16": 0, "int16": 32768}
_INT_BINS = {"uint8": 256, "uint16": 65536, "int16": 65536}


class BandAccumulator:
    def __init__(self, count: int, dtype: str, seed: int = 0):
        self.count, self.dtype = count, dtype
        self.exact = dtype in _INT_BINS
        self.hist = np.zeros((count, _INT_BINS[dtype]), np.int64) if self.exact else None
        self.samples = [np.empty(0, np.float32) for _ in range(count)]
        self.seen = np.zeros(count, np.int64)
        self.sums = np.zeros(count, np.float64)
        self.squares = np.zeros(count, np.float64)
        self.low = np.full(count, np.inf)
        self.high = np.full(count, -np.inf)
        self.rng = np.random.default_rng(seed)

    def add(self, pixels: np.ndarray, valid: np.ndarray) -> None:
        for b in range(self.count):
            values = pixels[b][valid]
            if values.size == 0:
                continue
            v64 = values.astype(np.float64)
            self.sums[b] += v64.sum()
            self.squares[b] += np.square(v64).sum()
            self.low[b], self.high[b] = min(self.low[b], v64.min()), max(self.high[b], v64.max())
            if self.exact:
                self.hist[b] += np.bincount((values.astype(np.int64) + _INT_OFFSET[self.dtype]),
                                            minlength=self.hist.shape[1])
            else:  # reservoir-like: keep a uniform sample by drawing a random key per value
                self.samples[b] = self._sampled(self.samples[b], values, self.seen[b])
            self.seen[b] += values.size

    def _sampled(self, kept: np.ndarray, values: np.ndarray, seen: int) -> np.ndarray:
        if kept.size + values.size <= SAMPLE_SIZE:
            return np.concatenate([kept, values])
        # each value already kept stands for seen/kept.size values; keep SAMPLE_SIZE drawn in proportion
        total = seen + values.size
        take_new = int(round(SAMPLE_SIZE * values.size / total))
        keep_old = SAMPLE_SIZE - take_new
        old = kept[self.rng.choice(kept.size, min(keep_old, kept.size), replace=False)]
        new = values[self.rng.choice(values.size, min(take_new, values.size), replace=False)]
        return np.concatenate([old, new])

    def result(self, names=None) -> dict:
        """{"mean", "std", "clip" ([lo, hi] or None per band), "why" (per band), "min", "max", "valid_pixels"}."""
        if (self.seen == 0).any():
            band = int(np.flatnonzero(self.seen == 0)[0])
            raise SegtuneError(f"band {band + 1} has no valid pixel in the training rasters (all nodata)")
        mean = self.sums / self.seen
        std = np.sqrt(np.maximum(self.squares / self.seen - mean ** 2, 0.0))
        out = {"mean": [], "std": [], "clip": [], "why": [], "min": self.low.tolist(), "max": self.high.tolist(),
               "valid_pixels": self.seen.tolist()}
        for b in range(self.count):
            values, weights = self._distribution(b)
            lo, hi = _weighted_percentiles(values, weights, PERCENTILES)
            span, full = hi - lo, self.high[b] - self.low[b]
            if span > 0 and full > CLIP_RATIO * span:
                clipped = np.clip(values, lo, hi)
                m = float(np.average(clipped, weights=weights))
                s = float(np.sqrt(np.average((clipped - m) ** 2, weights=weights)))
                out["clip"].append([float(lo), float(hi)])
                out["why"].append(f"range {self.low[b]:g}..{self.high[b]:g} is {full / span:.1f}x the 1st..99th "
                                  f"percentile span {lo:g}..{hi:g}: long tails, clipped there")
            else:
                m, s = float(mean[b]), float(std[b])
                out["clip"].append(None)
                out["why"].append(f"range {self.low[b]:g}..{self.high[b]:g} within {CLIP_RATIO:g}x the 1st..99th "
                                  "percentile span: mean/std alone")
            out["mean"].append(m)
            out["std"].append(s if s > 0 else 1.0)  # a constant band: centred, not divided by zero
        return out

    def _distribution(self, b: int):
        if self.exact:
            counts = self.hist[b]
            nz = np.flatnonzero(counts)
            return (nz - _INT_OFFSET[self.dtype]).astype(np.float64), counts[nz].astype(np.float64)
        values = np.sort(self.samples[b].astype(np.float64))
        return values, np.ones_like(values)


def _weighted_percentiles(values: np.ndarray, weights: np.ndarray, qs) -> list[float]:
    """Percentiles of a histogram (values sorted ascending with their counts): the lowest value whose
    cumulative share reaches q%."""
    cum = np.cumsum(weights)
    return [float(values[min(np.searchsorted(cum, q / 100.0 * cum[-1]), len(values) - 1)]) for q in qs]


def band_statistics(rasters, dtype: str, progress=None) -> dict:
    """One streamed pass over `rasters` (data.rasters.Raster, all with the same bands), a BLOCK x BLOCK
    window at a time. -> BandAccumulator.result()."""
    rasters = list(rasters)
    acc = BandAccumulator(rasters[0].count, dtype)
    blocks = [(r, y, min(y + BLOCK, r.height), x, min(x + BLOCK, r.width)) for r in rasters
              for y in range(0, r.height, BLOCK) for x in range(0, r.width, BLOCK)]
    for raster, *window in (progress(blocks, desc="band statistics") if progress else blocks):
        acc.add(*raster.read(*window))
    return acc.result()


class BandPreprocess:
    """(C, h, w) stored values and their validity -> (C, h, w) float32 model input: each band clipped
    (where its statistics asked for it), then (x - mean) / std; no-data pixels 0 (the mean)."""

    def __init__(self, settings: dict):
        n = len(settings["mean"])
        self.mean = np.asarray(settings["mean"], np.float32).reshape(n, 1, 1)
        self.std = np.asarray(settings["std"], np.float32).reshape(n, 1, 1)
        clip = settings.get("clip") or [None] * n
        self.low = np.asarray([c[0] if c else -np.inf for c in clip], np.float32).reshape(n, 1, 1)
        self.high = np.asarray([c[1] if c else np.inf for c in clip], np.float32).reshape(n, 1, 1)

    def __call__(self, pixels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        out = np.clip(pixels, self.low, self.high)
        out -= self.mean
        out /= self.std
        out[:, ~valid if valid is not None else np.isnan(out).any(0)] = 0.0
        return np.nan_to_num(out, copy=False)
