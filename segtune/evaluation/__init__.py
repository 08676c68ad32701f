"""Evaluation: `evaluate`'s `mean_iou`, exactly, at each annotation's original resolution, streamed.

- `metrics.py`: `ConfusionMatrix` and `MeanIoU` (a Trainer's `compute_metrics`, constant memory).
- `scoring.py`: scoring a model or saved predictions on pairs; per-image scores (`ImageScores`).
- `run.py`: `segtune evaluate`: which pairs, the table, metrics.json.
"""

from .metrics import ConfusionMatrix, MeanIoU, metrics_to_json

__all__ = ["ConfusionMatrix", "MeanIoU", "metrics_to_json"]
