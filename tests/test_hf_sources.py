"""Hugging Face `datasets` sources, built locally: save_to_disk folders, parquet files, streams."""

import json

import numpy as np
import pytest
from PIL import Image

from segtune.cli import main
from segtune.data import MaskRules
from segtune.errors import SegtuneError
from segtune.sources import load_data

H, W = 24, 32


def _rows(n, seed, mask_key="annotation", image_key="image", as_arrays=False):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]
    masks = [rng.integers(0, 3, (H, W), dtype=np.uint8) for _ in range(n)]
    if not as_arrays:
        images = [Image.fromarray(a) for a in images]
        masks = [Image.fromarray(a, mode="L") for a in masks]
    else:
        masks = [m.tolist() for m in masks]
        images = [Image.fromarray(a) for a in images]
    return {image_key: images, mask_key: masks}


def _dataset_dict(n_train=6, n_val=3, **keys):
    import datasets

    image_key, mask_key = keys.get("image_key", "image"), keys.get("mask_key", "annotation")
    features = datasets.Features({image_key: datasets.Image(), mask_key: datasets.Image()})
    return datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(_rows(n_train, 0, **keys), features=features),
        "validation": datasets.Dataset.from_dict(_rows(n_val, 1, **keys), features=features),
    })


@pytest.fixture(scope="module")
def hf_sources(tmp_path_factory):
    """The same 6 + 3 rows saved both ways, plus the expected masks."""
    root = tmp_path_factory.mktemp("hf")
    dd = _dataset_dict()
    dd.save_to_disk(str(root / "disk"))
    (root / "parquet" / "data").mkdir(parents=True)
    for split, table in dd.items():
        table.to_parquet(str(root / "parquet" / "data" / f"{split}-00000-of-00001.parquet"))
    for folder in ("disk", "parquet"):
        (root / folder / "id2label.json").write_text(json.dumps({"0": "road", "1": "car", "2": "tree"}))
    expected = {split: [np.array(m) for m in _rows(n, seed)["annotation"]] for split, n, seed in
                (("train", 6, 0), ("validation", 3, 1))}
    return root, expected


@pytest.mark.parametrize("folder", ["disk", "parquet"])
def test_save_to_disk_and_parquet_folders_give_the_rows(hf_sources, folder):
    root, expected = hf_sources
    data = load_data(root / folder)
    assert (len(data.train), len(data.val), data.val_is_split) == (6, 3, False)
    assert data.labels.names == ("road", "car", "tree")  # id2label.json beside the data
    for sample, mask in zip(data.val, expected["validation"]):
        image, ids = sample.read(MaskRules())
        assert image.size == (W, H) and image.mode == "RGB"
        assert np.array_equal(ids, mask)
    assert "row 2" in data.val[2].name


def test_split_slicing_and_the_seeds_split(hf_sources):
    root, expected = hf_sources
    data = load_data(root / "disk", train_split="train[:4]", eval_split="validation[1:]")
    assert (len(data.train), len(data.val)) == (4, 2)
    assert np.array_equal(data.val[0].read_mask(MaskRules()), expected["validation"][1])


def test_a_single_parquet_file_is_split_like_the_seeds(hf_sources):
    from datasets import Dataset

    root, expected = hf_sources
    data = load_data(root / "parquet" / "data" / "train-00000-of-00001.parquet", val_split=0.5, seed=3)
    parts = Dataset.from_dict({"i": list(range(6))}).train_test_split(test_size=0.5, seed=3)
    assert data.val_is_split and [s.index for s in data.val] == parts["test"]["i"]
    assert np.array_equal(data.val[0].read_mask(MaskRules()), expected["train"][parts["test"]["i"][0]])


def test_columns_found_or_named(tmp_path):
    _dataset_dict(image_key="pixel_values", mask_key="label").save_to_disk(str(tmp_path / "a"))
    data = load_data(tmp_path / "a")
    assert (data.train[0].image_column, data.train[0].label_column) == ("pixel_values", "label")
    _dataset_dict(image_key="photo", mask_key="classes").save_to_disk(str(tmp_path / "b"))
    with pytest.raises(SegtuneError, match=r"no image column among photo, classes; name it with --image-column"):
        load_data(tmp_path / "b")
    data = load_data(tmp_path / "b", image_column="photo", label_column="classes")
    assert data.train[0].read_mask(MaskRules()).shape == (H, W)
    with pytest.raises(SegtuneError, match=r"no column 'mask' \(columns: photo, classes\)"):
        load_data(tmp_path / "b", image_column="photo", label_column="mask")


def test_masks_stored_as_nested_lists(tmp_path):
    import datasets

    rows = _rows(4, 5, mask_key="mask", as_arrays=True)
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Sequence(datasets.Sequence(
        datasets.Value("uint8")))})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "lists"))
    data = load_data(tmp_path / "lists", val_split=0.5)
    sample = data.train[0]
    assert np.array_equal(sample.read_mask(MaskRules()), np.array(rows["mask"][sample.index]))


