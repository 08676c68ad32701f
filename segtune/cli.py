"""The `segtune` command: parses the options declared in options.py and calls the module that does the job."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from pathlib import Path

from . import options as o
from .commands import COMMANDS, options_object, train_types, unknown_options
from .errors import SegtuneError


class HelpFormatter(argparse.HelpFormatter):
    """Shows a default where there is one to show (not None or off), unless the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        off = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or off or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


class OptionParser(argparse.ArgumentParser):
    """Options from dataclasses: segtune's own fields spelt with dashes first (`--reduce-labels`, then
    `--reduce_labels`), another library's (TrainingArguments) by HfArgumentParser's own rules, imported
    only then (transformers takes about a second to import, which `segtune predict` on an export does not
    need). Fields without help (Python-only ones) are left out, and so are another library's fields named
    in `exclude` (TrainingArguments' output_dir and debug, which segtune's own options are); one help
    group per options dataclass."""

    def __init__(self, dataclass_types=(), exclude=(), **kwargs):
        self.exclude = set(exclude)
        kwargs.setdefault("allow_abbrev", False)  # with 100+ TrainingArguments options, a prefix is a guess
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)
        for dtype in dataclass_types:
            self._add_dataclass_arguments(dtype)

    def _add_dataclass_arguments(self, dtype):
        hints = typing.get_type_hints(dtype)
        fields = {f.name: f for f in dataclasses.fields(dtype)}
        ours = dtype.__module__.startswith("segtune")
        if not ours:
            from transformers import HfArgumentParser
        for klass in dtype.__mro__:  # the command's own options first, then each shared group
            names = [n for n in vars(klass).get("__annotations__", {}) if n in fields]
            names = [n for n in names if fields[n].init and "help" in fields[n].metadata
                     and not (n in self.exclude and not ours)]
            if not names:
                continue
            group = self.add_argument_group(GROUP_TITLES.get(klass.__name__, klass.__doc__.split("\n")[0].rstrip(".")))
            for name in names:
                f = fields.pop(name)
                f.type = hints[name]
                if ours:
                    add_field(group, f)
                else:
                    HfArgumentParser._parse_dataclass_field(group, f)
                actions = group._group_actions[-2:] if f.default is True else group._group_actions[-1:]
                if len(actions) == 2:  # --no-X: its twin's help already names it
                    actions[1].help = argparse.SUPPRESS
                for action in actions:
                    if action.nargs == "?" and action.const is True:
                        action.metavar = "BOOL"


def add_field(group, f: dataclasses.Field) -> None:
    """One of segtune's option fields as an argument, read as HfArgumentParser reads TrainingArguments'
    (so both kinds behave alike): `X | None` as X, a Literal's values as choices, a bool as true/false
    (`--name` alone: true; a default of True also gets `--no-name`), a list as nargs="+"; the field's
    metadata (help, nargs, metavar ...) as given."""
    kind, kwargs = f.type, dict(f.metadata)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if f.default is not dataclasses.MISSING:
        kwargs["default"] = f.default
    elif f.default_factory is not dataclasses.MISSING:
        kwargs["default"] = f.default_factory()
    else:
        kwargs["required"] = True
    if typing.get_origin(kind) is typing.Literal:
        kwargs.update(choices=typing.get_args(kind), type=type(typing.get_args(kind)[0]))
    elif kind is bool:
        kwargs.update(type=to_bool, nargs=kwargs.get("nargs", "?"), const=kwargs.get("const", True))
    elif typing.get_origin(kind) is list:
        kwargs.update(type=typing.get_args(kind)[0], nargs=kwargs.get("nargs", "+"))
    else:
        kwargs["type"] = kind
    dashed = f"--{f.name.replace('_', '-')}"
    group.add_argument(*dict.fromkeys([dashed, f"--{f.name}"]), dest=f.name, **kwargs)
    if kind is bool and f.default is True:
        group.add_argument(*dict.fromkeys([f"--no-{f.name.replace('_', '-')}", f"--no_{f.name}"]), dest=f.name,
                           action="store_false", help=kwargs.get("help"))


def to_bool(text) -> bool:
    """HfArgumentParser's reading of a boolean value."""
    if isinstance(text, bool):
        return text
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (yes/no, 1/0), got {text!r}")


GROUP_TITLES = {"TrainingArguments": "TrainingArguments (the Hugging Face Trainer's; segtune's defaults shown)",
                "AugmentConfig": "augmentation", "TrainOptions": "segtune train"}


