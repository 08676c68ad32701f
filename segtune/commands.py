"""The commands and their options objects: which dataclasses each command reads, its default
output folder and required options, and the one conversion of options by name (typed on the command
line or given to `segtune.api` as keywords) into the options object its `run_*` function takes."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from . import options as o
from .errors import SegtuneError


@dataclasses.dataclass
class Command:
    help: str
    types: tuple
    positional: tuple = ()  # (name, argparse kwargs)
    output_dir: str | None = None  # the default --output-dir; None: required (report: RUN_DIR)


def train_types():
    from transformers import TrainingArguments

    from .data.transforms import AugmentConfig
    from .training.arguments import TrainOptions

    return TrainOptions, AugmentConfig, TrainingArguments


COMMANDS = {
    "demo": Command("generate the demo data, train, evaluate and predict (offline)", (o.DemoOptions,),
                    output_dir="runs/demo"),
    "train": Command("fine-tune a model (any TrainingArguments option under its own name)", ()),
    "evaluate": Command("score a model or saved predictions against masks", (o.EvaluateOptions,),
                        output_dir="runs/evaluate"),
    "predict": Command("segment images with a trained model", (o.PredictOptions,),
                       positional=(("inputs", dict(nargs="+", help="image files, folders or glob patterns "
                                                   "('photos/*.jpg')")),)),
    "report": Command("report.html of a run: metrics, curves, confusion matrix, worst images", (o.ReportOptions,),
                      positional=(("run_dir", dict(type=Path, help="a `segtune train` or `segtune evaluate` "
                                                   "output folder")),)),
    "inspect": Command("count, measure and check a dataset before training", (o.InspectOptions,),
                       output_dir="runs/inspect"),
    "export": Command("export a model to ONNX and check it against torch", (o.ExportOptions,)),
    "serve": Command("an HTTP API and a web page for a model (docs/serve.md)", (o.ServeOptions,)),
}


def _fields(*types) -> set[str]:
    return {f.name for t in types for f in dataclasses.fields(t)}


def _read_config(path: Path) -> dict:
    import yaml

    try:
        values = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise SegtuneError(f"{path}: cannot read config ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise SegtuneError(f"{path}: config must be a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in values.items()}


def train_options(given: dict):
    """defaults < --config file < command line, into TrainOptions."""
    train_type, augment_type, ta_type = train_types()
    ours_names, aug_names, ta_names = _fields(train_type), _fields(augment_type), _fields(ta_type)
    values = dict(given)
    if values.get("config"):
        config = _read_config(Path(values["config"]))
        for key, value in config.items():
            if key not in ours_names | aug_names | ta_names or key in ("training", "augment", "callbacks"):
                raise SegtuneError(f"{values['config']}: unknown option '{key}'")
            values.setdefault(key, value)
    ours = _declared(train_type, {k: v for k, v in values.items() if k in ours_names})
    augment = {k: v for k, v in values.items() if k in aug_names}
    training = {k: v for k, v in values.items() if k in ta_names - ours_names}
    if not ours.get("data"):
        raise SegtuneError("no data given: pass --data PATH (a dataset folder or YAML data file)")
    if not ours.get("output_dir"):
        raise SegtuneError("no output folder given: pass --output-dir PATH")
    ours["output_dir"] = Path(ours["output_dir"])
    if "num_workers" in ours:
        training.setdefault("dataloader_num_workers", ours.pop("num_workers"))
    if isinstance(training.get("report_to"), str) and "," in training["report_to"]:  # tensorboard,wandb
        training["report_to"] = [name.strip() for name in training["report_to"].split(",") if name.strip()]
    if ours.get("recipe") == "plain" and "head_lr_mult" in ours:
        raise SegtuneError("--head-lr-mult: --recipe plain trains every layer at one learning rate; "
                           "drop one of the two")
    try:
        return train_type(augment=augment_type(**augment), training=training, augment_given=set(augment), **ours)
    except (TypeError, ValueError) as e:
        raise SegtuneError(f"train options: {e}") from None


def options_object(cls, given: dict, required: tuple = ()):
    for name in required:
        if given.get(name) in (None, ""):
            raise SegtuneError(f"--{name.replace('_', '-')} is required")
    return cls(**_declared(cls, {k: v for k, v in given.items() if k in _fields(cls)}))


def _declared(cls, values: dict) -> dict:
    """Python callers' paths as the fields declare them: text for a str field, a Path for a Path one."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for key, value in values.items():
        choices = typing.get_args(hints.get(key)) if typing.get_origin(hints.get(key)) is typing.Literal else ()
        if choices and value not in choices:  # as argparse refuses it on the command line
            raise SegtuneError(f"argument --{key.replace('_', '-')}: invalid choice: {value!r} (choose from "
                               f"{', '.join(map(repr, choices))})")
        if isinstance(value, str) and hints.get(key) in (Path, Path | None):
            out[key] = Path(value)
        elif isinstance(value, Path) and hints.get(key) in (str, str | None):
            out[key] = str(value)
    return out


# ---------------------------------------------------------------- options by name: the CLI's and Python's

REQUIRED = {"evaluate": ("data",), "predict": ("model", "output_dir"), "inspect": ("data",),
            "export": ("model", "output_dir")}


def option_names(command: str) -> set[str]:
    """Every option `command` takes, by field name (for train, TrainingArguments' and AugmentConfig's
    too), and its positional arguments (inputs, run_dir)."""
    cmd = COMMANDS[command]
    return _fields(*(train_types() if command == "train" else cmd.types)) | {name for name, _ in cmd.positional}


def unknown_options(command: str, names) -> SegtuneError:
    """The one line for options `command` does not take, typed on the command line or given as keywords."""
    return SegtuneError(f"unknown option(s): {' '.join(names)} (see segtune {command} --help)")


def command_options(command: str, given: dict):
    """The options object `command`'s run_* function takes, from options by field name: the command
    line's (typed by `parse`) or a Python caller's keywords (segtune.api). Defaults, required options
    and their checks live here once, for both."""
    cmd = COMMANDS[command]
    given = dict(given)
    if cmd.output_dir is not None:
        given.setdefault("output_dir", Path(cmd.output_dir))
    if command == "train":
        return train_options(given)
    opts = options_object(cmd.types[0], given, required=REQUIRED.get(command, ()))
    if command == "evaluate" and (opts.model is None) == (opts.predictions is None):
        raise SegtuneError("give one of --model (a model to run) or --predictions (a folder of label PNGs)")
    return opts
