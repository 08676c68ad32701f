"""segtune's Python API (segtune/api.py, segtune/__init__.py): each job equals its command, a bad
keyword is the command's one line, `MeanIoU` equals evaluate's mean_iou (on arrays, and inside a
plain Trainer against the tutorial's compute_metrics), and docs/python.md runs end to end."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import segtune
from segtune.cli import main
from segtune.evaluation.metrics import MeanIoU

from .conftest import tiny_segformer
from .reference_metric import reference_mean_iou

REPO = Path(__file__).resolve().parent.parent
TINY = dict(reduce_labels=True, base_size=64, crop_size=64, scale_range=(0.75, 1.5), max_steps=4, eval_steps=4,
            learning_rate=1e-3, per_device_train_batch_size=4, dataloader_num_workers=0, disable_tqdm=True, seed=3,
            report=False)


def cli_args(options: dict) -> list[str]:
    """Keywords -> the command line that says the same."""
    args = []
    for key, value in options.items():
        flag = f"--{key}"
        if key == "report" and value is False:
            args.append("--no-report")
        elif isinstance(value, bool):
            args += [flag, str(value).lower()]
        elif isinstance(value, (tuple, list)):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def run_cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


# ---------------------------------------------------------------- the package


def test_import_segtune_does_not_import_torch():
    code = "import sys, segtune; assert 'torch' not in sys.modules; print(len(segtune.__all__))"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_every_public_name_resolves_and_is_documented():
    for name in segtune.__all__:
        value = getattr(segtune, name)
        if name != "__version__":
            assert (value.__doc__ or "").strip(), name


def test_the_jobs_are_the_api_functions_and_the_step_modules_keep_their_own_names():
    import segtune.evaluation.run
    import segtune.training.run

    assert segtune.train is segtune.api.train and segtune.evaluate is segtune.api.evaluate
    assert segtune.training.run.run_training and segtune.evaluation.run.run_evaluation  # the modules behind them
    assert segtune.train is segtune.api.train  # importing the modules did not rebind the names


# ---------------------------------------------------------------- bad options: the command's line


def test_an_unknown_keyword_is_the_commands_one_line(capsys):
    with pytest.raises(segtune.SegtuneError) as raised:
        segtune.train(data="d", output_dir="o", lerning_rate=1e-4)
    assert str(raised.value) == "unknown option(s): lerning_rate (see segtune train --help)"
    code, err = run_cli(["train", "--data", "d", "--output-dir", "o", "--lerning_rate", "1e-4"])
    assert code == 1
    assert err.strip() == "segtune: error: unknown option(s): --lerning_rate 1e-4 (see segtune train --help)"
    with pytest.raises(segtune.SegtuneError, match=r"unknown option\(s\): learning_rate \(see segtune evaluate"):
        segtune.evaluate(data="d", model="m", learning_rate=1e-4)


@pytest.mark.parametrize("call, argv", [
    (lambda: segtune.evaluate(model="m"), ["evaluate", "--model", "m"]),
    (lambda: segtune.evaluate(data="d"), ["evaluate", "--data", "d"]),
    (lambda: segtune.inspect(), ["inspect"]),
    (lambda: segtune.train(data="d"), ["train", "--data", "d"]),
    (lambda: segtune.predict("x.jpg", model="m"), ["predict", "x.jpg", "--model", "m"]),
])
def test_a_bad_call_raises_what_the_command_prints(call, argv):
    with pytest.raises(segtune.SegtuneError) as raised:
        call()
    code, err = run_cli(argv)
    assert code == 1 and err.strip() == f"segtune: error: {raised.value}"


def test_a_bad_choice_is_argparses_line(capsys):
    with pytest.raises(segtune.SegtuneError) as raised:
        segtune.evaluate(data="d", model="m", split="bogus")
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", "d", "--model", "m", "--split", "bogus"])
    assert capsys.readouterr().err.strip().endswith(f"error: {raised.value}")


# ---------------------------------------------------------------- each job equals its command


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_dataset, tiny_model_dir):
    """The same tiny training through the CLI and through segtune.training."""
    root = tmp_path_factory.mktemp("api-runs")
    options = dict(data=demo_dataset, model=tiny_model_dir, **TINY)
    code, err = run_cli(["train", "--output-dir", root / "cli", *cli_args(options)])
    assert code == 0, err
    run = segtune.train(output_dir=root / "api", **options)
    return root / "cli", run


def _without(metrics: dict, *keys) -> dict:
    return {k: v for k, v in metrics.items() if k not in keys}


def test_train_equals_the_cli(runs):
    cli_dir, run = runs
    cli_metrics = json.loads((cli_dir / "metrics.json").read_text())
    assert isinstance(run, segtune.TrainResult) and run.model_dir == run.output_dir
    assert json.loads((run.model_dir / "metrics.json").read_text()) == run.metrics
    assert _flat(run.metrics) == pytest.approx(_flat(cli_metrics), abs=1e-6)
    assert run.report is None  # report=False
    page = run._repr_html_()
    assert "mean IoU" in page and "sky" in page and 'class="bar"' in page


def _flat(metrics: dict) -> dict:
    """Numbers only, nested per-class dicts flattened (None -> NaN)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": float("nan") if v is None else v for k, v in value.items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return {k: (-1.0 if v != v else v) for k, v in out.items()}


