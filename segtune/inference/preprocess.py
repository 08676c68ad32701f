"""The image processor's per-image work, done fast: resize, rescale, normalise, bit-equal to
transformers' PIL backend for the plain processors segtune saves.

transformers' PIL processors spend ~4x the resize itself on checks, copies and float64 steps
(about 29 ms against 8 ms for a 480x360 image resized to 682x512, here). Prediction preprocesses
every image in worker threads that share the CPU with the model, so that time is taken from the
model. `FastPreprocess.of(processor)` returns a callable doing the same arithmetic in the same
order, or None where the processor does anything else (centre crop, padding, channel flip, DPT's
multiple-of rounding ...), and the processor's own call is used there.

The arithmetic, as transformers does it: PIL resizes the uint8 RGB image (the processor's
`resample`), then each value is rescaled in float64 and cast to float32, then normalised in
float32 as (x - mean) / std. Each of these maps one uint8 value of one channel to one float32,
so a 256-entry table per channel gives exactly the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# do_* flags that these processors may have on: what the fast path does (the images are RGB already;
# reduce_labels concerns masks only). Any other flag on sends the processor down its own path.
HANDLED = {"do_resize", "do_rescale", "do_normalize", "do_convert_rgb", "do_reduce_labels"}
# EoMT's split into windows and padding: segtune makes its own windows (segmenter.py, geometry.window_scores).
WINDOWS = {"do_split_image", "do_pad"}
PROCESSORS = {"SegformerImageProcessorPil", "BeitImageProcessorPil", "DPTImageProcessorPil",
              "MobileViTImageProcessorPil", "MobileNetV2ImageProcessorPil", "EomtImageProcessorPil",
              "Mask2FormerImageProcessorPil", "MaskFormerImageProcessorPil"}

CAPPED = {"Mask2FormerImageProcessorPil", "MaskFormerImageProcessorPil", "EomtImageProcessorPil"}  # _capped_size


def own_windows_off(processor) -> dict:
    """Keyword arguments that turn a processor's own windows off (EoMT's split and padding): segtune's call
    of the processor gives one image's pixel values, and segtune makes the windows."""
    return {key: False for key in ("do_split_image", "do_pad") if getattr(processor, "do_split_image", False)}


