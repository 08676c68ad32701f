"""Runs you can repeat and resume: same seed same metrics, Ctrl-C then --resume, --overfit, early stopping."""

import json
import os
import signal

import pytest
import torch
from transformers import TrainerCallback

from segtune.cli import parse
from segtune.commands import train_options
from segtune.training.run import run_training

RUN_ARGS = ["--reduce-labels", "--base-size", "64", "--crop-size", "48", "--max_steps", "8", "--eval_steps", "4",
            "--learning_rate", "2e-3", "--per_device_train_batch_size", "4", "--disable_tqdm", "true",
            "--seed", "5", "--logging_steps", "1",
            "--bf16", "true"]  # bf16 autocast on any CPU (native or emulated): repeatable and resumable too


def options(data, model, out, *extra):
    argv = ["train", "--data", str(data), "--model", str(model), "--output-dir", str(out), *RUN_ARGS, *extra]
    return train_options(parse([str(a) for a in argv])[1])


def weights(folder):
    from transformers import AutoModelForSemanticSegmentation

    return AutoModelForSemanticSegmentation.from_pretrained(folder).state_dict()


def losses(folder):
    lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_dataset, tiny_model_dir):
    """An uninterrupted run, loading data in the main process."""
    out = tmp_path_factory.mktemp("ref") / "run"
    metrics = run_training(options(demo_dataset, tiny_model_dir, out, "--num-workers", "0"))
    return out, metrics


def test_same_seed_same_metrics_with_any_number_of_workers(reference, demo_dataset, tiny_model_dir, tmp_path):
    ref_dir, ref_metrics = reference
    metrics = run_training(options(demo_dataset, tiny_model_dir, tmp_path / "again", "--num-workers", "2"))
    assert metrics == ref_metrics
    assert losses(tmp_path / "again") == losses(ref_dir)
    want, got = weights(ref_dir), weights(tmp_path / "again")
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_a_bf16_run_scores_in_float32_as_segtune_evaluate_does(reference, demo_dataset, tmp_path):
    """bf16 autocast trains; the evaluation inside training stays exact float32 (accelerate's autocast
    wrapper of the forward is not used to score), so it equals segtune evaluate of the saved model."""
    from segtune.cli import main

    ref_dir, ref_metrics = reference
    assert main(["evaluate", "--model", str(ref_dir), "--data", str(demo_dataset), "--reduce-labels",
                 "--output-dir", str(tmp_path / "scored")]) == 0
    scored = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    for key in ("mean_iou", "overall_accuracy", "per_category_iou"):
        assert ref_metrics[key] == scored[key], key


def test_another_seed_gives_another_run(reference, demo_dataset, tiny_model_dir, tmp_path):
    ref_dir, _ = reference
    run_training(options(demo_dataset, tiny_model_dir, tmp_path / "other", "--num-workers", "0", "--seed", "6"))
    assert losses(tmp_path / "other") != losses(ref_dir)


class CtrlCAt(TrainerCallback):
    """Sends this process a real SIGINT during the given step, as a terminal's Ctrl-C would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_saves_a_checkpoint_and_resume_ends_like_an_uninterrupted_run(
        reference, demo_dataset, tiny_model_dir, tmp_path):
    ref_dir, ref_metrics = reference
    out = tmp_path / "run"
    opts = options(demo_dataset, tiny_model_dir, out, "--num-workers", "0")
    opts.callbacks = [CtrlCAt(3)]  # the end of the first epoch (3 batches of 4); mid-epoch: below
    with pytest.raises(KeyboardInterrupt):
        run_training(opts)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (out / "metrics.json").exists()

    resumed = run_training(options(demo_dataset, tiny_model_dir, out, "--num-workers", "0", "--resume"))
    assert resumed["step"] == ref_metrics["step"] == 8
    assert resumed == ref_metrics
    assert losses(out) == losses(ref_dir)  # steps 4..8 after the resume, 1..3 before it
    want, got = weights(ref_dir), weights(out)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_resume_in_the_middle_of_an_epoch_ends_like_an_uninterrupted_run(
        reference, demo_dataset, tiny_model_dir, tmp_path):
    """12 training pairs in batches of 4: 3 steps an epoch. Stopped at step 5 (two batches into the
    second epoch) and resumed, the run skips those batches, keeps their augmentation and ends at
    step 8 (also inside an epoch) as the reference does."""
    ref_dir, ref_metrics = reference
    out = tmp_path / "run"
    opts = options(demo_dataset, tiny_model_dir, out, "--num-workers", "0")
    opts.callbacks = [CtrlCAt(5)]
    with pytest.raises(KeyboardInterrupt):
        run_training(opts)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5 and 1 < state["epoch"] < 2  # mid-epoch

    resumed = run_training(options(demo_dataset, tiny_model_dir, out, "--num-workers", "0", "--resume"))
    assert resumed["step"] == ref_metrics["step"] == 8
    assert resumed == ref_metrics
    assert losses(out) == losses(ref_dir)  # steps 1..5 before the stop, 6..8 after it
    assert sorted(losses(out)) == list(range(1, 9))
    want, got = weights(ref_dir), weights(out)
    assert all(torch.equal(want[k], got[k]) for k in want)


def card_rows(folder):
    """The model card's training table as {argument: value}."""
    rows = [line.split("|")[1:3] for line in (folder / "README.md").read_text().splitlines()
            if line.startswith("| ") and line.count("`") == 2]
    return {k.strip(): v.strip().strip("`") for k, v in rows}


