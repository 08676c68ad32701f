"""The SegFormer optimiser recipe (MMSegmentation's SegFormer configs): AdamW parameter groups
with no weight decay on normalisation layers and a 10x learning rate on the decode head, and
linear warm-up followed by polynomial decay.

MMSeg writes it as
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'pos_block': dict(decay_mult=0.), 'norm': dict(decay_mult=0.),
                                    'head': dict(lr_mult=10.)})
    param_scheduler=[LinearLR(start_factor=1e-6, end=1500), PolyLR(power=1.0, eta_min=0, begin=1500, end=160000)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..models.architectures import NO_DECAY_NAMES

# Norm layers found by type, not by name: MMSeg's 'norm' substring misses layers named by
# index (its MiT's per-stage final norm, `layers.i.2`) and would catch any name with "norm" in it.
# _NormBase covers BatchNorm*, SyncBatchNorm and InstanceNorm*.
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)
HEAD_PREFIXES = ("decode_head.", "head.", "auxiliary_head.")
GROUP_NAMES = ("encoder_decay", "encoder_no_decay", "head_decay", "head_no_decay")


def _encoder_prefix(model: nn.Module) -> str | None:
    """The attribute holding the backbone: the Hugging Face base model (`segformer`, `beit`,
    `dpt`, ...) or `backbone` (UperNet); None when there is none to be found."""
    for attr in (getattr(model, "base_model_prefix", ""), "backbone"):
        if attr and isinstance(getattr(model, attr, None), nn.Module):
            return attr
    return None


def is_head_parameter(name: str, model: nn.Module) -> bool:
    """True for the parameters trained from scratch: the decode head and anything outside the
    backbone (for SegformerForSemanticSegmentation: everything but `model.segformer`)."""
    if name.startswith(HEAD_PREFIXES):
        return True
    prefix = _encoder_prefix(model)
    return prefix is not None and not name.startswith(prefix + ".")


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.01, head_lr_mult: float = 10.0,
                 bias_decay: bool = True) -> list[dict]:
    """AdamW parameter groups, each named ("encoder_decay", "encoder_no_decay", "head_decay",
    "head_no_decay") with its own `lr` and `weight_decay`; empty groups are dropped.

    Norm layers' weights and biases get no weight decay, nor position tables, tokens and layer
    scales (architectures.NO_DECAY_NAMES: BEiT, DPT, Swin, ConvNeXt). Other biases do decay, as in MMSeg's
    config (it sets no bias_decay_mult); `bias_decay=False` exempts them too, as the Hugging
    Face Trainer does. Shared parameters appear once; frozen ones not at all.
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    groups: dict[str, list] = {name: [] for name in GROUP_NAMES}
    for name, p in model.named_parameters():  # deduplicates shared parameters
        if not p.requires_grad:
            continue
        no_decay = (id(p) in norm_params or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
                    or (not bias_decay and name.endswith(".bias")))
        part = "head" if is_head_parameter(name, model) else "encoder"
        groups[f"{part}_{'no_decay' if no_decay else 'decay'}"].append(p)
    return [
        {"name": name, "params": params, "lr": lr * (head_lr_mult if name.startswith("head") else 1.0),
         "weight_decay": 0.0 if name.endswith("no_decay") else weight_decay}
        for name, params in groups.items() if params
    ]


@dataclass
class _PolyFactor:
    """The multiplier of one group's lr at a step (a picklable callable, not a closure, so
    DataLoader workers and checkpoints have no trouble with it)."""

    base_lr: float
    warmup_steps: int
    total_steps: int
    power: float
    min_lr: float
    warmup_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:  # linear from warmup_ratio to 1, as MMSeg's LinearLR
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        decay = (1.0 - progress) ** self.power
        if self.base_lr == 0:
            return decay
        # min_lr is an absolute lr, the same for every group, as MMSeg's PolyLR eta_min.
        return (self.min_lr + (self.base_lr - self.min_lr) * decay) / self.base_lr


