"""Building or loading a segmentation model and its image processor, sized to the labels, and
reshaping a loaded SegFormer for faster inference (`fold_segformer_head`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import SegtuneError
from .hub import check_hub
from .labels import LabelSet

log = logging.getLogger("segtune")

# The six Mix Transformer encoders of the SegFormer paper, for training without the Hub.
MIT_ARCHITECTURES = {
    "mit-b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "mit-b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "mit-b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    "mit-b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], decoder_hidden_size=768),
    "mit-b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
    "mit-b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768),
}
DEFAULT_MODEL = "nvidia/mit-b0"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _label_kwargs(labels: LabelSet, ignore_index: int) -> dict:
    return dict(
        num_labels=len(labels),
        id2label=labels.id2label,
        label2id=labels.label2id,
        semantic_loss_ignore_index=ignore_index,
    )


def load_model(name: str, labels: LabelSet, ignore_index: int = 255, trust_remote_code: bool = False):
    """An architecture name builds random weights; a Hub id or folder is loaded and re-headed."""
    from transformers import AutoModelForSemanticSegmentation, SegformerConfig, SegformerForSemanticSegmentation

    if name in MIT_ARCHITECTURES:
        log.warning(
            "segtune: building %s from its config with RANDOM weights (no pretrained checkpoint); "
            "expect far lower accuracy than fine-tuning nvidia/%s",
            name,
            name,
        )
        config = SegformerConfig(**MIT_ARCHITECTURES[name], **_label_kwargs(labels, ignore_index))
        return SegformerForSemanticSegmentation(config)
    check_hub(name)
    try:
        return AutoModelForSemanticSegmentation.from_pretrained(
            name,
            **_label_kwargs(labels, ignore_index),
            ignore_mismatched_sizes=True,  # a checkpoint with another head is re-headed
            trust_remote_code=trust_remote_code,
        )
    except OSError as e:
        hint = f" (offline architectures: {', '.join(MIT_ARCHITECTURES)})" if not Path(name).exists() else ""
        raise SegtuneError(f"{name}: cannot load model: {str(e).splitlines()[0]}{hint}") from None


def load_processor(name_or_dir: str | Path):
    """The processor saved with a model; SegFormer's PIL variant since torchvision is absent."""
    from transformers import AutoConfig, AutoImageProcessor, SegformerImageProcessorPil

    check_hub(name_or_dir)
    try:
        model_type = AutoConfig.from_pretrained(name_or_dir).model_type
        if model_type == "segformer":
            return SegformerImageProcessorPil.from_pretrained(name_or_dir)
        return AutoImageProcessor.from_pretrained(name_or_dir)
    except OSError as e:
        raise SegtuneError(f"{name_or_dir}: cannot load image processor: {str(e).splitlines()[0]}") from None


def training_processor(model_name: str, base_size: int):
    """The processor to train with and save: short side resized to `base_size`, aspect kept.

    Mean and std come from the checkpoint's own processor when there is one.
    """
    from transformers import SegformerImageProcessorPil

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if model_name not in MIT_ARCHITECTURES:
        try:
            source = load_processor(model_name)
            mean, std = list(source.image_mean), list(source.image_std)
        except SegtuneError:
            log.warning("segtune: %s has no image processor; using ImageNet mean/std", model_name)
    return SegformerImageProcessorPil(
        size={"shortest_edge": base_size}, image_mean=mean, image_std=std, do_reduce_labels=False
    )


# ---------------------------------------------------------------- a faster SegFormer head


class FoldedSegformerHead(torch.nn.Module):
    """SegFormer's all-MLP decode head with its fuse layer and BatchNorm folded into the per-stage
    projections, for inference.

    The head projects each stage to D channels, upsamples all to 1/4 of the input, concatenates
    them (4D channels) and mixes them with a 1x1 conv, then BatchNorm, ReLU, classifier. Bilinear
    upsampling and 1x1 convs are both linear per pixel and channel, so mixing at each stage's own
    resolution before upsampling and summing is the same function; the (4D x H/4 x W/4) tensor and
    the largest matmul of the model disappear. Exact in real arithmetic; in float32 the logits
    move by about 1e-7, which can flip the argmax of near-tied pixels only.
    """

    def __init__(self, head):
        super().__init__()
        stages, width = len(head.linear_projections), head.linear_fuse.out_channels
        fuse = head.linear_fuse.weight[:, :, 0, 0].double()
        bn = head.batch_norm
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = bn.bias.double() - bn.running_mean.double() * scale
        weights = []
        for i, mlp in enumerate(head.linear_projections):
            block = fuse[:, (stages - 1 - i) * width : (stages - i) * width]  # the head concatenates c4..c1
            weights.append(scale[:, None] * (block @ mlp.proj.weight.double()))
            bias = bias + scale * (block @ mlp.proj.bias.double())
        dtype = head.linear_fuse.weight.dtype
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(w.to(dtype)[:, :, None, None], requires_grad=False) for w in weights)
        self.bias = torch.nn.Parameter(bias.to(dtype)[None, :, None, None], requires_grad=False)
        self.classifier = head.classifier

    def forward(self, encoder_hidden_states, **kwargs):
        size = encoder_hidden_states[0].shape[2:]
        total = None
        for i, (states, weight) in enumerate(zip(encoder_hidden_states, self.weights)):
            mixed = F.conv2d(states, weight)
            if i:
                mixed = F.interpolate(mixed, size=size, mode="bilinear", align_corners=False)
            total = mixed if total is None else total.add_(mixed)
        return self.classifier(torch.relu_(total.add_(self.bias)))


def fold_segformer_head(model) -> bool:
    """Replaces a SegFormer's decode head by FoldedSegformerHead (eval only); False if not a SegFormer."""
    head = getattr(model, "decode_head", None)
    if type(head).__name__ != "SegformerDecodeHead" or getattr(model.config, "reshape_last_stage", True) is False:
        return False
    model.decode_head = FoldedSegformerHead(head).to(next(head.parameters()).device)
    return True
