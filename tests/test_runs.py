"""Runs you can repeat and resume: same seed same metrics, Ctrl-C then --resume, --overfit, early stopping."""

import json
import os
import signal

import pytest
import torch
from transformers import TrainerCallback

from segtune.cli import build_parser, train_options
from segtune.train import run_training

RUN_ARGS = ["--reduce-labels", "--base-size", "64", "--crop-size", "48", "--max_steps", "8", "--eval_steps", "4",
            "--learning_rate", "2e-3", "--per_device_train_batch_size", "4", "--disable_tqdm", "true",
            "--seed", "5", "--logging_steps", "1"]


def options(data, model, out, *extra):
    argv = ["train", "--data", str(data), "--model", str(model), "--output-dir", str(out), *RUN_ARGS, *extra]
    ns, rest = build_parser().parse_known_args([str(a) for a in argv])
    return train_options(ns, rest)


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
    opts.callbacks = [CtrlCAt(3)]
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
    out = tmp_path / "early"
    metrics = run_training(options(demo_dataset, tiny_model_dir, out, "--early-stopping", "1", "--max_steps", "40",
                                   "--eval_steps", "2", "--learning_rate", "1e-2", "--num-workers", "0"))
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "eval_mean_iou" in line]
    best, stop = -1.0, None
    for e in evals:  # patience 1: the first evaluation that is no better than the best so far stops it
        if e["eval_mean_iou"] <= best:
            stop = e["step"]
            break
        best = e["eval_mean_iou"]
    assert stop is not None and stop < 40, "this seed should stall within 40 steps"
    assert metrics["step"] == stop == evals[-1]["step"]
