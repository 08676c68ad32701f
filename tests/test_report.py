"""`segtune report`: per-image scores, the saved scores, the pictures and the page in a real browser."""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.cli import main
from segtune.data.sources import load_data
from segtune.evaluation.metrics import ConfusionMatrix
from segtune.evaluation.scoring import EvalDataset, ImageScores, evaluate_model
from segtune.inference.preprocess import ProcessorTransform
from segtune.reporting.charts import _series, normalised_confusion, read_log
from segtune.reporting.report import write_report

from .conftest import tiny_segformer

GALLERY = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_dataset):
    """A run folder as `segtune train` leaves it (model, processor, labels, metrics, log), untrained."""
    from segtune.models.loading import training_processor

    data = load_data(demo_dataset)
    data.reduce_labels = True
    path = tmp_path_factory.mktemp("report-run")
    torch.manual_seed(0)
    model = tiny_segformer(len(data.labels)).eval()
    model.save_pretrained(path)
    processor = training_processor("mit-b0", 64)
    processor.save_pretrained(path)
    data.labels.to_json(path / "labels.json")
    names = data.labels.names
    metrics = {"mean_iou": 0.25, "mean_accuracy": 0.5, "overall_accuracy": 0.75, "step": 8,
               "per_category_iou": {n: (None if i == 3 else i / 10) for i, n in enumerate(names)},
               "per_category_accuracy": {n: 0.5 for n in names}}
    (path / "metrics.json").write_text(json.dumps(metrics))
    lines = []
    for step in range(1, 9):
        lines.append({"step": step, "loss": 2 / step, "learning_rate": 1e-3 * (1 - step / 9), "grad_norm": 1.0})
        if step % 4 == 0:
            lines.append({"step": step, "eval_mean_iou": step / 20})
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return SimpleRun(path, data, model, processor)


class SimpleRun:
    def __init__(self, path, data, model, processor):
        self.path, self.data, self.model, self.processor = path, data, model, processor


@pytest.fixture(scope="module")
def report(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    page = write_report(run.path, model=run.model, processor=run.processor, samples=run.data.val,
                        rules=run.data.rules, labels=run.data.labels, gallery_size=GALLERY, output_dir=out,
                        progress=False)
    return page


def test_image_scores_by_hand():
    scores = ImageScores(num_classes=3, ignore_index=255, keep=2)
    label = torch.tensor([[0, 0], [1, 1]])
    scores(0, label, torch.tensor([[0, 1], [1, 1]]))  # IoU class 0: 1/2, class 1: 2/3; 3 of 4 pixels right
    scores(1, label, label)  # perfect
    scores(2, torch.tensor([[255, 255]]), torch.tensor([[0, 1]]))  # nothing scored
    scores(3, torch.tensor([[0, 255]]), torch.tensor([[2, 2]]))  # class 0: 0, class 2: 0 -> 0
    assert scores.scores[0] == pytest.approx(((0.5 + 2 / 3) / 2, 0.75))
    assert scores.scores[1] == (1.0, 1.0)
    assert all(np.isnan(scores.scores[2]))
    assert scores.scores[3] == (0.0, 0.0)
    worst = scores.worst()
    assert [(i, round(iou, 4)) for i, iou, _ in worst] == [(3, 0.0), (0, 0.5833)]  # the two lowest, lowest first
    assert worst[1][2].tolist() == [[0, 1], [1, 1]]


def test_normalised_confusion_rows_sum_to_one():
    norm = normalised_confusion(np.array([[3, 1], [0, 0]]))
    assert norm[0].tolist() == [0.75, 0.25] and np.isnan(norm[1]).all()


def test_read_log_keeps_the_last_record_of_a_step(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 3}\n{"step": 2, "loss": 2}\n{"step": 2, "loss": 1.5}\n'
                                        'not json\n')
    assert _series(read_log(tmp_path / "log.jsonl"), "loss") == ([1, 2], [3, 1.5])


