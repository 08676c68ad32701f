"""The SegFormer training recipe: optimiser groups, poly schedule, MMSeg's crop and photometric
distortion, and the training transform they make up."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segtune.optim import default_warmup_steps, is_head_parameter, param_groups, poly_schedule
from segtune.transforms import (
    AugmentConfig,
    Normalize,
    Pad,
    PhotometricDistortion,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResize,
    largest_class_share,
    train_transform,
)

IGNORE = 255
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def tiny_segformer(num_labels=3):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64],
                             num_attention_heads=[1, 2, 4, 8], decoder_hidden_size=32, num_labels=num_labels)
    return SegformerForSemanticSegmentation(config)


def group_of(groups):
    return {id(p): g for g in groups for p in g["params"]}


# ---------------------------------------------------------------- parameter groups


def test_every_trainable_parameter_is_in_exactly_one_group():
    model = tiny_segformer()
    model.segformer.stages[0].patch_embeddings.proj.weight.requires_grad_(False)  # a frozen one is left out
    groups = param_groups(model, lr=6e-5)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) == len(trainable) and set(ids) == trainable
    assert [g["name"] for g in groups] == ["encoder_decay", "encoder_no_decay", "head_decay", "head_no_decay"]


def test_segformer_groups_follow_the_mmseg_recipe():
    model = tiny_segformer()
    groups = param_groups(model, lr=6e-5, weight_decay=0.01, head_lr_mult=10.0)
    where = group_of(groups)
    norm_types = (nn.LayerNorm, nn.BatchNorm2d)
    norms = {id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)}
    assert norms  # the encoder's LayerNorms and the decode head's BatchNorm
    for name, p in model.named_parameters():
        group = where[id(p)]
        head = name.startswith("decode_head.")
        assert group["name"].startswith("head" if head else "encoder"), name
        assert group["lr"] == pytest.approx(6e-4 if head else 6e-5), name
        assert group["weight_decay"] == (0.0 if id(p) in norms else 0.01), name
    # The stage-final norms and the head's BatchNorm, whatever their names say.
    assert where[id(model.segformer.stages[3].layer_norm.weight)]["name"] == "encoder_no_decay"
    assert where[id(model.decode_head.batch_norm.bias)]["name"] == "head_no_decay"
    assert where[id(model.decode_head.classifier.bias)]["name"] == "head_decay"  # MMSeg decays biases


def test_bias_decay_off_moves_biases_to_no_decay():
    model = tiny_segformer()
    where = group_of(param_groups(model, lr=1.0, bias_decay=False))
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            assert where[id(p)]["weight_decay"] == 0.0, name


class Toy(nn.Module):
    """Names chosen to mislead a name-based rule: `normalizer` is a Linear, `ln` a LayerNorm."""

    def __init__(self, with_backbone=True):
        super().__init__()
        if with_backbone:
            self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.normalizer = nn.Linear(4, 4)
        self.ln = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 2)
        self.shared = self.head  # a second name for the same parameters


def test_norms_by_type_head_by_backbone_and_shared_parameters_once():
    model = Toy()
    groups = param_groups(model, lr=1.0, head_lr_mult=5.0)
    where = {name: group_of(groups)[id(p)]["name"] for name, p in model.named_parameters()}
    assert where == {
        "backbone.0.weight": "encoder_decay", "backbone.0.bias": "encoder_decay",
        "backbone.1.weight": "encoder_no_decay", "backbone.1.bias": "encoder_no_decay",
        "normalizer.weight": "head_decay", "normalizer.bias": "head_decay",  # outside the backbone
        "ln.weight": "head_no_decay", "ln.bias": "head_no_decay",
        "head.weight": "head_decay", "head.bias": "head_decay",
    }
    assert sum(len(g["params"]) for g in groups) == 10


def test_is_head_parameter():
    model = tiny_segformer()
    assert not is_head_parameter("segformer.encoder.block.0.0.attention.self.query.weight", model)
    assert is_head_parameter("decode_head.classifier.weight", model)
    bare = Toy(with_backbone=False)  # no backbone to be found: only the head prefixes count
    assert is_head_parameter("head.weight", bare) and not is_head_parameter("normalizer.weight", bare)


# ---------------------------------------------------------------- schedule


def expected_factor(step, warmup, total, power=1.0, ratio=1e-6):
    if step < warmup:
        return ratio + (1 - ratio) * step / warmup
    return (1 - min(1.0, (step - warmup) / (total - warmup))) ** power


def run_schedule(groups, steps, **kwargs):
    opt = torch.optim.AdamW(groups)
    sched = poly_schedule(opt, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr())
        opt.step()
        sched.step()
    return lrs


def test_poly_schedule_exact_values_and_head_ratio():
    p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    lrs = run_schedule([{"params": [p], "lr": 6e-5}, {"params": [q], "lr": 6e-4}], 130,
                       warmup_steps=10, total_steps=110)
    expected = {0: 1e-6, 5: 1e-6 + (1 - 1e-6) * 0.5, 10: 1.0, 35: 0.75, 60: 0.5, 109: 0.01, 110: 0.0, 129: 0.0}
    for step, factor in expected.items():
        assert lrs[step][0] == pytest.approx(6e-5 * factor, rel=1e-9, abs=1e-20), step
        assert lrs[step][1] == pytest.approx(6e-4 * factor, rel=1e-9, abs=1e-20), step
    for step, (enc, head) in enumerate(lrs[:110]):
        assert enc == pytest.approx(6e-5 * expected_factor(step, 10, 110), rel=1e-9)
        assert head == pytest.approx(10 * enc, rel=1e-9)


def test_poly_schedule_power_min_lr_no_warmup():
    p = nn.Parameter(torch.zeros(1))
    lrs = run_schedule([{"params": [p], "lr": 1.0}], 12, warmup_steps=0, total_steps=10, power=2.0)
    assert [round(lr[0], 12) for lr in lrs[:3]] == [1.0, 0.81, 0.64] and lrs[10][0] == 0.0
    q = nn.Parameter(torch.zeros(1))
    lrs = run_schedule([{"params": [p], "lr": 1.0}, {"params": [q], "lr": 10.0}], 12, warmup_steps=2,
                       total_steps=10, min_lr=0.1)
    assert lrs[6][0] == pytest.approx(0.1 + 0.9 * 0.5) and lrs[6][1] == pytest.approx(0.1 + 9.9 * 0.5)
    assert lrs[11][0] == pytest.approx(0.1) and lrs[11][1] == pytest.approx(0.1)  # min_lr is absolute


def test_poly_schedule_resumes_from_state_dict():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr": 1.0}])
    sched = poly_schedule(opt, warmup_steps=5, total_steps=50)
    for _ in range(20):
        opt.step()
        sched.step()
    state_opt, state_sched = opt.state_dict(), sched.state_dict()
    opt2 = torch.optim.AdamW([{"params": [p], "lr": 1.0}])
    sched2 = poly_schedule(opt2, warmup_steps=5, total_steps=50)
    opt2.load_state_dict(state_opt)
    sched2.load_state_dict(state_sched)
    assert sched2.get_last_lr() == sched.get_last_lr() == [pytest.approx(1 - 15 / 45)]


@pytest.mark.parametrize("warmup,total", [(10, 10), (-1, 10), (0, 0)])
def test_poly_schedule_rejects_bad_steps(warmup, total):
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        poly_schedule(opt, warmup_steps=warmup, total_steps=total)


def test_default_warmup_steps():
    assert [default_warmup_steps(t) for t in (160000, 15000, 14990, 1000, 10, 1)] == [1500, 1500, 1499, 100, 1, 0]
    assert all(default_warmup_steps(t) < t for t in range(1, 20000, 7))


def test_recipe_trains_a_tiny_segformer():
    from segtune.losses import parse_loss_spec

    model = tiny_segformer()
    opt = torch.optim.AdamW(param_groups(model, lr=3e-3))
    sched = poly_schedule(opt, warmup_steps=default_warmup_steps(30), total_steps=30)
    loss_fn = parse_loss_spec("ce:1,dice:0.5", ignore_index=IGNORE)
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 3, (2, 4, 4), generator=gen)  # 8 x 8 blocks, one class each, coded by colour
    labels = coarse.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
    pixels = nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    pixels += 0.3 * torch.randn(2, 3, 32, 32, generator=gen)
    labels[:, :4] = IGNORE
    losses = []
    for _ in range(30):
        loss = loss_fn(model(pixel_values=pixels).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------- transforms


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
    random.seed(seed)
    image, mask = pair()
    for step in (RandomCrop(32, IGNORE, cat_max_ratio=0.75), RandomHorizontalFlip(p=1.0)):
        image, mask = step(image, mask)
    assert image.size == (32, 32) and mask.shape == (32, 32)
    assert (np.asarray(image)[..., 0] == mask * 50 % 256).all()


@pytest.mark.parametrize("seed", range(5))
def test_resize_and_crop_keep_mask_values(seed):
    random.seed(seed)
    image, mask = pair()
    image, mask = RandomResize(40, (0.5, 2.0))(image, mask)
    assert set(np.unique(mask)) <= {0, 1, 2, IGNORE} and mask.dtype == np.int64
    assert mask.shape == (image.height, image.width)
    image, mask = RandomCrop(64, IGNORE)(image, mask)
    assert set(np.unique(mask)) <= {0, 1, 2, IGNORE} and image.size == (64, 64)


def test_crop_pads_mask_with_ignore_index_and_image_with_black():
    image, mask = pair(w=20, h=10, values=(0, 1))
    out_image, out_mask = RandomCrop(32, IGNORE)(image, mask)
    assert out_image.size == (32, 32) and out_mask.shape == (32, 32)
    assert (out_mask[:10, :20] == mask).all() and (out_mask[10:] == IGNORE).all() and (out_mask[:, 20:] == IGNORE).all()
    assert (np.asarray(out_image)[10:] == 0).all()
    # pad=False leaves padding to Pad, after normalising: 0 there is the mean colour.
    small_image, small_mask = RandomCrop(32, IGNORE, pad=False)(image, mask)
    assert small_image.size == (20, 10) and (small_mask == mask).all()
    pixels, labels = Pad(32, IGNORE)(*Normalize(MEAN, STD)(small_image, small_mask))
    assert pixels.shape == (3, 32, 32) and labels.shape == (32, 32) and labels.dtype == torch.int64
    assert (pixels[:, 10:] == 0).all() and (pixels[:, :, 20:] == 0).all()
    assert (labels[10:] == IGNORE).all() and (labels[:10, :20].numpy() == mask).all()


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
        random.seed(seed)
        _, crop = RandomCrop(32, IGNORE, cat_max_ratio, max_tries)(image, mask)
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
    random.seed(0)
    out_image, out_mask = RandomCrop(32, IGNORE, cat_max_ratio=0.75, max_tries=10)(image, mask)
    assert out_image.size == (32, 32) and (out_mask == 0).all()


def test_largest_class_share_leaves_out_ignored_pixels():
    mask = np.array([IGNORE] * 70 + [0] * 20 + [1] * 10)
    assert largest_class_share(mask, IGNORE) == pytest.approx(2 / 3)
    assert largest_class_share(np.array([IGNORE, 3, 3]), IGNORE) == 1.0  # one class
    assert largest_class_share(np.array([IGNORE, IGNORE]), IGNORE) == 1.0  # none
    assert largest_class_share(np.array([-1, -1, 0, 5]), 5) == pytest.approx(2 / 3)  # negative ids work too


class Scripted:
    """Stands in for the `random` module with answers given in advance."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def randint(self, a, b):
        return self.answers.pop(0)

    def uniform(self, a, b):
        return self.answers.pop(0)


