"""Models with N input channels: any architecture of the registry built with `num_channels = N`, and a
3-channel pretrained checkpoint adapted to N channels instead of starting its first layer from random.

The adaptation (timm's `adapt_input_conv`, with the RGB kernels placed by band): the first convolution
(SegFormer's first patch embedding, ConvNeXt's stem, BEiT's patch projection ...) has (out, 3, k, k)
weights learnt on RGB. The N-channel kernel keeps each of the R, G and B kernels on the band the user
names as that colour (`--rgb-bands 4,3,2`), every other band starts from the mean of the three, and the
whole kernel is scaled by 3/N: for inputs whose bands look alike, the layer's output then keeps the
scale the rest of the pretrained network expects.
"""

from __future__ import annotations

import torch

from ..errors import SegtuneError


def first_conv(model: torch.nn.Module, in_channels: int = 3) -> tuple[str, torch.nn.Conv2d] | None:
    """The first Conv2d (in registration order: the stem) taking `in_channels` channels."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            return (name, module) if module.in_channels == in_channels else None
    return None


def adapted_kernel(weight: torch.Tensor, channels: int, rgb_positions: list[int] | None) -> torch.Tensor:
    """(out, 3, k, k) RGB kernels -> (out, N, k, k): RGB on `rgb_positions` (channel indices of R, G, B),
    the mean of the three elsewhere, all times 3/N."""
    mean = weight.mean(dim=1)
    out = mean[:, None].repeat(1, channels, 1, 1)
    for colour, position in enumerate(rgb_positions or []):
        out[:, position] = weight[:, colour]
    return out * (3.0 / channels)


def _set_config_channels(config, channels: int) -> None:
    config.num_channels = channels
    backbone = getattr(config, "backbone_config", None)
    if backbone is not None and hasattr(backbone, "num_channels"):
        backbone.num_channels = channels


def with_channels(model: torch.nn.Module, channels: int, rgb_positions: list[int] | None = None,
                  pretrained: bool = True) -> torch.nn.Module:
    """`model` (3 channels) taking `channels` input channels, in place; its first layer adapted from the
    RGB kernels when `pretrained`, else built afresh (random weights, as the rest). An architecture whose
    first layer cannot be found or that refuses N channels says so in one line."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    if rgb_positions is not None and (len(rgb_positions) != 3 or max(rgb_positions) >= channels):
        raise SegtuneError(f"--rgb-bands: name three of the {channels} bands the model takes")
    current = int(getattr(model.config, "num_channels", 3) or 3)
    if current == channels and (current != 3 or rgb_positions in (None, [0, 1, 2])):
        return model  # already takes these channels (a band model fine-tuned again)
    if current != 3:
        raise SegtuneError(f"{model_type}: the checkpoint takes {current} input channels, not {channels}; start "
                           "from an RGB checkpoint or one of as many bands")
    found = first_conv(model)
    if found is None:
        raise SegtuneError(f"{model_type}: cannot take {channels} input channels (no 3-channel first convolution "
                           "found to adapt)")
    name, conv = found
    new = torch.nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                          conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device,
                          dtype=conv.weight.dtype)
    with torch.no_grad():
        if pretrained:
            new.weight.copy_(adapted_kernel(conv.weight, channels, rgb_positions))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    for module in model.modules():  # the embeddings that check the input's channels against the config
        if getattr(module, "num_channels", None) == 3 and not isinstance(module, torch.nn.GroupNorm):
            module.num_channels = channels
    _set_config_channels(model.config, channels)
    try:
        check_channels(model, channels)
    except Exception as e:  # noqa: BLE001 - whatever the forward pass raises, said in one line
        raise SegtuneError(f"{model_type}: cannot take {channels} input channels ({str(e).splitlines()[0]})") from None
    return model


def check_channels(model: torch.nn.Module, channels: int) -> None:
    """One small forward pass with `channels` channels (raises what the model raises)."""
    from .architectures import input_size

    side = input_size(model.config) or 64
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    with torch.no_grad():
        model(pixel_values=torch.zeros(1, channels, side, side, device=param.device, dtype=param.dtype))
    model.train(was_training)
