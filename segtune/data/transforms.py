"""Joint image/mask transforms (after torchvision's references/segmentation/transforms.py).

Each transform takes (PIL RGB image, int64 numpy mask, rng) and returns (image, mask), except
the last two of the training pipeline: Normalize gives tensors and Pad pads them. `rng` is a
`random.Random` owned by the caller (TrainDataset makes one per item from the seed, the epoch
and the image), so an item's augmentation depends on that generator alone, not on whatever
else drew from the process-global `random` before it. Masks are resized with
nearest neighbour and padded with the ignore index, so padding is never learnt as a class.
The training recipe is MMSegmentation's SegFormer one (see train_transform).
Evaluation does not use these: it runs the saved image processor itself, so plain
transformers preprocesses exactly as segtune does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..options import option


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, image, mask, rng: random.Random):
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask


class RandomResize:
    """Resizes so the short side is `base_size` times a ratio drawn from `ratio_range`."""

    def __init__(self, base_size: int, ratio_range: tuple[float, float]):
        self.base_size, self.ratio_range = base_size, ratio_range

    def __call__(self, image, mask, rng: random.Random):
        short = self.base_size * rng.uniform(*self.ratio_range)
        scale = short / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR)
        mask = np.array(Image.fromarray(mask.astype(np.int32), mode="I").resize(size, Image.NEAREST), dtype=np.int64)
        return image, mask


class RandomCrop:
    """Crops `size` x `size` at random; where the image is smaller, the crop is padded (image
    with black, mask with the ignore index) unless `pad=False`, which leaves padding to a later
    `Pad` after normalisation, as MMSeg pads.

    With `cat_max_ratio` < 1, MMSeg's class balancing: up to `max_tries` positions are drawn
    until no single class (ignored pixels not counted) covers `cat_max_ratio` or more of the
    crop, and a crop of one class only is rejected. Where no draw succeeds, MMSeg keeps one more
    unchecked draw; this keeps the most balanced one drawn.
    """

    def __init__(self, size: int, ignore_index: int, cat_max_ratio: float = 1.0, max_tries: int = 10,
                 pad: bool = True):
        self.size, self.ignore_index, self.pad = size, ignore_index, pad
        self.cat_max_ratio, self.max_tries = cat_max_ratio, max_tries

    def __call__(self, image, mask, rng: random.Random):
        if self.pad:
            image, mask = pad_pair(image, mask, self.size, self.ignore_index)
        margin_w, margin_h = max(0, image.width - self.size), max(0, image.height - self.size)
        left, top = rng.randint(0, margin_w), rng.randint(0, margin_h)
        if self.cat_max_ratio < 1 and (margin_w or margin_h):  # with no margin every draw is the same
            best = None
            for _ in range(max(1, self.max_tries)):
                share = largest_class_share(mask[top : top + self.size, left : left + self.size], self.ignore_index)
                if best is None or share < best[0]:
                    best = (share, left, top)
                if share < self.cat_max_ratio:
                    break
                left, top = rng.randint(0, margin_w), rng.randint(0, margin_h)
            _, left, top = best
        w, h = min(self.size, image.width), min(self.size, image.height)
        image = image.crop((left, top, left + w, top + h))
        return image, mask[top : top + h, left : left + w]


def largest_class_share(mask: np.ndarray, ignore_index: int) -> float:
    """Share of the labelled pixels held by the largest class; 1.0 for one class or none."""
    labelled = mask[mask != ignore_index].ravel()
    if labelled.size and labelled.min() >= 0:
        counts = np.bincount(labelled)  # far faster than np.unique, which sorts
        counts = counts[counts > 0]
    else:
        counts = np.unique(labelled, return_counts=True)[1]
    return counts.max() / counts.sum() if len(counts) > 1 else 1.0


def pad_pair(image, mask, size: int, ignore_index: int):
    """Pads a PIL image (black) and its mask (ignore index) at the bottom and right up to `size`."""
    pad_w, pad_h = max(0, size - image.width), max(0, size - image.height)
    if pad_w or pad_h:
        padded = Image.new("RGB", (image.width + pad_w, image.height + pad_h))
        padded.paste(image, (0, 0))
        image = padded
        mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=ignore_index)
    return image, mask


class Pad:
    """Pads a normalised (C, H, W) tensor with 0, the mean colour, and its mask with the ignore
    index at the bottom and right up to `size`: MMSeg's SegDataPreProcessor, which pads after
    normalising (and so after the photometric distortion, which would otherwise tint the padding)."""

    def __init__(self, size: int, ignore_index: int):
        self.size, self.ignore_index = size, ignore_index

    def __call__(self, pixels, mask, rng: random.Random | None = None):  # draws nothing
        pad_h, pad_w = max(0, self.size - pixels.shape[-2]), max(0, self.size - pixels.shape[-1])
        if pad_w or pad_h:
            pixels = torch.nn.functional.pad(pixels, (0, pad_w, 0, pad_h), value=0.0)
            mask = torch.nn.functional.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return pixels, mask


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, mask, rng: random.Random):
        if rng.random() < self.p:
            return image.transpose(Image.FLIP_LEFT_RIGHT), mask[:, ::-1]
        return image, mask


class Normalize:
    """PIL image -> normalised float tensor (C, H, W), as the image processor rescales and normalises."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image, mask, rng: random.Random | None = None):  # draws nothing
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std, torch.from_numpy(np.ascontiguousarray(mask))