def test_report_scores_match_the_evaluator(run, report):
    out = report.parent
    data = run.data
    cm = evaluate_model(run.model, EvalDataset(data.val, ProcessorTransform(run.processor), data.rules),
                        len(data.labels), data.ignore_index, progress=False)
    saved = json.loads((out / "confusion_matrix.json").read_text())
    n = len(data.labels)
    assert saved["classes"] == list(data.labels.names)
    assert np.array_equal(np.array(saved["matrix"]), cm.mat[:n, :n].numpy())

    per_image = json.loads((out / "per_image_iou.json").read_text())
    assert [p["image"] for p in per_image] == [s.name for s in data.val]
    for entry, sample in zip(per_image, data.val):  # each image scored on its own, as the evaluator would
        one = evaluate_model(run.model, EvalDataset([sample], ProcessorTransform(run.processor), data.rules),
                             n, data.ignore_index, progress=False).compute()
        assert entry["mean_iou"] == pytest.approx(one["mean_iou"], abs=1e-12)
        assert entry["pixel_accuracy"] == pytest.approx(one["overall_accuracy"], abs=1e-12)

    gallery = sorted((out / "report").glob("gallery_*.png"))
    lowest = sorted(per_image, key=lambda p: p["mean_iou"])[:GALLERY]
    assert [g.name.split("_", 2)[2] for g in gallery] == [f"{p['image'].rsplit('/', 1)[1].rsplit('.', 1)[0]}.png"
                                                         for p in lowest]
    for name in ("per_class_iou.png", "confusion_matrix.png", "training_curves.png", *(g.name for g in gallery)):
        with Image.open(out / "report" / name) as picture:
            picture.load()
            assert picture.format == "PNG" and picture.width > 100


def test_report_page_is_self_contained(report):
    page = report.read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 3 + GALLERY and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "0.2500" in page and "n/a" in page and "rock" in page  # the metrics table


def test_report_command_rescore_then_rebuild_without_data(run, demo_dataset, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run.path, folder)
    assert main(["report", str(folder), "--data", str(demo_dataset), "--reduce-labels", "--gallery", "2"]) == 0
    assert len(list((folder / "report").glob("gallery_*.png"))) == 2
    (folder / "report.html").unlink()
    assert main(["report", str(folder)]) == 0  # from the saved scores and pictures
    page = (folder / "report.html").read_text()
    assert page.count("<img ") == 3 + 2 and "Not computed" not in page


def test_report_of_an_evaluation_without_scores(tmp_path, capsys):
    names = ["road", "car"]
    (tmp_path / "metrics.json").write_text(json.dumps({
        "mean_iou": 0.5, "mean_accuracy": 0.6, "overall_accuracy": 0.7, "num_images": 3,
        "per_category_iou": {"road": 0.9, "car": 0.1}, "per_category_accuracy": {"road": 0.95, "car": 0.2}}))
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img ") == 1 and "Not computed" in page and "No training log" in page
    assert all(n in page for n in names) and not (tmp_path / "report" / "training_curves.png").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 1 and "no metrics.json" in capsys.readouterr().err


def test_report_page_escapes_the_user_s_text(tmp_path):
    """Class names, captions and titles are the user's text: the template escapes them all."""
    from segtune.data.labels import LabelSet

    names = ["<script>alert(1)</script>", "a&b", 'say "hi"']
    (tmp_path / "metrics.json").write_text(json.dumps({
        "mean_iou": 0.5, "data": "/data/<x>", "per_category_iou": {n: 0.5 for n in names}}))
    page = write_report(tmp_path, labels=LabelSet.from_names(names), title="<i>run</i>").read_text()
    assert "<script" not in page and "<i>run" not in page and "/data/<x>" not in page
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in page and "<td>a&amp;b</td>" in page
    assert "<td>say &#34;hi&#34;</td>" in page and "<title>segtune report: &lt;i&gt;run&lt;/i&gt;</title>" in page
    assert "<code>/data/&lt;x&gt;</code>" in page


