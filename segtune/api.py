"""segtune from Python: whole jobs (`train`, `evaluate`, `predict`, `report`, `inspect`, `export`) and the
building blocks for a loop or Trainer of your own (`load_data`, `SegmentationDataset`, `pad_collate`).

Each job function takes the command's options as keyword arguments under their field names
(`reduce_labels`, `output_dir`; for `train` also every `TrainingArguments` name as it is,
`learning_rate`, `max_steps`). The keywords go through the same conversion as the command line
(`segtune.commands.command_options`: defaults, required options, checks) and the same `run_*`
function, so a job gives what the command gives, and a bad option raises `SegtuneError` with the
line the command prints. `segtune.cli`'s handlers are these functions. The results show in a
notebook cell (`_repr_html_`): the metrics, per-class IoU as bars, the report's pictures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .errors import SegtuneError
from .reporting.notebook import (EvaluateResult, ExportResult, InspectReport, PredictResult, Report, TrainResult,
                                 report_in)

__all__ = ["EvaluateResult", "ExportResult", "InspectReport", "PredictResult", "Report", "SegmentationDataset",
           "TrainResult", "evaluate", "export", "inspect", "load_data", "pad_collate", "predict", "report", "train"]


# ---------------------------------------------------------------- options, as the command line's


def _command_options(command: str, options: dict, **positional):
    """Keywords -> the command's options object, through the command line's own conversion."""
    from . import commands

    known = commands.option_names(command)
    unknown = [name for name in options if name not in known or name in positional]
    if unknown:
        raise commands.unknown_options(command, unknown)
    return commands.command_options(command, {**options, **positional})


# ---------------------------------------------------------------- whole jobs


def train(**options: Any) -> TrainResult:
    """`segtune train`: fine-tunes a model; `data` and `output_dir` are required. Every option of the
    command under its field name, every `TrainingArguments` one as it is (`learning_rate=6e-5`,
    `max_steps=2000`), the augmentation's (`crop_size`), and `callbacks` (TrainerCallbacks)."""
    from .training.run import run_training

    opts = _command_options("train", options)
    metrics = run_training(opts)
    return TrainResult(metrics, Path(opts.output_dir), report_in(Path(opts.output_dir)))


def evaluate(**options: Any) -> EvaluateResult:
    """`segtune evaluate`: scores `model` (or `predictions`, a folder of label PNGs) on `data`, as the
    command does (same split, same numbers); writes metrics.json (and report.html) to `output_dir`
    (default runs/evaluate)."""
    from .evaluation.run import run_evaluation
    from .reporting.report import write_report_or_warn

    opts = _command_options("evaluate", options)
    run = run_evaluation(opts)
    if opts.report:  # from the same pass: its confusion matrix and each image's score
        page = write_report_or_warn(run.output_dir, labels=run.labels, samples=run.samples, rules=run.rules,
                                    confusion=run.confusion, scores=run.scores)
        if page is not None:
            print(f"report written to {page}")
    return EvaluateResult(run.metrics, run.output_dir, report_in(run.output_dir) if opts.report else None)


def predict(inputs: str | Path | Sequence[str | Path], **options: Any) -> PredictResult:
    """`segtune predict INPUTS`: segments image files, folders or glob patterns with `model` into
    `output_dir` (both required). For label maps in memory, use `Segmenter`."""
    from .prediction.run import run_prediction

    inputs = [str(inputs)] if isinstance(inputs, (str, Path)) else [str(i) for i in inputs]
    opts = _command_options("predict", options, inputs=inputs)
    return PredictResult(run_prediction(opts, inputs), Path(opts.output_dir))


def report(run_dir: str | Path, **options: Any) -> Report:
    """`segtune report RUN_DIR`: (re)writes report.html of a train or evaluate output folder."""
    from .reporting.report import run_report

    opts = _command_options("report", options, run_dir=Path(run_dir))
    return Report(run_report(opts, Path(run_dir)))


def inspect(**options: Any) -> InspectReport:
    """`segtune inspect`: reads every pair of `data` once; writes inspect.json and inspect.png to
    `output_dir` (default runs/inspect). Problems that would stop training are in `.problems`
    (the command exits with status 1 on them; this returns them)."""
    from .data.inspection import inspect_data

    opts = _command_options("inspect", options)
    return InspectReport(json.loads(json.dumps(inspect_data(opts))), Path(opts.output_dir))  # as inspect.json


def export(**options: Any) -> ExportResult:
    """`segtune export`: `model` as ONNX in `output_dir` (both required), checked against torch
    (`check_images`, `check_data`); a failed check raises SegtuneError, as the command exits 1."""
    from .exporting.run import run_export

    opts = _command_options("export", options)
    return ExportResult(run_export(opts), Path(opts.output_dir))


# ---------------------------------------------------------------- building blocks


