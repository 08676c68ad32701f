"""`segtune export` of a multi-band model: its ONNX graph takes (batch, N, H, W), and the parity check runs
the raster inference `predict` runs (inference/bands.py: windows, overlap averaging) through torch and
through ONNX Runtime on generated N-band rasters, comparing logits and label maps."""

from __future__ import annotations

import numpy as np
import torch

SIDES = ((96, 128), (200, 150))  # (height, width) of the generated rasters: one and several windows


def generated_rasters(settings: dict, count: int, seed: int = 0) -> list[np.ndarray]:
    """Rasters of stored values around each band's mean (+- 2 std), smooth enough to hold regions."""
    rng = np.random.default_rng(seed)
    mean = np.asarray(settings["mean"], np.float32)[:, None, None]
    std = np.asarray(settings["std"], np.float32)[:, None, None]
    rasters = []
    for i in range(count):
        h, w = SIDES[i % len(SIDES)]
        coarse = rng.standard_normal((len(mean), h // 8 + 1, w // 8 + 1)).astype(np.float32)
        smooth = coarse.repeat(8, 1).repeat(8, 2)[:, :h, :w]
        rasters.append(mean + 2 * std * np.tanh(smooth))
    return rasters


def band_check(torch_model, runner, settings: dict, labels, count: int) -> dict:
    """Both through a BandSegmenter (same windows, same averaging): the largest difference of the averaged
    window logits and the share of equal label-map pixels."""
    from ..inference.bands import ArrayRaster, BandSegmenter

    ours = BandSegmenter(torch_model, settings, labels, batch_size=2)
    theirs = BandSegmenter(runner, settings, labels, batch_size=2)
    max_diff, equal, pixels, sizes = 0.0, 0, 0, set()
    for array in generated_rasters(settings, count):
        raster = ArrayRaster(array)
        sizes.add(f"{raster.height}x{raster.width}")
        for box in ours.tile_boxes(raster.height, raster.width):
            a, _ = ours.tile_scores(raster, box)
            b, _ = theirs.tile_scores(raster, box)
            max_diff = max(max_diff, float((a - b).abs().max()))
            equal += int((a.argmax(0) == b.argmax(0)).sum())
            pixels += a[0].numel()
    return {"runtime": "onnxruntime", "images": count, "source": "generated rasters", "input_sizes": sorted(sizes),
            "window": ours.crop_size, "stride": ours.stride, "max_logit_diff": max_diff,
            "equal_pixels": equal / max(pixels, 1), "rows": [], "masks": False}


def check_failures(check: dict, min_equal_pixels: float, max_logit_diff: float | None) -> list[str]:
    failures = []
    if 100.0 * check["equal_pixels"] < min_equal_pixels:
        failures.append(f"{100 * check['equal_pixels']:.4f}% of label-map pixels equal, below --min-equal-pixels "
                        f"{min_equal_pixels:g}")
    if max_logit_diff is not None and check["max_logit_diff"] > max_logit_diff:
        failures.append(f"largest logit difference {check['max_logit_diff']:.3g}, above --max-logit-diff "
                        f"{max_logit_diff:g}")
    return failures


@torch.inference_mode()
def run_band_check(reference, out, opts) -> dict:
    """The export.json "check" of a band model, printed in one line."""
    import time

    from ..inference.bands import band_settings
    from ..inference.onnx_runners import load_exported

    started = time.perf_counter()
    runner, _, _ = load_exported(out, "onnxruntime")
    check = band_check(reference.model, runner, band_settings(reference.processor), reference.labels,
                       opts.check_images)
    check.update(min_equal_pixels=opts.min_equal_pixels, max_logit_diff_allowed=opts.max_logit_diff,
                 failures=check_failures(check, opts.min_equal_pixels, opts.max_logit_diff),
                 seconds=round(time.perf_counter() - started, 3))
    print(f"parity check: ONNX Runtime against torch, {check['images']} generated {len(check['input_sizes'])}-size "
          f"rasters through the windowed inference: {100 * check['equal_pixels']:.4f}% of pixels equal, largest "
          f"logit difference {check['max_logit_diff']:.3g}")
    return check
