"""Prediction: `segtune predict` on files and folders.

- `inputs.py`: which images, and their ground truth for `--show-gt`.
- `run.py`: the outputs of each image, resuming, predict.json (`run_prediction`).
- `ranks.py`: the images split between processes (torchrun, `accelerate launch`), records merged.
"""
