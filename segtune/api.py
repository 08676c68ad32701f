"""segtune from Python: whole jobs (`train`, `evaluate`, `predict`, `report`, `inspect`, `export`) and the
building blocks for a loop or Trainer of your own (`load_data`, `SegmentationDataset`, `pad_collate`).

Each job function takes the command's options as keyword arguments under their field names
(`reduce_labels`, `output_dir`; for `train` also every `TrainingArguments` name as it is,
`learning_rate`, `max_steps`). The keywords go through the same conversion as the command line
(`segtune.cli.command_options`: defaults, required options, checks) and the same `run_*`
function, so a job gives what the command gives, and a bad option raises `SegtuneError` with the
line the command prints. `segtune.cli`'s handlers are these functions. The results show in a
notebook cell (`_repr_html_`): the metrics, per-class IoU as bars, the report's pictures.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import SegtuneError

__all__ = ["EvaluateResult", "ExportResult", "InspectReport", "PredictResult", "Report", "SegmentationDataset",
           "TrainResult", "evaluate", "export", "inspect", "load_data", "pad_collate", "predict", "report", "train"]


# ---------------------------------------------------------------- options, as the command line's


def _command_options(command: str, options: dict, **positional):
    """Keywords -> the command's options object, through the command line's own conversion."""
    from . import cli

    known = cli.option_names(command)
    unknown = [name for name in options if name not in known or name in positional]
    if unknown:
        raise cli.unknown_options(command, unknown)
    return cli.command_options(command, {**options, **positional})


# ---------------------------------------------------------------- HTML for notebook cells

_STYLE = ("<style>.segtune-r table{border-collapse:collapse;margin:4px 0}.segtune-r td,.segtune-r th{padding:1px 8px;"
          "text-align:left;font-size:12px}.segtune-r .bar{height:10px;background:#4c78a8;display:inline-block}"
          ".segtune-r .track{width:160px;background:#eee;display:inline-block}.segtune-r img{max-width:100%}</style>")


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"  # None, NaN


def _png(path: Path) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"/>'


def _colors(folder: Path | None) -> dict:
    """Class name -> CSS colour, from a run's labels.json, when there is one."""
    try:
        entries = json.loads((folder / "labels.json").read_text())
        return {e["name"]: "rgb({},{},{})".format(*e["color"]) for e in entries.values()}
    except (OSError, TypeError, ValueError, KeyError, AttributeError):
        return {}


def metrics_html(metrics: dict, folder: Path | None = None, title: str = "") -> str:
    """The metrics as a table, per-class IoU as bars, then the report's per-class and confusion PNGs
    found in `folder`/report/."""
    colors = _colors(folder)
    rows = "".join(f"<tr><th>{label}</th><td>{_fmt(metrics.get(key))}</td></tr>" for key, label in (
        ("mean_iou", "mean IoU"), ("mean_accuracy", "mean accuracy"), ("overall_accuracy", "overall accuracy"),
        ("foreground_iou", "foreground IoU")) if key in metrics)
    classes = []
    accuracy = metrics.get("per_category_accuracy") or {}
    for name, iou in (metrics.get("per_category_iou") or {}).items():
        width = 0 if iou is None else max(0.0, min(1.0, iou)) * 100
        color = colors.get(name, "#4c78a8")
        classes.append(f'<tr><td>{html.escape(str(name))}</td><td><span class="track"><span class="bar" '
                       f'style="width:{width:.1f}%;background:{color}"></span></span></td><td>{_fmt(iou)}</td>'
                       f"<td>{_fmt(accuracy.get(name))}</td></tr>")
    parts = [_STYLE, '<div class="segtune-r">', f"<b>{html.escape(title)}</b>" if title else "",
             f"<table>{rows}</table>"]
    if classes:
        parts.append("<table><tr><th>class</th><th>IoU</th><th></th><th>accuracy</th></tr>" + "".join(classes)
                     + "</table>")
    for name in ("per_class_iou.png", "confusion_matrix.png"):
        path = folder / "report" / name if folder is not None else None
        if path is not None and path.is_file():
            parts.append(_png(path))
    return "".join(parts) + "</div>"


# ---------------------------------------------------------------- results


