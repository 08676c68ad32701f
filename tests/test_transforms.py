"""The training recipe's augmentation: MMSeg's resize, crop (class balancing, padding), flip and
photometric distortion, the training transform they make up, and the generator each item draws from."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.data.transforms import (AugmentConfig, Normalize, Pad, PhotometricDistortion, RandomCrop,
                                     RandomHorizontalFlip, RandomResize, largest_class_share, train_transform)

IGNORE = 255
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def pair(w=48, h=40, values=(0, 1, 2, IGNORE), seed=0):
    """An image whose red channel encodes the mask (value * 50 % 256) and a mask of those values."""
    rng = np.random.default_rng(seed)
    mask = rng.choice(np.array(values), size=(h, w)).astype(np.int64)
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[..., 0] = mask * 50 % 256
    pixels[..., 1] = rng.integers(0, 256, (h, w))
    return Image.fromarray(pixels), mask


@pytest.mark.parametrize("seed", range(5))
def test_crop_and_flip_keep_image_and_mask_aligned(seed):
    rng = random.Random(seed)
    image, mask = pair()
    for step in (RandomCrop(32, IGNORE, cat_max_ratio=0.75), RandomHorizontalFlip(p=1.0)):
        image, mask = step(image, mask, rng)
    assert image.size == (32, 32) and mask.shape == (32, 32)
    assert (np.asarray(image)[..., 0] == mask * 50 % 256).all()


@pytest.mark.parametrize("seed", range(5))
def test_resize_and_crop_keep_mask_values(seed):
    rng = random.Random(seed)
    image, mask = pair()
    image, mask = RandomResize(40, (0.5, 2.0))(image, mask, rng)
    assert set(np.unique(mask)) <= {0, 1, 2, IGNORE} and mask.dtype == np.int64
    assert mask.shape == (image.height, image.width)
    resized, resized_mask = np.asarray(image), mask
    # The resized side is at most 48 * 2 = 96 pixels, so a 100-pixel crop always pads, in both directions.
    h, w = resized_mask.shape
    assert h < 100 and w < 100
    image, mask = RandomCrop(100, IGNORE)(image, mask, rng)
    assert set(np.unique(mask)) <= {0, 1, 2, IGNORE} and image.size == (100, 100)
    pixels = np.asarray(image)
    assert (mask[:h, :w] == resized_mask).all() and (pixels[:h, :w] == resized).all()  # nothing cropped away
    assert (mask[h:] == IGNORE).all() and (mask[:, w:] == IGNORE).all()
    assert (pixels[h:] == 0).all() and (pixels[:, w:] == 0).all()


def test_crop_pads_mask_with_ignore_index_and_image_with_black():
    image, mask = pair(w=20, h=10, values=(0, 1))  # smaller than the crop both ways: it must pad
    rng = random.Random(0)
    out_image, out_mask = RandomCrop(32, IGNORE)(image, mask, rng)
    assert out_image.size == (32, 32) and out_mask.shape == (32, 32)
    out_pixels = np.asarray(out_image)
    assert (out_mask[:10, :20] == mask).all() and (out_pixels[:10, :20] == np.asarray(image)).all()  # kept at top left
    assert (out_mask[10:] == IGNORE).all() and (out_mask[:, 20:] == IGNORE).all()
    assert (out_pixels[10:] == 0).all() and (out_pixels[:, 20:] == 0).all()
    assert (out_pixels[:10, :20, 1] > 0).any()  # the image's own pixels are not black: the check above means something
    # pad=False leaves padding to Pad, after normalising: 0 there is the mean colour.
    small_image, small_mask = RandomCrop(32, IGNORE, pad=False)(image, mask, rng)
    assert small_image.size == (20, 10) and (small_mask == mask).all()
    normalised, _ = Normalize(MEAN, STD)(small_image, small_mask)
    pixels, labels = Pad(32, IGNORE)(normalised, torch.from_numpy(small_mask))
    assert pixels.shape == (3, 32, 32) and labels.shape == (32, 32) and labels.dtype == torch.int64
    assert (pixels[:, 10:] == 0).all() and (pixels[:, :, 20:] == 0).all()
    assert torch.equal(pixels[:, :10, :20], normalised)
    assert (labels[10:] == IGNORE).all() and (labels[:, 20:] == IGNORE).all()
    assert (labels[:10, :20].numpy() == mask).all()


def stripe_mask():
    """96 x 96 of class 0 with a 10-pixel-wide vertical stripe of class 1: a random 32-pixel crop
    has class 0 over 75% unless it overlaps the stripe by 9+ columns (24 of 65 positions)."""
    mask = np.zeros((96, 96), dtype=np.int64)
    mask[:, 43:53] = 1
    mask[:8] = IGNORE  # ignored rows count for no class
    return mask


def crop_shares(cat_max_ratio, max_tries=10, seeds=range(200)):
    mask = stripe_mask()
    image = Image.fromarray((mask * 100 % 256).astype(np.uint8)).convert("RGB")
    shares = []
    for seed in seeds:
        _, crop = RandomCrop(32, IGNORE, cat_max_ratio, max_tries)(image, mask, random.Random(seed))
        assert crop.shape == (32, 32)
        shares.append(largest_class_share(crop, IGNORE))
    return np.array(shares)


def test_cat_max_ratio_crop_respects_the_ratio_when_it_can():
    plain = crop_shares(1.0)
    assert (plain >= 0.75).mean() > 0.5  # usually over 75% one class without the rule
    balanced = crop_shares(0.75)
    assert (balanced < 0.75).mean() > 0.97  # 10 tries at ~37% each fail 1% of the time
    assert (crop_shares(0.75, max_tries=200, seeds=range(50)) < 0.75).all()


def test_cat_max_ratio_gives_up_after_max_tries_on_one_class():
    image, mask = Image.new("RGB", (64, 64)), np.zeros((64, 64), dtype=np.int64)
    out_image, out_mask = RandomCrop(32, IGNORE, cat_max_ratio=0.75, max_tries=10)(image, mask, random.Random(0))
    assert out_image.size == (32, 32) and (out_mask == 0).all()


def test_largest_class_share_leaves_out_ignored_pixels():
    mask = np.array([IGNORE] * 70 + [0] * 20 + [1] * 10)
    assert largest_class_share(mask, IGNORE) == pytest.approx(2 / 3)
    assert largest_class_share(np.array([IGNORE, 3, 3]), IGNORE) == 1.0  # one class
    assert largest_class_share(np.array([IGNORE, IGNORE]), IGNORE) == 1.0  # none
    assert largest_class_share(np.array([-1, -1, 0, 5]), 5) == pytest.approx(2 / 3)  # negative ids work too


class Scripted:
    """Stands in for the transform's `random.Random` with answers given in advance."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def randint(self, a, b):
        return self.answers.pop(0)

    def uniform(self, a, b):
        return self.answers.pop(0)