def test_photometric_steps_are_mmseg_s(monkeypatch):
    import segtune.transforms as t

    image = Image.fromarray(np.array([[[10, 100, 250], [200, 50, 0]]], dtype=np.uint8))
    mask = np.array([[1, IGNORE]])
    # brightness +20.7, contrast first x 1.5, no saturation, no hue.
    monkeypatch.setattr(t, "random", Scripted(1, 20.7, 1, 1, 1.5, 0, 0))
    out, out_mask = PhotometricDistortion()(image, mask)
    expected = np.clip(np.clip(np.asarray(image) + np.float32(20.7), 0, 255).astype(np.uint8) * np.float32(1.5),
                       0, 255).astype(np.uint8)  # clipped and truncated after each step
    assert (np.asarray(out) == expected).all() and out_mask is mask
    # hue +18 OpenCV units = +36 degrees: pure red becomes (255, 153, 0); saturation x 0.5 halves it.
    red = Image.new("RGB", (2, 2), (255, 0, 0))
    monkeypatch.setattr(t, "random", Scripted(0, 0, 0, 1, 18, 0))
    shifted = np.asarray(PhotometricDistortion()(red, mask)[0])[0, 0].astype(int)
    assert np.abs(shifted - [255, 153, 0]).max() <= 4  # PIL's hue steps are 1.4 degrees
    monkeypatch.setattr(t, "random", Scripted(0, 0, 1, 0.5, 0, 0))
    assert np.abs(np.asarray(PhotometricDistortion()(red, mask)[0])[0, 0].astype(int) - [255, 128, 128]).max() <= 2


