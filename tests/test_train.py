"""Training plumbing: options from the command line and config files, checkpoint reloading."""

import json

import pytest
import torch

from segtune.cli import parse
from segtune.commands import train_options
from segtune.data.labels import LabelSet
from segtune.errors import SegtuneError


def options(argv):
    return train_options(parse(["train", *argv])[1])


def test_training_arguments_under_their_own_names_with_underscores_or_dashes(tmp_path):
    opts = options(["--data", "d", "--output-dir", str(tmp_path), "--learning_rate", "1e-4",
                    "--num-train-epochs", "7", "--per_device_train_batch_size", "8", "--save-total-limit", "1"])
    assert opts.training == {"learning_rate": 1e-4, "num_train_epochs": 7.0, "per_device_train_batch_size": 8,
                             "save_total_limit": 1}
    assert opts.model == "nvidia/mit-b0" and opts.data == "d"


def test_config_file_fills_in_and_the_command_line_wins(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.001\nmax_steps: 50\ncrop-size: 256\nreduce_labels: true\nmodel: mit-b1\n")
    opts = options(["--data", "d", "--output-dir", str(tmp_path), "--config", str(config), "--learning-rate", "2e-4"])
    assert opts.training["learning_rate"] == 2e-4 and opts.training["max_steps"] == 50
    assert opts.augment.crop_size == 256 and opts.reduce_labels is True and opts.model == "mit-b1"

    json_config = tmp_path / "run.json"
    json_config.write_text(json.dumps({"data": "from-config", "seed": 9}))
    opts = options(["--output-dir", str(tmp_path), "--config", str(json_config)])
    assert opts.data == "from-config" and opts.training["seed"] == 9


def test_unknown_options_are_refused(tmp_path):
    with pytest.raises(SegtuneError, match="unknown option.*--no_such_option 3 .see segtune train --help"):
        options(["--data", "d", "--output-dir", str(tmp_path), "--no_such_option", "3"])
    config = tmp_path / "bad.yaml"
    config.write_text("leaning_rate: 0.1\n")
    with pytest.raises(SegtuneError, match="bad.yaml: unknown option 'leaning_rate'"):
        options(["--data", "d", "--output-dir", str(tmp_path), "--config", str(config)])


def test_defaults_are_the_seeds_and_eval_follows_save(tmp_path):
    from segtune.training.arguments import training_arguments

    args = training_arguments(tmp_path, {})
    assert (args.learning_rate, args.per_device_train_batch_size, args.remove_unused_columns) == (6e-5, 2, False)
    assert args.eval_strategy == "steps" and args.metric_for_best_model == "mean_iou" and args.load_best_model_at_end
    args = training_arguments(tmp_path, {"eval_steps": 30})
    assert args.save_steps == 30
    with pytest.raises(SegtuneError, match="training arguments"):
        training_arguments(tmp_path, {"eval_strategy": "sometimes"})


def test_checkpoint_reload_restores_every_weight(tiny_model_dir, tmp_path):
    """transformers 5's own reload leaves SegFormer weights untouched; segtune's must not."""
    from transformers import AutoModelForSemanticSegmentation, TrainingArguments

    from segtune.training.trainer import SegmentationTrainer

    from .conftest import tiny_segformer

    model = tiny_segformer(3)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    trainer = SegmentationTrainer(
        model=model, args=TrainingArguments(str(tmp_path), report_to="none"),
        labels=LabelSet.numbered(3), ignore_index=255, card={},
    )
    trainer._load_from_checkpoint(str(tiny_model_dir))
    want = AutoModelForSemanticSegmentation.from_pretrained(tiny_model_dir).state_dict()
    got = model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_architecture_names_build_random_segformers():
    from segtune.models.loading import load_model

    model = load_model("mit-b0", LabelSet.numbered(5))
    assert model.config.hidden_sizes == [32, 64, 160, 256] and model.config.num_labels == 5
    assert model.config.id2label[4] == "class_4"


def test_plain_recipe_presets_leave_the_options_given_alone(tmp_path):
    from segtune.data.transforms import AugmentConfig
    from segtune.training.arguments import TrainOptions
    from segtune.training.run import _recipe_augment

    def augment(*argv):
        opts = options(["--data", "d", "--output-dir", str(tmp_path), "--recipe", "plain", *argv])
        _recipe_augment(opts)
        return opts.augment.cat_max_ratio, opts.augment.photometric

    assert augment() == (1.0, False)  # the seeds' pipeline: resize, crop and flip only
    assert augment("--cat-max-ratio", "0.75") == (0.75, False)  # given, even at the default value
    assert augment("--cat-max-ratio", "0.5", "--no-photometric") == (0.5, False)
    config = tmp_path / "run.yaml"
    config.write_text("cat_max_ratio: 0.6\n")
    assert augment("--config", str(config)) == (0.6, False)
    # from Python: the values that differ from AugmentConfig's defaults count as given
    opts = TrainOptions(data="d", output_dir=tmp_path, recipe="plain", augment=AugmentConfig(cat_max_ratio=0.5))
    _recipe_augment(opts)
    assert (opts.augment.cat_max_ratio, opts.augment.photometric) == (0.5, False)
    segformer = options(["--data", "d", "--output-dir", str(tmp_path)])
    _recipe_augment(segformer)
    assert (segformer.augment.cat_max_ratio, segformer.augment.photometric) == (0.75, True)


def test_report_to_a_missing_package_is_one_line_before_any_data_is_read(demo_dataset, tmp_path, capsys):
    import importlib.util

    from segtune.cli import main

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed")
    out = tmp_path / "run"
    code = main(["train", "--data", str(demo_dataset), "--output-dir", str(out), "--report_to", "tensorboard"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.strip().splitlines() == [
        "segtune: error: --report_to tensorboard: the tensorboard package is not installed; "
        "install it (pip install tensorboard) or drop --report_to tensorboard"]
    assert "Traceback" not in err and not out.exists()


def test_bf16_is_the_default_on_a_gpu_that_has_it_and_the_user_can_turn_it_off(tmp_path, monkeypatch):
    import segtune.training.precision as precision
    import torch

    monkeypatch.setattr(precision, "gpu_training", lambda values: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.precision_default({}, {}) == {"bf16": True}
    assert precision.precision_default({}, {"bf16": False}) == {}
    assert precision.precision_default({}, {"fp16": True}) == {}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a T4
    assert precision.precision_default({}, {}) == {}


def test_bf16_is_the_default_on_a_cpu_with_native_bf16_only(tmp_path, monkeypatch):
    import segtune.training.arguments as train
    import segtune.training.precision as precision

    monkeypatch.setattr(precision, "gpu_training", lambda values: False)
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: "AVX512-BF16")
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 1.9)
    args = train.training_arguments(tmp_path, {})
    assert args.bf16 and args.use_cpu
    assert train.training_arguments(tmp_path, {"bf16": False}).bf16 is False
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 0.56)  # native but slower (an Intel Xeon here)
    assert train.training_arguments(tmp_path, {}).bf16 is False
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: None)  # emulated bf16 is slower: float32 stays
    assert train.training_arguments(tmp_path, {}).bf16 is False
    # --bf16 true on a CPU works without --use_cpu (the Trainer alone refuses it)
    args = train.training_arguments(tmp_path, {"bf16": True})
    assert args.bf16 and args.use_cpu


