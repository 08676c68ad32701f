"""Fine-tuning on the Hugging Face Trainer, with segtune's streaming evaluator inside it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, default_data_collator

from . import data as segdata
from .card import model_card
from .errors import SegtuneError
from .evaluate import EvalDataset, evaluate_model, format_table
from .labels import LabelSet, load_labels
from .metrics import metrics_to_json
from .model import load_model, training_processor
from .transforms import AugmentConfig, ProcessorTransform, train_transform

log = logging.getLogger("segtune")

# The seeds' TrainingArguments, plus best-model tracking on mean IoU.
TRAINING_DEFAULTS = dict(
    learning_rate=6e-5,
    per_device_train_batch_size=2,
    per_device_eval_batch_size=2,
    eval_strategy="steps",
    save_strategy="steps",
    eval_steps=500,
    save_steps=500,
    logging_steps=10,
    save_total_limit=3,
    load_best_model_at_end=True,
    metric_for_best_model="mean_iou",
    greater_is_better=True,
    remove_unused_columns=False,
    optim="adamw_torch",
    dataloader_num_workers=min(4, (os.cpu_count() or 2) // 2),
    dataloader_pin_memory=torch.cuda.is_available(),  # pinning only helps a GPU
    report_to="none",
)
SCALAR_METRICS = ("mean_iou", "mean_accuracy", "overall_accuracy")


def training_arguments(output_dir: Path, overrides: dict) -> TrainingArguments:
    """segtune's defaults, then the user's values (config file, then command line)."""
    values = {**TRAINING_DEFAULTS, **overrides, "output_dir": str(output_dir)}
    # Best-model tracking needs saving on evaluation steps; follow whichever one the user set.
    if "eval_steps" in overrides and "save_steps" not in overrides:
        values["save_steps"] = values["eval_steps"]
    elif "save_steps" in overrides and "eval_steps" not in overrides:
        values["eval_steps"] = values["save_steps"]
    try:
        (args,) = HfArgumentParser(TrainingArguments).parse_dict(values)
    except (ValueError, TypeError) as e:
        raise SegtuneError(f"training arguments: {str(e).splitlines()[0]}") from None
    return args


class TrainDataset(segdata.PairDataset, Dataset):
    def __getitem__(self, i):
        pixel_values, labels = self.transform(*self.load(i))
        return {"pixel_values": pixel_values, "labels": labels}


class JsonlLogger(TrainerCallback):
    """Appends every log record (loss, learning rate, evaluations) to log.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class SegmentationTrainer(Trainer):
    """Evaluation by streaming confusion matrix instead of stacking every logit."""

    def __init__(self, *args, labels: LabelSet, ignore_index: int, card: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels, self.ignore_index, self.card = labels, ignore_index, card
        self.last_metrics: dict | None = None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        cm = evaluate_model(
            self.model,
            eval_dataset or self.eval_dataset,
            len(self.labels),
            self.ignore_index,
            batch_size=self.args.per_device_eval_batch_size,
            num_workers=self.args.dataloader_num_workers,
            progress=not self.args.disable_tqdm,
        )
        self.last_metrics = cm.compute()
        scalars = {f"{metric_key_prefix}_{k}": self.last_metrics[k] for k in SCALAR_METRICS}
        self.log(scalars)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, scalars)
        return scalars

    # transformers 5 saves SegFormer weights under their original names, but the Trainer reloads
    # checkpoints (resume, best model) with a raw non-strict load_state_dict that then silently
    # loads nothing. from_pretrained knows the renaming, so reload through it.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        loaded = type(model).from_pretrained(resume_from_checkpoint)
        model.load_state_dict(loaded.state_dict())

    def _load_best_model(self):
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def create_model_card(self, **kwargs):
        # Also used by push_to_hub, so the Hub gets segtune's card rather than the generic one.
        if self.is_world_process_zero() and self.last_metrics is not None:
            metrics = metrics_to_json(self.last_metrics, self.labels.names)
            text = model_card(metrics=metrics, class_names=self.labels.names, **self.card)
            Path(self.args.output_dir, "README.md").write_text(text)


