"""Which pairs evaluate and report score: a run's own validation split, never its training images silently;
and the offline Hub: one line at once instead of half a minute of retries."""

import json
import logging
import shutil

import pytest

from segtune.cli import main

from .helpers import make_flat

TINY_RUN = ["--base-size", "64", "--crop-size", "48", "--max_steps", "2", "--eval_steps", "2", "--num-workers", "0",
            "--disable_tqdm", "true", "--no-report"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """A run trained on a flat folder of 12 pairs, 3 of them held out by --val-split 0.25 --seed 3."""
    root = tmp_path_factory.mktemp("splits")
    data = make_flat(root / "data", n=12)
    out = root / "run"
    code = main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output-dir", str(out),
                 "--val-split", "0.25", "--seed", "3", *TINY_RUN])
    assert code == 0
    return data, out, json.loads((out / "splits.json").read_text())


def evaluate(tmp_path, caplog, *argv):
    caplog.clear()
    caplog.set_level(logging.INFO, logger="segtune")
    out = tmp_path / f"eval{len(list(tmp_path.iterdir()))}"
    assert main(["evaluate", "--output-dir", str(out), "--no-report", *map(str, argv)]) == 0
    return json.loads((out / "metrics.json").read_text()), caplog.text


def test_train_records_the_pairs_of_each_split_by_absolute_path(run):
    data, _, splits = run
    assert (len(splits["train"]), len(splits["val"])) == (9, 3)
    assert not set(splits["train"]) & set(splits["val"])
    assert all(name.startswith(str(data.resolve())) for name in splits["train"] + splits["val"])


def test_evaluate_scores_the_runs_own_validation_split_by_default(run, tmp_path, caplog, monkeypatch):
    data, out, splits = run
    metrics, text = evaluate(tmp_path, caplog, "--model", out, "--data", data)
    assert metrics["num_images"] == 3
    assert "scoring the run's own validation split: 3 pairs listed in" in text and "training split" not in text
    # the same from another folder, with the data given by a relative path
    monkeypatch.chdir(data.parent)
    metrics, text = evaluate(tmp_path, caplog, "--model", out, "--data", data.name)
    assert metrics["num_images"] == 3 and "run's own validation split" in text


def test_scoring_training_images_warns_with_their_number(run, tmp_path, caplog):
    data, out, _ = run
    metrics, text = evaluate(tmp_path, caplog, "--model", out, "--data", data, "--split", "all")
    assert metrics["num_images"] == 12
    assert "9 of the 12 scored pairs are in the run's training split" in text
    assert "9 of the 12" in metrics["split_warning"]
    metrics, text = evaluate(tmp_path, caplog, "--model", out, "--data", data, "--split", "train")
    assert metrics["num_images"] == 9 and "9 of the 9 scored pairs" in text


def test_data_the_run_never_saw_is_scored_whole(run, tmp_path, caplog):
    _, out, _ = run
    other = make_flat(tmp_path / "other", n=5)
    metrics, text = evaluate(tmp_path, caplog, "--model", out, "--data", other)
    assert metrics["num_images"] == 5 and "none of them is in" in text and "training split" not in text


def test_without_splits_json_val_split_and_seed_choose_the_held_out_part(run, tmp_path, caplog):
    model = tmp_path / "model"
    shutil.copytree(run[1], model)
    (model / "splits.json").unlink()  # e.g. a model from the Hub
    data = make_flat(tmp_path / "data", n=10)
    metrics, text = evaluate(tmp_path, caplog, "--model", model, "--data", data)
    assert metrics["num_images"] == 10 and "the model folder has no splits.json" in text
    metrics, text = evaluate(tmp_path, caplog, "--model", model, "--data", data, "--val-split", "0.3",
                             "--seed", "1")
    assert metrics["num_images"] == 3 and "held-out part of --val-split 0.3 --seed 1: 3 of 10 pairs" in text


def test_report_scores_the_same_pairs_as_evaluate(run, tmp_path, caplog):
    data, out, splits = run
    caplog.set_level(logging.INFO, logger="segtune")
    target = tmp_path / "report"
    assert main(["report", str(out), "--data", str(data), "--output-dir", str(target)]) == 0
    scored = json.loads((target / "per_image_iou.json").read_text())
    assert sorted(row["image"] for row in scored) == sorted(splits["val"])
    assert "run's own validation split" in caplog.text


# ---------------------------------------------------------------- the Hub, offline


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """A Hub endpoint that refuses connections at once, and an empty cache (what a machine offline sees)."""
    import datasets.config
    from huggingface_hub import constants

    from segtune import hub

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # restored afterwards: check_hub switches it on
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    hub.hub_reachable.cache_clear()
    yield tmp_path / "hub-cache"
    hub.hub_reachable.cache_clear()


def test_offline_train_with_a_hub_model_fails_at_once_in_one_line(no_hub, tmp_path, capsys, caplog):
    data = make_flat(tmp_path / "data", n=6)
    code = main(["train", "--data", str(data), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("segtune: error: nvidia/mit-b0: the Hugging Face Hub cannot be reached")
    assert "--model mit-b0" in line and "local model folder" in line and "HF_HUB_OFFLINE=1" in line
    assert "Retrying" not in err + caplog.text
    assert not (tmp_path / "run").exists()


def test_offline_hub_dataset_fails_at_once_in_one_line(no_hub, tmp_path, capsys, caplog):
    code = main(["inspect", "--data", "someone/street-scenes", "--output-dir", str(tmp_path / "inspect")])
    err = capsys.readouterr().err
    assert code == 1
    (line,) = err.strip().splitlines()
    assert "someone/street-scenes: the Hugging Face Hub cannot be reached" in line
    assert "local dataset folder" in line and "HF_HUB_OFFLINE=1" in line and "Retrying" not in err + caplog.text


def test_offline_with_the_model_in_the_cache_goes_on_from_the_cache(no_hub):
    from huggingface_hub import constants

    from segtune.hub import check_hub

    (no_hub / "models--nvidia--mit-b0" / "snapshots" / "abc").mkdir(parents=True)
    check_hub("nvidia/mit-b0")  # no error: the libraries serve it from the cache
    assert constants.HF_HUB_OFFLINE is True  # ... without trying the network again
