"""Joint image/mask transforms (after torchvision's references/segmentation/transforms.py).

Each transform takes and returns (PIL RGB image, int64 numpy mask). Masks are resized with
nearest neighbour and padded with the ignore index, so padding is never learnt as a class.
Evaluation does not use these: it runs the saved image processor itself, so plain
transformers preprocesses exactly as segtune does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, image, mask):
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask


class RandomResize:
    """Resizes so the short side is `base_size` times a ratio drawn from `ratio_range`."""

    def __init__(self, base_size: int, ratio_range: tuple[float, float]):
        self.base_size, self.ratio_range = base_size, ratio_range

    def __call__(self, image, mask):
        short = self.base_size * random.uniform(*self.ratio_range)
        scale = short / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR)
        mask = np.array(Image.fromarray(mask.astype(np.int32), mode="I").resize(size, Image.NEAREST), dtype=np.int64)
        return image, mask


class RandomCrop:
    """Pads (image with black, mask with the ignore index) up to `size`, then crops at random."""

    def __init__(self, size: int, ignore_index: int):
        self.size, self.ignore_index = size, ignore_index

    def __call__(self, image, mask):
        pad_w, pad_h = max(0, self.size - image.width), max(0, self.size - image.height)
        if pad_w or pad_h:
            padded = Image.new("RGB", (image.width + pad_w, image.height + pad_h))
            padded.paste(image, (0, 0))
            image = padded
            mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        left = random.randint(0, image.width - self.size)
        top = random.randint(0, image.height - self.size)
        image = image.crop((left, top, left + self.size, top + self.size))
        return image, mask[top : top + self.size, left : left + self.size]


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, mask):
        if random.random() < self.p:
            return image.transpose(Image.FLIP_LEFT_RIGHT), mask[:, ::-1]
        return image, mask


class Normalize:
    """PIL image -> normalised float tensor (C, H, W), as the image processor rescales and normalises."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image, mask):
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std, torch.from_numpy(np.ascontiguousarray(mask))


@dataclass
class AugmentConfig:
    """Training augmentation; `base_size` is also the evaluation short side."""

    base_size: int = 512
    crop_size: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True


def train_transform(cfg: AugmentConfig, mean, std, ignore_index: int) -> Compose:
    steps = [RandomResize(cfg.base_size, cfg.scale_range), RandomCrop(cfg.crop_size, ignore_index)]
    if cfg.flip:
        steps.append(RandomHorizontalFlip())
    return Compose(steps + [Normalize(mean, std)])


class ProcessorTransform:
    """Evaluation/prediction preprocessing: exactly the saved image processor."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]
