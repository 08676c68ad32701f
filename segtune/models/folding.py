"""SegFormer's all-MLP decode head folded for inference: the per-stage linear layers, the fuse
convolution and the batch norm merged into one matrix product per stage (same outputs, fewer
operations), used by `TorchRunner` where the registry says the architecture allows it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