class PhotometricDistortion:
    """MMSeg's PhotoMetricDistortion, on the image only: each step with probability 0.5,
    brightness + U(-32, 32), contrast x U(0.5, 1.5) (MMSeg's "contrast" scales the values, it
    does not stretch them about the mean), saturation x U(0.5, 1.5), hue + U{-18..18} in
    OpenCV's 0..180 hue units (+-36 degrees); contrast comes first or last at random.

    Values are clipped and truncated to 8 bits after each step, as MMSeg's `convert` does.
    Saturation and hue share one HSV round trip (PIL's HSV, hue in 0..255) where MMSeg makes two.
    """

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18):
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = contrast_range, saturation_range

    @staticmethod
    def _convert(pixels, alpha=1.0, beta=0.0):
        return np.clip(pixels.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _contrast(self, pixels, rng):
        return self._convert(pixels, alpha=rng.uniform(*self.contrast_range)) if rng.randint(0, 1) else pixels

    def __call__(self, image, mask, rng: random.Random):
        pixels = np.asarray(image.convert("RGB"))
        if rng.randint(0, 1):
            pixels = self._convert(pixels, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = rng.randint(0, 1)
        if contrast_first:
            pixels = self._contrast(pixels, rng)
        saturation = rng.uniform(*self.saturation_range) if rng.randint(0, 1) else None
        hue = rng.randint(-self.hue_delta, self.hue_delta) if rng.randint(0, 1) else None
        if saturation is not None or hue is not None:
            hsv = np.array(Image.fromarray(pixels).convert("HSV"))
            if saturation is not None:
                hsv[..., 1] = self._convert(hsv[..., 1], alpha=saturation)
            if hue is not None:  # OpenCV's hue unit is 2 degrees, PIL's 360/256 degrees
                hsv[..., 0] = np.round(hsv[..., 0] + hue * 256 / 180).astype(np.int64) % 256
            pixels = np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))
        if not contrast_first:
            pixels = self._contrast(pixels, rng)
        return Image.fromarray(pixels), mask


@dataclass
class AugmentConfig:
    """Training augmentation; `base_size` is also the evaluation short side."""

    base_size: int = option(512, "short side for evaluation, and the base of the random resize "
                            "(recorded in the saved preprocessor_config.json)")
    crop_size: int = option(512, "training crop")
    # a list on the command line (two numbers), kept as a tuple
    scale_range: list[float] = option((0.5, 2.0), "random resize ratios of the base size", nargs=2,
                                      metavar=("MIN", "MAX"))
    flip: bool = option(True, "random horizontal flips; --no-flip: none")
    # MMSeg's SegFormer crops: no class over 75% of a crop, where it can
    cat_max_ratio: float = option(0.75, "crops retry so no class covers more than this share (1 = off)")
    photometric: bool = option(True, "brightness/contrast/saturation/hue distortion; --no-photometric: none")

    def __post_init__(self):
        self.scale_range = tuple(float(r) for r in self.scale_range)
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range {self.scale_range}: give MIN MAX with 0 < MIN <= MAX")

    @classmethod
    def off(cls, base_size: int = 512, crop_size: int = 512) -> AugmentConfig:
        """No augmentation beyond resizing the short side to `base_size` and cropping (for --overfit)."""
        return cls(base_size, crop_size, scale_range=(1.0, 1.0), flip=False, cat_max_ratio=1.0, photometric=False)


def train_transform(cfg: AugmentConfig, mean, std, ignore_index: int) -> Compose:
    """MMSeg's order: resize, crop, flip, photometric distortion, normalise, then pad."""
    steps = [RandomResize(cfg.base_size, cfg.scale_range),
             RandomCrop(cfg.crop_size, ignore_index, cfg.cat_max_ratio, pad=False)]
    if cfg.flip:
        steps.append(RandomHorizontalFlip())
    if cfg.photometric:
        steps.append(PhotometricDistortion())
    return Compose(steps + [Normalize(mean, std), Pad(cfg.crop_size, ignore_index)])
