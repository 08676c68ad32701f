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


SOURCE_KEYS = ("image_suffix", "mask_suffix", "data_config", "train_split", "eval_split", "image_column",
               "label_column", "streaming")


def _add_source_options(p: argparse.ArgumentParser, streaming: bool = False) -> None:
    g = p.add_argument_group("data source")
    g.add_argument("--image-suffix", dest="image_suffix", help="image file ending, e.g. _leftImg8bit.png")
    g.add_argument("--mask-suffix", dest="mask_suffix", help="mask file ending, e.g. _gtFine_labelIds.png")
    g.add_argument("--data-config", dest="data_config", help="`datasets` configuration name")
    g.add_argument("--train-split", dest="train_split", help="`datasets` split, e.g. 'train[:50]'")
    g.add_argument("--eval-split", dest="eval_split",
                   help="`datasets` validation split, e.g. validation, or a slice such as 'train[:50]' "
                        "when streaming; none: hold out --val-split of the training rows as the seeds do")
    g.add_argument("--image-column", dest="image_column", help="`datasets` image column (default: found)")
    g.add_argument("--label-column", dest="label_column", help="`datasets` mask column (default: found)")
    if streaming:
        g.add_argument("--streaming", action="store_true", default=None,
                       help="read a `datasets` source as a stream (needs --max_steps and known classes)")


