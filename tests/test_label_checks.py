"""Label-space checks (segtune/label_checks.py): silent label mistakes found by the one scan over the masks,
in `segtune inspect` (inspect.json `findings`, exit status) and before `train` / `evaluate`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.cli import main
from segtune.data.checks import checked_labels, scan
from segtune.data.label_checks import label_findings, mask_facts
from segtune.data.labels import load_labels
from segtune.data.reading import MaskRules
from segtune.data.sources import load_data
from segtune.errors import SegtuneError
from segtune.evaluation.metrics import metrics_to_json

from .helpers import write_image, write_mask

W, H = 40, 30
CAMVID_YAML = Path(__file__).resolve().parents[1] / "examples" / "camvid-mini.yaml"


def blocks(seed: int, values, size=(W, H)) -> np.ndarray:
    """A mask of axis-aligned rectangles of `values` on values[0] (as drawn, no interpolation)."""
    rng = np.random.default_rng(seed)
    mask = np.full((size[1], size[0]), values[0], np.uint8)
    for value in values[1:]:
        y, x = rng.integers(0, size[1] // 2), rng.integers(0, size[0] // 2)
        h, w = rng.integers(size[1] // 4, size[1] // 2), rng.integers(size[0] // 4, size[0] // 2)
        mask[y:y + h, x:x + w] = value
    return mask


def make_set(root, masks) -> object:
    """images/ + annotations/ (flat layout) holding `masks`, one random image each."""
    for i, mask in enumerate(masks):
        write_image(root / "images" / f"img_{i:02d}.png", seed=i, size=(mask.shape[1], mask.shape[0]))
        write_mask(root / "annotations" / f"img_{i:02d}.png", mask)
    return root


def inspect(root, out, *args):
    code = main(["inspect", "--data", str(root), "--output-dir", str(out), *map(str, args)])
    return code, json.loads((out / "inspect.json").read_text())


def codes(report) -> dict:
    return {f["code"]: f["severity"] for f in report["findings"]}


def message(report, code) -> str:
    return next(f["message"] for f in report["findings"] if f["code"] == code)


def binary_masks(n=6, noisy=False):
    out = []
    for i in range(n):
        mask = np.where(blocks(i, [0, 1]) == 1, 255, 0).astype(np.uint8)
        if noisy:  # as a JPEG round trip leaves them: a few values near 0 and near 255
            rng = np.random.default_rng(i)
            noise = rng.random(mask.shape) < 0.02
            mask = np.where(noise & (mask == 0), 3, np.where(noise & (mask == 255), 250, mask)).astype(np.uint8)
        out.append(mask)
    return out


# ---------------------------------------------------------------- binary 0/255 masks


@pytest.mark.parametrize("noisy", [False, True])
def test_binary_255_masks_block_inspect(tmp_path, capsys, noisy):
    root = make_set(tmp_path / "data", binary_masks(noisy=noisy))
    code, report = inspect(root, tmp_path / "out")
    assert code == 1
    assert codes(report)["binary_255"] == "problem"
    text = message(report, "binary_255")
    assert "only 0 and 255" in text and "--binary" in text and "label_map {255: 1}" in text
    assert report["blocking_problems"] == [text]
    out = capsys.readouterr().out
    assert f"problem: {text}" in out.splitlines() and "ready to train" not in out


def test_binary_255_masks_stop_train_and_evaluate_before_any_model(tmp_path, capsys):
    root = make_set(tmp_path / "data", binary_masks())
    with pytest.raises(SegtuneError, match="only 0 and 255"):
        checked_labels(load_data(root), None)
    with pytest.raises(SegtuneError, match="only 0 and 255"):  # not one bad pair: --skip-bad cannot leave it out
        checked_labels(load_data(root), None, skip_bad=True)
    capsys.readouterr()
    code = main(["train", "--data", str(root), "--model", "mit-b0", "--output-dir", str(tmp_path / "run"),
                 "--max_steps", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "only 0 and 255" in err and "--binary" in err
    assert not (tmp_path / "run").exists()  # stopped before the model or the output folder
    preds = tmp_path / "preds"
    preds.mkdir()
    code = main(["evaluate", "--predictions", str(preds), "--data", str(root), "--output-dir", str(tmp_path / "ev")])
    assert code == 1 and "only 0 and 255" in capsys.readouterr().err


@pytest.mark.parametrize("noisy", [False, True])
def test_binary_flag_reads_background_and_foreground(tmp_path, capsys, noisy):
    masks = binary_masks(noisy=noisy)
    root = make_set(tmp_path / "data", masks)
    code, report = inspect(root, tmp_path / "out", "--binary")
    assert code == 0, report["blocking_problems"]
    assert [c["name"] for c in report["classes"]] == ["background", "foreground"]
    foreground = sum(int((m >= 128).sum()) for m in masks)
    assert report["classes"][1]["pixels"] == foreground and report["binary"] is True
    assert "binary_255" not in codes(report) and "interpolated_masks" not in codes(report)
    assert report["splits"]["train"]["ignored_share"] == 0.0
    assert "foreground_iou" in capsys.readouterr().out


def test_binary_in_a_data_file_and_label_map_255_to_1_pass(tmp_path):
    make_set(tmp_path / "data", binary_masks())
    folders = "path: data\ntrain: images\ntrain_masks: annotations\n"
    (tmp_path / "binary.yaml").write_text(folders + "binary: true\n")
    data = load_data(tmp_path / "binary.yaml")
    assert data.binary and checked_labels(data, None).names == ("background", "foreground")
    assert data.findings == []

    (tmp_path / "mapped.yaml").write_text(folders + "names: [background, foreground]\nlabel_map: {255: 1}\n")
    code, report = inspect(tmp_path / "mapped.yaml", tmp_path / "out")
    assert code == 0 and "binary_255" not in codes(report)
    assert [c["name"] for c in report["classes"]] == ["background", "foreground"]
    assert report["classes"][1]["pixels"] > 0

    (tmp_path / "bad.yaml").write_text(folders + "binary: yes please\n")
    with pytest.raises(SegtuneError, match="'binary' must be true or false"):
        load_data(tmp_path / "bad.yaml")


def test_binary_mask_rule():
    rules = MaskRules(binary=True)
    assert rules.apply(np.array([[0, 3, 127], [128, 250, 255]], np.uint8), "m").tolist() == [[0, 0, 0], [1, 1, 1]]
    assert rules.apply(np.array([[0, 1], [1, 0]], np.uint8), "m").tolist() == [[0, 1], [1, 0]]  # stored as 0/1
    grey_rgb = np.repeat(np.array([[0, 255]], np.uint8)[..., None], 3, axis=2)
    assert rules.apply(grey_rgb, "m").tolist() == [[0, 1]]


def test_binary_evaluation_reports_foreground_iou(tmp_path):
    masks = binary_masks()
    root = make_set(tmp_path / "data", masks)
    preds = tmp_path / "preds"
    preds.mkdir()
    for i, mask in enumerate(masks):  # background everywhere but the foreground's top half
        pred = (mask >= 128).astype(np.uint8)
        rows = np.nonzero(pred.any(axis=1))[0]
        pred[rows[len(rows) // 2]:] = 0
        Image.fromarray(pred).save(preds / f"img_{i:02d}.png")
    out = tmp_path / "ev"
    assert main(["evaluate", "--predictions", str(preds), "--data", str(root), "--binary", "--split", "all",
                 "--output-dir", str(out), "--no-report"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_category_iou"]) == ["background", "foreground"]
    truth = sum(int((m >= 128).sum()) for m in masks)
    hit = sum(int(np.asarray(Image.open(preds / f"img_{i:02d}.png")).sum()) for i in range(len(masks)))
    assert metrics["foreground_iou"] == pytest.approx(hit / truth) == metrics["per_category_iou"]["foreground"]
    assert "foreground_iou" not in metrics_to_json({"per_category_iou": [0.5, 0.5, 0.5]}, ["a", "b", "c"])


def test_binary_flag_on_masks_of_class_ids_warns(tmp_path):
    root = make_set(tmp_path / "data", [blocks(i, [10, 60, 90]) for i in range(4)])
    code, report = inspect(root, tmp_path / "out", "--binary")
    assert code == 0 and codes(report)["binary_not_binary"] == "warning"


# ---------------------------------------------------------------- ADE20K reduction


def ade_like(n=6, reduced=False):
    """ADE20K-style masks: 0 = other in every mask, classes stored as id + 1 (wall 1, floor 4 ...);
    `reduced`: as reduction leaves them (other -> 255, k -> k - 1)."""
    masks = [blocks(i, [1, 0, 4, 6, 15]) for i in range(n)]
    return [np.where(m == 0, 255, m - 1).astype(np.uint8) for m in masks] if reduced else masks


def test_unreduced_ade20k_masks_with_ade20k_labels_warn(tmp_path, capsys):
    root = make_set(tmp_path / "data", ade_like())
    code, report = inspect(root, tmp_path / "out", "--labels", "ade20k")
    assert code == 0 and codes(report)["unreduced_ade20k"] == "warning"
    text = message(report, "unreduced_ade20k")
    assert "--reduce-labels" in text and "'wall'" in text and "6 of 6 masks" in text
    out = capsys.readouterr().out
    assert f"warning [unreduced_ade20k]: {text}" in out and "ready to train" not in out.replace(
        "no blocking problems", "")

    code, report = inspect(root, tmp_path / "reduced", "--labels", "ade20k", "--reduce-labels")
    assert code == 0 and "unreduced_ade20k" not in codes(report) and "already_reduced" not in codes(report)


def test_class_0_that_is_background_or_data_that_ignores_pixels_gives_no_reduce_warning(tmp_path):
    root = make_set(tmp_path / "data", ade_like())
    (tmp_path / "labels.json").write_text(json.dumps({str(i): n for i, n in enumerate(
        ["background", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o"])}))
    code, report = inspect(root, tmp_path / "out", "--labels", tmp_path / "labels.json")
    assert code == 0 and "unreduced_ade20k" not in codes(report)
    reduced = make_set(tmp_path / "reduced", ade_like(reduced=True))  # 255 ignored: properly reduced already
    code, report = inspect(reduced, tmp_path / "out2", "--labels", "ade20k")
    assert code == 0 and "unreduced_ade20k" not in codes(report)
    # no labels: classes numbered from the masks, class 0 is nothing known
    code, report = inspect(root, tmp_path / "out3")
    assert code == 0 and "unreduced_ade20k" not in codes(report)


def test_double_reduction_warns(tmp_path):
    root = make_set(tmp_path / "data", ade_like(reduced=True))
    code, report = inspect(root, tmp_path / "out", "--labels", "ade20k", "--reduce-labels")
    assert code == 0 and codes(report)["already_reduced"] == "warning"
    text = message(report, "already_reduced")
    assert "look reduced already" in text and "drop --reduce-labels" in text and "6 of 6 masks" in text
    code, report = inspect(root, tmp_path / "plain", "--labels", "ade20k")
    assert code == 0 and "already_reduced" not in codes(report) and "unreduced_ade20k" not in codes(report)
    # unreduced masks reduced once: no warning
    code, report = inspect(make_set(tmp_path / "raw", ade_like()), tmp_path / "once", "--labels", "ade20k",
                           "--reduce-labels")
    assert "already_reduced" not in codes(report)


def test_train_logs_the_reduce_warning_and_stops_on_nothing_else(tmp_path, caplog):
    data = load_data(make_set(tmp_path / "data", ade_like()))
    with caplog.at_level("INFO", logger="segtune"):
        labels = checked_labels(data, load_labels("ade20k"))
    assert len(labels) == 150
    assert {f.code for f in data.findings} >= {"unreduced_ade20k", "classes_never_present"}
    assert any("[unreduced_ade20k]" in r.message and r.levelname == "WARNING" for r in caplog.records)
    assert any("[classes_never_present]" in r.message and r.levelname == "INFO" for r in caplog.records)


def test_real_ade20k_sample_unreduced_warns_and_reduced_does_not(shared_data, tmp_path):
    sample = shared_data / "ade20k-sample"
    code, report = inspect(sample, tmp_path / "raw", "--labels", "ade20k")
    assert code == 0 and codes(report)["unreduced_ade20k"] == "warning"
    assert "tree, road" in message(report, "unreduced_ade20k")  # ADE20K's commonest classes, absent when shifted
    code, report = inspect(sample, tmp_path / "reduced", "--labels", "ade20k", "--reduce-labels")
    assert code == 0
    assert not {"unreduced_ade20k", "already_reduced", "interpolated_masks", "binary_255"} & codes(report).keys()

    # the sample reduced and saved, then reduced again
    twice = tmp_path / "twice"
    shutil.copytree(sample / "images", twice / "images")
    (twice / "annotations").mkdir()
    for path in (sample / "annotations").iterdir():
        mask = np.asarray(Image.open(path)).astype(np.int64)
        Image.fromarray(np.where(mask == 0, 255, mask - 1).astype(np.uint8)).save(twice / "annotations" / path.name)
    code, report = inspect(twice, tmp_path / "twice-out", "--labels", "ade20k", "--reduce-labels")
    assert code == 0 and codes(report)["already_reduced"] == "warning"


# ---------------------------------------------------------------- classes and labels


def test_class_outside_the_labels_is_a_problem_with_one_summary(tmp_path):
    masks = [blocks(i, [0, 1, 2]) for i in range(5)]
    masks[2][0:4, 0:4] = 7
    root = make_set(tmp_path / "data", masks)
    (tmp_path / "labels.json").write_text(json.dumps({"0": "sky", "1": "road", "2": "car"}))
    code, report = inspect(root, tmp_path / "out", "--labels", tmp_path / "labels.json")
    assert code == 1 and codes(report)["class_outside_labels"] == "problem"
    text = message(report, "class_outside_labels")
    assert "1 mask(s) hold class ids up to 7, outside the 3 classes" in text and "label_map" in text
    assert len(report["blocking_problems"]) == 1 and "img_02.png" in report["blocking_problems"][0]  # per file


def test_other_labels_with_a_real_class_0_everywhere_get_a_reduce_hint_only(tmp_path, capsys):
    root = make_set(tmp_path / "data", [blocks(i, [0, 1, 2]) for i in range(5)])  # sky everywhere, nothing ignored
    (tmp_path / "labels.json").write_text(json.dumps({"0": "sky", "1": "road", "2": "car"}))
    code, report = inspect(root, tmp_path / "out", "--labels", tmp_path / "labels.json")
    assert code == 0 and codes(report) == {"unreduced_ade20k": "hint"}
    assert "if 0 means 'other'" in message(report, "unreduced_ade20k")
    assert "no problems found: ready to train" in capsys.readouterr().out


def test_classes_never_present_is_a_hint(tmp_path, capsys):
    masks = [blocks(i, [0, 1, 2]) for i in range(5)]
    for mask in masks:
        mask[0] = 255  # an ignored border
    root = make_set(tmp_path / "data", masks)
    (tmp_path / "labels.json").write_text(json.dumps({"0": "sky", "1": "road", "2": "car", "3": "boat", "4": "bus"}))
    code, report = inspect(root, tmp_path / "out", "--labels", tmp_path / "labels.json")
    assert code == 0 and codes(report) == {"classes_never_present": "hint"}
    text = message(report, "classes_never_present")
    assert "2 of the 5 classes never occur in the masks: boat, bus" in text and "never reach ids above 2" in text
    assert "no problems found: ready to train" in capsys.readouterr().out


def test_clean_masks_give_no_findings(tmp_path, capsys):
    root = make_set(tmp_path / "data", [blocks(i, [0, 1, 2, 5, 9]) for i in range(6)])
    code, report = inspect(root, tmp_path / "out")
    assert code == 0 and report["findings"] == [] and report["blocking_problems"] == []
    assert "no problems found: ready to train" in capsys.readouterr().out


# ---------------------------------------------------------------- interpolated masks


def resized(mask, how, factor=1.5):
    return np.asarray(Image.fromarray(mask).resize((int(mask.shape[1] * factor), int(mask.shape[0] * factor)), how))


def test_bilinear_resized_masks_warn_and_nearest_resized_do_not(tmp_path):
    masks = [blocks(i, [0, 3, 6, 9]) for i in range(6)]
    code, report = inspect(make_set(tmp_path / "bilinear", [resized(m, Image.BILINEAR) for m in masks]),
                           tmp_path / "out")
    assert code == 0 and codes(report)["interpolated_masks"] == "warning"
    text = message(report, "interpolated_masks")
    assert "6 of 6 masks look interpolated" in text and "nearest" in text
    code, report = inspect(make_set(tmp_path / "nearest", [resized(m, Image.NEAREST) for m in masks]),
                           tmp_path / "out2")
    assert code == 0 and "interpolated_masks" not in codes(report)


def test_interpolation_statistic():
    mask = np.zeros((10, 12), np.uint8)
    mask[:, 6:] = 8
    facts = mask_facts(mask)
    assert facts.between == 0 and facts.boundary == 16  # a sharp edge: two columns of 8 boundary pixels
    mask[:, 6] = 4  # a ramp 0 -> 4 -> 8, as bilinear resizing leaves
    facts = mask_facts(mask)
    assert facts.between == 8 and facts.boundary == 24
    assert mask_facts(np.zeros((4, 4, 3), np.uint8) + np.uint8([1, 2, 3])) is None  # colour-coded: no stored values


def scanned_findings(data, labels=None):
    return {f.code for f in label_findings(data, scan(data), labels)}


def test_clean_real_and_demo_masks_do_not_look_interpolated(shared_data, demo_dataset):
    camvid = load_data(CAMVID_YAML)
    assert "interpolated_masks" not in scanned_findings(camvid)
    demo = load_data(demo_dataset)
    demo.reduce_labels = True
    assert "interpolated_masks" not in scanned_findings(demo, demo.labels)
    assert "already_reduced" not in scanned_findings(demo, demo.labels)


# ---------------------------------------------------------------- where train records them


def test_the_report_shows_the_findings_train_records(tmp_path):
    import torch

    from segtune.data.labels import LabelSet
    from segtune.evaluation.metrics import ConfusionMatrix
    from segtune.reporting.report import write_report

    root = make_set(tmp_path / "data", ade_like())
    data = load_data(root)
    labels = checked_labels(data, load_labels("ade20k"))
    findings = [f.to_json() for f in data.findings]  # what train writes as metrics.json data_findings
    assert "unreduced_ade20k" in {f["code"] for f in findings}
    names = LabelSet.numbered(3)
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 1]))
    run = tmp_path / "run"
    run.mkdir()
    metrics = {**metrics_to_json(cm.compute(), names.names), "data_findings": findings}
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = write_report(run, labels=names, confusion=cm, progress=False).read_text()
    assert "Data checks" in page and "unreduced_ade20k" in page and "--reduce-labels" in page
    assert len(labels) == 150
    del metrics["data_findings"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert "Data checks" not in write_report(run, labels=names, confusion=cm, progress=False).read_text()
