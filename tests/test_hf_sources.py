"""Hugging Face `datasets` sources, built locally: save_to_disk folders, parquet files, streams."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from segtune.cli import main
from segtune.data.reading import MaskRules
from segtune.data.sources import load_data
from segtune.errors import SegtuneError

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
    assert "segtune: error: no-such-org/no-such-dataset: the Hugging Face Hub cannot be reached" in err
    assert len(err.strip().splitlines()) == 1


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
                 "--model", "mit-b0", "--labels", str(root / "disk" / "id2label.json")])
    assert code == 1 and "give --max_steps" in capsys.readouterr().err
    _dataset_dict().save_to_disk(str(tmp_path / "nolabels"))
    code = main(["train", "--data", str(tmp_path / "nolabels"), "--streaming", "--output-dir", str(tmp_path / "b"),
                 "--model", "mit-b0", "--max_steps", "2"])
    assert code == 1 and "needs its classes" in capsys.readouterr().err


def _shard_rows(rank, world, path, out):
    import torch.distributed as dist

    from segtune.data.sources import load_data

    dist.init_process_group("gloo", init_method=f"file://{out}.init", rank=rank, world_size=world)
    data = load_data(path, streaming=True)
    sums = {}
    for split, transform in (("val", lambda image: 0), ("train", lambda image, mask, rng: (0, mask))):
        sums[split] = [int(item["labels"].sum()) for item in data.stream.dataset(split, transform, MaskRules())]
    Path_ = __import__("pathlib").Path
    Path_(f"{out}.{rank}").write_text(json.dumps(sums))
    dist.destroy_process_group()


def test_streams_are_sharded_across_ranks(hf_sources, tmp_path):
    """Two gloo processes each read a disjoint share of the validation stream; together, every row once.

    The training stream stays whole on each rank: accelerate hands each rank its own batches of it
    (test_a_streamed_run_lets_each_rank_read_its_own_batches).
    """
    import torch.multiprocessing as mp

    root, expected = hf_sources
    out = tmp_path / "shard"
    mp.spawn(_shard_rows, args=(2, str(root / "disk"), str(out)), nprocs=2)
    seen = [json.loads((tmp_path / f"shard.{rank}").read_text()) for rank in range(2)]
    sums = {split: sorted(int(m.astype(np.int64).sum()) for m in expected[split]) for split in expected}
    assert all(s["val"] for s in seen) and len(seen[0]["val"]) + len(seen[1]["val"]) == 3
    assert sorted(seen[0]["val"] + seen[1]["val"]) == sums["validation"]
    assert sorted(seen[0]["train"]) == sorted(seen[1]["train"]) == sums["train"]


# ---------------------------------------------------------------- splits, streams and row names


def test_eval_split_none_splits_the_training_rows_as_the_seeds_do(hf_sources, tmp_path):
    """`--train-split 'train[:4]' --eval-split none`: the seeds' load_dataset + train_test_split, not validation."""
    from datasets import Dataset

    root, expected = hf_sources
    parts = Dataset.from_dict({"i": list(range(4))}).train_test_split(test_size=0.5, seed=3)
    data = load_data(root / "disk", train_split="train[:4]", eval_split="none", val_split=0.5, seed=3)
    assert data.val_is_split
    assert [s.index for s in data.train] == parts["train"]["i"] and [s.index for s in data.val] == parts["test"]["i"]
    assert np.array_equal(data.val[0].read_mask(MaskRules()), expected["train"][parts["test"]["i"][0]])
    assert len(load_data(root / "disk", train_split="train[:4]").val) == 3  # the default: the validation split
    (tmp_path / "data.yaml").write_text(f"dataset: {root / 'parquet'}\ntrain_split: train[:4]\neval_split: none\n")
    data = load_data(tmp_path / "data.yaml", val_split=0.5, seed=3)
    assert data.val_is_split and [s.index for s in data.val] == parts["test"]["i"]


def test_row_names_are_unique_per_stored_split(hf_sources, tmp_path, capsys):
    """Row 0 of train and row 0 of validation are different rows: no false 'in both' note; a real overlap gets one."""
    root, _ = hf_sources
    data = load_data(root / "disk", eval_split="validation[1:]")
    assert (data.train[0].stem, data.val[0].stem) == ("train_000000", "validation_000001")
    out = tmp_path / "inspect"
    assert main(["inspect", "--data", str(root / "disk"), "--output-dir", str(out)]) == 0
    assert not any("in both" in w for w in json.loads((out / "inspect.json").read_text())["warnings"])
    assert main(["inspect", "--data", str(root / "disk"), "--eval-split", "train[4:]+validation", "--output-dir",
                 str(out)]) == 0
    assert "2 name(s) in both training and validation, e.g. 'train_000004'" in json.loads(
        (out / "inspect.json").read_text())["warnings"]


def _stream_rows(data, split):
    """Each streamed row's mask, in order (no model inputs: the transforms pass the mask through)."""
    if split == "train":
        dataset = data.stream.dataset("train", lambda image, mask, rng: (0, mask), MaskRules())
    else:
        dataset = data.stream.dataset("val", lambda image: 0, MaskRules())
    return [np.asarray(item["labels"]) for item in dataset]


