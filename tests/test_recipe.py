"""The SegFormer training recipe: optimiser groups and the poly schedule (its augmentation:
test_transforms.py)."""

import pytest
import torch
from torch import nn

from segtune.training.optim import default_warmup_steps, is_head_parameter, param_groups, poly_schedule

IGNORE = 255


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
    from segtune.training.losses import parse_loss_spec

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
