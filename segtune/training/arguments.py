"""`segtune train`'s own options (`TrainOptions`) and the `TrainingArguments` segtune starts from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import HfArgumentParser, TrainingArguments

from ..data.transforms import AugmentConfig
from ..errors import SegtuneError
from ..models.loading import DEFAULT_MODEL
from ..options import BandOptions, CommonOptions, LabelOptions, SourceOptions, flag, option
from .precision import precision_default


def default_workers() -> int:
    """DataLoader worker processes: half the cores (at most 4) feeding a GPU; none on a CPU, where
    the model's threads already use every core and a worker only competes with them (measured:
    0.98x the seed's speed with 1 worker, 1.04x with none, benchmarks/README.md)."""
    mps = getattr(torch.backends, "mps", None)
    if torch.cuda.is_available() or (mps is not None and mps.is_available()):
        return min(4, (os.cpu_count() or 2) // 2)
    return 0


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
    dataloader_num_workers=default_workers(),
    dataloader_pin_memory=torch.cuda.is_available(),  # pinning only helps a GPU
    dataloader_persistent_workers=torch.cuda.is_available(),  # no worker start-up each epoch
    report_to="none",
)


def training_arguments(output_dir: Path, overrides: dict, *, streaming: bool = False) -> TrainingArguments:
    """segtune's defaults, then the user's values (config file, then command line)."""
    values = {**TRAINING_DEFAULTS, **overrides, "output_dir": str(output_dir)}
    if streaming:  # accelerate's default for a stream: rank 0 reads every batch and sends each rank its share;
        # instead each rank reads the stream and keeps its own batches (sources.stream.StreamingSource.dataset)
        values.setdefault("accelerator_config", {"dispatch_batches": False})
    values.update(precision_default(values, overrides))
    if not values["dataloader_num_workers"]:  # persistent workers need workers
        values["dataloader_persistent_workers"] = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        values.setdefault("use_cpu", True)  # accelerate only makes CPU processes data-parallel when told
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


@dataclass(kw_only=True)
class TrainOptions(CommonOptions, LabelOptions, SourceOptions, BandOptions):
    """`segtune train`'s own options (TrainingArguments and AugmentConfig beside them); the fields
    without help are for Python callers."""

    data: str | None = option(None, "dataset folder, YAML data file or `datasets` source (required)")
    model: str = option(DEFAULT_MODEL, "Hub id, model folder, or an offline name: mit-b0 ... mit-b5, "
                        "upernet-convnext-tiny, beit-base, mobilevit-small ... (random weights, docs/models.md)")
    config: Path | None = option(None, "YAML/JSON file of any of these options; the command line wins")
    val_split: float = option(0.2, "validation share when the data has no split (split with --seed)")
    streaming: bool = flag("read a `datasets` source as a stream (needs --max_steps and known classes)")
    skip_bad: bool = flag("train on the good pairs, after listing the bad ones")
    num_workers: int | None = option(None, "DataLoader worker processes (= --dataloader_num_workers; default: "
                                     "half the cores, at most 4, with a GPU; 0 on CPU)")
    recipe: Literal["auto", "segformer", "mask2former", "eomt", "plain"] = option(
        "auto", "auto: the architecture's own (segformer for per-pixel models, eomt for EoMT, mask2former for "
        "Mask2Former and MaskFormer); segformer: MMSegmentation's SegFormer recipe; mask2former, eomt: their papers' "
        "(docs/train.md); plain: the seeds' bare Trainer defaults")
    head_lr_mult: float = option(10.0, "decode head learning-rate multiple (segformer recipe)")
    loss: str = option("ce", "ce, dice, focal, or a weighted sum such as ce:1,dice:0.5")
    class_weights: str | None = option(None, "'auto' (from training pixel frequencies) or a file of weights "
                                       "(JSON or one per line)")
    early_stopping: int | None = option(None, "stop after N evaluations without a better mean IoU", metavar="N")
    overfit: int | None = option(None, "sanity check: train and evaluate on the same N images, augmentation off",
                                 metavar="N")
    resume: bool = flag("continue from the newest checkpoint in --output-dir")
    overwrite: bool = flag("write into a non-empty output folder")
    trust_remote_code: bool = flag("run a Hub model's own code (only for models you trust)")
    license: str | None = option(None, "the licence the model card declares (a Hub id such as apache-2.0, mit, "
                                 "other); default: the base model's card's, when it declares one")
    rgb_bands: str | None = option(None, "multi-band rasters: the bands that are red, green, blue (1-based, e.g. "
                                   "4,3,2): a pretrained first layer keeps its RGB kernels on them (default: 1,2,3)")
    report: bool = option(True, "report.html at the end (metrics, curves, confusion matrix, lowest-IoU images); "
                          "--no-report: none")
    # Python callers only
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    training: dict = field(default_factory=dict)  # TrainingArguments overrides
    # The augmentation options set by the user, which the recipe's presets leave alone;
    # None: those that differ from AugmentConfig's defaults.
    augment_given: set | None = None
    callbacks: list = field(default_factory=list)  # extra TrainerCallbacks


# --report_to NAME -> (modules, any of which will do; what to install)
REPORTERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "comet_ml": (("comet_ml",), "comet_ml"),
    "neptune": (("neptune",), "neptune"),
    "clearml": (("clearml",), "clearml"),
    "dagshub": (("dagshub",), "dagshub"),
    "codecarbon": (("codecarbon",), "codecarbon"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
    "trackio": (("trackio",), "trackio"),
    "flyte": (("flytekit",), "flytekit"),
}


def check_reporters(report_to) -> None:
    """--report_to names whose package is missing stop the run before any data is read, in one line."""
    import importlib.util

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name not in REPORTERS:
            continue  # "none", "all" (only what is installed), or one the Trainer itself checks
        modules, package = REPORTERS[name]
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            raise SegtuneError(f"--report_to {name}: the {package} package is not installed; "
                               f"install it (pip install {package}) or drop --report_to {name}")


RECIPES = ("auto", "segformer", "mask2former", "eomt", "plain")
RECIPE_DEFAULTS = {"weight_decay": 0.01}  # the SegFormer recipe's; TrainingArguments' default is 0
# The mask classifiers' papers: AdamW at 1e-4, weight decay 0.05; Mask2Former clips the gradient norm at 0.01
MASK_RECIPE_DEFAULTS = {"mask2former": {"learning_rate": 1e-4, "weight_decay": 0.05, "max_grad_norm": 0.01},
                        "eomt": {"learning_rate": 1e-4, "weight_decay": 0.05}}


def recipe_defaults(recipe: str) -> dict:
    """The TrainingArguments values a (resolved) recipe starts from; the user's own win over them."""
    return RECIPE_DEFAULTS if recipe == "segformer" else MASK_RECIPE_DEFAULTS.get(recipe, {})