def source_options(values: dict) -> dict:
    """CLI/config names -> load_data keywords."""
    options = {k: values[k] for k in SOURCE_KEYS if values.get(k) is not None}
    if "data_config" in options:
        options["config"] = options.pop("data_config")
    return options


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
    _add_source_options(train, streaming=True)
    train.add_argument("--skip-bad", dest="skip_bad", action="store_true", default=None,
                       help="train on the good pairs, after listing the bad ones")
    train.add_argument("--num-workers", dest="num_workers", type=int,
                       help="DataLoader worker processes (default: half the cores, at most 4, with a GPU; 0 on CPU)")
    train.add_argument("--val-split", dest="val_split", type=float, help="validation share when the data has no split")
    train.add_argument("--base-size", dest="base_size", type=int, help="short side for evaluation (default 512)")
    train.add_argument("--crop-size", dest="crop_size", type=int, help="training crop (default 512)")
    train.add_argument("--scale-range", dest="scale_range", type=float, nargs=2, metavar=("MIN", "MAX"),
                       help="random resize ratios of the base size (default 0.5 2.0)")
    train.add_argument("--no-flip", dest="flip", action="store_false", default=None, help="no horizontal flips")
    train.add_argument("--cat-max-ratio", dest="cat_max_ratio", type=float,
                       help="crops retry so no class covers more than this share (default 0.75; 1 = off)")
    train.add_argument("--no-photometric", dest="photometric", action="store_false", default=None,
                       help="no brightness/contrast/saturation/hue distortion")
    train.add_argument("--recipe", choices=["segformer", "plain"],
                       help="segformer (default): the reference recipe; plain: the seeds' bare Trainer defaults")
    train.add_argument("--head-lr-mult", dest="head_lr_mult", type=float, help="decode head lr multiple (default 10)")
    train.add_argument("--loss", help="ce (default), dice, focal, or a weighted sum such as ce:1,dice:0.5")
    train.add_argument("--class-weights", dest="class_weights",
                       help="'auto' (from training pixel frequencies) or a file of weights (JSON or one per line)")
    train.add_argument("--early-stopping", dest="early_stopping", type=int, metavar="N",
                       help="stop after N evaluations without a better mean IoU")
    train.add_argument("--overfit", type=int, metavar="N",
                       help="sanity check: train and evaluate on the same N images, augmentation off")
    train.add_argument("--resume", action="store_true", default=None, help="continue from the newest checkpoint")
    train.add_argument("--overwrite", action="store_true", default=None, help="write into a non-empty output folder")
    train.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true", default=None)
    train.add_argument("--no-report", dest="report", action="store_false", default=None,
                       help="no report.html at the end (metrics, curves, confusion matrix, lowest-IoU images)")

    ev = sub.add_parser("evaluate", help="score a model or saved predictions against masks")
    _add_common(ev, "runs/evaluate")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model folder or Hub id")
    source.add_argument("--predictions", type=Path, help="folder of label PNGs named like the annotations")
    ev.add_argument("--data", required=True, help="dataset folder or YAML data file")
    _add_data_rules(ev)
    _add_source_options(ev)
    ev.add_argument("--skip-bad", dest="skip_bad", action="store_true", help="score the good pairs only")
    ev.add_argument("--split", choices=["auto", "val", "train", "all"], default="auto",
                    help="auto: the validation split when the data defines one, else every pair")
    ev.add_argument("--batch-size", dest="batch_size", type=int, default=2)
    ev.add_argument("--num-workers", dest="num_workers", type=int, default=0)
    ev.add_argument("--no-report", dest="report", action="store_false",
                    help="no report.html (confusion matrix, lowest-IoU images)")

    pr = sub.add_parser("predict", help="segment images with a trained model")
    pr.add_argument("inputs", nargs="+", help="image files, folders or glob patterns ('photos/*.jpg')")
    pr.add_argument("--model", required=True, help="model folder or Hub id")
    _add_common(pr, None)
    pr.add_argument("--recursive", action="store_true", help="take folders' sub-folders too (outputs mirror them)")
    pr.add_argument("--batch-size", dest="batch_size", type=int,
                    help="images (or windows) per pass (default 4 on CPU, 16 on CUDA)")
    pr.add_argument("--num-workers", dest="num_workers", type=int, default=2,
                    help="threads decoding images and writing outputs while the model runs (0: none)")
    pr.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N, mps")
    pr.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    pr.add_argument("--mode", choices=["auto", "whole", "slide"], default="auto",
                    help="whole image, sliding windows, or auto: slide for images over 2 crops long")
    pr.add_argument("--crop-size", dest="crop_size", type=int, help="slide window (default: the training scale)")
    pr.add_argument("--stride", type=int, help="slide step (default: 2/3 of the window)")
    pr.add_argument("--tta", action="store_true", help="average probabilities over scales and flips")
    pr.add_argument("--tta-scales", dest="tta_scales", type=float, nargs="+", metavar="RATIO",
                    help="TTA scales, ratios of the training scale (default 0.5 0.75 1.0 1.25 1.5 1.75)")
    pr.add_argument("--no-tta-flip", dest="tta_flip", action="store_false", help="TTA without flips")
    pr.add_argument("--fold-head", dest="fold_head", action="store_true",
                    help="SegFormer: fold the decode head's fuse layer into each stage (faster: see README's "
                         "Benchmarks; logits differ by float rounding, ~1e-7, so a near-tied pixel may flip)")
    pr.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    pr.add_argument("--save-probs", dest="save_probs", action="store_true",
                    help="per-class probabilities, uint8 (p x 255) in compressed probs/<name>.npz")
    pr.add_argument("--show-gt", dest="show_gt", type=Path,
                    help="ground truth (mask folder or dataset): image | truth | prediction | error figures")
    _add_data_rules(pr)
    pr.add_argument("--overwrite", action="store_true",
                    help="redo images whose outputs exist; write into a folder of other files")

    rep = sub.add_parser("report", help="report.html of a run: metrics, curves, confusion matrix, worst images")
    rep.add_argument("run_dir", type=Path, help="a `segtune train` or `segtune evaluate` output folder")
    rep.add_argument("--data", help="score the model on this data's validation split (confusion matrix, gallery); "
                     "without it, the scores saved by an earlier report are used")
    rep.add_argument("--model", help="model to score with (default: RUN_DIR, or the model metrics.json names)")
    rep.add_argument("--output-dir", "--output_dir", dest="output_dir", type=Path, help="default: RUN_DIR")
    rep.add_argument("--debug", action="store_true", help="show Python tracebacks")
    _add_data_rules(rep)
    _add_source_options(rep)
    rep.add_argument("--skip-bad", dest="skip_bad", action="store_true", help="score the good pairs only")
    rep.add_argument("--split", choices=["auto", "val", "train", "all"], default="auto",
                     help="auto: the validation split when the data defines one, else every pair")
    rep.add_argument("--gallery", type=int, default=8, help="lowest-IoU images shown")
    rep.add_argument("--batch-size", dest="batch_size", type=int, default=2)
    rep.add_argument("--num-workers", dest="num_workers", type=int, default=0)

    ins = sub.add_parser("inspect", help="count, measure and check a dataset before training")
    ins.add_argument("--data", required=True, help="dataset folder, YAML data file or `datasets` source")
    _add_common(ins, "runs/inspect")
    _add_data_rules(ins)
    _add_source_options(ins)
    ins.add_argument("--val-split", dest="val_split", type=float, default=0.2)
    ins.add_argument("--seed", type=int, default=42)
    ins.add_argument("--samples", type=int, default=8, help="images in inspect.png")
    return parser