def test_photometric_steps_are_mmseg_s():
    image = Image.fromarray(np.array([[[10, 100, 250], [200, 50, 0]]], dtype=np.uint8))
    mask = np.array([[1, IGNORE]])
    # brightness +20.7, contrast first x 1.5, no saturation, no hue.
    out, out_mask = PhotometricDistortion()(image, mask, Scripted(1, 20.7, 1, 1, 1.5, 0, 0))
    expected = np.clip(np.clip(np.asarray(image) + np.float32(20.7), 0, 255).astype(np.uint8) * np.float32(1.5),
                       0, 255).astype(np.uint8)  # clipped and truncated after each step
    assert (np.asarray(out) == expected).all() and out_mask is mask
    # hue +18 OpenCV units = +36 degrees: pure red becomes (255, 153, 0); saturation x 0.5 halves it.
    red = Image.new("RGB", (2, 2), (255, 0, 0))
    shifted = np.asarray(PhotometricDistortion()(red, mask, Scripted(0, 0, 0, 1, 18, 0))[0])[0, 0].astype(int)
    assert np.abs(shifted - [255, 153, 0]).max() <= 4  # PIL's hue steps are 1.4 degrees
    desaturated = np.asarray(PhotometricDistortion()(red, mask, Scripted(0, 0, 1, 0.5, 0, 0))[0])[0, 0].astype(int)
    assert np.abs(desaturated - [255, 128, 128]).max() <= 2


def test_photometric_changes_the_image_only_and_is_seeded():
    image, mask = pair(w=32, h=32)
    before = np.asarray(image).astype(float)
    changed = 0
    for seed in range(20):
        out, out_mask = PhotometricDistortion()(image, mask.copy(), random.Random(seed))
        assert (out_mask == mask).all() and out.size == image.size and out.mode == "RGB"
        assert (np.asarray(PhotometricDistortion()(image, mask, random.Random(seed))[0]) == np.asarray(out)).all()
        pixels = np.asarray(out).astype(float)
        changed += abs(pixels.mean() - before.mean()) > 1 or abs(pixels.std() - before.std()) > 1
    assert changed >= 15  # each of 4 steps has probability 0.5: all skipped 1 time in 16


def test_augment_config_defaults_and_off():
    cfg = AugmentConfig()
    assert (cfg.cat_max_ratio, cfg.photometric, cfg.flip, cfg.scale_range) == (0.75, True, True, (0.5, 2.0))
    off = AugmentConfig.off(base_size=64, crop_size=48)
    assert (off.base_size, off.crop_size, off.scale_range, off.flip, off.cat_max_ratio, off.photometric) == (
        64, 48, (1.0, 1.0), False, 1.0, False)
    names = [type(s).__name__ for s in train_transform(cfg, MEAN, STD, IGNORE).transforms]
    assert names == ["RandomResize", "RandomCrop", "RandomHorizontalFlip", "PhotometricDistortion", "Normalize", "Pad"]
    names = [type(s).__name__ for s in train_transform(off, MEAN, STD, IGNORE).transforms]
    assert names == ["RandomResize", "RandomCrop", "Normalize", "Pad"]
    assert train_transform(cfg, MEAN, STD, IGNORE).transforms[1].cat_max_ratio == 0.75