def test_evaluate_equals_the_cli(runs, demo_dataset, tmp_path):
    _, run = runs
    code, err = run_cli(["evaluate", "--model", run.model_dir, "--data", demo_dataset, "--reduce-labels",
                         "--output-dir", tmp_path / "cli"])
    assert code == 0, err
    scores = segtune.evaluate(model=run.model_dir, data=demo_dataset, reduce_labels=True, output_dir=tmp_path / "api")
    cli_metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert scores.metrics == cli_metrics  # the same code: the same file, to the bit
    assert scores["mean_iou"] == pytest.approx(run.metrics["mean_iou"], abs=1e-6)
    assert scores.report is not None and scores.report.path.is_file()
    page = scores._repr_html_()
    assert "per_class_iou.png" not in page and "data:image/png;base64," in page  # the report's charts inline
    assert "<iframe" in scores.report._repr_html_()


def test_inspect_equals_the_cli(demo_dataset, tmp_path):
    code, err = run_cli(["inspect", "--data", demo_dataset, "--reduce-labels", "--output-dir", tmp_path / "cli"])
    assert code == 0, err
    found = segtune.inspect(data=str(demo_dataset), reduce_labels=True, output_dir=str(tmp_path / "api"))
    assert found.data == json.loads((tmp_path / "cli" / "inspect.json").read_text())
    assert found.problems == [] and found.picture.is_file() and found.classes[0]["name"] == "sky"
    assert "data:image/png;base64," in found._repr_html_()


def test_report_and_predict_equal_the_cli(runs, demo_dataset, tmp_path):
    _, run = runs
    images = sorted((Path(demo_dataset) / "images" / "validation").glob("*.jpg"))[:2]
    code, err = run_cli(["predict", *images, "--model", run.model_dir, "--output-dir", tmp_path / "cli",
                         "--num-workers", "0"])
    assert code == 0, err
    result = segtune.predict(images, model=run.model_dir, output_dir=tmp_path / "api", num_workers=0)
    assert len(result) == 2
    for path in sorted((tmp_path / "cli").rglob("*.png")):
        twin = tmp_path / "api" / path.relative_to(tmp_path / "cli")
        assert twin.read_bytes() == path.read_bytes(), path.name
    page = segtune.report(run.model_dir, output_dir=tmp_path / "report")
    assert page.path == tmp_path / "report" / "report.html" and page.path.is_file()


# ---------------------------------------------------------------- MeanIoU


def _random_maps(rng, count, num_labels, ignore_index=255):
    predictions, references = [], []
    for _ in range(count):
        h, w = rng.integers(5, 40, 2)
        reference = rng.integers(0, num_labels, (h, w))
        reference[rng.random((h, w)) < 0.2] = ignore_index
        reference[rng.random((h, w)) < 0.02] = num_labels + 3  # out of range, not ignored
        prediction = rng.integers(0, num_labels + 1, (h, w))  # some out of range
        predictions.append(prediction)
        references.append(reference)
    return predictions, references


@pytest.mark.parametrize("num_labels, ignore_index", [(5, 255), (3, 0), (12, 255)])
def test_mean_iou_on_arrays_is_evaluates(num_labels, ignore_index):
    predictions, references = _random_maps(np.random.default_rng(num_labels), 6, num_labels, ignore_index)
    got = MeanIoU(num_labels, ignore_index=ignore_index)(predictions, references)
    want = reference_mean_iou(predictions, references, num_labels, ignore_index)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12, equal_nan=True)


def test_mean_iou_reduces_labels_as_evaluate_does():
    from benchmarks.seed import seed_mean_iou

    rng = np.random.default_rng(0)
    references = [rng.integers(0, 6, (9, 11)) for _ in range(3)]
    references[0][0, :4] = 255
    predictions = [rng.integers(0, 5, (9, 11)) for _ in range(3)]
    got = MeanIoU(5, reduce_labels=True)(predictions=predictions, references=references)
    want = seed_mean_iou(predictions, references, 5, 255, reduce_labels=True)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12, equal_nan=True)