def test_the_cpu_bf16_probe_is_measured_once_per_machine_and_torchrun_skips_it(tmp_path, monkeypatch):
    import segtune.training.precision as precision

    assert 0 < precision.measure_bf16_speedup(reps=1) < float("inf")  # a real timing, on this CPU
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: "AVX512-BF16")
    monkeypatch.setattr(precision, "measure_bf16_speedup", lambda: 0.56)
    assert precision.cpu_bf16_speedup() == 0.56 and not precision.cpu_bf16_default()
    monkeypatch.setattr(precision, "measure_bf16_speedup", lambda: 2.0)  # a noisy second timing changes nothing
    assert precision.cpu_bf16_speedup() == 0.56
    cached = json.loads((tmp_path / "segtune" / "cpu_bf16.json").read_text())
    assert list(cached.values()) == [0.56] and "AVX512-BF16" in next(iter(cached))
    (tmp_path / "segtune" / "cpu_bf16.json").write_text("{not json")  # a broken cache is measured again
    assert precision.cpu_bf16_speedup() == 2.0 and precision.cpu_bf16_default()
    monkeypatch.setenv("WORLD_SIZE", "2")  # ranks must agree: native bf16 alone decides
    monkeypatch.setattr(precision, "measure_bf16_speedup", lambda: pytest.fail("measured under torchrun"))
    assert precision.cpu_bf16_default()
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: None)
    assert precision.cpu_bf16_speedup() is None and not precision.cpu_bf16_default()


def test_report_to_takes_a_comma_separated_list_and_plain_refuses_a_head_multiple(tmp_path):
    from segtune.training.arguments import training_arguments

    opts = options(["--data", "d", "--output-dir", str(tmp_path), "--report_to", "none,none"])
    assert opts.training["report_to"] == ["none", "none"]
    assert training_arguments(tmp_path, {"report_to": ["none"]}).report_to == []
    with pytest.raises(SegtuneError, match="--head-lr-mult: --recipe plain"):
        options(["--data", "d", "--output-dir", str(tmp_path), "--recipe", "plain", "--head-lr-mult", "5"])
    assert options(["--data", "d", "--output-dir", str(tmp_path), "--head-lr-mult", "5"]).head_lr_mult == 5.0