def poly_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, power: float = 1.0,
                  min_lr: float = 0.0, warmup_ratio: float = 1e-6) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from `warmup_ratio` x each group's lr to that lr over `warmup_steps`, then
    lr x (1 - (step - warmup) / (total - warmup)) ** power down to `min_lr` at `total_steps`
    (and there after). Each group keeps its own lr, so the head keeps its multiple.

    Step k is the k-th optimiser step counted from 0, as the Hugging Face Trainer steps it.
    """
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"poly_schedule: need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")
    if power <= 0 or not math.isfinite(power) or min_lr < 0:
        raise ValueError(f"poly_schedule: need power > 0 and min_lr >= 0, got {power} and {min_lr}")
    lambdas = [_PolyFactor(g.get("initial_lr", g["lr"]), warmup_steps, total_steps, power, min_lr, warmup_ratio)
               for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def default_warmup_steps(total_steps: int) -> int:
    """MMSeg's 1500 warm-up steps (of 160k), or 10% of a run shorter than 15000 steps."""
    return min(1500, round(total_steps / 10))


# ---------------------------------------------------------------- mask classifiers' recipes

BACKBONE_PREFIX = "model.pixel_level_module.encoder."  # Mask2Former's and MaskFormer's Swin
MASK2FORMER_BACKBONE_MULT, EOMT_LAYER_DECAY = 0.1, 0.8


def _eomt_scale(name: str, layers: int, decay: float) -> float:
    """EoMT's layer-wise decay: block i at decay ** (L - 1 - i), the patch embedding and tokens as block 0,
    the final norm, queries and heads at the full rate (tue-mps/eomt's configure_optimizers)."""
    if name.startswith("layers."):
        return decay ** (layers - 1 - int(name.split(".")[1]))
    return decay ** (layers - 1) if name.startswith("embeddings.") else 1.0


def mask_param_groups(model: nn.Module, lr: float, weight_decay: float, recipe: str) -> list[dict]:
    """AdamW parameter groups of the mask classifiers' recipes: "mask2former" (Mask2Former and MaskFormer:
    the Swin backbone at 0.1x), "eomt" (layer-wise decay 0.8 over the ViT blocks). No weight decay on norm
    layers, embeddings (nn.Embedding: queries, level and position tables) and tokens (NO_DECAY_NAMES)."""
    inner = getattr(model, "module", model)
    no_decay_ids = {id(p) for m in inner.modules() if isinstance(m, NORM_TYPES + (nn.Embedding,))
                    for p in m.parameters(recurse=False)}
    layers = getattr(inner.config, "num_hidden_layers", 1)
    groups: dict[tuple, list] = {}
    for name, p in inner.named_parameters():
        if not p.requires_grad:
            continue
        if recipe == "eomt":
            scale = _eomt_scale(name, layers, EOMT_LAYER_DECAY)
        else:
            scale = MASK2FORMER_BACKBONE_MULT if name.startswith(BACKBONE_PREFIX) else 1.0
        no_decay = id(p) in no_decay_ids or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        groups.setdefault((scale, no_decay), []).append(p)
    return [{"name": f"lr_x{scale:.4g}_{'no_decay' if no_decay else 'decay'}", "params": params, "lr": lr * scale,
             "weight_decay": 0.0 if no_decay else weight_decay}
            for (scale, no_decay), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))]


def eomt_mask_probability(step: int, total_steps: int, block: int, blocks: int, power: float = 0.9) -> float:
    """EoMT's mask annealing: block i's attention-mask probability stays 1 until step (i + 1) T / (B + 2),
    falls as (1 - progress) ** 0.9 to 0 at (i + 2) T / (B + 2) and stays 0 (B blocks, T steps): the last block
    lets go at 5/6 of training with 4 blocks, as tue-mps/eomt's configs place it (ADE20K: 6520 ... 32600 of
    39,120 steps)."""
    start, end = (block + 1) * total_steps / (blocks + 2), (block + 2) * total_steps / (blocks + 2)
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return (1.0 - (step - start) / (end - start)) ** power