def test_write_report_takes_a_pass_already_made(run, tmp_path, monkeypatch):
    """A pass already made (`evaluate_model(..., on_item=ImageScores(...))`) feeds the report, which then
    runs no pass of its own (it is given no model to run)."""
    import segtune.reporting.report

    data, n = run.data, len(run.data.labels)
    monkeypatch.setattr(segtune.reporting.report, "score_model", None)  # a second pass would fail
    scores = ImageScores(n, data.ignore_index, keep=2)
    cm = evaluate_model(run.model, EvalDataset(data.val, ProcessorTransform(run.processor), data.rules), n,
                        data.ignore_index, progress=False, on_item=scores)
    (tmp_path / "metrics.json").write_text((run.path / "metrics.json").read_text())
    page = write_report(tmp_path, labels=data.labels, samples=data.val, rules=data.rules, confusion=cm,
                        scores=scores, gallery_size=2)
    assert isinstance(cm, ConfusionMatrix) and page.read_text().count("<img ") == 3 + 2 - 1  # no training log
    assert len(json.loads((tmp_path / "per_image_iou.json").read_text())) == len(data.val)


# ---------------------------------------------------------------- written by train and evaluate

TRAIN_ARGS = ["--reduce-labels", "--base-size", "64", "--crop-size", "64", "--max_steps", "4", "--eval_steps", "2",
              "--logging_steps", "1", "--per_device_train_batch_size", "4", "--dataloader-num-workers", "0",
              "--disable_tqdm", "true", "--seed", "3"]


def mean_iou_of(matrix) -> float:
    matrix = np.asarray(matrix, dtype=np.float64)
    inter, union = np.diag(matrix), matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    present = union > 0
    return float((inter[present] / union[present]).mean())


