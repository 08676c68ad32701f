"""Segmentation losses on (logits (N, C, h, w), labels (N, H, W) int64).

Each loss first upsamples the logits bilinearly (align_corners=False) to the labels' size,
as transformers' SegFormer does for its own loss, and computes in float32. Pixels labelled
`ignore_index` contribute nothing, neither to the value nor to the gradient. A batch with no
labelled pixel gives a loss of 0 (not NaN, which would poison the weights through AdamW).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SegLoss(nn.Module):
    """Base class: upsamples, then calls `compute(logits_at_label_size, labels)`."""

    def __init__(self, ignore_index: int = 255, class_weights=None):
        super().__init__()
        self.ignore_index = ignore_index
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.compute(upsample(logits, labels), labels)

    def compute(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _valid_targets(self, labels):
        """(valid mask, labels with ignored pixels set to class 0 so they can index)."""
        valid = labels != self.ignore_index
        return valid, torch.where(valid, labels, 0)


def upsample(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if logits.shape[-2:] == labels.shape[-2:]:
        return logits
    return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)


class CrossEntropyLoss(SegLoss):
    """transformers' SegFormer loss (mean over labelled pixels); with `class_weights`, torch's
    weighted mean: sum of w[y] * nll over the sum of w[y]."""

    def compute(self, logits, labels):
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        loss = F.cross_entropy(logits, labels, weight=weight, ignore_index=self.ignore_index)
        # torch.where, not a Python `if`: no device-to-host sync on a GPU.
        return torch.where((labels != self.ignore_index).any(), loss, logits.sum() * 0)


class FocalLoss(SegLoss):
    """Softmax focal loss (Lin et al. 2017): -w[y] (1 - p_y)^gamma log p_y, normalised by the
    sum of w[y] as the weighted cross-entropy is, so gamma=0 gives exactly CrossEntropyLoss.
    `class_weights` play the part of the paper's alpha."""

    def __init__(self, ignore_index: int = 255, class_weights=None, gamma: float = 2.0):
        super().__init__(ignore_index, class_weights)
        self.gamma = gamma

    def compute(self, logits, labels):
        valid, target = self._valid_targets(labels)
        logp = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -logp
        if self.gamma:  # skipped at 0: the gradient of x ** 0 at x = 0 is NaN
            loss = loss * (1 - logp.exp()).clamp_min(0) ** self.gamma
        weight = valid.float()
        if self.class_weights is not None:
            weight = weight * self.class_weights.to(logits.device)[target]
        # where, not multiply: an ignored pixel gets exactly zero gradient whatever its logits.
        total = torch.where(valid, loss * weight, 0).sum()
        return total / weight.sum().clamp_min(torch.finfo(torch.float32).tiny)


class DiceLoss(SegLoss):
    """1 - mean soft Dice over the classes present in the batch's labels:
    dice_c = (2 sum p_c y_c + smooth) / (sum p_c + sum y_c + smooth), sums over all labelled
    pixels of the batch (one Dice per class per batch, steadier than per image). Classes
    absent from the labels are left out, so it does not push rare classes to zero where they
    are absent; pair it with cross-entropy ("ce:1,dice:0.5") for that."""

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0):
        super().__init__(ignore_index)
        self.smooth = smooth

    def compute(self, logits, labels):
        valid, target = self._valid_targets(labels)
        num_classes = logits.shape[1]
        probs = torch.where(valid.unsqueeze(1), logits.softmax(dim=1), 0)
        prob_sum = probs.sum(dim=(0, 2, 3))  # sum of p_c over labelled pixels
        true_prob = probs.gather(1, target.unsqueeze(1)).flatten()  # p_y, 0 where ignored
        zeros = torch.zeros(num_classes, device=logits.device)
        intersection = zeros.index_add(0, target.flatten(), true_prob)
        label_sum = zeros.index_add(0, target.flatten(), valid.flatten().float())  # pixels of each class
        dice = (2 * intersection + self.smooth) / (prob_sum + label_sum + self.smooth)
        present = label_sum > 0
        return (1 - dice)[present].sum() / present.sum().clamp_min(1)


LOSSES = {"ce": CrossEntropyLoss, "dice": DiceLoss, "focal": FocalLoss}
ALIASES = {"cross_entropy": "ce", "crossentropy": "ce"}


class CombinedLoss(nn.Module):
    """Weighted sum of losses, the logits upsampled once for all of them."""

    def __init__(self, terms: list[tuple[str, float, SegLoss]]):
        super().__init__()
        self.names = [name for name, _, _ in terms]
        self.weights = [weight for _, weight, _ in terms]
        self.losses = nn.ModuleList(loss for _, _, loss in terms)

    def forward(self, logits, labels):
        logits = upsample(logits, labels)
        return sum(w * loss.compute(logits, labels) for w, loss in zip(self.weights, self.losses))

    def __repr__(self):
        return f"CombinedLoss({','.join(f'{n}:{w:g}' for n, w in zip(self.names, self.weights))})"