# ---------------------------------------------------------------- train options


SEGTUNE_TRAIN_KEYS = {"data", "model", "labels", "reduce_labels", "ignore_index", "val_split", "base_size",
                      "crop_size", "scale_range", "flip", "resume", "overwrite", "trust_remote_code", "skip_bad",
                      "num_workers", "early_stopping", "overfit", "cat_max_ratio", "photometric", "recipe",
                      "head_lr_mult", "loss", "class_weights", "report", *SOURCE_KEYS}


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
    if "num_workers" in ours:
        training.setdefault("dataloader_num_workers", ours.pop("num_workers"))
    if isinstance(training.get("report_to"), str) and "," in training["report_to"]:  # tensorboard,wandb
        training["report_to"] = [name.strip() for name in training["report_to"].split(",") if name.strip()]
    if ours.get("recipe") == "plain" and "head_lr_mult" in ours:
        raise SegtuneError("--head-lr-mult: --recipe plain trains every layer at one learning rate; "
                           "drop one of the two")
    sources = source_options(ours)
    ours = {k: v for k, v in ours.items() if k not in SOURCE_KEYS}
    aug_keys = {f.name for f in dataclasses.fields(AugmentConfig)}
    augment = AugmentConfig(**{k: tuple(v) if k == "scale_range" else v for k, v in ours.items() if k in aug_keys})
    rest_ours = {k: v for k, v in ours.items() if k not in aug_keys}
    rest_ours.setdefault("model", DEFAULT_MODEL)
    return TrainOptions(output_dir=ns.output_dir, augment=augment, training=training, source_options=sources,
                        augment_given={k for k in ours if k in aug_keys}, **rest_ours)


# ---------------------------------------------------------------- commands


def cmd_train(ns, rest) -> None:
    from .train import is_main_process, run_training

    metrics = run_training(train_options(ns, rest))
    if is_main_process():
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
        skip_bad=ns.skip_bad, source_options=source_options(vars(ns)),
    )
    split = scored_split(data)
    samples = {"val": data.val, "train": data.train, "all": data.train + data.val}[split]
    if not samples:
        raise SegtuneError(f"{ns.data}: the {split} split is empty")
    from .report import ImageScores

    # each image's score for the report's gallery, taken in the one scoring pass
    scores = ImageScores(len(labels), data.ignore_index) if ns.report else None
    if model is not None:
        from .transforms import ProcessorTransform

        dataset = EvalDataset(samples, ProcessorTransform(processor), data.rules)
        cm = evaluate_model(model, dataset, len(labels), data.ignore_index, ns.batch_size, ns.num_workers,
                            on_item=scores)
    else:
        cm = evaluate_predictions(samples, ns.predictions, len(labels), data.rules, on_item=scores)
    metrics = cm.compute()
    print(format_table(metrics, labels.names))
    ns.output_dir.mkdir(parents=True, exist_ok=True)
    out = metrics_to_json(metrics, labels.names)
    out.update(num_images=len(samples), data=str(ns.data), source=str(ns.model or ns.predictions))
    (ns.output_dir / "metrics.json").write_text(json.dumps(out, indent=2))
    print(f"metrics written to {ns.output_dir / 'metrics.json'}")
    if ns.report:
        from .report import write_report_or_warn

        page = write_report_or_warn(ns.output_dir, labels=labels, samples=samples, rules=data.rules, confusion=cm,
                                    scores=scores)
        if page is not None:
            print(f"report written to {page}")


