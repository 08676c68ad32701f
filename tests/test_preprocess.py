"""segtune/preprocess.py: the fast path gives the processor's own numbers, bit for bit."""

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.inference.preprocess import FastPreprocess, own_windows_off, resize_output_size
from segtune.models.architectures import ARCHITECTURES, OFFLINE_NAMES, make_processor, offline_config
from segtune.models.loading import IMAGENET_MEAN, IMAGENET_STD

SIZES = [(360, 480), (480, 360), (1, 7), (33, 17), (512, 512), (719, 1283), (100, 100)]  # (height, width)


def image(height, width, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))


def processors():
    """The processor segtune saves for every architecture (one offline name each)."""
    for arch in ARCHITECTURES.values():
        name = next(iter(arch.offline))
        yield arch.model_type, make_processor(arch, offline_config(name), 96, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("model_type,processor", list(processors()), ids=[t for t, _ in processors()])
def test_the_fast_path_equals_every_architectures_processor_bit_for_bit(model_type, processor):
    fast = FastPreprocess.of(processor)
    assert fast is not None, f"{type(processor).__name__} of {model_type} has no fast path"
    for i, (height, width) in enumerate(SIZES):
        img = image(height, width, seed=i)
        # EoMT's own windows off, as segtune calls it (segtune makes the windows)
        want = processor(images=img, return_tensors="pt", **own_windows_off(processor))["pixel_values"][0]
        got = fast(img)
        assert got.dtype == torch.float32 and got.shape == want.shape, (height, width)
        assert torch.equal(got, want), (model_type, height, width, (got - want).abs().max())
    img = image(300, 200)
    edge = {"shortest_edge": 77, **({"longest_edge": 150} if processor.size.longest_edge else {})}
    overrides = [{"height": 50, "width": 81}] + ([edge] if processor.size.shortest_edge else [])
    for size in overrides:  # TTA's scales and slide's aspect
        want = processor(images=img, return_tensors="pt", size=size, **own_windows_off(processor))["pixel_values"][0]
        assert torch.equal(fast(img, size), want), size


def test_the_output_size_is_transformers_own():
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.image_utils import ChannelDimension

    rng = np.random.default_rng(0)
    for height, width, edge in zip(rng.integers(1, 3000, 200), rng.integers(1, 3000, 200), rng.integers(1, 1200, 200)):
        want = get_resize_output_image_size(np.empty((3, height, width), np.uint8), size=int(edge),
                                            default_to_square=False, input_data_format=ChannelDimension.FIRST)
        assert resize_output_size(int(height), int(width), {"shortest_edge": int(edge)}) == tuple(want)


def test_processors_doing_more_keep_their_own_path():
    from transformers import MobileViTImageProcessorPil, SegformerImageProcessorPil

    assert FastPreprocess.of(MobileViTImageProcessorPil()) is None  # flips channels, crops the centre by default
    assert FastPreprocess.of(SegformerImageProcessorPil(do_resize=False)) is None
    odd = SegformerImageProcessorPil(size={"shortest_edge": 64}, image_mean=[0.5], image_std=[0.5])
    assert FastPreprocess.of(odd) is None
    assert FastPreprocess.of(object()) is None
    mobilevit = make_processor(OFFLINE_NAMES["mobilevit-xx-small"], offline_config("mobilevit-xx-small"), 96, [0] * 3,
                               [1] * 3)
    assert FastPreprocess.of(mobilevit) is not None  # as segtune saves it: no flip, no crop