def test_a_stream_without_validation_holds_out_its_first_rows(hf_sources, tmp_path):
    root, expected = hf_sources
    single = root / "parquet" / "data" / "train-00000-of-00001.parquet"
    with pytest.raises(SegtuneError, match=r"a stream cannot be split by --val-split: .*--train-split 'train\[N:\]' "
                                           r"--eval-split 'train\[:N\]'"):
        load_data(single, streaming=True)
    data = load_data(single, streaming=True, train_split="train[2:]", eval_split="train[:2]")
    for split, rows in (("val", expected["train"][:2]), ("train", expected["train"][2:])):
        got = _stream_rows(data, split)
        assert len(got) == len(rows) and all(np.array_equal(a, b) for a, b in zip(got, rows)), split
    data = load_data(single, streaming=True, train_split="train[1:3]", eval_split="train[4:]")
    assert [len(_stream_rows(data, s)) for s in ("train", "val")] == [2, 2]
    with pytest.raises(SegtuneError, match=r"the validation rows 'train\[:2\]' are also training rows \('train'\)"):
        load_data(single, streaming=True, eval_split="train[:2]")
    with pytest.raises(SegtuneError, match=r"a streamed split takes .* not 'train\[10%:\]'"):
        load_data(root / "disk", streaming=True, train_split="train[10%:]")
    with pytest.raises(SegtuneError, match=r"split 'train\[3:3\]' selects no rows"):
        load_data(single, streaming=True, train_split="train[3:3]", eval_split="train[:3]")
    code = main(["train", "--data", str(single), "--streaming", "--output-dir", str(tmp_path / "run"),
                 "--labels", str(root / "disk" / "id2label.json"), "--max_steps", "1"])
    assert code == 1 and not (tmp_path / "run").exists()


def test_a_streamed_run_lets_each_rank_read_its_own_batches(hf_sources, tmp_path):
    """accelerate, as the Trainer prepares a stream for 2 ranks: dispatch_batches off, every row used once."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from segtune.training.arguments import training_arguments

    args = training_arguments(tmp_path, {}, streaming=True)
    assert args.accelerator_config.dispatch_batches is False
    assert training_arguments(tmp_path, {}).accelerator_config.dispatch_batches is None  # accelerate's default
    root, expected = hf_sources
    data = load_data(root / "disk", streaming=True)
    seen = []
    for rank in range(2):
        dataset = data.stream.dataset("train", lambda image, mask, rng: (0, int(mask.sum())), MaskRules(),
                                         shuffle_seed=4)
        loader = prepare_data_loader(DataLoader(dataset, batch_size=1), num_processes=2, process_index=rank,
                                     dispatch_batches=args.accelerator_config.dispatch_batches, put_on_device=False)
        seen.append([int(v) for batch in loader for v in batch["labels"]])
    assert len(seen[0]) == len(seen[1]) == 3
    assert sorted(seen[0] + seen[1]) == sorted(int(m.astype(np.int64).sum()) for m in expected["train"])


def test_parquet_counts_only_at_the_top_or_in_data(hf_sources, tmp_path):
    """A stray parquet export inside an image folder does not turn it into a `datasets` source."""
    import shutil

    from tests.helpers import make_flat

    root, _ = hf_sources
    parquet = root / "parquet" / "data" / "train-00000-of-00001.parquet"
    flat = make_flat(tmp_path / "flat", n=5)
    (flat / "exports").mkdir()
    shutil.copy(parquet, flat / "exports" / "train.parquet")
    shutil.copy(parquet, flat / "train.parquet")  # even at the top: images/ + annotations/ win
    data = load_data(flat)
    assert len(data.train) + len(data.val) == 5 and str(data.train[0].image).endswith(".png")
    deep = tmp_path / "deep" / "exports"
    deep.mkdir(parents=True)
    shutil.copy(parquet, deep / "train.parquet")
    with pytest.raises(SegtuneError, match=r"not a dataset folder.*parquet files \(at the top or in data/\)"):
        load_data(tmp_path / "deep")
    (tmp_path / "top").mkdir()
    shutil.copy(parquet, tmp_path / "top" / "train.parquet")
    assert len(load_data(tmp_path / "top", val_split=0.5).train) == 3


def test_an_image_over_the_warning_limit_is_refused_naming_its_row(tmp_path, monkeypatch):
    """Between Pillow's warning and error limits a row is refused as a file is, before it is decoded."""
    import datasets

    from segtune.data.pairs import decode_row
    from tests import test_bad_corpus

    bomb = test_bad_corpus.png_bomb(tmp_path / "bomb.png", side=10000)  # 100 megapixels: warns, not an error
    assert Image.MAX_IMAGE_PIXELS < 10000 ** 2 < 2 * Image.MAX_IMAGE_PIXELS
    rows = _rows(2, 0)
    rows["image"][1] = {"bytes": bomb.read_bytes(), "path": None}
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "table"))
    message = (rf"^{re.escape(str(tmp_path / 'table'))}\[train\] row 1: column 'image' is too large to decode "
               r"safely \(over 89 megapixels: Pillow's decompression-bomb limit\)$")
    data = load_data(tmp_path / "table", val_split=0.5)
    bad = next(s for s in data.train + data.val if s.index == 1)
    with pytest.raises(SegtuneError, match=message):
        bad.read(MaskRules())
    stream = load_data(tmp_path / "table", streaming=True, train_split="train[1:]", eval_split="train[:1]")
    with pytest.raises(SegtuneError, match=r"train\] row 0: an image is too large to decode safely"):
        _stream_rows(stream, "train")
    # an image decoded already (a caller's warning filter can be undone by another thread) is refused too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the 32 x 24 rows are 768 pixels
    with pytest.raises(SegtuneError, match=r"^t row 3: column 'image' is too large to decode safely \(over 0 mega"):
        decode_row({"image": Image.new("RGB", (W, H)), "mask": np.zeros((H, W))}, "image", "mask", "t row 3",
                   MaskRules())