def test_model_card_records_what_the_run_used_and_no_local_path(reference, demo_dataset, tiny_model_dir):
    ref_dir, _ = reference
    text = (ref_dir / "README.md").read_text()
    rows = card_rows(ref_dir)
    assert rows["warmup_steps"] == "1"  # the recipe's 10% of 8 steps, as used, not a description
    assert rows["total_steps"] == rows["steps_trained"] == rows["max_steps"] == "8"
    assert "num_train_epochs" not in rows  # max_steps decides the length
    assert (rows["train_samples"], rows["validation_samples"]) == ("12", "4")
    assert (rows["gradient_accumulation_steps"], rows["world_size"], rows["effective_batch_size"]) == ("1", "1", "4")
    assert rows["precision"] == "bf16" and rows["recipe"] == "segformer"
    for local in (str(demo_dataset), str(tiny_model_dir), str(ref_dir), "/tmp"):
        assert local not in text
    assert f"on `{demo_dataset.name}`" in text and rows["model"] == tiny_model_dir.name


class Seen(TrainerCallback):
    """Keeps what the Trainer trains with, at its first step."""

    def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, train_dataloader=None, **kw):
        if state.global_step == 0:
            self.optimizer, self.lr_scheduler, self.dataset = optimizer, lr_scheduler, train_dataloader.dataset


def test_plain_recipe_trains_with_the_trainer_defaults_and_explicit_options_win(
        demo_dataset, tiny_model_dir, tmp_path):
    from segtune.training.optim import _PolyFactor

    out = tmp_path / "plain"
    opts = options(demo_dataset, tiny_model_dir, out, "--recipe", "plain", "--cat-max-ratio", "0.5",
                   "--max_steps", "4", "--num-workers", "0", "--no-report")
    seen = Seen()
    opts.callbacks = [seen]
    metrics = run_training(opts)
    assert metrics["step"] == 4
    groups = seen.optimizer.param_groups
    assert {g["initial_lr"] for g in groups} == {2e-3}  # one learning rate: no head multiple
    assert {g["weight_decay"] for g in groups} == {0.0}  # TrainingArguments' default
    assert not any(isinstance(f, _PolyFactor) for f in seen.lr_scheduler.lr_lambdas)
    assert [seen.lr_scheduler.lr_lambdas[0](k) for k in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]  # linear, no warm-up
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["learning_rate"] for e in logged if "loss" in e] == pytest.approx([2e-3 * (4 - k) / 4 for k in range(4)])
    crop = seen.dataset.transform.transforms[1]
    assert crop.cat_max_ratio == 0.5  # given on the command line: the recipe's 1.0 does not replace it
    assert not any(type(t).__name__ == "PhotometricDistortion" for t in seen.dataset.transform.transforms)
    rows = card_rows(out)
    assert rows["recipe"] == "plain" and rows["cat_max_ratio"] == "0.5" and rows["photometric"] == "False"
    assert rows["weight_decay"] == "0.0" and rows["warmup_steps"] == "0" and "head_lr_mult" not in rows
    assert rows["schedule"] == "the Trainer's linear"


def test_overfit_reports_whether_and_when_mean_iou_passed(demo_dataset, tiny_model_dir, tmp_path):
    out = tmp_path / "overfit"
    opts = options(demo_dataset, tiny_model_dir, out, "--overfit", "2", "--max_steps", "30", "--eval_steps", "10",
                   "--learning_rate", "5e-3", "--num-workers", "0")
    metrics = run_training(opts)
    report = metrics["overfit"]
    splits = json.loads((out / "splits.json").read_text())
    assert splits["train"] == splits["val"] and len(splits["train"]) == 2
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "eval_mean_iou" in line]
    first = next((e["step"] for e in evals if e["eval_mean_iou"] >= 0.9), None)
    assert report["images"] == 2 and report["passed"] == (first is not None) and report["step"] == first
    assert report["best"] == pytest.approx(max(e["eval_mean_iou"] for e in evals))
    assert json.loads((out / "metrics.json").read_text())["overfit"] == report


def test_early_stopping_stops_when_mean_iou_stalls(demo_dataset, tiny_model_dir, tmp_path):
    import logging

    out = tmp_path / "early"
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        metrics = run_training(options(demo_dataset, tiny_model_dir, out, "--early-stopping", "1", "--max_steps",
                                       "40", "--eval_steps", "2", "--learning_rate", "1e-2", "--num-workers", "0"))
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    # the final evaluation (final_* metrics) does not reach early stopping as a missing eval_mean_iou
    assert not [r for r in records if "early stopping" in r.getMessage()]
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "eval_mean_iou" in line]
    best, stop = -1.0, None
    for e in evals:  # patience 1: the first evaluation that is no better than the best so far stops it
        if e["eval_mean_iou"] <= best:
            stop = e["step"]
            break
        best = e["eval_mean_iou"]
    assert stop is not None and stop < 40, "this seed should stall within 40 steps"
    assert metrics["step"] == stop == evals[-1]["step"]
