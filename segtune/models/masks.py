"""Mask classifiers (EoMT, Mask2Former, MaskFormer) as semantic segmenters: their targets built
from a semantic mask, and their per-class score map (docs/models.md#mask-classification).

A mask classifier predicts Q queries, each a class distribution over C classes plus "no object"
and a mask. segtune trains it on semantic masks and reads a semantic score map out of it:

- targets: one binary mask per class present in the label map (ignored pixels are in none) and
  that class's id, built here from the mask after segtune's own MaskRules (label map, reduction,
  ignore index). The processors' own conversion is not used: without `ignore_index` 255 becomes
  a class, `do_reduce_labels` with 255 present yields class 254, EoMT's `ignore_index` shifts
  every class by one, and batch padding fills masks with 255.0 (transformers 5.25).
- scores: score[c] = sum over queries q of softmax(class logits of q)[c] (no-object class dropped)
  x sigmoid(mask logits of q), the masks upsampled bilinearly to the model's input size first
  (Mask2Former's paper and transformers' EoMT post-processing; transformers' Mask2Former
  post-processing resizes masks to 384x384 first instead). The rest of segtune treats the map as
  per-pixel models' logits: upsampled to the image size and arg-maxed, averaged in slide mode.
  It is not log-probabilities: `probabilities` normalises it by its sum over classes, where the
  per-pixel models take a softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def semantic_targets(labels: torch.Tensor, ignore_index: int, num_classes: int | None = None):
    """(B, H, W) class ids -> (mask_labels, class_labels), the lists the models' losses take: per image an
    (n, H, W) float mask per class present (ignored pixels, and ids >= num_classes, in none) and its (n,) ids.
    An image with every pixel ignored gets none (the models' losses take it: only "no object" is learned)."""
    mask_labels, class_labels = [], []
    for label in labels:
        present = torch.unique(label)
        keep = present != ignore_index
        if num_classes is not None:
            keep &= (present >= 0) & (present < num_classes)
        classes = present[keep].long()
        mask_labels.append((label[None] == classes[:, None, None]).float())
        class_labels.append(classes)
    return mask_labels, class_labels


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor, size) -> torch.Tensor:
    """(B, Q, C+1) class logits and (B, Q, h, w) mask logits -> (B, C, H, W) per-class scores at `size`."""
    classes = class_logits.float().softmax(-1)[..., :-1]
    masks = F.interpolate(mask_logits.float(), size=tuple(size), mode="bilinear", align_corners=False).sigmoid()
    return torch.einsum("bqc,bqhw->bchw", classes, masks)


def pixel_scores(forward, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) per-pixel scores of a segmentation model (or its forward): a per-pixel model's logits,
    a mask classifier's semantic scores at the input size (above)."""
    outputs = forward(pixel_values=pixel_values)
    logits = getattr(outputs, "logits", None)
    if logits is not None:
        return logits
    return semantic_scores(outputs.class_queries_logits, outputs.masks_queries_logits, pixel_values.shape[-2:])


def probabilities(scores: torch.Tensor, family: str, dim: int = 0) -> torch.Tensor:
    """Class probabilities of a score map: softmax of logits; a mask classifier's scores over their sum."""
    if family == "mask":
        return scores / scores.sum(dim, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    return scores.softmax(dim)


def mask_loss(model, pixel_values: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    """-> (loss, outputs): the model's own Hungarian-matched loss (class cross-entropy, mask BCE and dice, on
    every decoder layer or EoMT block as the model adds them) on targets built from `labels`."""
    inner = getattr(model, "module", model)  # DistributedDataParallel's wrapper
    mask_labels, class_labels = semantic_targets(labels, ignore_index, inner.config.num_labels)
    outputs = model(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels)
    return outputs.loss, outputs


def original_query_init(model) -> bool:
    """MaskFormer's query embeddings drawn from N(0, 1), as the original (nn.Embedding's default init), where
    transformers draws them with its init_std of 0.02: the DETR decoder starts from zeros plus these, so its
    queries then come out nearly alike (std 4e-4 apart here) and a model built from random weights learns one
    mask for all. For models built from a config only; a checkpoint keeps its trained queries."""
    queries = getattr(getattr(getattr(model, "model", None), "transformer_module", None), "queries_embedder", None)
    if getattr(model.config, "model_type", "") != "maskformer" or queries is None:
        return False
    with torch.no_grad():
        torch.nn.init.normal_(queries.weight)
    return True
