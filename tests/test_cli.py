"""The command line: every option once, with its real default, from the dataclasses that declare it."""

import argparse
import dataclasses

import pytest

from segtune import options
from segtune.cli import build_parser, main, parse
from segtune.commands import COMMANDS


def subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_works(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(([command] if command else []) + ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: segtune") and (command is None or f"segtune {command}" in out)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_option_is_listed_once(command):
    strings = [s for action in subparsers()[command]._actions for s in action.option_strings]
    assert len(strings) == len(set(strings)), sorted(s for s in strings if strings.count(s) > 1)


OPTION_TYPES = {"evaluate": options.EvaluateOptions, "report": options.ReportOptions,
                "inspect": options.InspectOptions, "predict": options.PredictOptions, "demo": options.DemoOptions,
                "export": options.ExportOptions}


@pytest.mark.parametrize("command", list(OPTION_TYPES))
def test_help_shows_the_defaults_the_dataclasses_declare(command):
    actions = {}
    for a in subparsers()[command]._actions:  # the first of a dest sets its default (--report before --no-report)
        actions.setdefault(a.dest, a)
    for f in dataclasses.fields(OPTION_TYPES[command]):
        if f.name == "output_dir":
            assert actions[f.name].default == COMMANDS[command].output_dir
        elif "help" in f.metadata:
            assert actions[f.name].default == f.default, f.name


def test_train_help_shows_segtunes_training_defaults_not_the_trainers():
    from segtune.data.transforms import AugmentConfig
    from segtune.training.arguments import RECIPE_DEFAULTS, TRAINING_DEFAULTS, TrainOptions

    actions = {}
    for a in subparsers()["train"]._actions:
        actions.setdefault(a.dest, a)
    assert actions["learning_rate"].default == 6e-5 == TRAINING_DEFAULTS["learning_rate"]
    assert actions["weight_decay"].default == RECIPE_DEFAULTS["weight_decay"]
    assert actions["scale_range"].default == AugmentConfig().scale_range and actions["scale_range"].nargs == 2
    assert actions["model"].default == TrainOptions().model == "nvidia/mit-b0"
    assert "debug" in actions and actions["debug"].help == "show Python tracebacks"  # segtune's, not the Trainer's


def test_dashes_and_underscores_parse_alike():
    dashed = parse(["evaluate", "--data", "d", "--model", "m", "--reduce-labels", "--ignore-index", "11",
                    "--val-split", "0.3", "--no-report"])[1]
    underscored = parse(["evaluate", "--data", "d", "--model", "m", "--reduce_labels", "--ignore_index", "11",
                         "--val_split", "0.3", "--no_report"])[1]
    assert dashed == underscored
    assert dashed["reduce_labels"] is True and dashed["ignore_index"] == 11 and dashed["report"] is False


def test_only_options_typed_are_given_so_a_config_file_can_fill_the_rest():
    command, given = parse(["train", "--data", "d", "--output-dir", "o", "--learning_rate", "6e-5"])
    assert command == "train" and set(given) == {"data", "output_dir", "learning_rate"}


def test_a_required_option_missing_is_one_line(capsys):
    assert main(["evaluate", "--model", "m"]) == 1
    assert capsys.readouterr().err.strip() == "segtune: error: --data is required"
    assert main(["evaluate", "--data", "d"]) == 1
    assert "give one of --model" in capsys.readouterr().err


def test_parsing_a_command_other_than_train_does_not_import_the_trainer():
    """Building train's parser imports transformers' Trainer and TrainingArguments (seconds of
    start-up); `segtune predict` and the others parse without them."""
    import subprocess
    import sys

    code = ("import sys; from segtune.cli import parse; parse(['predict', '--model', 'm', 'x.jpg']); "
            "parse(['evaluate', '--model', 'm', '--data', 'd']); "
            "print(sorted(m for m in ('transformers.trainer', 'transformers.training_args', 'segtune.training') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
