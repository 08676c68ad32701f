"""segtune: fine-tune, evaluate and run semantic-segmentation models (SegFormer first).

From Python (docs/python.md)::

    import segtune
    run = segtune.train(data="my_data/", model="nvidia/mit-b0", output_dir="runs/x", max_steps=2000)
    scores = segtune.evaluate(model="runs/x", data="my_data/")
    seg = segtune.Segmenter.from_pretrained("runs/x")

and `segtune.MeanIoU` (`segtune.evaluation.MeanIoU`), evaluate's mean IoU as any Trainer's `compute_metrics`. The names
below are imported on first use, so `import segtune` does not import torch.

The jobs (`segtune.train`, `.evaluate`, ...) are `segtune.api`'s functions; the modules behind them
are the stages, named after the step (`segtune.training`, `segtune.evaluation`, `segtune.prediction`,
`segtune.reporting`, `segtune.exporting`), so a name is never both a package and a function.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_NAMES = {
    "train": "api", "evaluate": "api", "predict": "api", "report": "api", "export": "api", "inspect": "api",
    "load_data": "api", "SegmentationDataset": "api", "pad_collate": "api",
    "TrainResult": "api", "EvaluateResult": "api", "ExportResult": "api", "InspectReport": "api",
    "PredictResult": "api", "Report": "api",
    "Segmenter": "inference.segmenter", "MeanIoU": "evaluation.metrics", "ConfusionMatrix": "evaluation.metrics",
    "upsampled_argmax": "inference.postprocess", "colorize": "data.drawing", "overlay": "data.drawing",
    "LabelSet": "data.labels", "load_labels": "data.labels", "AugmentConfig": "data.transforms",
    "SegtuneError": "errors",
}
# the stages, as attributes (segtune.evaluation.MeanIoU); `segtune.train` is the function, the stage
# is `segtune.training`: a stage is named after its step, so a name is never both
_MODULES = ("api", "data", "models", "training", "evaluation", "inference", "prediction", "exporting", "reporting",
            "serve")

__all__ = sorted(_NAMES) + ["__version__"]

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from .api import SegmentationDataset, evaluate, export, inspect, load_data, pad_collate, predict, report, train
    from .data.drawing import colorize, overlay
    from .data.labels import LabelSet, load_labels
    from .data.transforms import AugmentConfig
    from .errors import SegtuneError
    from .evaluation.metrics import ConfusionMatrix, MeanIoU
    from .inference.postprocess import upsampled_argmax
    from .inference.segmenter import Segmenter
    from .reporting.notebook import EvaluateResult, ExportResult, InspectReport, PredictResult, Report, TrainResult


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'segtune' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES) | set(_MODULES))