def test_mean_iou_streams_batches_and_ignores_the_trainers_padding():
    from transformers import EvalPrediction

    rng = np.random.default_rng(1)
    metric = MeanIoU(4)
    logits = [torch.from_numpy(rng.normal(size=(2, 4, 6, 8)).astype(np.float32)) for _ in range(3)]
    labels = [torch.from_numpy(rng.integers(0, 4, (2, 12, 16))) for _ in range(3)]
    padded = labels[2].clone()
    padded[:, -3:] = -100
    outs = [metric(EvalPrediction(predictions=lg, label_ids=lb), compute_result=i == 2)
            for i, (lg, lb) in enumerate(zip(logits, [labels[0], labels[1], padded]))]
    assert outs[0] == {} and outs[1] == {}
    predictions = [torch.nn.functional.interpolate(lg, size=(12, 16), mode="bilinear", align_corners=False)
                   .argmax(1) for lg in logits]
    references = [labels[0], labels[1], padded.masked_fill(padded == -100, 255)]
    want = reference_mean_iou([p for b in predictions for p in b.numpy()], [r for b in references for r in b.numpy()],
                              4, 255)
    assert outs[2]["mean_iou"] == pytest.approx(want["mean_iou"], abs=1e-12)
    assert outs[2]["per_category_iou"] == pytest.approx(list(want["per_category_iou"]), abs=1e-12)
    assert metric.confusion is None  # the next evaluation starts afresh


def test_mean_iou_in_a_plain_trainer_equals_the_tutorials_compute_metrics(demo_dataset, tmp_path):
    from benchmarks.seed import SeedDataset, seed_compute_metrics, seed_processor, seed_trainer, seed_training_arguments

    root = Path(demo_dataset)
    pairs = [(image, root / "annotations" / "validation" / f"{image.stem}.png")
             for image in sorted((root / "images" / "validation").glob("*.jpg"))]
    dataset = SeedDataset(pairs, seed_processor(size={"height": 48, "width": 48}))
    torch.manual_seed(0)
    model = tiny_segformer(9)  # demo masks: 0 (other) .. 8, unreduced as the tutorial reads them
    common = dict(per_device_eval_batch_size=3, disable_tqdm=True, use_cpu=True)  # 4 images: batches of 3 and 1
    tutorial = seed_trainer(model, seed_training_arguments(tmp_path / "a", **common), dataset,
                            seed_compute_metrics(9)).evaluate()
    streamed = seed_trainer(model, seed_training_arguments(tmp_path / "b", batch_eval_metrics=True, **common),
                            dataset, MeanIoU(9)).evaluate()
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert streamed[f"eval_{key}"] == pytest.approx(tutorial[f"eval_{key}"], abs=1e-6), key
    for i in range(9):
        for ours, theirs in (("per_category_iou", "iou"), ("per_category_accuracy", "accuracy")):
            a, b = streamed[f"eval_{ours}"][i], tutorial[f"eval_{theirs}_{i}"]
            assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-6)
    assert 0 < streamed["eval_mean_iou"] < 1


# ---------------------------------------------------------------- building blocks


def test_load_data_dataset_and_collate(demo_dataset):
    from segtune.models.loading import training_processor

    data = segtune.load_data(demo_dataset, reduce_labels=True)
    assert len(data.train) == 12 and len(data.val) == 4 and data.rules.reduce_labels
    augment = segtune.AugmentConfig(base_size=64, crop_size=48)
    train = segtune.SegmentationDataset(data, "train", transform="train", augment=augment, seed=5)
    item = train[0]
    assert item["pixel_values"].shape == (3, 48, 48) and item["labels"].shape == (48, 48)
    assert torch.equal(train[0]["pixel_values"], item["pixel_values"])  # seeded per item
    train.set_epoch(1)
    assert not torch.equal(train[0]["pixel_values"], item["pixel_values"])  # each epoch its own draw
    fresh = segtune.SegmentationDataset(data, "train", transform="train", augment=augment)  # no seed
    assert not torch.equal(fresh[0]["pixel_values"], fresh[0]["pixel_values"])
    assert fresh[0]["labels"].shape == (48, 48)
    val = segtune.SegmentationDataset(data, "val", transform="eval", processor=training_processor("mit-b0", 32))
    mask = data.val[0].read_mask(data.rules)
    assert torch.equal(val[0]["labels"], torch.from_numpy(mask)) and val[0]["pixel_values"].shape[0] == 3
    raw = segtune.SegmentationDataset(data, "val", transform=None)
    assert raw[0]["pixel_values"].dtype == torch.uint8
    small = {"pixel_values": torch.ones(3, 2, 3), "labels": torch.zeros(2, 3, dtype=torch.long)}
    big = {"pixel_values": torch.ones(3, 4, 4), "labels": torch.ones(4, 4, dtype=torch.long)}
    batch = val.collate([small, big])
    assert batch["labels"].shape == (2, 4, 4) and batch["pixel_values"].shape == (2, 3, 4, 4)
    assert (batch["labels"][0, 2:] == 255).all() and (batch["labels"][0, :2, 3] == 255).all()
    assert (batch["pixel_values"][0, :, 2:] == 0).all()
    with pytest.raises(segtune.SegtuneError, match="unknown option"):
        segtune.load_data(demo_dataset, mask_sufix=".png")


