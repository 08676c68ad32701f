"""The benchmarks' baseline (benchmarks/seed.py): its copy of `evaluate`'s mean_iou gives
evaluate's own documented numbers and segtune's ConfusionMatrix results, so the speed
benchmarks compare like with like."""

import numpy as np
import pytest
import torch

from benchmarks.seed import seed_compute_metrics, seed_mean_iou
from segtune.evaluation.metrics import ConfusionMatrix

KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")


def confusion_metrics(preds, labels, num_labels, ignore_index):
    cm = ConfusionMatrix(num_labels, ignore_index)
    for pred, label in zip(preds, labels):
        cm.update(torch.from_numpy(label), torch.from_numpy(pred))
    return cm.compute()


def assert_same(got, want):
    for key in KEYS:  # equal_nan: NaN positions must match too
        np.testing.assert_allclose(np.asarray(got[key], float), np.asarray(want[key], float), rtol=0, atol=1e-9,
                                   equal_nan=True, err_msg=key)


def test_evaluate_docstring_example():
    # The example in evaluate's metrics/mean_iou/mean_iou.py, with the output it documents.
    preds = [np.array([[1, 2], [3, 4], [5, 255]]), np.array([[2, 7], [9, 2], [3, 6]]),
             np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]])]
    labels = [np.array([[0, 3], [5, 4], [6, 255]]), np.array([[1, 7], [9, 2], [3, 6]]),
              np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]])]
    want = {"mean_iou": 0.47750000000000004, "mean_accuracy": 0.5916666666666666,
            "overall_accuracy": 0.5263157894736842,
            "per_category_iou": [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1],
            "per_category_accuracy": [0, 0, 0.75, 2 / 3, 1, 0, 0.5, 1, 1, 1]}
    assert_same(seed_mean_iou(preds, labels, 10, 255), want)
    assert_same(confusion_metrics(preds, labels, 10, 255), want)


def test_hand_computed_with_absent_class():
    # 3 classes, 255 ignored. Class 0: I=2, pred 2, label 3 -> IoU 2/3, acc 2/3. Class 1: I=1,
    # pred 2, label 1 -> IoU 1/2, acc 1. Class 2: never labelled nor predicted -> NaN, NaN.
    label = np.array([[0, 0, 0], [1, 255, 255]])
    pred = np.array([[0, 0, 1], [1, 2, 0]])
    want = {"mean_iou": (2 / 3 + 1 / 2) / 2, "mean_accuracy": (2 / 3 + 1) / 2, "overall_accuracy": 3 / 4,
            "per_category_iou": [2 / 3, 1 / 2, np.nan], "per_category_accuracy": [2 / 3, 1, np.nan]}
    assert_same(seed_mean_iou([pred], [label], 3, 255), want)
    assert_same(confusion_metrics([pred], [label], 3, 255), want)


@pytest.mark.parametrize("num_labels,ignore_index", [(150, 255), (11, 11), (4, 255)])
def test_matches_confusion_matrix_on_random_maps(num_labels, ignore_index):
    rng = np.random.default_rng(num_labels)
    order = rng.permutation(num_labels)
    present, nowhere = order[: num_labels - max(2, num_labels // 5)], order[-1]  # the rest never labelled
    preds, labels = [], []
    for _ in range(6):
        h, w = rng.integers(8, 60, size=2)
        label = present[rng.integers(0, len(present), (h, w))]
        label[rng.random((h, w)) < 0.1] = ignore_index
        pred = np.where(rng.random((h, w)) < 0.5, label, rng.integers(0, num_labels, (h, w)))
        pred[(pred == nowhere) | (pred == ignore_index)] = present[0]  # `nowhere`: neither labelled nor predicted
        preds.append(pred)
        labels.append(label)
    got = seed_mean_iou(preds, labels, num_labels, ignore_index)
    assert np.isnan(got["per_category_iou"]).sum() == 1 and np.isnan(got["per_category_accuracy"]).sum() >= 2
    assert_same(got, confusion_metrics(preds, labels, num_labels, ignore_index))


def test_reduce_labels_and_label_map_as_evaluate():
    # reduce_labels: 0 -> ignored, k -> k-1 (255 stays ignored); label_map applies first.
    label, pred = np.array([[0, 1, 2, 255]]), np.array([[0, 0, 1, 1]])
    reduced = seed_mean_iou([pred], [label], 2, 255, reduce_labels=True)
    assert_same(reduced, seed_mean_iou([pred], [np.array([[255, 0, 1, 255]])], 2, 255))
    mapped = seed_mean_iou([pred], [label], 2, 255, label_map={2: 0})
    assert_same(mapped, seed_mean_iou([pred], [np.array([[0, 1, 0, 255]])], 2, 255))
    assert label[0, 0] == 0  # the caller's arrays are left alone


def test_compute_metrics_on_tiny_logits():
    # logits 1 x 2 x 2 x 2 upsampled to 4x4 labels: class 1 wins on the right half.
    logits = np.zeros((1, 2, 2, 2), np.float32)
    logits[0, 1, :, 1] = 5.0
    logits[0, 0, :, 0] = 5.0
    labels = np.array([[[0, 0, 1, 1]] * 3 + [[0, 0, 1, 255]]])
    metrics = seed_compute_metrics(2, 255, {0: "a", 1: "b"})((logits, labels))
    assert metrics["mean_iou"] == pytest.approx(1.0)
    assert metrics["iou_a"] == metrics["accuracy_b"] == pytest.approx(1.0)
    assert metrics["overall_accuracy"] == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["trained", "random"])
def test_post_logits_sides_score_alike(kind):
    # benchmarks/post_logits.py times the seed's compute_metrics against segtune's path after
    # the logits (with class pruning on the trained-like logits): both must give the same IoUs.
    from benchmarks.post_logits import make_logits, same, seed_side, segtune_side
    from segtune.inference.postprocess import candidate_classes

    logits, labels = make_logits(kind, 3, 150, (128, 160), seed=1)
    kept = [candidate_classes(x) for x in logits]
    upsampled = [150 if k is None else len(k) for k in kept]
    assert max(upsampled) < 20 if kind == "trained" else min(upsampled) > 140  # random: nearly every class wins
    seed, segtune = seed_side(logits, labels, 150), segtune_side(logits, labels, 150)
    assert 0.5 < seed["mean_iou"] <= 1 if kind == "trained" else seed["mean_iou"] < 0.5
    assert same(seed, segtune)
