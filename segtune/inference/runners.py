"""How a Segmenter reaches its model: a runner, and the device and dtype it runs on.

A runner is a callable from a (B, 3, h, w) float32 CPU tensor of pixel values, as the image
processor gives them, to (B, C, h', w') logits (a tensor or array of any float dtype), with
`device` (a torch.device: where the logits are upsampled and averaged) and `dtype` (the
torch.dtype it computes in, for reports). A runner may also run several passes at once: `streams`
(how many) and `submit(pixel_values)`, which starts one and returns an object whose `result()` gives
its logits; the Segmenter then keeps that many batches in flight (OpenVINO's). `TorchRunner` runs
a transformers model and alone supports head folding and channels-last; other engines plug in
without touching the Segmenter's modes or outputs: ONNX Runtime and OpenVINO run an exported
model (onnx_runners.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ..errors import SegtuneError
from ..models.folding import fold_segformer_head
from ..models.masks import pixel_scores

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------- device, dtype


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA, then Apple MPS, then CPU), 'cpu', 'cuda', 'cuda:1', 'mps'."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SegtuneError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SegtuneError(f"--device {name}: no CUDA device is available (torch {torch.__version__})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SegtuneError(f"--device {name}: Apple MPS is not available here")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SegtuneError(f"--dtype {dtype}: choose {', '.join(DTYPES)}")
    return DTYPES[dtype]


# ---------------------------------------------------------------- runners


class Runner(Protocol):
    """What the Segmenter needs of a model (see the module docstring)."""

    device: torch.device
    dtype: torch.dtype

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor | np.ndarray: ...


class TorchRunner:
    """A transformers segmentation model as a Runner: a per-pixel model's logits, a mask classifier's semantic
    scores (segtune.models.masks.pixel_scores)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.channels_last = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def fold_head(self) -> bool:
        """Folds a SegFormer's decode head (segtune.models.folding.fold_segformer_head); False if not a SegFormer."""
        return fold_segformer_head(self.model)

    def use_channels_last(self) -> None:
        """Weights and inputs in channels-last memory format; call after fold_head, so folded weights are too."""
        self.model.to(memory_format=torch.channels_last)
        self.channels_last = True

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(self.device, self.dtype, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return pixel_scores(self.model, x)