def test_bad_split_and_unknown_hub_name_are_one_line_errors(hf_sources, capsys, monkeypatch):
    import datasets
    import huggingface_hub

    root, _ = hf_sources
    with pytest.raises(SegtuneError, match=r"bad split 'training\[:3\]'.*splits: train, validation"):
        load_data(root / "disk", train_split="training[:3]")
    # offline mode fails at once instead of retrying the network (read at import, so patched)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code = main(["inspect", "--data", "no-such-org/no-such-dataset", "--output-dir", str(root / "x")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "segtune: error: no-such-org/no-such-dataset: cannot load dataset" in err


def test_folder_options_are_refused_for_datasets_and_back(hf_sources, tmp_path):
    from tests.helpers import make_flat

    root, _ = hf_sources
    with pytest.raises(SegtuneError, match="--train-split applies to `datasets` sources"):
        load_data(make_flat(tmp_path / "flat", n=4), train_split="train[:2]")


def test_yaml_data_file_names_a_dataset_with_label_map(hf_sources, tmp_path):
    root, expected = hf_sources
    (tmp_path / "data.yaml").write_text(
        f"dataset: {root / 'disk'}\neval_split: validation[:2]\nnames: [road, vehicle]\nlabel_map: {{2: 255}}\n"
    )
    data = load_data(tmp_path / "data.yaml")
    assert len(data.val) == 2 and data.labels.names == ("road", "vehicle")
    mask = data.val[0].read_mask(data.rules)
    want = expected["validation"][0].astype(np.int64)
    want[want == 2] = 255
    assert np.array_equal(mask, want)


def test_train_evaluate_and_stream_through_the_cli(hf_sources, tiny_model_dir, tmp_path):
    root, _ = hf_sources
    common = ["--model", str(tiny_model_dir), "--base-size", "32", "--crop-size", "32", "--max_steps", "2",
              "--eval_steps", "2", "--dataloader_num_workers", "0", "--disable_tqdm", "true"]
    out = tmp_path / "run"
    assert main(["train", "--data", str(root / "parquet"), "--output-dir", str(out), *common]) == 0
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["train"]) == 6 and splits["val"][0].endswith("[validation] row 0")
    assert json.loads((out / "config.json").read_text())["id2label"]["1"] == "car"
    assert main(["evaluate", "--model", str(out), "--data", str(root / "disk"), "--output-dir",
                 str(tmp_path / "ev")]) == 0
    scored = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert scored["num_images"] == 3
    assert scored["mean_iou"] == pytest.approx(json.loads((out / "metrics.json").read_text())["mean_iou"])

    streamed = tmp_path / "stream"
    assert main(["train", "--data", str(root / "parquet"), "--streaming", "--output-dir", str(streamed),
                 *common]) == 0
    metrics = json.loads((streamed / "metrics.json").read_text())
    assert metrics["step"] == 2 and 0 <= metrics["mean_iou"] <= 1


def test_streaming_needs_max_steps_and_classes(hf_sources, tmp_path, capsys):
    root, _ = hf_sources
    code = main(["train", "--data", str(root / "disk"), "--streaming", "--output-dir", str(tmp_path / "a"),
                 "--labels", str(root / "disk" / "id2label.json")])
    assert code == 1 and "give --max_steps" in capsys.readouterr().err
    _dataset_dict().save_to_disk(str(tmp_path / "nolabels"))
    code = main(["train", "--data", str(tmp_path / "nolabels"), "--streaming", "--output-dir", str(tmp_path / "b"),
                 "--max_steps", "2"])
    assert code == 1 and "needs its classes" in capsys.readouterr().err


def _shard_rows(rank, world, path, out):
    import torch.distributed as dist

    from segtune.sources import load_data

    dist.init_process_group("gloo", init_method=f"file://{out}.init", rank=rank, world_size=world)
    data = load_data(path, streaming=True)
    dataset = data.streaming.dataset("train", lambda image, mask: (0, mask.sum()), MaskRules())
    Path_ = __import__("pathlib").Path
    Path_(f"{out}.{rank}").write_text(json.dumps([int(item["labels"]) for item in dataset]))
    dist.destroy_process_group()


def test_streams_are_sharded_across_ranks(hf_sources, tmp_path):
    """Two gloo processes each read a disjoint half of the stream; together, every row once."""
    import torch.multiprocessing as mp

    root, expected = hf_sources
    out = tmp_path / "shard"
    mp.spawn(_shard_rows, args=(2, str(root / "disk"), str(out)), nprocs=2)
    seen = [json.loads((tmp_path / f"shard.{rank}").read_text()) for rank in range(2)]
    assert all(seen) and len(seen[0]) + len(seen[1]) == 6
    assert sorted(seen[0] + seen[1]) == sorted(int(m.astype(np.int64).sum()) for m in expected["train"])
