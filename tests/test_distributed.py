"""Data-parallel training with torchrun and with `accelerate launch`: 2 CPU processes (gloo),
metrics as a single process scores them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from segtune.cli import main

LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
    # --multi_gpu is accelerate's data-parallel launcher; on a machine without GPUs its processes
    # train on the CPU over gloo (segtune sets use_cpu), as torchrun's do
    "accelerate": [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes(tmp_path, tiny_model_dir, launcher):
    from segtune.data.demo_data import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "data", seed=2, num_train=12, num_val=5, image_size=64)
    out = tmp_path / "run"
    command = [*LAUNCHERS[launcher], "-m", "segtune", "train",
               "--data", str(data), "--model", str(tiny_model_dir), "--output-dir", str(out), "--reduce-labels",
               "--base-size", "64", "--crop-size", "48", "--max_steps", "6", "--eval_steps", "3",
               "--per_device_train_batch_size", "2", "--disable_tqdm", "true", "--num-workers", "0"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    # data-parallel: 12 images, 2 ranks x batch 2 -> 3 steps an epoch
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["epoch"] == 2.0
    # written once, by rank 0
    assert run.stdout.count("model saved to") == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [e["step"] for e in logged if "eval_mean_iou" in e]
    assert evals == [3, 6]

    # the sharded evaluation (5 images over 2 ranks: 3 + 2, none repeated) equals one process's
    trained = json.loads((out / "metrics.json").read_text())
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--reduce-labels",
                 "--output-dir", str(tmp_path / "single")]) == 0
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou"):
        assert trained[key] == single[key], key
    best = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["best_metric"]
    assert trained["mean_iou"] == best  # the in-training evaluation scored the saved weights
