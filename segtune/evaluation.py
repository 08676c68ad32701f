"""Scoring a model (or saved predictions) at each annotation's original resolution.

Logits are upsampled bilinearly (align_corners=False) to the mask size and reduced to an
argmax at once (segtune/postprocess.py), so memory holds one batch and a confusion matrix,
never all the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .data import MaskRules, PairDataset, read_mask
from .errors import SegtuneError
from .metrics import ConfusionMatrix
from .postprocess import upsampled_argmax


class EvalDataset(PairDataset, Dataset):
    """Preprocessed image plus the mask at its original size."""

    def __getitem__(self, i):
        image, mask = self.load(i)
        return {"pixel_values": self.transform(image), "labels": torch.from_numpy(mask), "index": i}


def _same_shape_runs(items):
    """Splits a batch into runs of equal input shape (images keep their aspect ratio)."""
    run = []
    for item in items:
        if run and item["pixel_values"].shape != run[0]["pixel_values"].shape:
            yield run
            run = []
        run.append(item)
    if run:
        yield run


@torch.inference_mode()
def evaluate_model(
    model,
    dataset: EvalDataset,
    num_classes: int,
    ignore_index: int = 255,
    batch_size: int = 2,
    num_workers: int = 0,
    progress: bool = True,
    on_item=None,
) -> ConfusionMatrix:
    """Streams the dataset through the model; returns the (rank-summed) confusion matrix.

    `model`: a torch model, or a Runner (segtune/runners.py: an exported model run by ONNX Runtime or
    OpenVINO), scored the same way. `on_item(index, label, prediction)`, if given, sees each image's (H, W)
    label and predicted class ids (tensors on the model's device) as they are scored (per-image scores,
    galleries)."""
    from tqdm.auto import tqdm

    if not isinstance(model, torch.nn.Module):  # a Runner: pixel values in, logits out
        return _evaluate_runner(model, dataset, num_classes, ignore_index, batch_size, num_workers, progress,
                                on_item)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype  # --dtype bfloat16: bf16 inputs
    was_training = model.training
    model.eval()
    if isinstance(dataset, torch.utils.data.IterableDataset):
        pass  # a stream arrives already sharded by rank (hf_sources.StreamingSource)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        # Each rank scores every world_size-th image once (no padding repeats); matrices are summed.
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        dataset = torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # DDP syncs BatchNorm statistics at the start of a forward pass, so after the last step
        # each rank holds its own; score with rank 0's, the ones that get saved.
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    # Training in bf16, accelerate wraps the model's forward in autocast; score with the forward as
    # the model defines it, in the model's own precision, so evaluation inside training stays exact.
    forward = getattr(model, "_original_forward", None) or model
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    for batch in tqdm(loader, desc="evaluating", leave=False, disable=not progress):
        for run in _same_shape_runs(batch):
            pixel_values = torch.stack([item["pixel_values"] for item in run]).to(device, dtype)
            _score(forward(pixel_values=pixel_values).logits.float(), run, device, cm, on_item)
    cm.all_reduce()
    model.train(was_training)
    return cm


def _score(logits, run, device, cm: ConfusionMatrix, on_item) -> None:
    """One forward pass's logits into the confusion matrix (and on_item)."""
    labels = [item["labels"].to(device) for item in run]
    if all(label.shape == labels[0].shape for label in labels):  # one upsampling and update for all
        predictions = upsampled_argmax(logits, labels[0].shape)
        cm.update(torch.stack(labels), predictions)
    else:
        predictions = [upsampled_argmax(item_logits, label.shape) for item_logits, label in zip(logits, labels)]
        for label, prediction in zip(labels, predictions):
            cm.update(label, prediction)
    if on_item is not None:
        for item, label, prediction in zip(run, labels, predictions):
            on_item(item["index"], label, prediction)


def _evaluate_runner(runner, dataset, num_classes, ignore_index, batch_size, num_workers, progress, on_item):
    """evaluate_model through a Runner (one process: an exported model is not run distributed)."""
    from tqdm.auto import tqdm

    device = torch.device(runner.device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    for batch in tqdm(loader, desc="evaluating", leave=False, disable=not progress):
        for run in _same_shape_runs(batch):
            pixel_values = torch.stack([item["pixel_values"] for item in run])
            _score(torch.as_tensor(runner(pixel_values)).to(device).float(), run, device, cm, on_item)
    return cm


def evaluate_predictions(samples: list, predictions_dir: Path, num_classes: int, rules: MaskRules,
                         on_item=None) -> ConfusionMatrix:
    """Scores label PNGs named like the images (`<stem>.png`, as `segtune predict` writes them);
    `on_item` as in `evaluate_model`, with the sample's position in `samples` as index."""
    from tqdm.auto import tqdm

    cm = ConfusionMatrix(num_classes, rules.ignore_index)
    for index, s in enumerate(tqdm(samples, desc="scoring", leave=False)):
        pred_path = predictions_dir / (s.stem + ".png")
        if not pred_path.is_file():
            raise SegtuneError(f"{pred_path}: prediction missing for {s.mask_name}")
        pred = read_mask(pred_path)
        label = s.read_mask(rules)
        if pred.shape != label.shape:
            raise SegtuneError(
                f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]} "
                f"but {s.mask_name} is {label.shape[1]}x{label.shape[0]}"
            )
        label, pred = torch.from_numpy(label), torch.from_numpy(pred)
        cm.update(label, pred)
        if on_item is not None:
            on_item(index, label, pred)
    return cm


