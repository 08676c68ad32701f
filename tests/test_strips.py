"""Upsampling a strip of rows at a time (segtune/inference/strips.py) gives the whole image's scores
bit for bit: torch's own call against the strips, then the Segmenter's label maps in every mode, with
the strips forced down to single rows and turned off (probabilities: to the last bit of the softmax)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segtune.inference import strips
from segtune.inference.postprocess import upsampled_argmax
from segtune.inference.segmenter import Segmenter
from segtune.inference.strips import exact_on, row_strips, strip_plan, upsample_rows

from .conftest import save_tiny_model

SHAPES = [  # (classes, h, w, H, W): odd sizes, barely upsampled, wide and narrow
    (3, 128, 171, 1000, 1333), (150, 16, 21, 301, 397), (11, 90, 120, 361, 481), (5, 7, 9, 9, 2000),
    (19, 130, 17, 131, 129), (2, 2, 2, 1001, 17),
]


def test_this_torch_upsamples_as_the_strips_do():
    """The probe the commands rely on: where it fails, they fall back to one call (and this test says so)."""
    assert exact_on("cpu")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_strips_equal_one_interpolate_call_bit_for_bit(shape):
    channels, h, w, height, width = shape
    logits = torch.randn(channels, h, w, generator=torch.Generator().manual_seed(sum(shape))) * 6
    whole = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    for rows in (1, 2, 7, height, height + 5):  # single rows ... a strip larger than the image
        plan = row_strips(channels, (height, width), 4 * channels * width * rows)
        assert plan[0][0] == 0 and plan[-1][1] == height and all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
        parts = torch.cat([upsample_rows(logits, (height, width), lo, hi) for lo, hi in plan], 1)
        assert torch.equal(parts, whole), rows


def test_the_plan_keeps_one_call_where_strips_save_nothing_or_could_differ():
    assert strip_plan([(11, 90, 120)], (360, 480), "cpu", budget=2**30) == [(0, 360)]  # small enough
    assert strip_plan([(11, 90, 120)], (200, 100), "cpu", budget=1) == [(0, 200)]  # downsampling
    assert strip_plan([(11, 1, 5)], (200, 200), "cpu", budget=1) == [(0, 200)]  # one source row
    assert strip_plan([(11, 33, 17)], (34, 18), "cpu", budget=1) == [(0, 34)]  # small: torch's kernel differs
    assert len(strip_plan([(11, 90, 120)], (360, 480), "cpu", budget=11 * 480 * 4 * 10)) == 36
    # TTA's augmentations share one plan, sized by the most classes
    assert strip_plan([(3, 9, 9), (11, 12, 12)], (200, 100), "cpu", budget=11 * 100 * 4 * 50) == \
        [(0, 50), (50, 100), (100, 150), (150, 200)]


@pytest.mark.parametrize("classes", [3, 30, 150])
def test_upsampled_argmax_in_strips_equals_one_call(classes, monkeypatch):
    """Whole-mode prediction and evaluation: class pruning (from 24 classes) and the batch path too."""
    generator = torch.Generator().manual_seed(classes)
    # smooth logits, as a model's are, so pruning leaves some classes and ties stay rare
    logits = F.interpolate(torch.randn(2, classes, 6, 8, generator=generator) * 4, size=(24, 32), mode="bilinear")
    sizes = [(361, 483), (130, 129), (1, 1)]
    monkeypatch.setattr(strips, "STRIP_BYTES", 2**40)
    expected = [upsampled_argmax(logits, size) for size in sizes]
    monkeypatch.setattr(strips, "STRIP_BYTES", 1)  # one row at a time
    for size, want in zip(sizes, expected):
        assert torch.equal(upsampled_argmax(logits, size), want), size
        assert torch.equal(upsampled_argmax(logits[1], size), want[1]), size


def _photos(shared_data):
    camvid = Image.open(next(iter(sorted((shared_data / "camvid-mini" / "val").glob("*.png"))))).convert("RGB")
    return [camvid, camvid.resize((517, 203)), camvid.crop((0, 0, 97, 331))]  # real, stretched, tall and odd


@pytest.mark.parametrize("classes", [3, 11, 150])
def test_the_segmenter_gives_the_same_maps_and_probabilities_in_strips_in_every_mode(classes, shared_data, tmp_path,
                                                                                      monkeypatch):
    model = save_tiny_model(tmp_path / "model", [f"c{i}" for i in range(classes)], scale=64)
    images = _photos(shared_data)
    settings = [dict(mode="whole"), dict(mode="slide", crop_size=48, stride=32),
                dict(mode="whole", tta=True, scales=(0.75, 1.0, 1.5)),
                dict(mode="slide", crop_size=48, stride=32, tta=True, scales=(1.0, 1.25))]
    for options in settings:
        results = {}
        for budget in (2**40, 1):
            monkeypatch.setattr(strips, "STRIP_BYTES", budget)
            segmenter = Segmenter.from_pretrained(model, device="cpu", **options)
            results[budget] = (segmenter.predict(images), segmenter.predict(images, probabilities=True))
        (maps, with_probs), (strip_maps, strip_with_probs) = results[2**40], results[1]
        for i, image in enumerate(images):
            probs, strip_probs = with_probs[i][1], strip_with_probs[i][1]
            assert maps[i].shape == (image.height, image.width) and maps[i].dtype == np.int64
            assert np.array_equal(maps[i], with_probs[i][0]) and np.array_equal(strip_maps[i], strip_with_probs[i][0])
            # torch's softmax rounds the last bit by where a value falls in its vector loop, so the strips'
            # probabilities may differ there, as the whole image's do between 1 and 2 threads
            np.testing.assert_allclose(strip_probs, probs, rtol=0, atol=3e-7)
            assert (strip_probs != probs).mean() < 0.01, (options, i)
            if not options.get("tta"):  # the maps come from the scores, which are equal bit for bit
                assert np.array_equal(maps[i], strip_maps[i]), (options, i)
            else:  # averaged probabilities: equal wherever the best two classes are not tied to that last bit
                top = np.sort(probs, axis=0)[-2:]
                clear = top[1] - top[0] > 1e-6
                assert np.array_equal(maps[i][clear], strip_maps[i][clear]), (options, i)
                assert (maps[i] == strip_maps[i]).mean() > 0.99, (options, i)


def test_channels_last_logits_are_upsampled_as_contiguous_ones_on_every_path(monkeypatch):
    """The folded SegFormer head runs channels-last: torch's channels-last kernel rounds unlike the
    contiguous one the strips repeat, so every path makes the logits contiguous first."""
    logits = torch.randn(1, 11, 40, 52, generator=torch.Generator().manual_seed(3)) * 4
    last = logits.contiguous(memory_format=torch.channels_last)
    size = (401, 523)
    one = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    assert not torch.equal(F.interpolate(last, size=size, mode="bilinear", align_corners=False), one)  # the hazard
    for budget in (2**40, 1):
        monkeypatch.setattr(strips, "STRIP_BYTES", budget)
        assert torch.equal(upsampled_argmax(last[0], size), upsampled_argmax(logits[0], size))
        assert torch.equal(upsampled_argmax(last, size)[0], one[0].argmax(0))