def build_parser(given_only: bool = False, only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every default shown; `given_only`: one whose namespace holds only what was typed
    (so that a --config file can fill in the rest, and the command line still wins). `only`: the
    command being run gets its options, the others only their names and help: building train's
    parser imports the Trainer (seconds), which `segtune predict` should not wait for."""
    parser = argparse.ArgumentParser(prog="segtune", description="Fine-tune, evaluate and run semantic-"
                                     "segmentation models (SegFormer first). See docs/ for each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OptionParser)
    for name, cmd in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=cmd.help, description=cmd.help, dataclass_types=())
            continue
        types, exclude = cmd.types, ()
        if name == "train":
            types, exclude = train_types(), ("output_dir", "debug")  # TrainingArguments' own, shadowed
        usage = "%(prog)s --data PATH --output-dir DIR [options]" if name == "train" else None  # 150 options
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, dataclass_types=types, exclude=exclude,
                           usage=usage)
        for arg, kwargs in cmd.positional:
            p.add_argument(arg, **kwargs)
        if given_only:
            for action in p._actions:
                if action.dest not in ("help", "inputs", "run_dir"):
                    action.default, action.required = argparse.SUPPRESS, False
        else:  # the defaults a user gets, in --help (set_defaults would also fill the given_only namespace)
            p.set_defaults(output_dir=cmd.output_dir)
            if name == "train":
                from .training.arguments import RECIPE_DEFAULTS, TRAINING_DEFAULTS

                p.set_defaults(**TRAINING_DEFAULTS, **RECIPE_DEFAULTS)
    return parser


def parse(argv: list[str]) -> tuple[str, dict]:
    """-> (command, the options given on the command line, by field name)."""
    only = argv[0] if argv and argv[0] in COMMANDS else None
    full, unknown = build_parser(only=only).parse_known_args(argv)  # --help and usage errors, with real defaults
    if unknown:
        raise unknown_options(full.command, unknown)
    given = vars(build_parser(given_only=True, only=full.command).parse_known_args(argv)[0])
    command = given.pop("command")
    if full.output_dir is not None:
        given.setdefault("output_dir", Path(full.output_dir))
    return command, given


# ---------------------------------------------------------------- commands: thin callers of segtune.api


def _rest(given: dict, positional: str) -> dict:
    return {k: v for k, v in given.items() if k != positional}


def cmd_train(given: dict) -> None:
    from . import api
    from .training.run import is_main_process

    run = api.train(**given)
    if is_main_process():
        print(f"mean IoU {run.metrics['mean_iou']:.4f}; model saved to {run.model_dir}")


def cmd_evaluate(given: dict) -> None:
    from . import api

    result = api.evaluate(**given)
    failed = result.metrics.get("failed")
    if failed:  # the rest was scored and written; the exit status still tells scripts
        raise _failures(failed, result.metrics["num_images"], "predictions could not be scored",
                        Path(result.output_dir) / "metrics.json")


def cmd_predict(given: dict) -> None:
    from . import api

    result = api.predict(given["inputs"], **_rest(given, "inputs"))
    if result.failed:  # every other image was written; the exit status still tells scripts
        raise _failures(result.failed, len(result), "images could not be segmented",
                        Path(result.output_dir) / "predict.json")


def _failures(failed: list[dict], total: int, what: str, listing: Path) -> SegtuneError:
    """The closing line of a run that went on past bad files: the first one's problem, how many, where listed."""
    more = f" (and {len(failed) - 1:,} more)" if len(failed) > 1 else ""
    return SegtuneError(f"{failed[0]['error']}{more}: {len(failed):,} of {total:,} {what}; the others were "
                        f"written; all are listed in {listing}")


def cmd_report(given: dict) -> None:
    from . import api

    path = api.report(given["run_dir"], **_rest(given, "run_dir")).path
    print(f"report written to {path} (pictures in {path.parent / 'report'})")


def cmd_inspect(given: dict) -> None:
    from . import api
    from .data.inspection import blocking_error

    result = api.inspect(**given)
    error = blocking_error(result.data, result.output_dir)
    if error is not None:
        raise error


def cmd_export(given: dict) -> None:
    from . import api

    api.export(**given)


def cmd_serve(given: dict) -> None:
    from .serve import run_serve

    run_serve(options_object(o.ServeOptions, given, required=("model",)))


def cmd_demo(given: dict) -> None:
    from .demo import run_demo

    opts = options_object(o.DemoOptions, given)
    run_demo(opts.output_dir, seed=opts.seed, bf16=opts.bf16)


HANDLERS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "inspect": cmd_inspect,
            "demo": cmd_demo, "report": cmd_report, "export": cmd_export,
            "serve": cmd_serve}


def _one_line(error: BaseException) -> str:
    """The user-facing line; errors raised in DataLoader workers arrive wrapped in a traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split("Error: ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        command, given = parse(argv)
        debug = bool(given.get("debug"))
        HANDLERS[command](given)
    except KeyboardInterrupt:
        print("segtune: interrupted", file=sys.stderr)
        return 130
    except SegtuneError as e:
        if debug:
            raise
        for line in _one_line(e).splitlines():
            print(f"segtune: error: {line}", file=sys.stderr)
        return 1
    except Exception as e:  # anything unforeseen still gets one line unless --debug
        if debug:
            raise
        first = _one_line(e).splitlines()[0] if str(e).strip() else ""
        print(f"segtune: error: {type(e).__name__}: {first} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0