def format_table(metrics: dict, class_names) -> str:
    """A plain-text table for people; metrics.json is the machine-readable twin."""
    width = max([len(n) for n in class_names] + [8])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}"]
    for name, iou, acc in zip(class_names, metrics["per_category_iou"], metrics["per_category_accuracy"]):
        fmt = lambda v: "    n/a" if np.isnan(v) else f"{v:7.4f}"  # noqa: E731
        lines.append(f"{name:<{width}}  {fmt(iou)}  {fmt(acc)}")
    lines.append("-" * (width + 18))
    lines.append(f"{'mean IoU':<{width}}  {metrics['mean_iou']:7.4f}")
    lines.append(f"{'mean accuracy':<{width}}  {metrics['mean_accuracy']:7.4f}")
    lines.append(f"{'overall accuracy':<{width}}  {metrics['overall_accuracy']:7.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- `segtune evaluate`


def load_scored_data(opts, model: str | Path | None, labels=None):
    """The data to score and its classes, checked: the pairs `opts.split` selects (sources.splits.select_split),
    using the model folder's splits.json when it has one; says in one line what is scored, and warns
    when any scored pair is one the run trained on. `opts`: EvaluateOptions or ReportOptions."""
    import logging

    from .checks import load_checked_data
    from .sources.splits import read_splits, select_split

    log = logging.getLogger("segtune")
    run = read_splits(model)
    chosen = {}

    def choose(data):
        chosen["selection"] = select_split(data, opts.split, run, val_split_given=opts.val_split is not None)
        return chosen["selection"].samples

    data, labels = load_checked_data(opts.data, opts, val_split=opts.val_split or 0.2, seed=opts.seed, labels=labels,
                                     source_kwargs=opts.source_kwargs(), choose=choose, skip_bad=opts.skip_bad)
    selection = chosen["selection"]
    log.info("segtune: %s", selection.note)
    if selection.warning:
        log.warning("segtune: warning: %s", selection.warning)
    return data, labels, selection


def _run_folder(model):
    """The folder whose splits.json tells the run's split: a model.onnx's own folder (segtune export copies it)."""
    if model is not None and str(model).lower().endswith(".onnx"):
        return Path(str(model)).parent
    return model


def run_evaluation(opts) -> dict:
    """`segtune evaluate`: `opts` a segtune.options.EvaluateOptions. Prints the table, writes metrics.json
    (and report.html) to opts.output_dir; returns the metrics (JSON form)."""
    import json

    from .labels import load_labels
    from .metrics import metrics_to_json
    from .reporting import ImageScores, write_report_or_warn
    from .transforms import ProcessorTransform

    labels = load_labels(opts.labels) if opts.labels else None
    segmenter = None
    if opts.model:
        from .inference import Segmenter

        segmenter = Segmenter.from_pretrained(opts.model, trust_remote_code=opts.trust_remote_code,
                                              runtime=opts.runtime, threads=opts.threads, dtype=opts.dtype)
        labels = labels or segmenter.labels
    data, labels, selection = load_scored_data(opts, _run_folder(opts.model), labels)
    samples = data.val
    # each image's score for the report's gallery, taken in the one scoring pass
    scores = ImageScores(len(labels), data.ignore_index) if opts.report else None
    if segmenter is not None:
        dataset = EvalDataset(samples, ProcessorTransform(segmenter.processor), data.rules)
        model = segmenter.model if segmenter.model is not None else segmenter.runner  # torch, or an exported model
        cm = evaluate_model(model, dataset, len(labels), data.ignore_index, opts.batch_size,
                            opts.num_workers, on_item=scores)
    else:
        cm = evaluate_predictions(samples, Path(opts.predictions), len(labels), data.rules, on_item=scores)
    metrics = cm.compute()
    print(format_table(metrics, labels.names))
    out_dir = Path(opts.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = metrics_to_json(metrics, labels.names)
    out.update(num_images=len(samples), data=str(opts.data), source=str(opts.model or opts.predictions),
               split=selection.note, **({"split_warning": selection.warning} if selection.warning else {}),
               data_findings=[finding.to_json() for finding in data.findings])
    (out_dir / "metrics.json").write_text(json.dumps(out, indent=2))
    print(f"metrics written to {out_dir / 'metrics.json'}")
    if opts.report:
        page = write_report_or_warn(out_dir, labels=labels, samples=samples, rules=data.rules, confusion=cm,
                                    scores=scores)
        if page is not None:
            print(f"report written to {page}")
    return out