@dataclass
class TrainOptions:
    data: str
    output_dir: Path
    model: str = "nvidia/mit-b0"
    labels: str | None = None
    reduce_labels: bool | None = None  # None: as the data file says
    ignore_index: int | None = None  # None: as the data file says, else 255
    val_split: float = 0.2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    training: dict = field(default_factory=dict)  # TrainingArguments overrides
    resume: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False


def prepare_output_dir(path: Path, resume: bool, overwrite: bool) -> None:
    """Refuses to mix a new run into a folder that already holds something."""
    if path.exists() and not path.is_dir():
        raise SegtuneError(f"{path}: output path exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (resume or overwrite):
        raise SegtuneError(f"{path}: output folder is not empty; pass --resume to continue it or --overwrite")
    path.mkdir(parents=True, exist_ok=True)


def load_checked_data(data_path, *, val_split, seed, reduce_labels, ignore_index, labels, splits):
    """Finds, configures and checks a dataset; returns (data, labels); `labels` may be None.

    `splits` names the splits to check, or is a function of the loaded data giving them.
    """
    from tqdm.auto import tqdm

    data = segdata.load_data(data_path, val_split=val_split, seed=seed)
    if reduce_labels is not None:
        data.reduce_labels = reduce_labels
    if ignore_index is not None:
        data.ignore_index = ignore_index
    if callable(splits):
        splits = splits(data)
    labels = segdata.checked_labels(data, labels, splits=splits, progress=partial(tqdm, leave=False))
    return data, labels


def run_training(opts: TrainOptions) -> dict:
    """Checks the data, trains, saves the model directory; returns the final metrics (JSON form)."""
    seed = int(opts.training.get("seed", 42))
    data, labels = load_checked_data(
        opts.data,
        val_split=opts.val_split,
        seed=seed,
        reduce_labels=opts.reduce_labels,
        ignore_index=opts.ignore_index,
        labels=load_labels(opts.labels) if opts.labels else None,
        splits=("train", "val"),
    )
    if not data.train:
        raise SegtuneError(f"{opts.data}: the training split is empty")
    prepare_output_dir(opts.output_dir, opts.resume, opts.overwrite)
    args = training_arguments(opts.output_dir, opts.training)
    log.info("segtune: %d training and %d validation pairs, %d classes", len(data.train), len(data.val), len(labels))

    processor = training_processor(opts.model, opts.augment.base_size)
    model = load_model(opts.model, labels, data.ignore_index, opts.trust_remote_code)
    train_set = TrainDataset(
        data.train,
        train_transform(opts.augment, processor.image_mean, processor.image_std, data.ignore_index),
        data.reduce_labels,
        data.ignore_index,
    )
    val_set = EvalDataset(data.val, ProcessorTransform(processor), data.reduce_labels, data.ignore_index)
    hyperparameters = {
        "model": opts.model,
        "learning_rate": args.learning_rate,
        "batch_size": args.per_device_train_batch_size,
        "max_steps": args.max_steps,
        "num_train_epochs": args.num_train_epochs,
        "seed": args.seed,
        "reduce_labels": data.reduce_labels,
        "ignore_index": data.ignore_index,
        **{k: v for k, v in vars(opts.augment).items()},
    }
    trainer = SegmentationTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=default_data_collator,
        processing_class=processor,
        callbacks=[JsonlLogger(opts.output_dir / "log.jsonl")],
        labels=labels,
        ignore_index=data.ignore_index,
        card=dict(base_model=opts.model, data=str(opts.data), hyperparameters=hyperparameters),
    )
    resume = opts.resume and any(opts.output_dir.glob("checkpoint-*"))
    if opts.resume and not resume:
        log.warning("segtune: --resume given but %s holds no checkpoint; starting afresh", opts.output_dir)
    trainer.train(resume_from_checkpoint=True if resume else None)

    trainer.evaluate(metric_key_prefix="final")  # the best checkpoint, reloaded at the end
    metrics = metrics_to_json(trainer.last_metrics, labels.names)
    metrics["step"] = trainer.state.global_step
    if trainer.is_world_process_zero():
        trainer.save_model(str(opts.output_dir))
        labels.to_json(opts.output_dir / "labels.json")
        segdata.write_split_lists(data, opts.output_dir)
        (opts.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        trainer.create_model_card()
        print(format_table(trainer.last_metrics, labels.names))
    if args.push_to_hub:
        trainer.push_to_hub()
    return metrics