@pytest.mark.parametrize("seed", range(4))
def test_train_transform_output(seed):
    image, mask = pair(w=60, h=45, values=(0, 1, 2))
    transform = train_transform(AugmentConfig(base_size=40, crop_size=48), MEAN, STD, IGNORE)
    pixels, labels = transform(image, mask, random.Random(seed))
    assert pixels.shape == (3, 48, 48) and pixels.dtype == torch.float32
    assert labels.shape == (48, 48) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2, IGNORE}
    padded = labels == IGNORE  # only padding is ignored here: the mean colour, 0 once normalised
    assert (pixels[:, padded] == 0).all()
    rows, cols = padded.all(dim=1), padded.all(dim=0)  # padding fills whole rows at the bottom, columns at the right
    assert torch.equal(padded, rows[:, None] | cols[None, :])
    again, again_labels = transform(image, mask, random.Random(seed))
    assert torch.equal(again, pixels) and torch.equal(again_labels, labels)


@pytest.mark.parametrize("seed", range(3))
def test_train_transform_pads_a_crop_larger_than_the_resized_image(seed):
    """The resized image is at most 60 * 2 * 40 / 45 < 107 pixels a side, so a 112-pixel crop always
    pads: the resized image at the top left, the mean colour (0) and the ignore index around it."""
    image, mask = pair(w=60, h=45, values=(0, 1, 2))
    cfg = AugmentConfig(base_size=40, crop_size=112, flip=False, photometric=False)
    pixels, labels = train_transform(cfg, MEAN, STD, IGNORE)(image, mask, random.Random(seed))
    resized, resized_mask = RandomResize(40, cfg.scale_range)(image, mask, random.Random(seed))  # the same first draw
    h, w = resized_mask.shape
    assert pixels.shape == (3, 112, 112) and labels.shape == (112, 112) and h < 112 and w < 112
    expected, expected_labels = Normalize(MEAN, STD)(resized, resized_mask)
    assert torch.allclose(pixels[:, :h, :w], expected) and torch.equal(labels[:h, :w], expected_labels)
    assert (labels[:h, :w] != IGNORE).all()  # the data has no ignored pixel: all of them are padding
    assert (labels[h:] == IGNORE).all() and (labels[:, w:] == IGNORE).all()
    assert (pixels[:, h:] == 0).all() and (pixels[:, :, w:] == 0).all()


def test_a_pipeline_draws_only_from_the_generator_it_is_given():
    """Same `random.Random(k)`, same output; and the process-global `random` is neither read nor moved."""
    image, mask = pair(w=60, h=45, values=(0, 1, 2))
    transform = train_transform(AugmentConfig(base_size=40, crop_size=48), MEAN, STD, IGNORE)
    random.seed(1234)
    before = random.getstate()
    first, again = transform(image, mask, random.Random(7)), transform(image, mask, random.Random(7))
    assert random.getstate() == before
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    random.seed(99)  # another global state: the item's generator alone decides
    third = transform(image, mask, random.Random(7))
    assert torch.equal(third[0], first[0]) and torch.equal(third[1], first[1])
    other = transform(image, mask, random.Random(8))
    assert not torch.equal(other[0], first[0])  # and the seed does matter


def test_train_dataset_items_have_their_own_generator(demo_dataset):
    """Item k's augmentation comes from (seed, epoch, image) alone: the global `random` neither moves it
    nor is moved by it, and the next epoch's copy of an image is augmented anew."""
    from segtune.data.sources import load_data
    from segtune.training.trainer import TrainDataset

    data = load_data(demo_dataset)
    dataset = TrainDataset(data.train, train_transform(AugmentConfig(base_size=64, crop_size=48), MEAN, STD, IGNORE),
                           data.rules)
    n = len(dataset)
    random.seed(3)
    before = random.getstate()
    first = dataset[n + 1]
    assert random.getstate() == before
    random.seed(4)
    assert all(torch.equal(first[key], dataset[n + 1][key]) for key in ("pixel_values", "labels"))
    assert not torch.equal(first["pixel_values"], dataset[1]["pixel_values"])  # epoch 0's copy of image 1


def test_off_transform_is_a_plain_resize_and_crop():
    image, mask = pair(w=40, h=40)
    off = train_transform(AugmentConfig.off(base_size=40, crop_size=40), MEAN, STD, IGNORE)
    pixels, labels = off(image, mask, random.Random(0))
    expected, expected_labels = Normalize(MEAN, STD)(image, mask)
    assert torch.allclose(pixels, expected) and torch.equal(labels, expected_labels)