def test_photometric_changes_the_image_only_and_is_seeded():
    image, mask = pair(w=32, h=32)
    before = np.asarray(image).astype(float)
    changed = 0
    for seed in range(20):
        random.seed(seed)
        out, out_mask = PhotometricDistortion()(image, mask.copy())
        assert (out_mask == mask).all() and out.size == image.size and out.mode == "RGB"
        random.seed(seed)
        assert (np.asarray(PhotometricDistortion()(image, mask)[0]) == np.asarray(out)).all()
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
    random.seed(seed)
    pixels, labels = transform(image, mask)
    assert pixels.shape == (3, 48, 48) and pixels.dtype == torch.float32
    assert labels.shape == (48, 48) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2, IGNORE}
    padded = labels == IGNORE  # only padding is ignored here: the mean colour, 0 once normalised
    assert (pixels[:, padded] == 0).all()
    rows, cols = padded.all(dim=1), padded.all(dim=0)  # padding fills whole rows at the bottom, columns at the right
    assert torch.equal(padded, rows[:, None] | cols[None, :])
    random.seed(seed)
    again, again_labels = transform(image, mask)
    assert torch.equal(again, pixels) and torch.equal(again_labels, labels)


def test_off_transform_is_a_plain_resize_and_crop():
    image, mask = pair(w=40, h=40)
    random.seed(0)
    pixels, labels = train_transform(AugmentConfig.off(base_size=40, crop_size=40), MEAN, STD, IGNORE)(image, mask)
    expected, expected_labels = Normalize(MEAN, STD)(image, mask)
    assert torch.allclose(pixels, expected) and torch.equal(labels, expected_labels)