# ---------------------------------------------------------------- docs/python.md, end to end


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def test_the_python_page_runs_end_to_end(demo_dataset, tiny_model_dir, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    first, *rest = python_blocks(REPO / "docs" / "python.md")
    namespace: dict = {}
    exec(compile(first, "docs/python.md (settings)", "exec"), namespace)
    assert {"DATA", "MODEL", "OUT", "STEPS", "EVAL_EVERY", "SIZE"} <= set(namespace)
    namespace.update(DATA=str(demo_dataset), MODEL=str(tiny_model_dir), OUT=str(tmp_path / "run"), STEPS=4,
                     EVAL_EVERY=2, SIZE=64)
    for i, block in enumerate(rest):
        exec(compile(block, f"docs/python.md (block {i + 2})", "exec"), namespace)
    assert namespace["run"].model_dir == tmp_path / "run"
    assert (tmp_path / "run" / "report.html").is_file() and "<iframe" in namespace["run"].report._repr_html_()
    assert namespace["metrics"]["eval_mean_iou"] == pytest.approx(namespace["scores"]["mean_iou"], abs=1e-6)


def test_export_equals_the_cli(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    _, run = runs
    common = ["--check-images", "1"]
    code, err = run_cli(["export", "--model", run.model_dir, "--output-dir", tmp_path / "cli", *common])
    assert code == 0, err
    result = segtune.export(model=run.model_dir, output_dir=tmp_path / "api", check_images=1)
    cli_info = json.loads((tmp_path / "cli" / "export.json").read_text())
    timing = re.compile(r"seconds|onnx$")

    def comparable(info):
        return {k: v for k, v in info.items() if not timing.search(k) and k != "check"}

    assert comparable(result.info) == comparable(cli_info) and result.onnx.is_file()
    assert result.info["check"]["equal_pixels"] == cli_info["check"]["equal_pixels"]
    assert "passed" in result._repr_html_()


EVAL_SCRIPT = '''
import json, sys
import torch
from transformers import SegformerForSemanticSegmentation, Trainer, TrainingArguments
import segtune
from segtune.evaluation import MeanIoU
from segtune.models.loading import training_processor

data_dir, model_dir, out = sys.argv[1:4]
data = segtune.load_data(data_dir, reduce_labels=True)
val = segtune.SegmentationDataset(data, "val", transform="eval", processor=training_processor("mit-b0", 48))
model = SegformerForSemanticSegmentation.from_pretrained(model_dir)
args = TrainingArguments(output_dir=out + "-trainer", per_device_eval_batch_size=2, batch_eval_metrics=True,
                         remove_unused_columns=False, report_to="none", disable_tqdm=True, use_cpu=True)
trainer = Trainer(model=model, args=args, eval_dataset=val, data_collator=val.collate, compute_metrics=MeanIoU(8))
metrics = trainer.evaluate()
if trainer.is_world_process_zero():
    json.dump(metrics, open(out, "w"))
if torch.distributed.is_initialized():  # as segtune's runs do: a process group left to the interpreter's
    torch.distributed.destroy_process_group()  # exit can abort there ("terminate called without an active exception")
'''


def test_mean_iou_under_two_processes_equals_one(tmp_path):
    from segtune.data.demo_data import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "data", seed=2, num_train=2, num_val=5, image_size=64)
    torch.manual_seed(0)
    tiny_segformer(8).save_pretrained(tmp_path / "model")
    script = tmp_path / "eval.py"
    script.write_text(EVAL_SCRIPT)
    args = [str(script), str(data), str(tmp_path / "model")]
    for launcher, out in (([sys.executable], "one.json"),
                          ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"], "two.json")):
        run = subprocess.run([*launcher, *args, str(tmp_path / out)], capture_output=True, text=True, timeout=600,
                             cwd=REPO)
        assert run.returncode == 0, run.stderr[-3000:]
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    # 5 images over 2 processes x 2: the last step's repeats are dropped by the Trainer's gather
    for key in ("eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy"):
        assert two[key] == pytest.approx(one[key], abs=1e-12), key
    assert two["eval_per_category_iou"] == pytest.approx(one["eval_per_category_iou"], abs=1e-12, nan_ok=True)