@dataclass
class Report:
    """A report.html; shows inline in a notebook (the page in a frame)."""

    path: Path

    def _repr_html_(self) -> str:
        page = self.path.read_text(encoding="utf-8")
        return (f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:640px;border:1px '
                f'solid #ddd"></iframe>')

    def __str__(self) -> str:
        return str(self.path)


def _report_in(folder: Path) -> Report | None:
    return Report(folder / "report.html") if (folder / "report.html").is_file() else None


@dataclass
class EvaluateResult:
    """What `evaluate` wrote: `metrics` (metrics.json's content), `output_dir`, `report` (or None)."""

    metrics: dict
    output_dir: Path
    report: Report | None = None

    def __getitem__(self, key: str):
        return self.metrics[key]

    def _repr_html_(self) -> str:
        return metrics_html(self.metrics, self.output_dir, f"segtune evaluate: {self.output_dir}")


@dataclass
class TrainResult(EvaluateResult):
    """What `train` wrote: the final validation `metrics` (metrics.json), `model_dir` (the saved model
    folder, also `output_dir`), `report` (or None)."""

    @property
    def model_dir(self) -> Path:
        return self.output_dir

    def _repr_html_(self) -> str:
        return metrics_html(self.metrics, self.output_dir, f"segtune train: {self.output_dir}")


@dataclass
class InspectReport:
    """What `inspect` found (inspect.json's content as `data`): `problems` (those that would stop
    training), `classes` (id, name, pixel share, images), `picture` (inspect.png)."""

    data: dict
    output_dir: Path

    @property
    def problems(self) -> list[str]:
        return self.data["blocking_problems"]

    @property
    def classes(self) -> list[dict]:
        return self.data["classes"]

    @property
    def picture(self) -> Path:
        return self.output_dir / "inspect.png"

    def __getitem__(self, key: str):
        return self.data[key]

    def _repr_html_(self) -> str:
        splits = "".join(f"<tr><td>{html.escape(name)}</td><td>{s['pairs']}</td><td>{s['bad']}</td>"
                         f"<td>{s['ignored_share']:.1%}</td></tr>" for name, s in self.data["splits"].items())
        share = max([c["pixel_share"] for c in self.classes] + [1e-9])
        classes = "".join(f'<tr><td>{c["id"]}</td><td>{html.escape(c["name"])}</td><td><span class="track"><span '
                          f'class="bar" style="width:{100 * c["pixel_share"] / share:.1f}%"></span></span></td>'
                          f'<td>{c["pixel_share"]:.2%}</td><td>{c["images"]}</td></tr>' for c in self.classes)
        notes = [("problem", p) for p in self.problems] + [
            (f["severity"], f["message"]) for f in self.data.get("findings", []) if f["message"] not in self.problems]
        notes += [("note", n) for n in self.data.get("warnings", [])]
        parts = [_STYLE, '<div class="segtune-r">', f"<b>segtune inspect: {html.escape(self.data['data'])}</b>",
                 "<table><tr><th>split</th><th>good pairs</th><th>bad</th><th>ignored</th></tr>" + splits + "</table>",
                 "".join(f"<div><b>{html.escape(kind)}</b>: {html.escape(text)}</div>" for kind, text in notes)
                 or "<div>no problems found: ready to train</div>",
                 "<table><tr><th>id</th><th>class</th><th>pixels</th><th></th><th>images</th></tr>" + classes
                 + "</table>"]
        if self.picture.is_file():
            parts.append(_png(self.picture))
        return "".join(parts) + "</div>"


@dataclass
class PredictResult:
    """What `predict` wrote: one record per image (as predictions.jsonl lists them), `output_dir`."""

    records: list
    output_dir: Path

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def _repr_html_(self) -> str:
        pictures = sorted((self.output_dir / "overlays").glob("*.png"))[:4] if self.output_dir.is_dir() else []
        return (f'{_STYLE}<div class="segtune-r"><b>segtune predict: {len(self.records)} image(s) into '
                f'{html.escape(str(self.output_dir))}</b><div>' + "".join(_png(p) for p in pictures) + "</div></div>")


