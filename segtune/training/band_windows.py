"""Training on multi-band rasters of any size: random windows read straight from the image/mask pairs.

No chips are cut beforehand. An epoch is a fixed number of windows (as torchgeo's random samplers
have a length): each raster contributes as many as `crop_size` windows it would take to tile it, so
an epoch covers about the training area once. Item k is window k % n of epoch k // n (EpochSampler's
index, as TrainDataset's): its raster is fixed by k % n, and where the window lies, its scale and its
flip are drawn from (seed, epoch, k % n) alone, so a run is the same with any number of workers
and after a resume. Only the window is read (rasterio windows), so memory does not grow with the raster.

Augmentation, for imagery seen from above: a random scale (`--scale-range`, ratios of the native
resolution: the window read is crop/ratio pixels, resized to crop), a horizontal flip (`--flip`),
and a vertical one with it (an aerial view has no up). Photometric distortion is for 8-bit RGB
photos and is not applied. Values are clipped and normalised per band (band_stats.BandPreprocess);
nodata pixels become 0 in the input and the ignore index in the mask.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F

from ..data.band_stats import BandPreprocess
from ..data.rasters import raster_meta
from .trainer import TrainDataset


class BandTrainDataset(TrainDataset):
    def __init__(self, samples: list, rules, settings: dict, augment, ignore_index: int):
        super().__init__(samples, None, rules)
        self.preprocess = BandPreprocess(settings)
        self.augment, self.ignore_index = augment, ignore_index
        self.crop = int(augment.crop_size)
        self.sizes = [(m.height, m.width) for m in (raster_meta(s.image) for s in samples)]
        self.windows = [i for i, (h, w) in enumerate(self.sizes)
                        for _ in range(math.ceil(h / self.crop) * math.ceil(w / self.crop))]

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, k):
        epoch, j = divmod(k, len(self.windows))
        rng = random.Random(int(np.random.SeedSequence([self.seed, epoch, j]).generate_state(1)[0]))
        i = self.windows[j]
        height, width = self.sizes[i]
        ratio = rng.uniform(*self.augment.scale_range)
        side = max(1, round(self.crop / ratio))
        wh, ww = min(side, height), min(side, width)
        y0, x0 = rng.randint(0, height - wh), rng.randint(0, width - ww)
        image, mask = self.samples[i].read(self.rules, (y0, y0 + wh, x0, x0 + ww))
        pixels = torch.from_numpy(self.preprocess(image.pixels, image.valid))
        labels = torch.from_numpy(np.ascontiguousarray(mask))
        if side != self.crop:
            size = (max(1, round(wh * self.crop / side)), max(1, round(ww * self.crop / side)))
            pixels = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False)[0]
            labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].long()
        if self.augment.flip and rng.random() < 0.5:
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        if self.augment.flip and rng.random() < 0.5:
            pixels, labels = pixels.flip(-2), labels.flip(-2)
        pixels, labels = pixels[:, :self.crop, :self.crop], labels[:self.crop, :self.crop]
        pad_h, pad_w = self.crop - pixels.shape[-2], self.crop - pixels.shape[-1]
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h), value=0.0)
            labels = F.pad(labels, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return {"pixel_values": pixels.contiguous(), "labels": labels.contiguous()}
