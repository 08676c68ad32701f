"""Where the model looks: the slide-mode window grid (MMSeg's `slide_inference`), how many windows
cover each pixel, and the training scale a processor resizes to."""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------- sliding windows


def slide_windows(height: int, width: int, crop: int | tuple[int, int], stride: int | tuple[int, int]):
    """(y1, y2, x1, x2) windows covering a height x width input, MMSeg's `slide_inference` grid:
    a window every `stride` pixels, the last one in each direction shifted back to end at the
    border; every window is min(crop, size) in each direction, so all have one shape."""
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    if min(ch, cw, sh, sw) <= 0:
        raise ValueError(f"crop {crop} and stride {stride} must be positive")
    return [(y1, y2, x1, x2) for y1, y2 in axis_windows(height, ch, sh) for x1, x2 in axis_windows(width, cw, sw)]


def axis_windows(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """The (start, end) of the slide grid along one axis: slide_windows' rows or columns."""
    n = max(size - crop + stride - 1, 0) // stride + 1
    return [(max(min(i * stride + crop, size) - crop, 0), min(i * stride + crop, size)) for i in range(n)]


def default_stride(crop: int) -> int:
    """Slide mode's step when none is given: 2/3 of the window, so neighbours overlap by a third."""
    return max(1, round(crop * 2 / 3))


def window_counts(height: int, width: int, windows) -> np.ndarray:
    """How many windows cover each pixel (the divisor of the summed logits)."""
    counts = np.zeros((height, width), dtype=np.int64)
    for y1, y2, x1, x2 in windows:
        counts[y1:y2, x1:x2] += 1
    return counts


# ---------------------------------------------------------------- the processor's size


def processor_shortest_edge(processor) -> int | None:
    size = getattr(processor, "size", None)
    if size is None:
        return None
    value = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    return int(value) if value else None


def processor_fixed_size(processor) -> tuple[int | None, int | None]:
    size = getattr(processor, "size", None)
    if isinstance(size, dict):
        return size.get("height"), size.get("width")
    return getattr(size, "height", None), getattr(size, "width", None)


def training_scale(processor) -> int | None:
    """The short side the model sees: the processor's shortest_edge, or its fixed size's smaller side."""
    if not getattr(processor, "do_resize", True):
        return None
    if (edge := processor_shortest_edge(processor)) is not None:
        return edge
    height, width = processor_fixed_size(processor)
    return min(height, width) if height and width else None


# ---------------------------------------------------------------- scores over windows


def window_scores(scores_of, pixel_values, crop: int, stride: int, batch_size: int = 1, pad: bool = False):
    """(C, H, W) scores of a (3, H, W) input, window by window (slide_windows): each window's scores
    upsampled to the window, summed, divided by the number of windows covering each pixel.

    `scores_of`: (B, 3, h, w) pixel values -> (B, C, h', w') float scores on some device. `pad`: for a
    model taking `crop`-square inputs only (EoMT), an input smaller than the crop is padded with zeros
    (the mean colour, once normalised) at the bottom and right, and that padding cropped off the scores.
    Without it, an input that fits in one window is run whole (so slide equals whole there)."""
    import torch
    import torch.nn.functional as F

    height, width = pixel_values.shape[-2:]
    if pad and (height < crop or width < crop):
        padded = F.pad(pixel_values, (0, max(0, crop - width), 0, max(0, crop - height)))
        return window_scores(scores_of, padded, crop, stride, batch_size, pad)[:, :height, :width]
    windows = slide_windows(height, width, crop, stride)
    if len(windows) == 1 and not pad:
        return scores_of(pixel_values[None])[0]
    total = count = None
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        crops = torch.stack([pixel_values[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        scores = scores_of(crops)
        if scores.shape[-2:] != crops.shape[-2:]:
            scores = F.interpolate(scores, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        if total is None:
            total = torch.zeros((scores.shape[1], height, width), device=scores.device)
            count = torch.zeros((1, height, width), device=scores.device)
        for (y1, y2, x1, x2), window in zip(chunk, scores):
            total[:, y1:y2, x1:x2] += window
            count[:, y1:y2, x1:x2] += 1
    return total / count