@dataclass
class ExportResult:
    """What `export` wrote: `info` (export.json's content: the ONNX file, opset, the parity check),
    `output_dir`; `onnx` is the model file."""

    info: dict
    output_dir: Path

    @property
    def onnx(self) -> Path:
        return Path(self.info["onnx"])

    def __getitem__(self, key: str):
        return self.info[key]

    def _repr_html_(self) -> str:
        check = self.info.get("check") or {}
        rows = [("ONNX file", self.info.get("onnx")), ("opset", self.info.get("opset")),
                ("folded head", self.info.get("folded_head")), ("classes", self.info.get("classes")),
                ("parity check", {True: "passed", False: "FAILED", None: "not run"}[self.info.get("passed")])]
        if check:
            rows += [("equal label-map pixels", f"{100 * check['equal_pixels']:.4f}%"),
                     ("largest logit difference", f"{check['max_logit_diff']:.3g}")]
        table = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f'{_STYLE}<div class="segtune-r"><b>segtune export</b><table>{table}</table></div>'


# ---------------------------------------------------------------- whole jobs


def train(**options: Any) -> TrainResult:
    """`segtune train`: fine-tunes a model; `data` and `output_dir` are required. Every option of the
    command under its field name, every `TrainingArguments` one as it is (`learning_rate=6e-5`,
    `max_steps=2000`), the augmentation's (`crop_size`), and `callbacks` (TrainerCallbacks)."""
    from .training import run_training

    opts = _command_options("train", options)
    metrics = run_training(opts)
    return TrainResult(metrics, Path(opts.output_dir), _report_in(Path(opts.output_dir)))


def evaluate(**options: Any) -> EvaluateResult:
    """`segtune evaluate`: scores `model` (or `predictions`, a folder of label PNGs) on `data`, as the
    command does (same split, same numbers); writes metrics.json (and report.html) to `output_dir`
    (default runs/evaluate)."""
    from .evaluation import run_evaluation

    opts = _command_options("evaluate", options)
    metrics = run_evaluation(opts)
    return EvaluateResult(metrics, Path(opts.output_dir), _report_in(Path(opts.output_dir)) if opts.report else None)


def predict(inputs: str | Path | Sequence[str | Path], **options: Any) -> PredictResult:
    """`segtune predict INPUTS`: segments image files, folders or glob patterns with `model` into
    `output_dir` (both required). For label maps in memory, use `Segmenter`."""
    from .prediction import run_prediction

    inputs = [str(inputs)] if isinstance(inputs, (str, Path)) else [str(i) for i in inputs]
    opts = _command_options("predict", options, inputs=inputs)
    return PredictResult(run_prediction(opts, inputs), Path(opts.output_dir))


def report(run_dir: str | Path, **options: Any) -> Report:
    """`segtune report RUN_DIR`: (re)writes report.html of a train or evaluate output folder."""
    from .reporting import run_report

    opts = _command_options("report", options, run_dir=Path(run_dir))
    return Report(run_report(opts, Path(run_dir)))


def inspect(**options: Any) -> InspectReport:
    """`segtune inspect`: reads every pair of `data` once; writes inspect.json and inspect.png to
    `output_dir` (default runs/inspect). Problems that would stop training are in `.problems`
    (the command exits with status 1 on them; this returns them)."""
    from .inspection import inspect_data

    opts = _command_options("inspect", options)
    return InspectReport(json.loads(json.dumps(inspect_data(opts))), Path(opts.output_dir))  # as inspect.json


def export(**options: Any) -> ExportResult:
    """`segtune export`: `model` as ONNX in `output_dir` (both required), checked against torch
    (`check_images`, `check_data`); a failed check raises SegtuneError, as the command exits 1."""
    from .exporting import run_export

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

    from .checks import apply_label_options
    from .labels import load_labels
    from .options import LabelOptions, SourceOptions
    from .sources import load_data as find_pairs

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
    of different shapes apart instead (evaluate.py)."""
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
        from .data import MaskRules

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

        from .evaluation import EvalDataset
        from .model import IMAGENET_MEAN, IMAGENET_STD
        from .trainer import TrainDataset
        from .transforms import AugmentConfig, ProcessorTransform, train_transform

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
