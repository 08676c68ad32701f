"""Losses: transformers' SegFormer loss reproduced, ignored pixels truly ignored, the loss spec,
class weights from counts and from files."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segtune.training.losses import (CombinedLoss, CrossEntropyLoss, DiceLoss, FocalLoss,
                                     class_weights_from_frequencies, load_class_weights, parse_loss_spec, pixel_counts)

IGNORE = 255
WEIGHTS = torch.tensor([0.5, 2.0, 1.0])


def batch(n=2, c=3, h=12, w=10, size=None, seed=0, ignore=IGNORE):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=gen) * 3
    height, width = size or (h, w)
    labels = torch.randint(0, c, (n, height, width), generator=gen)
    labels[torch.rand(n, height, width, generator=gen) < 0.3] = ignore
    return logits, labels


def all_losses():
    return {
        "ce": CrossEntropyLoss(IGNORE),
        "weighted ce": CrossEntropyLoss(IGNORE, class_weights=WEIGHTS),
        "dice": DiceLoss(IGNORE),
        "focal": FocalLoss(IGNORE),
        "weighted focal": FocalLoss(IGNORE, class_weights=WEIGHTS),
        "ce+dice+focal": parse_loss_spec("ce:1,dice:0.5,focal:2", IGNORE, class_weights=WEIGHTS),
    }


@pytest.mark.parametrize("ignore_index", [255, 0])
def test_cross_entropy_is_transformers_segformer_loss(ignore_index):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64],
                             num_attention_heads=[1, 2, 4, 8], decoder_hidden_size=32, num_labels=3,
                             semantic_loss_ignore_index=ignore_index)
    model = SegformerForSemanticSegmentation(config).eval()
    pixels = torch.randn(2, 3, 61, 67)  # odd sizes: the logits (16 x 17) are upsampled non-trivially
    _, labels = batch(size=(61, 67), ignore=ignore_index)
    with torch.no_grad():
        out = model(pixel_values=pixels, labels=labels)
    assert out.logits.shape[-2:] != labels.shape[-2:]
    ours = CrossEntropyLoss(ignore_index)(out.logits, labels)
    assert torch.allclose(ours, out.loss, rtol=1e-6, atol=0), (ours, out.loss)
    assert parse_loss_spec("ce", ignore_index)(out.logits, labels).item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_weighted_cross_entropy_by_hand():
    logits, labels = batch()
    valid = labels != IGNORE
    nll = -F.log_softmax(logits, 1).gather(1, labels.clamp_max(2).unsqueeze(1)).squeeze(1)
    w = WEIGHTS[labels.clamp_max(2)] * valid
    expected = (nll * w).sum() / w.sum()
    loss = CrossEntropyLoss(IGNORE, class_weights=WEIGHTS)(logits, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", list(all_losses()))
def test_ignored_pixels_change_nothing(name):
    loss_fn = all_losses()[name]
    logits, labels = batch()
    logits.requires_grad_(True)
    loss = loss_fn(logits, labels)
    loss.backward()
    ignored = (labels == IGNORE).unsqueeze(1).expand_as(logits)
    assert (logits.grad[ignored] == 0).all() and logits.grad[~ignored].abs().sum() > 0
    changed = logits.detach().clone()
    changed[ignored] = torch.randn(int(ignored.sum())) * 100
    assert loss_fn(changed, labels).item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name", list(all_losses()))
def test_all_ignored_gives_zero_not_nan(name):
    logits, labels = batch()
    logits.requires_grad_(True)
    loss = all_losses()[name](logits, torch.full_like(labels, IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


@pytest.mark.parametrize("name", list(all_losses()))
def test_losses_upsample_to_the_labels(name):
    logits, labels = batch(h=6, w=5, size=(24, 20))
    up = F.interpolate(logits, size=(24, 20), mode="bilinear", align_corners=False)
    assert all_losses()[name](logits, labels).item() == pytest.approx(all_losses()[name](up, labels).item(), rel=1e-6)


def test_focal_at_gamma_zero_is_cross_entropy_and_by_hand():
    logits, labels = batch()
    for weights in (None, WEIGHTS):
        ce = CrossEntropyLoss(IGNORE, class_weights=weights)(logits, labels)
        focal = FocalLoss(IGNORE, class_weights=weights, gamma=0)(logits, labels)
        assert focal.item() == pytest.approx(ce.item(), rel=1e-6)
    # one pixel, p_y = 0.5: -(1 - 0.5)^2 log 0.5
    logits, labels = torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long)
    assert FocalLoss(IGNORE)(logits, labels).item() == pytest.approx(0.25 * math.log(2))


def test_dice_by_hand():
    # 4 pixels, 3 classes, class 2 absent from the labels (left out), pixel 3 ignored.
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    logits = probs.log().T.reshape(1, 3, 1, 4)
    labels = torch.tensor([[[0, 1, 1, IGNORE]]])
    dice0 = (2 * 0.7 + 1) / (0.7 + 0.6 + 0.1 + 1 + 1)
    dice1 = (2 * (0.3 + 0.8) + 1) / (0.2 + 0.3 + 0.8 + 2 + 1)
    expected = 1 - (dice0 + dice1) / 2
    assert DiceLoss(IGNORE)(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    perfect = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1, 2]]), 3).permute(0, 2, 1).reshape(1, 3, 1, 4) * 50.0
    assert DiceLoss(IGNORE, smooth=0)(perfect, labels).item() == pytest.approx(0, abs=1e-6)


def test_parse_loss_spec():
    logits, labels = batch()
    combined = parse_loss_spec("ce:1.0, dice:0.5")
    assert isinstance(combined, CombinedLoss) and combined.names == ["ce", "dice"] and combined.weights == [1.0, 0.5]
    expected = CrossEntropyLoss(IGNORE)(logits, labels) + 0.5 * DiceLoss(IGNORE)(logits, labels)
    assert combined(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert parse_loss_spec("Cross_Entropy").names == ["ce"] and parse_loss_spec("focal").weights == [1.0]
    weighted = parse_loss_spec("ce,focal,dice", ignore_index=7, class_weights=WEIGHTS, gamma=1.0)
    ce, focal, dice = weighted.losses
    assert torch.equal(ce.class_weights, WEIGHTS) and torch.equal(focal.class_weights, WEIGHTS)
    assert dice.class_weights is None and focal.gamma == 1.0 and {m.ignore_index for m in weighted.losses} == {7}
    assert repr(combined) == "CombinedLoss(ce:1,dice:0.5)"


@pytest.mark.parametrize("spec,message", [
    ("cee", "unknown loss 'cee' \\(choose from ce, dice, focal\\)"),
    ("", "unknown loss ''"),
    ("ce:abc", "weight 'abc' of ce is not a number"),
    ("ce:-1", "must be a positive number, got -1"),
    ("ce:0", "must be a positive number"),
    ("ce:nan", "must be a positive number"),
    ("ce:inf", "must be a positive number"),
    ("ce,dice,ce:2", "'ce' given twice"),
])
def test_parse_loss_spec_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_loss_spec(spec)


def test_class_weights_from_frequencies():
    counts = [600, 0, 300, 100]  # frequencies 0.6, -, 0.3, 0.1
    f = np.array([0.6, 0.3, 0.1])
    w = class_weights_from_frequencies(counts)  # inverse_sqrt, present classes averaging 1
    expected = 1 / np.sqrt(f)
    assert w.dtype == torch.float32 and w[1] == 1.0  # absent class: neutral weight
    assert np.allclose(w[[0, 2, 3]].numpy(), expected / expected.mean())
    w = class_weights_from_frequencies(counts, "inverse")
    assert np.allclose(w[[0, 2, 3]].numpy(), (1 / f) / (1 / f).mean())
    w = class_weights_from_frequencies(counts, "median_freq")
    assert np.allclose(w[[0, 2, 3]].numpy(), [0.5, 1.0, 3.0]) and w[1] == 1.0
    w = class_weights_from_frequencies(np.array([10, 20, 30, 40]), "median_freq")  # even count: mean of middles
    assert np.allclose(w.numpy(), 0.25 / np.array([0.1, 0.2, 0.3, 0.4]))
    w = class_weights_from_frequencies(torch.tensor(counts), "enet")
    assert np.allclose(w[[0, 2, 3]].numpy(), 1 / np.log(1.02 + f))


@pytest.mark.parametrize("counts,method,message", [
    ([1, 2], "log", "unknown method 'log'"),
    ([0, 0], "inverse", "no class has any pixel"),
    ([1, -2], "inverse", "non-negative"),
    ([[1, 2]], "inverse", "one count per class"),
    ([], "inverse", "one count per class"),
])
def test_class_weights_from_frequencies_errors(counts, method, message):
    with pytest.raises(ValueError, match=message):
        class_weights_from_frequencies(counts, method)


def test_pixel_counts():
    masks = [np.array([[0, 1], [IGNORE, 1]]), np.array([[2, 2], [2, 7]])]  # 7: outside 3 classes, not counted
    assert pixel_counts(masks, 3, IGNORE).tolist() == [1, 2, 3]


def test_load_class_weights(tmp_path):
    names = ["sky", "road", "car"]
    (tmp_path / "list.json").write_text("[1, 2.5, 0]")
    assert load_class_weights(tmp_path / "list.json", names).tolist() == [1.0, 2.5, 0.0]
    (tmp_path / "names.json").write_text(json.dumps({"car": 3, "road": 0.5}))
    assert load_class_weights(tmp_path / "names.json", names).tolist() == [1.0, 0.5, 3.0]  # sky not given: 1
    (tmp_path / "ids.json").write_text(json.dumps({"2": 3}))
    assert load_class_weights(tmp_path / "ids.json").tolist() == [1.0, 1.0, 3.0]
    (tmp_path / "w.txt").write_text("# one per class\n1.0\n\n2  # road\n0.25\n")
    assert load_class_weights(tmp_path / "w.txt", names).tolist() == [1.0, 2.0, 0.25]
    (tmp_path / "list.txt").write_text("[1, 2, 3]")  # JSON whatever the suffix
    assert load_class_weights(tmp_path / "list.txt").tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("text,message", [
    ("[1, 2", "not valid JSON"),
    ("[1, 2]", "2 class weights for 3 classes"),
    ('{"bus": 2}', "unknown class 'bus' \\(classes: sky, road, car\\)"),
    ("[1, -1, 2]", "weight -1 of class 1 must be a finite number >= 0"),
    ('[1, "a", 2]', "weight 'a' of class 1"),
    ("[0, 0, 0]", "every class weight is 0"),
    ("1\nabc\n2", "line 2: 'abc' is not a number"),
    ("", "must be a non-empty list"),
])
def test_load_class_weights_errors(tmp_path, text, message):
    path = tmp_path / "weights.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_class_weights(path, ["sky", "road", "car"])


def test_load_class_weights_missing_file_and_names_needed(tmp_path):
    with pytest.raises(ValueError, match="cannot read class weights"):
        load_class_weights(tmp_path / "nope.json")
    (tmp_path / "str.json").write_text('"1 2 3"')
    with pytest.raises(ValueError, match="must be a non-empty list"):
        load_class_weights(tmp_path / "str.json")
    (tmp_path / "names.json").write_text('{"sky": 2}')
    with pytest.raises(ValueError, match="need the class names"):
        load_class_weights(tmp_path / "names.json")