def counting_passes(monkeypatch):
    """Counts the calls of evaluate_model (each a pass over the images), also the Trainer's."""
    import segtune.evaluation.run
    import segtune.evaluation.scoring
    import segtune.training.trainer

    calls = []
    real = segtune.evaluation.scoring.evaluate_model

    def counted(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    for module in (segtune.evaluation.scoring, segtune.evaluation.run, segtune.training.trainer):
        monkeypatch.setattr(module, "evaluate_model", counted)
    return calls


def test_train_writes_its_report_from_the_final_evaluation(demo_dataset, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    passes = counting_passes(monkeypatch)
    args = ["train", "--data", demo_dataset, "--model", tiny_model_dir, "--output-dir", out, *TRAIN_ARGS]
    assert main([str(a) for a in args]) == 0
    assert len(passes) == 3  # evaluations at steps 2 and 4, and the final one: the report made none

    page = (out / "report.html").read_text()
    with Image.open(out / "report" / "training_curves.png") as curves:
        curves.load()
        assert curves.width > 100
    gallery = sorted((out / "report").glob("gallery_*.png"))
    assert len(gallery) == 4  # every one of the 4 validation images (fewer than 8)
    assert page.count("<img ") == 3 + 4 and "No training log" not in page and "Not computed" not in page
    metrics = json.loads((out / "metrics.json").read_text())
    saved = json.loads((out / "confusion_matrix.json").read_text())
    assert mean_iou_of(saved["matrix"]) == pytest.approx(metrics["mean_iou"], abs=1e-12)  # the final pass's
    per_image = json.loads((out / "per_image_iou.json").read_text())
    splits = json.loads((out / "splits.json").read_text())
    assert [p["image"] for p in per_image] == splits["val"]
    final = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "final_mean_iou" in line]
    assert len(final) == 1 and final[0]["final_mean_iou"] == pytest.approx(metrics["mean_iou"], abs=1e-12)


def test_a_failed_report_keeps_the_trained_model(demo_dataset, tiny_model_dir, tmp_path, caplog, monkeypatch):
    import segtune.reporting.report

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(segtune.reporting.report, "write_report", broken)
    out = tmp_path / "run"
    args = ["train", "--data", demo_dataset, "--model", tiny_model_dir, "--output-dir", out, *TRAIN_ARGS,
            "--max_steps", "1", "--eval_steps", "1"]
    assert main([str(a) for a in args]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("segtune: warning")]
    assert len(warnings) == 1
    page = out / "report.html"
    assert warnings[0].startswith(f"segtune: warning: {page}: not written (RuntimeError: no fonts today)")
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    assert not (out / "report.html").exists()


def test_evaluate_writes_its_report_in_its_one_pass(run, demo_dataset, tmp_path, monkeypatch):
    passes = counting_passes(monkeypatch)
    args = ["evaluate", "--model", run.path, "--data", demo_dataset, "--reduce-labels", "--output-dir", tmp_path]
    assert main([str(a) for a in args]) == 0
    assert passes == [len(run.data.val)]  # one pass, for the metrics and the report together
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img ") == 2 + len(run.data.val) and "No training log" in page  # bars, confusion, gallery
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    saved = json.loads((tmp_path / "confusion_matrix.json").read_text())
    assert mean_iou_of(saved["matrix"]) == pytest.approx(metrics["mean_iou"], abs=1e-12)
    assert len(list((tmp_path / "report").glob("gallery_*.png"))) == len(run.data.val)

    quiet = tmp_path / "quiet"
    assert main([str(a) for a in [*args[:-1], quiet, "--no-report"]]) == 0
    assert (quiet / "metrics.json").is_file() and not (quiet / "report.html").exists()
    assert not (quiet / "report").exists()


def test_evaluate_predictions_writes_a_report_with_their_gallery(run, demo_dataset, tmp_path):
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for i, sample in enumerate(run.data.val):
        mask = sample.read_mask(run.data.rules).astype(np.uint8)
        rows = 1 + 4 * i
        mask[:rows] = np.where(mask[:rows] == 0, 1, 0)  # every pixel of the first rows wrong
        Image.fromarray(mask).save(predictions / f"{sample.stem}.png")
    out = tmp_path / "scored"  # where the model was evaluated before: its gallery must not stay
    data_args = ["--data", demo_dataset, "--reduce-labels", "--output-dir", out]
    assert main([str(a) for a in ["evaluate", "--model", run.path, *data_args]]) == 0
    model_gallery = sorted(p.name for p in (out / "report").glob("gallery_*.png"))
    assert model_gallery
    assert main([str(a) for a in ["evaluate", "--predictions", predictions, *data_args]]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["source"] == str(predictions) and 0.5 < metrics["mean_iou"] < 1
    saved = json.loads((out / "confusion_matrix.json").read_text())
    assert mean_iou_of(saved["matrix"]) == pytest.approx(metrics["mean_iou"], abs=1e-12)
    per_image = json.loads((out / "per_image_iou.json").read_text())
    assert len(per_image) == len(run.data.val) and all(e["mean_iou"] < 1 for e in per_image)
    # the gallery shows the lowest-IoU images of this pass, drawn from the saved label maps
    gallery = sorted((out / "report").glob("gallery_*.png"))
    lowest = sorted(per_image, key=lambda e: (e["mean_iou"], e["image"]))[: len(gallery)]
    assert [p.name.split("_", 2)[2][:-4] for p in gallery] == [Path(e["image"]).stem for e in lowest]
    page = (out / "report.html").read_text()
    assert page.count("<img ") == 2 + len(gallery) and "Not computed" not in page


# ---------------------------------------------------------------- a real browser

CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const sizes = images.map(i => [i.naturalWidth, i.naturalHeight]);
  const out = document.createElement("pre");
  out.id = "segtune-check";
  out.textContent = JSON.stringify({images: images.length, broken: broken, sizes: sizes});
  document.body.appendChild(out);
});
</script>"""


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium here (Debian: apt-get install -y chromium)")


def browser_check(page: str, tmp_path):
    """Opens `page` in headless Chromium: (what the check script saw, console lines)."""
    browser = chromium()
    checked = tmp_path / "checked.html"  # the page plus a script that reports what the browser loaded
    checked.write_text(page.replace("</body>", CHECK + "</body>"))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="segtune-check">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stdout[-2000:]
    return json.loads(html.unescape(found.group(1))), [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def test_report_in_headless_chromium(report, tmp_path):
    check, console = browser_check(report.read_text(), tmp_path)
    assert check["images"] == 3 + GALLERY and check["broken"] == []
    pngs = [Image.open(p).size for p in sorted((report.parent / "report").glob("*.png"))]
    assert sorted(map(tuple, check["sizes"])) == sorted(pngs)  # every picture decoded at its full size
    assert console == [], console  # no console messages: no errors, no warnings


def test_the_browser_check_sees_broken_images_and_errors(tmp_path):
    page = ('<!doctype html><html><body><img alt="gone" src="missing.png">'
            '<img alt="bad" src="data:image/png;base64,AAAA"><script>notDefined()</script></body></html>')
    check, console = browser_check(page, tmp_path)
    assert check["broken"] == ["gone", "bad"] and any("notDefined" in line for line in console)