def parse_loss_spec(spec: str, ignore_index: int = 255, class_weights=None, gamma: float = 2.0) -> CombinedLoss:
    """"ce", "ce:1.0,dice:0.5", "focal" -> CombinedLoss; a missing weight is 1. `class_weights`
    go to ce and focal (Dice has none)."""
    terms, seen = [], set()
    for part in spec.split(","):
        name, _, weight_text = part.strip().partition(":")
        name = ALIASES.get(name.strip().lower(), name.strip().lower())
        if name not in LOSSES:
            raise ValueError(f"loss '{spec}': unknown loss '{name}' (choose from {', '.join(LOSSES)})")
        if name in seen:
            raise ValueError(f"loss '{spec}': '{name}' given twice")
        try:
            weight = float(weight_text) if weight_text.strip() else 1.0
        except ValueError:
            raise ValueError(f"loss '{spec}': weight '{weight_text.strip()}' of {name} is not a number") from None
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"loss '{spec}': weight of {name} must be a positive number, got {weight_text.strip()}")
        kwargs = {"ignore_index": ignore_index}
        if name != "dice":
            kwargs["class_weights"] = class_weights
        if name == "focal":
            kwargs["gamma"] = gamma
        terms.append((name, weight, LOSSES[name](**kwargs)))
        seen.add(name)
    return CombinedLoss(terms)


# ---------------------------------------------------------------- class weights

WEIGHTING_METHODS = ("inverse_sqrt", "inverse", "median_freq", "enet")


def pixel_counts(masks, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Pixels of each class 0..num_classes-1 over an iterable of (H, W) integer masks."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for mask in masks:
        mask = np.asarray(mask)
        values = mask[(mask != ignore_index) & (mask >= 0) & (mask < num_classes)]
        counts += np.bincount(values.ravel(), minlength=num_classes)
    return counts


def class_weights_from_frequencies(pixel_counts, method: str = "inverse_sqrt") -> torch.Tensor:
    """Class weights from per-class pixel counts (ignored pixels not counted), f_c = n_c / sum n:

    - "inverse_sqrt": w_c = 1 / sqrt(f_c), scaled so the present classes' weights average 1;
    - "inverse":      w_c = 1 / f_c, scaled likewise;
    - "median_freq":  w_c = median(f) / f_c, the median over present classes (Eigen & Fergus,
      used by SegNet on CamVid; they take f_c over the images containing c only, we over all
      pixels, as only totals are given here);
    - "enet":         w_c = 1 / ln(1.02 + f_c) (ENet), bounded by 1 / ln(1.02) ~ 50.

    A class with no pixels gets weight 1 (neutral): it is never a target in the data counted,
    and if the counts came from a sample, a 0 would silently stop it from being learnt.
    """
    counts = torch.as_tensor(np.asarray(pixel_counts, dtype=np.float64))
    if counts.ndim != 1 or not len(counts):
        raise ValueError(f"pixel counts: need one count per class, got shape {tuple(counts.shape)}")
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("pixel counts: must be finite and non-negative")
    present = counts > 0
    if not present.any():
        raise ValueError("pixel counts: no class has any pixel")
    freq = counts / counts.sum()
    f = freq[present]
    if method == "inverse_sqrt":
        w = 1 / f.sqrt()
        w = w / w.mean()
    elif method == "inverse":
        w = 1 / f
        w = w / w.mean()
    elif method == "median_freq":
        w = float(np.median(f.numpy())) / f  # numpy's median: torch's takes the lower middle value
    elif method == "enet":
        w = 1 / torch.log(1.02 + f)
    else:
        raise ValueError(f"class weights: unknown method '{method}' (choose from {', '.join(WEIGHTING_METHODS)})")
    weights = torch.ones_like(freq)
    weights[present] = w
    return weights.float()


def load_class_weights(path, class_names=None) -> torch.Tensor:
    """Class weights from a file: a JSON list (one per class), a JSON object {name or id: weight}
    (classes not named get 1; needs `class_names` for names), or plain text with one number
    per line ('#' comments and blank lines allowed). With `class_names`, the count is checked."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read class weights ({e})") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    else:
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                data.append(float(line))
            except ValueError:
                raise ValueError(f"{path}, line {n}: '{line}' is not a number (one weight per line)") from None
    if isinstance(data, dict):
        data = _weights_from_mapping(path, data, class_names)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: class weights must be a non-empty list, an object {{name: weight}} or one "
                         "number per line")
    if class_names is not None and len(data) != len(class_names):
        raise ValueError(f"{path}: {len(data)} class weights for {len(class_names)} classes")
    for i, w in enumerate(data):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{path}: weight {w!r} of class {i} must be a finite number >= 0")
    if not any(data):
        raise ValueError(f"{path}: every class weight is 0")
    return torch.tensor(data, dtype=torch.float32)


def _weights_from_mapping(path, mapping: dict, class_names) -> list:
    if class_names is None:
        if not all(str(k).isdigit() for k in mapping):
            raise ValueError(f"{path}: weights keyed by class name need the class names")
        class_names = [str(i) for i in range(max(int(k) for k in mapping) + 1)]
    index = {name: i for i, name in enumerate(class_names)}
    weights = [1.0] * len(class_names)
    for key, value in mapping.items():
        i = index.get(key)
        if i is None and str(key).isdigit() and int(key) < len(class_names):
            i = int(key)
        if i is None:
            raise ValueError(f"{path}: unknown class '{key}' (classes: {', '.join(class_names)})")
        weights[i] = value
    return weights
