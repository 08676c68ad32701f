"""The streaming confusion matrix against `evaluate`'s mean_iou algorithm (tests/reference_metric.py)
and hand-computed values; the post-processing (segtune/postprocess.py) against plain upsampling."""

import numpy as np
import pytest
import torch

from segtune.evaluation.metrics import ConfusionMatrix, metrics_to_json

from .reference_metric import reference_mean_iou  # evaluate's algorithm, written for the tests


def test_reference_gives_evaluates_documented_example():
    # The example in evaluate's metrics/mean_iou/mean_iou.py, with the output it documents.
    preds = [np.array([[1, 2], [3, 4], [5, 255]]), np.array([[2, 7], [9, 2], [3, 6]]),
             np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]])]
    labels = [np.array([[0, 3], [5, 4], [6, 255]]), np.array([[1, 7], [9, 2], [3, 6]]),
              np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]])]
    got = reference_mean_iou(preds, labels, 10, 255)
    assert got["mean_iou"] == pytest.approx(0.4775) and got["mean_accuracy"] == pytest.approx(0.5916666666666666)
    assert got["overall_accuracy"] == pytest.approx(0.5263157894736842)
    np.testing.assert_allclose(got["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(got["per_category_accuracy"], [0, 0, 0.75, 2 / 3, 1, 0, 0.5, 1, 1, 1])


def test_hand_computed_example_with_nan_rules():
    # classes 0..3; class 3 appears nowhere -> NaN, left out of the means; 255 ignored.
    label = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 0]])
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(torch.from_numpy(label), torch.from_numpy(pred))
    m = cm.compute()
    # class 0: I=1, pred area {0: at (0,0),(1,1)} = 2, label area 2 -> U = 3
    # class 1: I=2, pred area 3, label area 2 -> U = 3
    # class 2: I=1, pred area 1, label area 2 -> U = 2
    np.testing.assert_allclose(m["per_category_iou"][:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(m["per_category_iou"][3]) and np.isnan(m["per_category_accuracy"][3])
    np.testing.assert_allclose(m["per_category_accuracy"][:3], [1 / 2, 1.0, 1 / 2])
    assert m["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["mean_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["overall_accuracy"] == pytest.approx(4 / 6)
    as_json = metrics_to_json(m, ["a", "b", "c", "d"])
    assert as_json["per_category_iou"]["d"] is None
    assert as_json["per_category_iou"]["b"] == pytest.approx(2 / 3)


def test_class_predicted_but_absent_from_labels_has_iou_zero_not_nan():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]))
    m = cm.compute()
    assert m["per_category_iou"][2] == 0.0  # union 1, intersection 0
    assert np.isnan(m["per_category_accuracy"][2])  # no label pixels


def test_predictions_out_of_range_count_for_nothing():
    # A prediction of 7 with 3 classes adds to the label's area only, as evaluate's histogram does.
    label, pred = np.array([0, 1, 2, 2]), np.array([0, 1, 7, 2])
    cm = ConfusionMatrix(3)
    cm.update(torch.from_numpy(label), torch.from_numpy(pred))
    ref = reference_mean_iou([pred], [label], 3, 255)
    np.testing.assert_allclose(cm.compute()["per_category_iou"], ref["per_category_iou"])
    assert cm.compute()["per_category_iou"][2] == 0.5