def load_data(path: str | Path, *, val_split: float = 0.2, seed: int = 42, labels: str | None = None,
              reduce_labels: bool | None = None, ignore_index: int | None = None, binary: bool | None = None,
              streaming: bool = False, **source_options: Any):
    """The pairs of a dataset (folder, YAML data file or `datasets` source) with their mask rules:
    a `SegmentationData` (`.train`, `.val` lists of pairs; `.rules`; `.labels`), or `StreamedData`
    with `streaming=True`. Options as the commands': `val_split` and `seed` split data without a
    validation split as `segtune train` does; `labels`, `reduce_labels`, `ignore_index`, `binary`
    replace the data file's; `source_options` are SourceOptions' (`image_suffix`, `mask_suffix`,
    `data_config`, `train_split`, `eval_split`, `image_column`, `label_column`). Nothing is read
    yet (`segtune.inspect` checks every pair)."""
    from dataclasses import fields

    from .data.checks import apply_label_options
    from .data.labels import load_labels
    from .data.sources import load_data as find_pairs
    from .options import LabelOptions, SourceOptions

    known = {f.name for f in fields(SourceOptions)}
    unknown = [name for name in source_options if name not in known]
    if unknown:
        raise SegtuneError(f"unknown option(s): {' '.join(unknown)} (see help(segtune.load_data))")
    source = SourceOptions(**source_options)
    kwargs = source.source_kwargs() | ({"streaming": True} if streaming else {})
    data = find_pairs(path, val_split=val_split, seed=seed, **kwargs)
    apply_label_options(data, LabelOptions(reduce_labels=reduce_labels, ignore_index=ignore_index, binary=binary))
    if labels:
        data.labels = load_labels(labels)
    data.read_colours_of(data.labels)
    return data


def pad_collate(batch: list[dict], ignore_index: int = 255) -> dict:
    """Stacks `pixel_values` and `labels` of a list of items into a batch, padding (bottom and right)
    labels of different sizes with `ignore_index` and pixel values with 0. Other keys are left out.
    Padding an image changes what the model sees near its border: segtune's own evaluation runs images
    of different shapes apart instead (segtune.evaluation.scoring)."""
    import torch
    import torch.nn.functional as F

    def stacked(tensors, value):
        height = max(t.shape[-2] for t in tensors)
        width = max(t.shape[-1] for t in tensors)
        return torch.stack([F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value)
                            for t in tensors])

    out = {"pixel_values": stacked([item["pixel_values"] for item in batch], 0.0)}
    if all("labels" in item for item in batch):
        out["labels"] = stacked([torch.as_tensor(item["labels"]).long() for item in batch], ignore_index)
    return out


class SegmentationDataset:
    """Pairs as transformers segmentation models take them: items `{"pixel_values": (3, h, w) float
    tensor, "labels": (H, W) int64 tensor of class ids}` (the mask read by the data's rules).

    `data`: what `load_data` returns (with `split` "train" or "val") or a list of pairs with `rules`.
    `transform`: "train", the recipe's augmentation (`segtune train`'s: random resize, crop, flip,
    photometric distortion, normalise, pad; `augment`, an AugmentConfig, sets it); "eval", the
    `processor` (`segtune evaluate`'s: labels at the mask's own size); None: `pixel_values` is the
    RGB image as a (3, H, W) uint8 tensor. The train augmentation is drawn afresh at each call; with
    a `seed`, that of item i is drawn from (`seed`, epoch, i) instead, the same in every run, as
    `segtune train` draws it: call `set_epoch` at each epoch then (accelerate's data loader calls it
    in a single process, when it has no sampler of its own to tell), or every epoch sees the same
    crops. `collate` is `pad_collate` with the data's ignore index.
    """

    def __init__(self, data, split: str = "train", transform: str | None = "eval", *, processor=None, augment=None,
                 rules=None, seed: int | None = None):
        from .data.reading import MaskRules

        if isinstance(data, (list, tuple)):
            samples, rules = list(data), rules or MaskRules()
        else:
            if split not in ("train", "val"):
                raise SegtuneError(f"split {split!r}: choose 'train' or 'val'")
            samples, rules = getattr(data, split), rules or data.rules
        self.samples, self.rules, self.transform_name = samples, rules, transform
        self.ignore_index, self.seed, self.epoch = rules.ignore_index, seed, 0
        self._dataset = self._build(transform, processor, augment)

    def _build(self, transform, processor, augment):
        import numpy as np
        import torch

        from .data.transforms import AugmentConfig, train_transform
        from .evaluation.scoring import EvalDataset
        from .inference.preprocess import ProcessorTransform
        from .models.loading import IMAGENET_MEAN, IMAGENET_STD
        from .training.trainer import TrainDataset

        if transform == "train":
            mean = list(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
            std = list(getattr(processor, "image_std", None) or IMAGENET_STD)
            dataset = TrainDataset(self.samples, train_transform(augment or AugmentConfig(), mean, std,
                                                                 self.ignore_index), self.rules)
            dataset.seed = 0 if self.seed is None else self.seed
            return dataset
        if transform == "eval":
            if processor is None:
                raise SegtuneError("transform='eval' needs the model's image processor (processor=...)")
            return EvalDataset(self.samples, ProcessorTransform(processor), self.rules)
        if transform is None:
            return EvalDataset(self.samples, lambda image: torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1),
                               self.rules)
        raise SegtuneError(f"transform {transform!r}: choose 'train', 'eval' or None")

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict:
        if self.transform_name == "train" and self.seed is None:
            import random

            pixel_values, labels = self._dataset.transform(*self._dataset.load(int(i)), random.Random())
            return {"pixel_values": pixel_values, "labels": labels}
        if self.transform_name == "train":
            return self._dataset[self.epoch * len(self.samples) + int(i)]
        item = self._dataset[int(i)]
        return {"pixel_values": item["pixel_values"], "labels": item["labels"]}

    def collate(self, batch: list[dict]) -> dict:
        return pad_collate(batch, self.ignore_index)
