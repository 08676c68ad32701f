"""Scoring multi-band rasters: each whole raster, tile by tile at its original resolution, with the
inference `segtune predict` runs (inference/bands.py), into the same exact confusion matrix.

`RasterEvalDataset` stands where an EvalDataset stands (the Trainer's validation, `segtune evaluate`):
`evaluate_model` hands it the model and it scores itself, since its items are not one forward pass each.
Under torch.distributed each rank scores every world_size-th raster and the matrices are summed.
"""

from __future__ import annotations

import numpy as np
import torch

from .metrics import ConfusionMatrix

WHOLE_SCORES_MAX = 16_000_000  # per-image scores (the report's gallery) for rasters up to this many pixels


class RasterEvalDataset:
    def __init__(self, samples: list, rules, settings: dict, crop_size: int | None = None):
        self.samples, self.rules, self.settings, self.crop_size = samples, rules, settings, crop_size

    def __len__(self):
        return len(self.samples)

    @torch.inference_mode()
    def evaluate_into(self, model, num_classes: int, ignore_index: int, batch_size: int = 2, progress: bool = True,
                      on_item=None) -> ConfusionMatrix:
        from tqdm.auto import tqdm

        from ..data.labels import LabelSet
        from ..inference.bands import BandSegmenter

        was_training = getattr(model, "training", False)
        if isinstance(model, torch.nn.Module):
            model = _PlainForward(model)
        segmenter = BandSegmenter(model, self.settings, LabelSet.numbered(num_classes), crop_size=self.crop_size,
                                  batch_size=max(batch_size, 1))
        cm = ConfusionMatrix(num_classes, ignore_index, device=segmenter.device)
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        for index in tqdm(range(rank, len(self.samples), world), desc="evaluating", leave=False, disable=not progress):
            sample = self.samples[index]
            raster = sample.raster()
            whole = on_item is not None and raster.height * raster.width <= WHOLE_SCORES_MAX
            if whole:
                label_all = np.full((raster.height, raster.width), ignore_index, np.int64)
                pred_all = np.zeros((raster.height, raster.width), np.int64)
            for (y0, y1, x0, x1), label_map, _ in segmenter.tiles(raster):
                truth = sample.read_mask(self.rules, (y0, y1, x0, x1))
                prediction = torch.from_numpy(label_map.astype(np.int64))
                cm.update(torch.from_numpy(truth).to(cm.mat.device), prediction.to(cm.mat.device))
                if whole:
                    label_all[y0:y1, x0:x1], pred_all[y0:y1, x0:x1] = truth, label_map
            if whole:
                on_item(index, torch.from_numpy(label_all), torch.from_numpy(pred_all))
        cm.all_reduce()
        if isinstance(model, _PlainForward):
            model.model.train(was_training)
        return cm


class _PlainForward:
    """A torch model as a Runner, through its forward as the model defines it: training in bf16, accelerate
    wraps the forward in autocast, and scoring in the model's own precision keeps the metric exact
    (as evaluate_model does)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.forward = getattr(model, "_original_forward", None) or model

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def __call__(self, pixel_values):
        from ..models.masks import pixel_scores  # a mask classifier's semantic scores, a per-pixel model's logits

        return pixel_scores(self.forward, pixel_values.to(self.device, self.dtype))