@pytest.mark.parametrize("num_classes,ignore_index", [(5, 255), (150, 255), (11, 11)])
def test_matches_reference_on_random_maps(num_classes, ignore_index):
    rng = np.random.default_rng(num_classes)
    preds, labels = [], []
    for _ in range(7):
        h, w = rng.integers(5, 40, size=2)
        label = rng.integers(0, num_classes, size=(h, w))
        label[rng.random((h, w)) < 0.1] = ignore_index
        pred = np.where(rng.random((h, w)) < 0.6, label, rng.integers(0, num_classes + 2, size=(h, w)))
        pred[pred == ignore_index] = 0
        preds.append(pred)
        labels.append(label)
    cm = ConfusionMatrix(num_classes, ignore_index)
    for pred, label in zip(preds, labels):
        cm.update(torch.from_numpy(label), torch.from_numpy(pred))
    got, want = cm.compute(), reference_mean_iou(preds, labels, num_classes, ignore_index)
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert got[key] == pytest.approx(want[key], abs=1e-12)
    np.testing.assert_allclose(got["per_category_iou"], want["per_category_iou"], atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(got["per_category_accuracy"], want["per_category_accuracy"], atol=1e-12, equal_nan=True)


def naive_matrix(label, pred, n, ignore_index):
    """Pixel by pixel: ignored labels dropped, values outside [0, n) counted in row / column n."""
    mat = np.zeros((n + 1, n + 1), np.int64)
    for l, p in zip(np.ravel(label).tolist(), np.ravel(pred).tolist()):
        if l != ignore_index:
            mat[l if 0 <= l < n else n, p if 0 <= p < n else n] += 1
    return mat


@pytest.mark.parametrize("ignore_index", [255, 0, -100, 3])
@pytest.mark.parametrize("values", ["small", "negative", "huge", "uint8"])
def test_every_value_lands_where_evaluate_counts_it(ignore_index, values):
    # The fast path (one bincount over the values' range) and the remapping path (negative or
    # huge values) must both give the pixel-by-pixel matrix, whatever the ignore index.
    rng = np.random.default_rng(abs(ignore_index))
    n = 4
    label = rng.integers(0, n + 2, size=500)
    pred = rng.integers(0, n + 2, size=500)
    label[::7] = ignore_index
    if values == "negative":
        label[::11], pred[::13] = -3, -1
    elif values == "huge":
        label[::11], pred[::13] = 10**7, 300
    elif values == "uint8":
        label, pred = label.astype(np.uint8), pred.astype(np.uint8)  # -100 wraps to 156: never ignored
    cm = ConfusionMatrix(n, ignore_index)
    cm.update(torch.from_numpy(label[:250]), torch.from_numpy(pred[:250]))
    cm.update(torch.from_numpy(label[250:]), torch.from_numpy(pred[250:]))
    assert np.array_equal(cm.mat.numpy(), naive_matrix(label, pred, n, ignore_index))


def test_merge_equals_single_pass():
    rng = np.random.default_rng(0)
    label, pred = rng.integers(0, 4, 100), rng.integers(0, 4, 100)
    whole, a, b = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    whole.update(torch.from_numpy(label), torch.from_numpy(pred))
    a.update(torch.from_numpy(label[:40]), torch.from_numpy(pred[:40]))
    b.update(torch.from_numpy(label[40:]), torch.from_numpy(pred[40:]))
    a.merge(b)
    assert torch.equal(a.mat, whole.mat)


@pytest.mark.parametrize("classes", [1, 2, 11, 150])
def test_class_argmax_equals_torch_argmax_ties_included(classes):
    from segtune.inference.postprocess import class_argmax

    generator = torch.Generator().manual_seed(classes)
    scores = torch.randint(-3, 4, (classes, 37, 23), generator=generator).float()  # many exact ties
    scores[:, 0, 0] = float("-inf")
    assert torch.equal(class_argmax(scores), scores.argmax(0))
    smooth = torch.randn(classes, 37, 23, generator=generator)
    assert torch.equal(class_argmax(smooth), smooth.argmax(0))


def test_batched_upsampling_equals_one_image_at_a_time():
    from segtune.inference.postprocess import upsampled_argmax

    logits = torch.randn(3, 7, 16, 21, generator=torch.Generator().manual_seed(1))
    batched = upsampled_argmax(logits, (61, 83))
    assert batched.shape == (3, 61, 83)
    for one, item_logits in zip(batched, logits):
        assert torch.equal(one, upsampled_argmax(item_logits, (61, 83)))
        assert torch.equal(one, torch.nn.functional.interpolate(
            item_logits[None], size=(61, 83), mode="bilinear", align_corners=False)[0].argmax(0))


def _trained_like_logits(classes, h, w, seed, present=5, rounded=False):
    """Logits like a fine-tuned model's: a few classes in 4x4 regions, high where they hold."""
    g = torch.Generator().manual_seed(seed)
    kinds = torch.randperm(classes, generator=g)[:present]
    regions = kinds[torch.randint(0, present, (h // 4 + 1, w // 4 + 1), generator=g)]
    regions = regions.repeat_interleave(4, 0).repeat_interleave(4, 1)[:h, :w]
    logits = torch.randn(classes, h, w, generator=g) / 2 - 6
    logits.scatter_add_(0, regions[None], torch.full((1, h, w), 12.0))
    return logits.round() if rounded else logits  # rounded: many exact ties


@pytest.mark.parametrize("classes,h,w,size,rounded", [
    (150, 32, 43, (128, 171), False),
    (150, 40, 40, (300, 200), True),
    (30, 17, 9, (130, 131), False),
    (64, 200, 180, (130, 140), True),  # downsampling
])
def test_pruned_upsampling_gives_the_ids_of_the_full_one(classes, h, w, size, rounded):
    from segtune.inference.postprocess import candidate_classes, upsampled_argmax

    batch = torch.stack([_trained_like_logits(classes, h, w, seed, rounded=rounded) for seed in range(3)])
    kept = [candidate_classes(item) for item in batch]
    assert all(k is not None and len(k) <= 12 for k in kept)  # the pruning did happen
    full = torch.nn.functional.interpolate(batch, size=size, mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(upsampled_argmax(batch, size), full)
    assert torch.equal(upsampled_argmax(batch[1], size), full[1])


def test_candidates_keep_a_class_that_wins_only_between_pixels():
    from segtune.inference.postprocess import candidate_classes

    logits = torch.full((4, 2, 2), -5.0)
    logits[0, :, 0], logits[1, :, 1] = 10.0, 10.0  # class 0 leads on the left, 1 on the right
    logits[2] = 6.0  # never leads at a pixel, but halfway (5 and 5) it does
    assert candidate_classes(logits).tolist() == [0, 1, 2]
    up = torch.nn.functional.interpolate(logits[None], size=(2, 3), mode="bilinear", align_corners=False)[0]
    assert 2 in up.argmax(0)


def test_candidates_none_for_non_finite_or_few_classes():
    from segtune.inference.postprocess import candidate_classes

    logits = _trained_like_logits(40, 8, 8, 0)
    assert candidate_classes(logits) is not None
    logits[3, 2, 2] = float("nan")
    assert candidate_classes(logits) is None
    assert candidate_classes(_trained_like_logits(40, 8, 8, 0)[:2]) is None


@pytest.mark.parametrize("planes", [1, 2, 5, 33])
def test_torch_upsamples_each_plane_alike_from_the_pruning_size(planes):
    # upsampled_argmax relies on this from PRUNE_MIN_PIXELS on: a plane's values do not depend
    # on the other planes upsampled with it.
    from segtune.inference.postprocess import PRUNE_MIN_PIXELS

    logits = torch.randn(60, 37, 29, generator=torch.Generator().manual_seed(planes))
    for size in [(128, 128), (131, 300), (512, 683)]:
        assert size[0] * size[1] >= PRUNE_MIN_PIXELS
        full = torch.nn.functional.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        some = torch.arange(0, 60, 60 // planes)[:planes]
        alone = torch.nn.functional.interpolate(logits[some][None], size=size, mode="bilinear", align_corners=False)
        assert torch.equal(alone[0], full[some])


def test_candidates_by_corner_rivals():
    # One 2x2 cell, corners (top-left, top-right, bottom-left, bottom-right). Class 0 leads at the
    # top, class 1 at the bottom; their mean is (0, 0, 6, 6). Classes 3.. reach 5 (above what the
    # quick test can rule out) but the mean beats them at every corner; class 2 beats the mean at
    # the top but class 0 beats it at every corner. None of them can win anywhere.
    from segtune.inference.postprocess import candidate_classes

    corners = torch.tensor([[8, 8, 0, 0], [-8, -8, 12, 12], [7, 7, -1, -1]] + [[-1, -1, 5, 5]] * 27, dtype=torch.float)
    logits = corners.view(30, 2, 2)
    assert candidate_classes(logits).tolist() == [0, 1]
    for size in [(2, 2), (3, 5), (64, 48)]:
        up = torch.nn.functional.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        assert set(up.argmax(0).unique().tolist()) <= {0, 1}
