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
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            windows.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return windows


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
