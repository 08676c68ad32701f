"""Shared fixtures: a tiny SegFormer saved to disk and a tiny generated dataset."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_segformer(num_labels=3):
    """A SegFormer small enough to train in seconds on 2 CPU cores."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        num_labels=num_labels,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=32,
    )
    return SegformerForSemanticSegmentation(config)


def save_tiny_model(path, names, scale: int = 32):
    """A model folder as `segtune train` leaves one: a tiny SegFormer (seeded), its processor at short
    side `scale`, and labels.json with `names`."""
    import torch
    from transformers import SegformerImageProcessorPil

    from segtune.data.labels import LabelSet

    torch.manual_seed(0)
    tiny_segformer(len(names)).save_pretrained(path)
    SegformerImageProcessorPil(size={"shortest_edge": scale}, do_reduce_labels=False).save_pretrained(path)
    LabelSet.from_names(list(names)).to_json(path / "labels.json")
    return path


SERVE_NAMES = ["sky", "road", "car"]


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory):
    """The model `segtune serve` is tested with (test_serve.py, test_serve_live.py)."""
    return save_tiny_model(tmp_path_factory.mktemp("serve-model"), SERVE_NAMES)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved checkpoint with a 3-class head: training on other data re-heads it."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-segformer")
    tiny_segformer(3).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """The demo generator at a small size: ADE20K layout, 0 = other, id2label.json beside it."""
    from segtune.data.demo_data import generate_demo_dataset

    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=1, num_train=12, num_val=4, image_size=64)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def hub_online_state_restored():
    """segtune.hub.check_hub switches the process to the libraries' offline mode when the Hub cannot be
    reached (as here); each test starts from the process's own setting again."""
    import datasets.config
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    yield
    constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