def resize_output_size(height: int, width: int, size: dict) -> tuple[int, int]:
    """(height, width) after resizing to `size` ({"shortest_edge": n} or {"height": h, "width": w}), as
    transformers' get_resize_output_image_size computes it (the long side is truncated, not rounded)."""
    if size.get("shortest_edge") and size.get("longest_edge"):  # Mask2Former's: a long-side cap
        return _capped_size(height, width, int(size["shortest_edge"]), int(size["longest_edge"]))
    if size.get("shortest_edge"):
        edge = int(size["shortest_edge"])
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = edge, int(edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    return int(size["height"]), int(size["width"])


def _capped_size(height: int, width: int, edge: int, cap: int) -> tuple[int, int]:
    """transformers' get_size_with_aspect_ratio: the short side to `edge` unless the long side would pass `cap`."""
    raw = None
    if max(height, width) / min(height, width) * edge > cap:
        raw = cap * min(height, width) / max(height, width)
        edge = int(round(raw))
    if (height <= width and height == edge) or (width <= height and width == edge):
        return height, width
    if width < height:
        return (int(raw * height / width) if raw is not None else int(edge * height / width)), edge
    return edge, (int(raw * width / height) if raw is not None else int(edge * width / height))


class FastPreprocess:
    """A processor's resize, rescale and normalise: PIL RGB image in, (3, H, W) float32 tensor out.
    `settings` (a dict, as `settings()` gives it) is all it needs, so it runs without transformers."""

    def __init__(self, settings: dict):
        self.settings_ = dict(settings)
        self.size = _size_dict(settings["size"])
        self.resample = int(settings["resample"])
        values = np.arange(256, dtype=np.uint8).astype(np.float64) * settings["rescale_factor"]
        values = values.astype(np.float32)
        if settings["do_normalize"]:
            mean = np.asarray(settings["image_mean"], np.float32).reshape(3, 1)
            std = np.asarray(settings["image_std"], np.float32).reshape(3, 1)
            self.table = (values[None, :] - mean) / std  # (3, 256): channel c, value v -> float32
        else:  # MobileViT's: rescaled only
            self.table = np.repeat(values[None, :], 3, axis=0)

    def settings(self) -> dict:
        """What it computes, as JSON: segtune export stores it in the ONNX metadata."""
        return dict(self.settings_)

    @classmethod
    def of(cls, processor) -> "FastPreprocess | None":
        if isinstance(processor, SavedProcessor):
            return processor.fast
        if type(processor).__name__ not in PROCESSORS:
            return None
        settings = processor.to_dict()
        handled = HANDLED | (WINDOWS if type(processor).__name__ == "EomtImageProcessorPil" else set())
        if any(value for key, value in settings.items() if key.startswith("do_") and key not in handled):
            return None  # centre crop, padding, channel flip ...: the processor's own path
        if settings.get("size_divisor") or settings.get("ensure_multiple_of", 1) not in (1, None) or \
                settings.get("keep_aspect_ratio"):
            return None  # DPT's size rounding
        if not (getattr(processor, "do_resize", False) and getattr(processor, "do_rescale", False)):
            return None
        try:
            size = _size_dict(processor.size)
        except (TypeError, AttributeError):
            return None
        if not size.get("shortest_edge") and not (size.get("height") and size.get("width")):
            return None
        if size.get("longest_edge") and type(processor).__name__ not in CAPPED:  # another formula: their own path
            return None
        normalize = bool(getattr(processor, "do_normalize", False))
        if normalize and (len(np.atleast_1d(processor.image_mean)) != 3 or len(np.atleast_1d(processor.image_std)) != 3):
            return None
        return cls({"processor_class": type(processor).__name__, "size": size, "resample": int(processor.resample),
                    "rescale_factor": float(processor.rescale_factor), "do_normalize": normalize,
                    "image_mean": [float(v) for v in np.atleast_1d(processor.image_mean)] if normalize else None,
                    "image_std": [float(v) for v in np.atleast_1d(processor.image_std)] if normalize else None})

    def __call__(self, image, size: dict | None = None) -> torch.Tensor:
        """`image`: a PIL RGB image; `size`: the processor's `size` override, as its call takes it."""
        height, width = resize_output_size(image.height, image.width, _size_dict(size) if size else self.size)
        if (width, height) != image.size:
            image = image.resize((width, height), resample=self.resample)
        pixels = np.asarray(image)
        out = np.empty((3, height, width), np.float32)
        for c in range(3):
            np.take(self.table[c], pixels[..., c], out=out[c])
        return torch.from_numpy(out)


def _size_dict(size) -> dict:
    if isinstance(size, dict):
        return {k: v for k, v in size.items() if v}
    keys = ("shortest_edge", "longest_edge", "height", "width", "max_height", "max_width")
    return {k: getattr(size, k) for k in keys if getattr(size, k, None)}


class SavedProcessor:
    """An exported model's processor rebuilt from FastPreprocess settings, without transformers (whose
    processor classes take about a second to import): what a Segmenter asks of a processor, its
    `size` and `do_resize` and its call. segtune export checks, with the real processor at hand, that
    the fast path is exact for it, and stores the settings in the ONNX metadata."""

    do_resize = True

    def __init__(self, settings: dict):
        self.fast = FastPreprocess(settings)
        self.size = dict(self.fast.size)
        self.processor_class = settings.get("processor_class", "")

    def __call__(self, images, return_tensors="pt", size=None):
        from ..data.reading import to_rgb

        images = images if isinstance(images, (list, tuple)) else [images]
        return {"pixel_values": torch.stack([self.fast(to_rgb(image), size) for image in images])}


class ProcessorTransform:
    """Evaluation/prediction preprocessing: exactly the saved image processor (through its bit-equal
    fast path, above, where it has one)."""

    def __init__(self, processor):
        from .preprocess import FastPreprocess

        self.processor = processor
        self.fast = FastPreprocess.of(processor)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.fast is not None and image.mode == "RGB":
            return self.fast(image)
        return self.processor(images=image, return_tensors="pt", **own_windows_off(self.processor))["pixel_values"][0]
