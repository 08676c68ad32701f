"""Fine-tuning on the Hugging Face Trainer, with segtune's streaming evaluator inside it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, TrainingArguments, default_data_collator, set_seed

from ..data.checks import load_checked_data
from ..data.labels import load_labels
from ..data.pairs import SegmentationData, StreamedData
from ..data.rasters import parse_bands
from ..data.sources.splits import write_splits
from ..data.transforms import AugmentConfig, train_transform
from ..errors import SegtuneError
from ..evaluation.metrics import metrics_to_json
from ..evaluation.scoring import EvalDataset, format_table
from ..hub import check_hub
from ..inference.preprocess import ProcessorTransform
from ..models.architectures import OFFLINE_NAMES
from ..models.loading import load_model, training_processor
from .arguments import RECIPES, TrainOptions, check_reporters, recipe_defaults, training_arguments
from .precision import bf16_default_line
from .trainer import InterruptCheckpoint, JsonlLogger, SegmentationTrainer, TrainDataset

log = logging.getLogger("segtune")


def is_main_process() -> bool:
    """Rank 0 under torchrun/accelerate (read from the environment, before any process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_output_dir(path: Path, resume: bool, overwrite: bool) -> None:
    """Refuses to mix a new run into a folder that already holds something."""
    if path.exists() and not path.is_dir():
        raise SegtuneError(f"{path}: output path exists and is not a folder")
    if is_main_process() and path.is_dir() and any(path.iterdir()) and not (resume or overwrite):
        raise SegtuneError(f"{path}: output folder is not empty; pass --resume to continue it or --overwrite")
    path.mkdir(parents=True, exist_ok=True)


def _datasets(data: SegmentationData | StreamedData, opts: TrainOptions, processor, seed: int):
    if getattr(data, "band_layout", None) is not None:  # multi-band rasters: band_setup.py
        from .band_setup import band_datasets

        return band_datasets(data, opts, processor)
    augment = train_transform(opts.augment, processor.image_mean, processor.image_std, data.ignore_index)
    evaluate = ProcessorTransform(processor)
    if isinstance(data, StreamedData):
        stream = data.stream
        return (stream.dataset("train", augment, data.rules, opts.skip_bad, shuffle_seed=seed),
                stream.dataset("val", evaluate, data.rules, opts.skip_bad))
    return TrainDataset(data.train, augment, data.rules), EvalDataset(data.val, evaluate, data.rules)


OVERFIT_TARGET = 0.9


def _overfit(data: SegmentationData | StreamedData, opts: TrainOptions) -> None:
    """Train and validate on the same first N training pairs, without augmentation."""
    n = opts.overfit
    if isinstance(data, StreamedData):
        raise SegtuneError(f"{opts.data}: --overfit needs a dataset it can index, not a stream")
    if n < 1 or n > len(data.train):
        raise SegtuneError(f"--overfit {n}: choose 1..{len(data.train)} (the training pairs)")
    data.train = data.val = data.train[:n]
    opts.augment = AugmentConfig.off(opts.augment.base_size, opts.augment.crop_size)


def _overfit_report(log_history: list, n: int) -> dict:
    evals = [(e["step"], e["eval_mean_iou"]) for e in log_history if "eval_mean_iou" in e]
    passed = next((step for step, miou in evals if miou >= OVERFIT_TARGET), None)
    best = max((miou for _, miou in evals), default=float("nan"))
    if passed is not None:
        print(f"overfit check passed: training mean IoU reached {OVERFIT_TARGET} on {n} images at step {passed}")
    else:
        print(f"overfit check FAILED: training mean IoU on {n} images peaked at {best:.4f} (< {OVERFIT_TARGET}); "
              "look at the labels, the learning rate and the number of steps")
    return {"images": n, "target": OVERFIT_TARGET, "passed": passed is not None, "step": passed, "best": best}
PLAIN_AUGMENT = {"cat_max_ratio": 1.0, "photometric": False}  # the seeds' pipeline: resize, crop and flip only


def _recipe_augment(opts: TrainOptions) -> None:
    """--recipe plain's augmentation presets, for the options the user did not set."""
    if opts.recipe != "plain":
        return
    defaults = AugmentConfig()
    for key, value in PLAIN_AUGMENT.items():
        given = (key in opts.augment_given if opts.augment_given is not None
                 else getattr(opts.augment, key) != getattr(defaults, key))
        if not given:
            setattr(opts.augment, key, value)


class EarlyStopping(EarlyStoppingCallback):
    """The Trainer's early stopping, counting the evaluations made during training (eval_*) only:
    the final evaluation (final_*), made after training, has nothing left to stop."""

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        if any(key.startswith("eval_") for key in metrics):
            return super().on_evaluate(args, state, control, metrics, **kwargs)


def _resolve_recipe(opts: TrainOptions) -> None:
    """--recipe auto: the architecture's own recipe, from the model's config (an offline name's, or the
    checkpoint's config.json)."""
    if opts.recipe != "auto":
        return
    from transformers import AutoConfig

    from ..models.architectures import family, offline_config

    try:
        config = (offline_config(opts.model) if opts.model in OFFLINE_NAMES
                  else AutoConfig.from_pretrained(opts.model, trust_remote_code=opts.trust_remote_code))
    except (OSError, ValueError) as e:
        raise SegtuneError(f"{opts.model}: cannot load model: {str(e).splitlines()[0]}") from None
    if family(config) == "mask":
        opts.recipe = "eomt" if config.model_type.startswith("eomt") else "mask2former"
    else:
        opts.recipe = "segformer"


def _mask_recipe(opts: TrainOptions, args: TrainingArguments, kwargs: dict, card: dict) -> None:
    """The mask classifiers' recipes (optim.mask_param_groups): warm-up (EoMT's; Mask2Former has none), then
    poly decay with power 0.9, as their papers."""
    from . import optim

    lr, wd, recipe = args.learning_rate, args.weight_decay, opts.recipe
    kwargs["param_groups"] = lambda model: optim.mask_param_groups(model, lr, wd, recipe)
    card.update(weight_decay=wd, norm_weight_decay=0.0, embedding_weight_decay=0.0)
    card.update({"layer_lr_decay": optim.EOMT_LAYER_DECAY} if recipe == "eomt"
                else {"backbone_lr_mult": optim.MASK2FORMER_BACKBONE_MULT})
    if "lr_scheduler_type" not in opts.training:
        given = opts.training.get("warmup_steps")
        if given is not None:
            kwargs["poly_warmup"] = lambda total: args.get_warmup_steps(total)
        else:
            kwargs["poly_warmup"] = optim.default_warmup_steps if recipe == "eomt" else (lambda total: 0)
        kwargs["poly_power"] = 0.9
        card.update(schedule="linear warm-up, then poly decay (power 0.9) to 0" if recipe == "eomt" or given
                    else "poly decay (power 0.9) to 0, no warm-up")


def _recipe(opts: TrainOptions, args: TrainingArguments, data: SegmentationData | StreamedData,
            labels, mask_classifier: bool = False) -> tuple[dict, dict]:
    """-> (SegmentationTrainer keyword arguments, what to record in the model card)."""
    from . import losses, optim

    card = {"recipe": opts.recipe, "loss": opts.loss}
    kwargs = {}
    if mask_classifier:
        if opts.loss.strip().lower() != "ce" or opts.class_weights:
            raise SegtuneError(f"{opts.model}: --loss and --class-weights are for per-pixel models; a mask classifier "
                               "trains with its own matched loss (class cross-entropy, mask BCE and dice)")
        card["loss"] = "the model's own: Hungarian-matched class cross-entropy, mask BCE and dice, every layer"
    if opts.recipe in ("mask2former", "eomt"):
        _mask_recipe(opts, args, kwargs, card)
    elif opts.recipe == "segformer":
        lr, wd, mult = args.learning_rate, args.weight_decay, opts.head_lr_mult
        kwargs["param_groups"] = lambda model: optim.param_groups(model, lr, wd, mult)
        card.update(weight_decay=wd, head_lr_mult=mult, norm_weight_decay=0.0)
        if "lr_scheduler_type" not in opts.training:  # the user's own choice of schedule wins
            given = opts.training.get("warmup_steps")
            kwargs["poly_warmup"] = (optim.default_warmup_steps if given is None
                                     else lambda total: args.get_warmup_steps(total))
            card.update(schedule="linear warm-up, then poly decay (power 1) to 0")
    else:
        card.update(weight_decay=args.weight_decay)
    card.setdefault("schedule", f"the Trainer's {args.lr_scheduler_type.value}")  # warm-up steps: recorded as used
    if mask_classifier:
        return kwargs, card
    weights = None
    if opts.class_weights == "auto":
        if isinstance(data, StreamedData):
            raise SegtuneError(f"{opts.data}: --class-weights auto counts the training pixels: not on a stream")
        counts = losses.pixel_counts((s.read_mask(data.rules) for s in data.train), len(labels), data.ignore_index)
        weights = losses.class_weights_from_frequencies(counts)
    elif opts.class_weights:
        try:
            weights = losses.load_class_weights(opts.class_weights, labels.names)
        except ValueError as e:
            raise SegtuneError(str(e)) from None
    if weights is not None:
        card["class_weights"] = [round(float(w), 4) for w in weights]
    if opts.loss.strip().lower() != "ce" or weights is not None:
        try:
            kwargs["loss"] = losses.parse_loss_spec(opts.loss, data.ignore_index, weights)
        except ValueError as e:
            raise SegtuneError(f"--loss: {e}") from None
    return kwargs, card


def _fit_input_size(opts: TrainOptions, config) -> None:
    """A model that takes one square size only (BEiT, DPT, MobileViT: models/architectures.py) trains on
    crops of that size (padded with the ignore index where the image is smaller)."""
    from ..models.architectures import input_size

    side = input_size(config)
    if side and opts.augment.crop_size != side:
        log.warning("segtune: %s takes %dx%d inputs: training crops of %d, not %d", config.model_type, side, side,
                    side, opts.augment.crop_size)
        opts.augment.crop_size = side


def run_training(opts: TrainOptions) -> dict:
    """Checks the data, trains, saves the model directory; returns the final metrics (JSON form)."""
    if not opts.data or not opts.output_dir:
        raise SegtuneError("train needs data and an output folder (--data PATH --output-dir PATH)")
    opts.output_dir = Path(opts.output_dir)
    seed = int(opts.training.get("seed", 42))
    check_reporters(opts.training.get("report_to"))
    if opts.model not in OFFLINE_NAMES:
        if "/" not in opts.model and not Path(opts.model).exists():  # not a Hub id: a mistyped offline name
            from ..models.architectures import offline_config

            offline_config(opts.model)  # one line listing the known names
        check_hub(opts.model)  # before the data is read: offline, fail in seconds, not after it
    data, labels = load_checked_data(opts.data, opts, val_split=opts.val_split, seed=seed,
                                     labels=load_labels(opts.labels) if opts.labels else None,
                                     source_kwargs=opts.source_kwargs(), skip_bad=opts.skip_bad,
                                     bands=parse_bands(opts.bands))
    streamed = isinstance(data, StreamedData)
    no_training = data.stream.train is None if streamed else not data.train
    if no_training:
        raise SegtuneError(f"{opts.data}: the training split is empty")
    if opts.overfit is not None:
        _overfit(data, opts)
    if opts.recipe not in RECIPES:
        raise SegtuneError(f"--recipe {opts.recipe}: choose {' or '.join(RECIPES)}")
    _recipe_augment(opts)
    prepare_output_dir(opts.output_dir, opts.resume, opts.overwrite)
    _resolve_recipe(opts)
    args = training_arguments(opts.output_dir, {**recipe_defaults(opts.recipe), **opts.training},
                              streaming=streamed)
    if args.bf16 and args.use_cpu and "bf16" not in opts.training and args.process_index == 0:
        print(bf16_default_line())
    if streamed and args.max_steps <= 0:
        raise SegtuneError(f"{opts.data}: a streamed dataset has no length: give --max_steps")
    if not streamed:
        log.info("segtune: %d training and %d validation pairs, %d classes", len(data.train), len(data.val),
                 len(labels))

    set_seed(args.seed)  # before the model: a new head (or a model from scratch) starts from the seed
    model = load_model(opts.model, labels, data.ignore_index, opts.trust_remote_code)
    processor = training_processor(opts.model, opts.augment.base_size, model.config)
    _fit_input_size(opts, model.config)
    if getattr(data, "band_layout", None) is not None:  # N input channels, per-band normalisation
        from .band_setup import for_bands

        model, processor = for_bands(opts, data, model, processor, progress=not args.disable_tqdm)
    if model.config.model_type == "segformer" and "ddp_find_unused_parameters" not in opts.training:
        args.ddp_find_unused_parameters = False  # every parameter takes part: spare DDP a graph walk a step
    channels_last = args.device.type == "cuda"  # faster convolutions on a GPU, above all in bf16
    if channels_last:
        model.to(memory_format=torch.channels_last)
    from .band_setup import card_fields

    train_set, val_set = _datasets(data, opts, processor, seed)
    from ..models.architectures import family

    recipe_kwargs, recipe_card = _recipe(opts, args, data, labels, family(model.config) == "mask")
    hyperparameters = {
        "model": opts.model,
        "architecture": model.config.model_type,
        "learning_rate": args.learning_rate,
        "batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "world_size": args.world_size,
        "effective_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "channels_last": channels_last,
        **({"max_steps": args.max_steps} if args.max_steps > 0 else {"num_train_epochs": args.num_train_epochs}),
        "train_samples": "streamed" if streamed else len(data.train),
        "validation_samples": "streamed" if streamed else len(data.val),
        "seed": args.seed,
        "reduce_labels": data.reduce_labels,
        "label_map": data.label_map,
        "binary": data.binary,
        "ignore_index": data.ignore_index,
        **{k: v for k, v in vars(opts.augment).items()},
        **recipe_card,
        **card_fields(processor),  # multi-band rasters: the bands and their clips
    }
    interrupt = InterruptCheckpoint()
    callbacks = [JsonlLogger(opts.output_dir / "log.jsonl"), *opts.callbacks, interrupt]
    if opts.early_stopping:
        callbacks.append(EarlyStopping(early_stopping_patience=opts.early_stopping))
    trainer = SegmentationTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=default_data_collator,
        processing_class=processor,
        callbacks=callbacks,
        labels=labels,
        ignore_index=data.ignore_index,
        card=dict(base_model=opts.model, data=str(opts.data), hyperparameters=hyperparameters, license=opts.license,
                  model_name=opts.output_dir.resolve().name),
        **recipe_kwargs,
    )
    resume = opts.resume and any(opts.output_dir.glob("checkpoint-*"))
    if opts.resume and not resume:
        log.warning("segtune: --resume given but %s holds no checkpoint; starting afresh", opts.output_dir)
    interrupt.install()
    try:
        trainer.train(resume_from_checkpoint=True if resume else None)
    finally:
        interrupt.uninstall()
    if interrupt.interrupted:
        log.warning("segtune: stopped at step %d; checkpoint saved in %s: continue with --resume",
                    trainer.state.global_step, opts.output_dir)
        raise KeyboardInterrupt

    # The final evaluation of the best checkpoint (reloaded at the end): SegmentationTrainer.evaluate's
    # pass, made here so that it also scores each image for the report (no second pass).
    from ..evaluation.scoring import ImageScores, evaluate_model
    from ..reporting.report import write_report_or_warn
    from .trainer import SCALAR_METRICS

    bands = getattr(data, "band_layout", None) is not None  # rasters: the report draws no gallery of them
    scores = ImageScores(len(labels), data.ignore_index) if opts.report and not streamed and not bands else None
    confusion = evaluate_model(trainer.model, val_set, len(labels), data.ignore_index,
                               batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers,
                               progress=not args.disable_tqdm, on_item=scores)
    trainer.last_metrics = confusion.compute()
    final = {f"final_{k}": trainer.last_metrics[k] for k in SCALAR_METRICS}
    trainer.log(final)
    trainer.control = trainer.callback_handler.on_evaluate(args, trainer.state, trainer.control, final)
    if scores is not None:
        scores.gather()  # several processes: each scored its own share of the images
    metrics = metrics_to_json(trainer.last_metrics, labels.names)
    metrics["step"] = trainer.state.global_step
    metrics["data_findings"] = [f.to_json() for f in getattr(data, "findings", [])]  # label checks, for the report
    if opts.overfit is not None:
        metrics["overfit"] = _overfit_report(trainer.state.log_history, opts.overfit)
    if trainer.is_world_process_zero():
        # _internal_call: the Trainer pushes on every user call of save_model; the one push is below
        trainer.save_model(str(opts.output_dir), _internal_call=True)
        labels.to_json(opts.output_dir / "labels.json")
        write_splits(data, opts.output_dir)
        (opts.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        trainer.create_model_card()
        print(format_table(trainer.last_metrics, labels.names))
        if opts.report:  # the model is saved first: a failed report costs only the page
            page = write_report_or_warn(opts.output_dir, labels=labels, samples=None if scores is None else data.val,
                                        rules=data.rules, confusion=confusion, scores=scores,
                                        progress=not args.disable_tqdm)
            if page is not None:
                print(f"report written to {page}")
    if args.push_to_hub:  # on every process (it saves again), uploading from rank 0: the folder with the card
        trainer.push_to_hub()
    close_process_group()
    return metrics


def close_process_group() -> None:
    """Waits for rank 0's writes, then tears the process group down.

    A rank that leaves while another is still saving can abort in gloo's destructor
    ("terminate called without an active exception"), failing the whole torchrun job.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
