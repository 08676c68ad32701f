"""Export helpers: modules that the TorchScript ONNX exporter cannot write, replaced by the same
computation written in operations it can (used by `segtune export` and benchmarks/models.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ExportableAdaptiveAvgPool(torch.nn.Module):
    """nn.AdaptiveAvgPool2d as two matrix products, which the TorchScript ONNX exporter takes with a
    dynamic input size (it refuses adaptive_avg_pool2d unless the output is 1x1).

    Bin i of n over a length L spans [floor(i L / n), ceil((i + 1) L / n)), torch's own bins; the
    averaging matrix is built from the input's shape by tensor operations only, so the exported
    graph computes it for any size. Exact up to float rounding (the sum order differs)."""

    def __init__(self, output_size):
        super().__init__()
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        self.output_size = tuple(size)

    @staticmethod
    def _matrix(positions: torch.Tensor, n: int) -> torch.Tensor:
        length = positions[-1:] + 1  # the input's length, as a tensor (positions are 0 .. L - 1)
        i = torch.arange(n, dtype=positions.dtype, device=positions.device)[:, None]
        start, end = torch.floor(i * length / n), torch.ceil((i + 1) * length / n)
        inside = ((positions[None] >= start) & (positions[None] < end)).to(positions.dtype)
        return inside / inside.sum(1, keepdim=True)  # (n, L)

    def forward(self, x):
        rows = torch.cumsum(torch.ones_like(x[0, 0, :, 0]), 0) - 1
        cols = torch.cumsum(torch.ones_like(x[0, 0, 0, :]), 0) - 1
        oh, ow = self.output_size
        out = torch.matmul(self._matrix(rows, oh), x)  # (n, c, oh, W)
        return torch.matmul(out, self._matrix(cols, ow).transpose(0, 1))


def make_exportable(model: torch.nn.Module) -> int:
    """Replaces adaptive average pooling (UperNet's and BEiT's pyramid pooling, global pooling) by
    ExportableAdaptiveAvgPool, in place; returns how many modules it replaced."""
    import types

    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            # 1x1 too: the exporter takes it only where the input size is known (not in Swin-UperNet)
            if isinstance(child, torch.nn.AdaptiveAvgPool2d):
                new = ExportableAdaptiveAvgPool(child.output_size)
                setattr(parent, child_name, new)
                for value in vars(parent).values():  # UperNet's blocks also call their layers from a plain list
                    if isinstance(value, list) and any(v is child for v in value):
                        value[:] = [new if v is child else v for v in value]
                replaced += 1
        if type(parent).__name__ == "MobileViTV2Layer":
            parent.folding = types.MethodType(_fold_patches, parent)
            replaced += 1
    return replaced


def _fold_patches(layer, patches: torch.Tensor, output_size) -> torch.Tensor:
    """MobileViTV2Layer.folding (F.fold of non-overlapping patches, which the exporter cannot write
    as col2im) as the reshape and permutation it is where the patches tile the output."""
    ph, pw = layer.patch_height, layer.patch_width
    height, width = (int(v) for v in output_size)
    if height % ph or width % pw:
        return F.fold(patches.flatten(1, 2), output_size=(height, width), kernel_size=(ph, pw), stride=(ph, pw))
    batch, channels = patches.shape[:2]
    grid = patches.reshape(batch, channels, ph, pw, height // ph, width // pw)
    return grid.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, height, width)

