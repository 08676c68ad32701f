"""Logits upsampled to an image's size a strip of rows at a time, equal bit for bit to one
`F.interpolate(..., mode="bilinear", align_corners=False)` call.

Upsampling (C, h, w) logits to a 48 MP photo in one call allocates C x 48 M floats (29 GB at 150
classes) only to take an argmax per pixel. Output row y reads two source rows, so a strip of rows
needs only a few of them. To give the same numbers as the whole call, a strip repeats the
arithmetic of torch's CPU kernel, measured on its output (tests/test_strips.py): the source
coordinate `ratio * (y + 0.5) - 0.5` rounded once (the kernel's fused multiply-add), clamped to
the edges; the two columns combined as `a * wa + b * wb` with one rounding of `a * wa + round(b * wb)`
(torch.addcmul, also fused), then the two rows the same way. That is the kernel for contiguous
inputs; logits of a channels-last model go through another kernel that rounds differently, so
they are made contiguous first, on every path (`postprocess.py`, the Segmenter). Whether that holds for this build of
torch on this device is checked once per process (`exact_on`); where it does not (another kernel,
a GPU, downsampling), the whole image is upsampled in one call, as before.

`strip_plan` chooses the strips, sized by a memory budget (`STRIP_BYTES` of upsampled scores at a
time); `upsample` computes one.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

STRIP_BYTES = 32 * 2**20  # upsampled float32 scores held at once, per strip
# torch's kernel takes another path for small outputs (a 34 x 18 one differed here): strips only from
# this many output pixels on, where their memory matters anyway
MIN_PIXELS = 128 * 128
PROBE_SHAPES = ((3, 9, 13, 131, 157), (5, 32, 43, 517, 689), (2, 128, 171, 481, 640))  # (C, h, w, H, W)


def _axis(in_size: int, out_size: int, lo: int, hi: int, device) -> tuple:
    """Source indices (i0, i1) and weights (w0, w1) of output positions lo..hi-1, as the kernel takes them."""
    ratio = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    centre = torch.arange(lo, hi, dtype=torch.float32, device=device) + 0.5
    # ratio * centre - 0.5 with one rounding: exact in float64 (24-bit by 18-bit product), then rounded
    src = (ratio.double().to(device) * centre.double() - 0.5).float().clamp_(min=0)
    i0 = src.floor().long().clamp_(max=in_size - 1)
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    w1 = (src - i0.float()).clamp_(0, 1)
    return i0, i1, 1 - w1, w1


def _mix(a: torch.Tensor, wa: torch.Tensor, b: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """a * wa + b * wb as the kernel rounds it: fused, round(a * wa + round(b * wb))."""
    return torch.addcmul(b * wb, a, wa)


def upsample_rows(logits: torch.Tensor, size: tuple[int, int], lo: int, hi: int, columns=None) -> torch.Tensor:
    """Rows lo..hi-1 of the (C, H, W) bilinear upsampling of (C, h, w) `logits` to `size`.
    `columns`: `columns_of(logits, W)`, when the caller upsamples many strips of one image."""
    channels, h, w = logits.shape
    height, width = size
    y0, y1, wy0, wy1 = _axis(h, height, lo, hi, logits.device)
    x0, x1, wx0, wx1 = columns if columns is not None else columns_of(logits, width)
    first, last = int(y0[0]), int(y1[-1]) + 1  # y0 and y1 never decrease with y
    rows = logits[:, first:last]  # only the source rows this strip reads
    across = _mix(rows.index_select(2, x0), wx0, rows.index_select(2, x1), wx1)  # (C, rows, W)
    out = torch.empty((channels, hi - lo, width), dtype=logits.dtype, device=logits.device)
    # output rows reading the same two source rows form runs: each run is one broadcast product and one
    # fused add into the output, with no gathered copies of the rows (the same two roundings as _mix)
    starts = torch.cat([torch.tensor([0], device=y0.device), (y0[1:] != y0[:-1]).nonzero().flatten() + 1])
    bounds = starts.tolist() + [hi - lo]
    for a, b in zip(bounds, bounds[1:]):
        top, bottom = across[:, int(y0[a]) - first, None], across[:, int(y1[a]) - first, None]
        target = out[:, a:b]
        torch.mul(bottom, wy1[a:b, None], out=target)
        target.addcmul_(top, wy0[a:b, None])
    return out


def row_strips(channels: int, size: tuple[int, int], budget: int | None = None) -> list[tuple[int, int]]:
    """(lo, hi) strips covering `size`'s rows, each with at most `budget` bytes of float32 scores
    (STRIP_BYTES by default; at least one row)."""
    height, width = size
    budget = STRIP_BYTES if budget is None else budget
    rows = max(1, budget // max(1, 4 * channels * width))
    return [(lo, min(lo + rows, height)) for lo in range(0, height, rows)]


@functools.lru_cache(maxsize=None)
def exact_on(device_type: str) -> bool:
    """Whether `upsample_rows` gives F.interpolate's numbers bit for bit here (probed once a device type)."""
    generator = torch.Generator().manual_seed(0)
    device = torch.device(device_type)
    for channels, h, w, height, width in PROBE_SHAPES:
        logits = (torch.randn(channels, h, w, generator=generator) * 8).to(device)
        whole = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        parts = [upsample_rows(logits, (height, width), lo, hi) for lo, hi in row_strips(channels, (height, width),
                                                                                           4 * channels * width * 37)]
        if not torch.equal(torch.cat(parts, 1), whole):
            return False
    return True


def strip_plan(shapes, size: tuple[int, int], device_type: str, budget: int | None = None) -> list[tuple[int, int]]:
    """The strips of rows in which (C, h, w) logits of each of `shapes` are upsampled to `size` together
    (TTA's augmentations share one plan): several where that saves memory and is exact here, else one
    strip of every row, which `upsample` computes in one F.interpolate call, as torch alone would."""
    height, width = size
    budget = STRIP_BYTES if budget is None else budget
    channels = max(shape[0] for shape in shapes)
    small = 4 * channels * height * width <= budget or height * width < MIN_PIXELS
    # downsampling, or a source of one row or column, has its own arithmetic in the kernel
    other_path = any(shape[1] > height or shape[2] > width or min(shape[1:]) < 2 for shape in shapes)
    if small or other_path or not exact_on(device_type):
        return [(0, height)]
    return row_strips(channels, size, budget)


def upsample(logits: torch.Tensor, size: tuple[int, int], lo: int, hi: int, columns=None) -> torch.Tensor:
    """Rows lo..hi-1 of (C, h, w) `logits` upsampled to `size`: torch's own call for the whole height.
    `logits` should be contiguous: torch's channels-last kernel (logits of a channels-last model) rounds
    otherwise, in 4 values of 10 here, so every caller upsamples contiguous logits, whichever the path."""
    if lo == 0 and hi == size[0]:
        return F.interpolate(logits[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    return upsample_rows(logits, size, lo, hi, columns)


def columns_of(logits: torch.Tensor, width: int):
    """The column indices and weights shared by every strip of one (C, h, w) input upsampled to `width`."""
    return _axis(logits.shape[2], width, 0, width, logits.device)
