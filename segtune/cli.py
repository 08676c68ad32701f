"""The `segtune` command: a thin layer of argument parsing over the modules."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from .errors import SegtuneError

log = logging.getLogger("segtune")


def _add_common(p: argparse.ArgumentParser, output_default: str | None) -> None:
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, default=output_default,
                   required=output_default is None, help="where results and *.json files are written")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")


def _add_data_rules(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", help="'ade20k', or a JSON/CSV file of id -> name (and colour)")
    p.add_argument("--reduce-labels", dest="reduce_labels", action="store_true", default=None,
                   help="ADE20K reduction on masks: 0 -> ignored, k -> k-1")
    p.add_argument("--ignore-index", dest="ignore_index", type=int, help="mask value to ignore (default 255)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segtune", description="Fine-tune, evaluate and run SegFormer models.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate the demo data, train, evaluate and predict (offline)")
    _add_common(demo, "runs/demo")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated data and of training")

    train = sub.add_parser(
        "train",
        help="fine-tune a model",
        description="Fine-tune a model. Any TrainingArguments option is accepted under its own name "
        "(--learning_rate or --learning-rate, --num_train_epochs, --eval_steps, --push_to_hub, ...).",
    )
    _add_common(train, None)
    train.add_argument("--data", help="dataset folder or YAML data file")
    train.add_argument("--config", type=Path, help="YAML/JSON file of options; the command line wins")
    train.add_argument("--model", help="Hub id, model folder, or mit-b0..mit-b5 (random weights)")
    _add_data_rules(train)
    train.add_argument("--val-split", dest="val_split", type=float, help="validation share when the data has no split")
    train.add_argument("--base-size", dest="base_size", type=int, help="short side for evaluation (default 512)")
    train.add_argument("--crop-size", dest="crop_size", type=int, help="training crop (default 512)")
    train.add_argument("--scale-range", dest="scale_range", type=float, nargs=2, metavar=("MIN", "MAX"),
                       help="random resize ratios of the base size (default 0.5 2.0)")
    train.add_argument("--no-flip", dest="flip", action="store_false", default=None, help="no horizontal flips")
    train.add_argument("--resume", action="store_true", default=None, help="continue from the newest checkpoint")
    train.add_argument("--overwrite", action="store_true", default=None, help="write into a non-empty output folder")
    train.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true", default=None)

    ev = sub.add_parser("evaluate", help="score a model or saved predictions against masks")
    _add_common(ev, "runs/evaluate")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model folder or Hub id")
    source.add_argument("--predictions", type=Path, help="folder of label PNGs named like the annotations")
    ev.add_argument("--data", required=True, help="dataset folder or YAML data file")
    _add_data_rules(ev)
    ev.add_argument("--split", choices=["auto", "val", "train", "all"], default="auto",
                    help="auto: the validation split when the data defines one, else every pair")
    ev.add_argument("--batch-size", dest="batch_size", type=int, default=2)
    ev.add_argument("--num-workers", dest="num_workers", type=int, default=0)

    pr = sub.add_parser("predict", help="segment images with a trained model")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--model", required=True, help="model folder or Hub id")
    _add_common(pr, None)
    pr.add_argument("--show-gt", dest="show_gt", type=Path,
                    help="ground truth (mask folder or dataset) for image | truth | prediction figures")
    _add_data_rules(pr)
    pr.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    return parser


# ---------------------------------------------------------------- train options


SEGTUNE_TRAIN_KEYS = {"data", "model", "labels", "reduce_labels", "ignore_index", "val_split", "base_size",
                      "crop_size", "scale_range", "flip", "resume", "overwrite", "trust_remote_code"}


def _training_argument_parser():
    """HfArgumentParser for TrainingArguments, reporting only the options actually given."""
    from transformers import HfArgumentParser, TrainingArguments

    hf = HfArgumentParser(TrainingArguments, add_help=False)
    for action in hf._actions:
        action.default, action.required = argparse.SUPPRESS, False
    return hf


def _read_config(path: Path) -> dict:
    import yaml

    try:
        values = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise SegtuneError(f"{path}: cannot read config ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise SegtuneError(f"{path}: config must be a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in values.items()}


def train_options(ns: argparse.Namespace, rest: list[str]):
    """Merges defaults < config file < command line into TrainOptions."""
    from transformers import TrainingArguments

    from .model import DEFAULT_MODEL
    from .train import TrainOptions
    from .transforms import AugmentConfig

    given, unknown = _training_argument_parser().parse_known_args(rest)
    if unknown:
        raise SegtuneError(f"unknown option(s): {' '.join(unknown)} (see segtune train --help)")
    training = vars(given)
    ours = {k: v for k, v in vars(ns).items() if k in SEGTUNE_TRAIN_KEYS and v is not None}
    if ns.config:
        ta_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
        config = _read_config(ns.config)
        for key, value in config.items():
            if key in SEGTUNE_TRAIN_KEYS:
                ours.setdefault(key, value)
            elif key in ta_fields:
                training.setdefault(key, value)
            elif key != "output_dir":
                raise SegtuneError(f"{ns.config}: unknown option '{key}'")
    if "data" not in ours:
        raise SegtuneError("no data given: pass --data PATH (a dataset folder or YAML data file)")
    aug_keys = {f.name for f in dataclasses.fields(AugmentConfig)}
    augment = AugmentConfig(**{k: tuple(v) if k == "scale_range" else v for k, v in ours.items() if k in aug_keys})
    rest_ours = {k: v for k, v in ours.items() if k not in aug_keys}
    rest_ours.setdefault("model", DEFAULT_MODEL)
    return TrainOptions(output_dir=ns.output_dir, augment=augment, training=training, **rest_ours)


# ---------------------------------------------------------------- commands


def cmd_train(ns, rest) -> None:
    from .train import run_training

    metrics = run_training(train_options(ns, rest))
    print(f"mean IoU {metrics['mean_iou']:.4f}; model saved to {ns.output_dir}")


def cmd_evaluate(ns, rest) -> None:
    from .evaluate import EvalDataset, evaluate_model, evaluate_predictions, format_table
    from .labels import load_labels
    from .metrics import metrics_to_json
    from .train import load_checked_data

    labels = load_labels(ns.labels) if ns.labels else None
    model = None
    if ns.model:
        from .predict import Segmenter

        segmenter = Segmenter.from_pretrained(ns.model)
        model, processor = segmenter.model, segmenter.processor
        labels = labels or segmenter.labels
    def scored_split(data):
        if ns.split == "auto":
            return "all" if data.val_is_split else "val"
        return ns.split

    data, labels = load_checked_data(
        ns.data, val_split=0.2, seed=42, reduce_labels=ns.reduce_labels, ignore_index=ns.ignore_index,
        labels=labels, splits=lambda data: ("train", "val") if scored_split(data) == "all" else (scored_split(data),),
    )
    split = scored_split(data)
    samples = {"val": data.val, "train": data.train, "all": data.train + data.val}[split]
    if not samples:
        raise SegtuneError(f"{ns.data}: the {split} split is empty")
    if model is not None:
        from .transforms import ProcessorTransform

        dataset = EvalDataset(samples, ProcessorTransform(processor), data.reduce_labels, data.ignore_index)
        cm = evaluate_model(model, dataset, len(labels), data.ignore_index, ns.batch_size, ns.num_workers)
    else:
        cm = evaluate_predictions(samples, ns.predictions, len(labels), data.reduce_labels, data.ignore_index)
    metrics = cm.compute()
    print(format_table(metrics, labels.names))
    ns.output_dir.mkdir(parents=True, exist_ok=True)
    out = metrics_to_json(metrics, labels.names)
    out.update(num_images=len(samples), data=str(ns.data), source=str(ns.model or ns.predictions))
    (ns.output_dir / "metrics.json").write_text(json.dumps(out, indent=2))
    print(f"metrics written to {ns.output_dir / 'metrics.json'}")


def cmd_predict(ns, rest) -> None:
    from .predict import Segmenter, collect_images, predict_images

    images = collect_images(ns.inputs)
    if ns.output_dir.is_dir() and any(ns.output_dir.iterdir()) and not ns.overwrite:
        raise SegtuneError(f"{ns.output_dir}: output folder is not empty; pass --overwrite to write into it")
    segmenter = Segmenter.from_pretrained(ns.model, device=ns.device)
    if ns.labels:
        from .labels import load_labels

        segmenter.labels = load_labels(ns.labels)
    ns.output_dir.mkdir(parents=True, exist_ok=True)
    records = predict_images(
        segmenter, images, ns.output_dir, alpha=ns.alpha, show_gt=ns.show_gt,
        reduce_labels=bool(ns.reduce_labels), ignore_index=255 if ns.ignore_index is None else ns.ignore_index,
    )
    print(f"{len(records)} images segmented into {ns.output_dir}")


def cmd_demo(ns, rest) -> None:
    from .demo import run_demo

    run_demo(ns.output_dir, seed=ns.seed)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo}


def _one_line(error: BaseException) -> str:
    """The user-facing line; errors raised in DataLoader workers arrive wrapped in a traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split("Error: ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    ns, rest = parser.parse_known_args(argv)
    if rest and ns.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        COMMANDS[ns.command](ns, rest)
    except KeyboardInterrupt:
        print("segtune: interrupted", file=sys.stderr)
        return 130
    except SegtuneError as e:
        if ns.debug:
            raise
        for line in _one_line(e).splitlines():
            print(f"segtune: error: {line}", file=sys.stderr)
        return 1
    except Exception as e:  # anything unforeseen still gets one line unless --debug
        if ns.debug:
            raise
        first = _one_line(e).splitlines()[0] if str(e).strip() else ""
        print(f"segtune: error: {type(e).__name__}: {first} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0
