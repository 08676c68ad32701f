"""`segtune train` on multi-band rasters: the per-band normalisation learnt from the training split, the
model given N input channels (its pretrained first layer adapted: models/channels.py), the processor
that records both, and the datasets (random windows to train on, whole rasters to score)."""

from __future__ import annotations

import logging

from ..data.band_stats import band_statistics
from ..data.rasters import parse_bands
from ..errors import SegtuneError
from ..evaluation.rasters import RasterEvalDataset
from ..inference.bands import SETTINGS_KEY
from ..models.architectures import OFFLINE_NAMES
from ..models.channels import with_channels
from .band_windows import BandTrainDataset

log = logging.getLogger("segtune")


def rgb_positions(layout, rgb_bands) -> list[int] | None:
    """The model channels of the bands named R, G, B (`--rgb-bands`, 1-based file band numbers); by
    default bands 1, 2, 3 where they are all chosen (RGB + NIR files), else none (every channel starts
    from the mean RGB kernel)."""
    named = parse_bands(rgb_bands, "--rgb-bands")
    bands = list(layout.bands)
    if named is None:
        return [bands.index(b) for b in (1, 2, 3)] if {1, 2, 3} <= set(bands) else None
    if len(named) != 3:
        raise SegtuneError(f"--rgb-bands {rgb_bands}: name three bands, red, green and blue (e.g. 4,3,2)")
    missing = [b for b in named if b not in bands]
    if missing:
        raise SegtuneError(f"--rgb-bands {rgb_bands}: band {missing[0]} is not among the bands the model takes "
                           f"({','.join(map(str, bands))})")
    return [bands.index(b) for b in named]


def band_settings_for(data, opts, progress: bool = True) -> dict:
    """The statistics pass over the training rasters -> the processor's `segtune_bands`."""
    from tqdm.auto import tqdm

    layout = data.band_layout
    stats = band_statistics([s.raster() for s in data.train], layout.dtype,
                            progress=(lambda it, **kw: tqdm(it, leave=False, **kw)) if progress else None)
    for band, why in zip(layout.bands, stats["why"]):
        log.info("segtune: band %d: %s", band, why)
    return {**layout.to_json(), **stats, "crop_size": int(opts.augment.crop_size),
            "rgb_bands": parse_bands(opts.rgb_bands, "--rgb-bands")}


def for_bands(opts, data, model, processor, progress: bool = True):
    """(model with N channels, processor carrying the band settings)."""
    layout = data.band_layout
    positions = rgb_positions(layout, opts.rgb_bands)
    if positions is None:
        log.info("segtune: no bands named red, green, blue: every band's first-layer kernel starts from the mean "
                 "RGB kernel (--rgb-bands names them)")
    with_channels(model, len(layout.bands), positions, pretrained=opts.model not in OFFLINE_NAMES)
    settings = band_settings_for(data, opts, progress)
    processor.do_resize = False  # rasters are segmented at their own resolution, a window at a time
    # the window, not a resize target: a fixed-size model's square is its window (crop_size), so the processor
    # names no fixed size that the Segmenter loading the model would resize to
    processor.size = {"shortest_edge": int(opts.augment.crop_size)}
    processor.do_rescale = False  # the per-band mean/std are in the stored values' units
    processor.do_normalize = True
    processor.image_mean, processor.image_std = list(settings["mean"]), list(settings["std"])
    setattr(processor, SETTINGS_KEY, settings)
    return model, processor


def band_datasets(data, opts, processor):
    settings = getattr(processor, SETTINGS_KEY)
    return (BandTrainDataset(data.train, data.rules, settings, opts.augment, data.ignore_index),
            RasterEvalDataset(data.val, data.rules, settings))


def card_fields(processor) -> dict:
    """The band settings the model card records (none for an RGB model)."""
    settings = getattr(processor, SETTINGS_KEY, None)
    if settings is None:
        return {}
    return {"bands": settings["bands"], "rgb_bands": settings.get("rgb_bands"), "band_dtype": settings["dtype"],
            "band_clip": settings["clip"], "nodata": settings["nodata"]}