def cmd_predict(ns, rest) -> None:
    from .predict import Segmenter, check_output_dir, collect_images, predict_images

    images = collect_images(ns.inputs, recursive=ns.recursive)
    check_output_dir(ns.output_dir, ns.overwrite)
    options = dict(mode=ns.mode, crop_size=ns.crop_size, stride=ns.stride, tta=ns.tta, flip=ns.tta_flip,
                   batch_size=ns.batch_size, num_workers=ns.num_workers, fold_head=ns.fold_head)
    if ns.tta_scales:
        options["scales"] = ns.tta_scales
    segmenter = Segmenter.from_pretrained(ns.model, device=ns.device, dtype=ns.dtype, **options)
    if ns.labels:
        from .labels import load_labels

        segmenter.labels = load_labels(ns.labels)
    # --show-gt masks are read by the data file's rules (label_map, ignore_index, reduce_labels);
    # the options given here replace them.
    rules = {key: value for key, value in (("reduce_labels", ns.reduce_labels), ("ignore_index", ns.ignore_index))
             if value is not None}
    if ns.labels and segmenter.labels.colors_given:
        rules["colors"] = segmenter.labels.colors
    records = predict_images(segmenter, images, ns.output_dir, alpha=ns.alpha, show_gt=ns.show_gt, rules=rules,
                             save_probs=ns.save_probs, overwrite=ns.overwrite)
    print(f"{len(records)} images segmented into {ns.output_dir} (predictions.jsonl lists them, "
          "predict.json sums them up)")


def cmd_report(ns, rest) -> None:
    from .report import write_report

    metrics_path = ns.run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise SegtuneError(f"{ns.run_dir}: no metrics.json (expected a `segtune train` or `segtune evaluate` "
                           "output folder)")
    scoring = {}
    if ns.data:
        from .labels import load_labels
        from .predict import Segmenter
        from .train import load_checked_data

        model = ns.model or (ns.run_dir if (ns.run_dir / "config.json").is_file()
                             else json.loads(metrics_path.read_text()).get("source"))
        if not model:
            raise SegtuneError(f"{ns.run_dir}: holds no model; name the one to score with --model")
        segmenter = Segmenter.from_pretrained(model)
        labels = load_labels(ns.labels) if ns.labels else segmenter.labels

        def scored_split(data):
            return ("all" if data.val_is_split else "val") if ns.split == "auto" else ns.split

        data, labels = load_checked_data(
            ns.data, val_split=0.2, seed=42, reduce_labels=ns.reduce_labels, ignore_index=ns.ignore_index,
            labels=labels, splits=lambda d: ("train", "val") if scored_split(d) == "all" else (scored_split(d),),
            skip_bad=ns.skip_bad, source_options=source_options(vars(ns)),
        )
        if data.streaming is not None:
            raise SegtuneError(f"{ns.data}: a streamed dataset cannot be scored for a report; drop --streaming")
        split = scored_split(data)
        samples = {"val": data.val, "train": data.train, "all": data.train + data.val}[split]
        if not samples:
            raise SegtuneError(f"{ns.data}: the {split} split is empty")
        scoring = dict(model=segmenter.model, processor=segmenter.processor, samples=samples, rules=data.rules,
                       labels=labels)
    path = write_report(ns.run_dir, output_dir=ns.output_dir, gallery_size=ns.gallery, batch_size=ns.batch_size,
                        num_workers=ns.num_workers, **scoring)
    print(f"report written to {path} (pictures in {path.parent / 'report'})")


def cmd_inspect(ns, rest) -> None:
    from .inspection import inspect_data

    report = inspect_data(
        ns.data, ns.output_dir, labels=ns.labels, reduce_labels=ns.reduce_labels, ignore_index=ns.ignore_index,
        val_split=ns.val_split, seed=ns.seed, num_samples=ns.samples, source_options=source_options(vars(ns)),
    )
    if report["blocking_problems"]:
        raise SegtuneError(f"{len(report['blocking_problems'])} problem(s) would stop training "
                           f"(listed above and in {ns.output_dir / 'inspect.json'})")


def cmd_demo(ns, rest) -> None:
    from .demo import run_demo

    run_demo(ns.output_dir, seed=ns.seed)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "inspect": cmd_inspect,
            "demo": cmd_demo, "report": cmd_report}


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
