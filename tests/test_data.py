"""Finding, splitting, reading and checking image/mask pairs (segtune.data), on tiny datasets."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.data.checks import checked_labels
from segtune.data.labels import LabelSet, load_labels
from segtune.data.reading import MaskRules, read_mask, reduce_labels
from segtune.data.sources import load_data
from segtune.errors import SegtuneError

from .helpers import SHARED_DATA, make_ade, make_flat, stems, write_image, write_mask, write_pairs

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def expected_split(n, test_size, seed):
    """The seeds' split computed independently: indices into the sorted pairs."""
    from datasets import Dataset

    parts = Dataset.from_dict({"i": range(n)}).train_test_split(test_size=test_size, seed=seed)
    return list(parts["train"]["i"]), list(parts["test"]["i"])


# ---------------------------------------------------------------- layouts


def test_ade20k_layout_uses_its_own_train_and_val(tmp_path):
    root = make_ade(tmp_path / "ade", n_train=6, n_val=3)
    data = load_data(root, seed=123)
    assert stems(data.train) == [f"ADE_train_{i:08d}" for i in range(6)]
    assert stems(data.val) == [f"ADE_val_{i:08d}" for i in range(3)]
    for s in data.train + data.val:
        assert s.mask.stem == s.image.stem and s.mask.suffix == ".png" and s.image.suffix == ".jpg"
        assert s.image.parent.name == s.mask.parent.name  # training with training, validation with validation
    assert data.val_is_split is False
    assert data.labels is None and data.reduce_labels is False and data.ignore_index == 255
    assert data.source == root


def test_flat_layout_is_split_as_train_test_split_does(tmp_path):
    n = 10
    root = make_flat(tmp_path / "flat", n=n)
    names = [f"img_{i:02d}" for i in range(n)]
    splits = {}
    for seed in (0, 1, 42):
        data = load_data(root, val_split=0.2, seed=seed)
        train_idx, val_idx = expected_split(n, 0.2, seed)
        assert stems(data.train) == [names[i] for i in train_idx]
        assert stems(data.val) == [names[i] for i in val_idx]
        assert len(data.val) == 2 and len(data.train) == 8
        assert sorted(stems(data.train) + stems(data.val)) == names  # a partition
        assert all(s.mask.stem == s.image.stem for s in data.train + data.val)
        assert data.val_is_split is True
        splits[seed] = (stems(data.train), stems(data.val))
    assert len({json.dumps(v) for v in splits.values()}) == 3  # the seed changes the split
    again = load_data(root, val_split=0.2, seed=1)
    assert (stems(again.train), stems(again.val)) == splits[1]  # and a fixed seed repeats it


def test_flat_layout_val_split_share(tmp_path):
    root = make_flat(tmp_path / "flat", n=10)
    data = load_data(root, val_split=0.5, seed=7)
    train_idx, val_idx = expected_split(10, 0.5, 7)
    assert [int(s[-2:]) for s in stems(data.val)] == val_idx and len(data.val) == 5


def test_ade20k_layout_without_validation_is_split(tmp_path):
    root = tmp_path / "ade"
    write_pairs(root / "images" / "training", root / "annotations" / "training", [f"t{i}" for i in range(6)])
    data = load_data(root, seed=3)
    train_idx, val_idx = expected_split(6, 0.2, 3)
    assert stems(data.val) == [f"t{i}" for i in val_idx] and stems(data.train) == [f"t{i}" for i in train_idx]
    assert data.val_is_split is True


@pytest.mark.parametrize("name", ["id2label.json", "labels.json"])
def test_label_file_beside_a_folder_dataset_is_used(tmp_path, name):
    root = make_flat(tmp_path / "flat", n=4)
    (root / name).write_text(json.dumps({"0": "background", "1": "cat", "2": "dog"}))
    data = load_data(root)
    assert data.labels is not None and data.labels.names == ("background", "cat", "dog")
    labels = checked_labels(data, None)
    assert labels.names == ("background", "cat", "dog")


# ---------------------------------------------------------------- YAML data files


def test_yaml_with_folder_and_masks_keys(tmp_path, monkeypatch):
    data_root = tmp_path / "somewhere" / "data"
    write_pairs(data_root / "imgs", data_root / "masks", [f"a{i}" for i in range(5)], ".jpg")
    write_pairs(data_root / "vimgs", data_root / "vmasks", [f"b{i}" for i in range(2)])
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    yaml_path = config_dir / "set.yaml"
    yaml_path.write_text(
        "path: ../somewhere/data\n"
        "train: imgs\ntrain_masks: masks\nval: vimgs\nval_masks: vmasks\n"
        "names: [sky, road, car]\nignore_index: 7\nreduce_labels: true\n"
    )
    monkeypatch.chdir(tmp_path / "somewhere")  # `path:` is relative to the YAML file, not the working folder
    data = load_data(yaml_path)
    assert stems(data.train) == [f"a{i}" for i in range(5)]
    assert stems(data.val) == ["b0", "b1"]
    assert data.train[0].image.parent == (data_root / "imgs").resolve()
    assert data.val[0].mask.parent == (data_root / "vmasks").resolve()
    assert data.val_is_split is False
    assert data.labels.names == ("sky", "road", "car")
    assert data.ignore_index == 7 and data.reduce_labels is True
    assert data.source == yaml_path


def test_yaml_with_nested_entries_names_dict_and_no_val_is_split(tmp_path):
    write_pairs(tmp_path / "d" / "x", tmp_path / "d" / "y", [f"p{i}" for i in range(10)])
    yaml_path = tmp_path / "d" / "set.yml"  # no path: -> the YAML file's folder
    yaml_path.write_text("train:\n  images: x\n  masks: y\nnames:\n  2: car\n  0: sky\n  1: road\n")
    data = load_data(yaml_path, val_split=0.2, seed=5)
    train_idx, val_idx = expected_split(10, 0.2, 5)
    assert stems(data.train) == [f"p{i}" for i in train_idx]
    assert stems(data.val) == [f"p{i}" for i in val_idx]
    assert data.val_is_split is True
    assert data.labels.names == ("sky", "road", "car")  # dict keys in id order
    assert data.ignore_index == 255 and data.reduce_labels is False


def test_yaml_names_dict_with_string_keys_and_colours(tmp_path):
    write_pairs(tmp_path / "x", tmp_path / "y", ["p0", "p1", "p2"])
    yaml_path = tmp_path / "set.yaml"
    yaml_path.write_text(
        "train: x\ntrain_masks: y\nval: x\nval_masks: y\n"
        "names: {'1': b, '0': a}\ncolors: [[1, 2, 3], [4, 5, 6]]\n"
    )
    data = load_data(yaml_path)
    assert data.labels.names == ("a", "b")
    assert data.labels.colors.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_yaml_split_without_masks_is_an_error(tmp_path):
    write_pairs(tmp_path / "x", tmp_path / "y", ["p0", "p1"])
    (tmp_path / "set.yaml").write_text("train: x\n")
    with pytest.raises(SegtuneError, match=r"set\.yaml: 'train' needs an image folder and a mask folder"):
        load_data(tmp_path / "set.yaml")


# ---------------------------------------------------------------- reading masks


def test_reduce_labels_exact():
    mask = np.array([[0, 1, 2, 3], [150, 254, 255, 0]], dtype=np.uint8)
    out = reduce_labels(mask)
    assert out.tolist() == [[255, 0, 1, 2], [149, 253, 255, 255]]
    assert reduce_labels(mask, ignore_index=99).tolist() == [[99, 0, 1, 2], [149, 253, 99, 99]]
    assert mask.tolist() == [[0, 1, 2, 3], [150, 254, 255, 0]]  # input untouched


def test_read_mask_with_and_without_reduction(tmp_path):
    values = np.array([[0, 1, 2, 3], [150, 254, 255, 0]], dtype=np.uint8)
    path = write_mask(tmp_path / "m.png", values)
    plain = read_mask(path)
    assert plain.dtype == np.int64 and plain.tolist() == values.tolist()
    assert read_mask(path, MaskRules(reduce_labels=True)).tolist() == [[255, 0, 1, 2], [149, 253, 255, 255]]
    assert read_mask(path, MaskRules(reduce_labels=True, ignore_index=11)).tolist() == [[11, 0, 1, 2], [149, 253, 11, 11]]


def test_16_bit_png_mask(tmp_path):
    values = np.array([[0, 1, 300], [1000, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "m16.png")
    assert Image.open(tmp_path / "m16.png").mode.startswith("I")  # really 16-bit on disk
    assert read_mask(tmp_path / "m16.png").tolist() == values.tolist()


def test_palette_mask_gives_its_indices(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 5]], dtype=np.uint8)
    img = Image.fromarray(indices, mode="P")
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9, 200, 100, 50]
    img.putpalette(palette + [0] * (768 - len(palette)))
    img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert read_mask(tmp_path / "p.png").tolist() == indices.tolist()


def test_grey_mask_saved_as_rgb_is_an_index_mask(tmp_path):
    values = np.array([[0, 1, 2], [7, 255, 3]], dtype=np.uint8)
    Image.fromarray(np.stack([values] * 3, axis=-1), mode="RGB").save(tmp_path / "g.png")
    assert read_mask(tmp_path / "g.png").tolist() == values.tolist()
    assert read_mask(tmp_path / "g.png", MaskRules(reduce_labels=True)).tolist() == [[255, 0, 1], [6, 255, 2]]


def test_colour_mask_is_refused(tmp_path):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    with pytest.raises(SegtuneError, match=r"c\.png: mask is a colour \(RGB\) image"):
        read_mask(tmp_path / "c.png")


# ---------------------------------------------------------------- checking and classes


def _dataset(tmp_path, train_masks, val_masks, name="ds"):
    """Flat-free dataset from explicit mask arrays (YAML, so the split is fixed)."""
    root = tmp_path / name
    for split, masks in (("train", train_masks), ("val", val_masks)):
        for i, values in enumerate(masks):
            values = np.asarray(values, dtype=np.uint8)
            write_image(root / f"{split}_img" / f"{split}{i}.png", seed=i, size=(values.shape[1], values.shape[0]))
            write_mask(root / f"{split}_ann" / f"{split}{i}.png", values)
    (root / "data.yaml").write_text("train: train_img\ntrain_masks: train_ann\nval: val_img\nval_masks: val_ann\n")
    return load_data(root / "data.yaml")


def test_classes_are_numbered_from_the_largest_id(tmp_path):
    data = _dataset(tmp_path, [[[0, 1], [2, 2]], [[0, 4], [1, 1]]], [[[0, 3], [3, 3]]])
    labels = checked_labels(data, None)
    assert labels.names == tuple(f"class_{i}" for i in range(5))
    assert data.mask_max == {"train": 4, "val": 3}


def test_ignore_index_never_counts_as_a_class(tmp_path):
    data = _dataset(tmp_path, [[[0, 255], [1, 255]]], [[[255, 2], [0, 0]]])
    assert len(checked_labels(data, None)) == 3
    data = _dataset(tmp_path, [[[0, 11], [1, 11]]], [[[11, 2], [0, 11]]], name="ds11")
    data.ignore_index = 11
    assert len(checked_labels(data, None)) == 3
    assert len(checked_labels(data, LabelSet.numbered(3))) == 3  # 11 is not "outside the 3 classes"


def test_only_ignored_pixels_is_an_error(tmp_path):
    data = _dataset(tmp_path, [[[255, 255]]], [[[255, 255]]])
    with pytest.raises(SegtuneError, match="every mask pixel is ignored"):
        checked_labels(data, None)


def test_given_labels_reject_ids_outside_naming_the_file(tmp_path):
    data = _dataset(tmp_path, [[[0, 1], [2, 2]], [[0, 3], [1, 1]]], [[[0, 2], [1, 1]]])
    with pytest.raises(SegtuneError) as info:
        checked_labels(data, LabelSet.numbered(3))
    message = str(info.value)
    assert "train1.png" in message and "class id 3" in message and "outside the 3 classes" in message
    assert "train0.png" not in message and "val0.png" not in message
    assert "--reduce-labels" in message  # id == num_classes: the off-by-one of unreduced data
    assert checked_labels(data, LabelSet.numbered(4)).names == LabelSet.numbered(4).names


def test_data_labels_are_checked_too(tmp_path):
    make_flat(tmp_path / "flat", n=4, num_classes=3)
    (tmp_path / "flat" / "id2label.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(SegtuneError, match="outside the 2 classes"):
        checked_labels(load_data(tmp_path / "flat"), None)
    # given labels win over the file beside the data
    assert len(checked_labels(load_data(tmp_path / "flat"), LabelSet.numbered(3))) == 3


def test_unreduced_ade_data_hints_at_reduce_labels(tmp_path):
    ade = load_labels("ade20k")
    data = _dataset(tmp_path, [[[0, 1], [150, 150]]], [[[0, 3], [12, 150]]])
    with pytest.raises(SegtuneError, match="--reduce-labels"):
        checked_labels(data, ade)
    data.reduce_labels = True
    assert checked_labels(data, ade) is ade
    assert data.mask_max == {"train": 149, "val": 149}


def test_far_outside_ids_get_no_reduce_hint(tmp_path):
    data = _dataset(tmp_path, [[[0, 9]]], [[[0, 1]]])
    with pytest.raises(SegtuneError) as info:
        checked_labels(data, LabelSet.numbered(3))
    assert "class id 9" in str(info.value) and "--reduce-labels" not in str(info.value)


def test_check_reports_every_bad_file_one_line_each(tmp_path):
    data = _dataset(tmp_path, [[[0, 5]], [[0, 1]], [[6, 1]]], [[[0, 7]]])
    with pytest.raises(SegtuneError) as info:
        checked_labels(data, LabelSet.numbered(3))
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert [Path(line.split(":")[0]).name for line in lines] == ["train0.png", "train2.png", "val0.png"]


def test_check_only_the_asked_splits(tmp_path):
    data = _dataset(tmp_path, [[[0, 9]]], [[[0, 1]]])
    checked_labels(data, LabelSet.numbered(3), splits=("val",))
    assert data.mask_max == {"val": 1}


# ---------------------------------------------------------------- real data (../shared/data)


@pytest.fixture
def shared():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


def test_camvid_mini_yaml(shared):
    if not (shared / "camvid-mini").is_dir():
        pytest.skip("../shared/data/camvid-mini is absent")
    data = load_data(PROJECT_ROOT / "examples" / "camvid-mini.yaml")
    assert len(data.train) == 92 and len(data.val) == 26
    assert data.val_is_split is False
    assert data.ignore_index == 11 and data.reduce_labels is False
    assert data.labels.names[:3] == ("Sky", "Building", "Pole") and len(data.labels) == 11
    assert all(s.image.name == s.mask.name for s in data.train + data.val)
    assert data.train[0].image.parent == (shared / "camvid-mini" / "train").resolve()
    labels = checked_labels(data, None)
    assert labels is data.labels and len(labels) == 11
    assert data.mask_max == {"train": 10, "val": 10}


def test_ade20k_sample_as_flat_folder(shared):
    root = shared / "ade20k-sample"
    if not root.is_dir():
        pytest.skip("../shared/data/ade20k-sample is absent")
    data = load_data(root, val_split=0.2, seed=42)
    assert data.val_is_split is True and data.labels is None
    assert len(data.train) == 2 and len(data.val) == 1
    assert sorted(stems(data.train + data.val)) == [f"ADE_val_0000000{i}" for i in (1, 2, 3)]
    data.reduce_labels = True  # as --reduce-labels does
    labels = checked_labels(data, load_labels("ade20k"))
    assert len(labels) == 150 and labels.names[0] == "wall"
    assert max(data.mask_max.values()) <= 149


# ---------------------------------------------------------------- malformed data files and splits


@pytest.mark.parametrize(
    "body, message",
    [
        ("names: {0: a, 2: c}\n", r"names: ids must be exactly 0\.\.1: missing id 1"),  # not silently renumbered
        ("names: {a: x}\n", "non-integer id 'a'"),
        ("names: sky\n", "'names' must be a list"),  # not the classes 's', 'k', 'y'
        ("names: [a, b]\ncolors: [[1, 2, 3]]\n", "bad 'colors'"),
        ("ignore_index: none\n", "'ignore_index' must be an integer"),
        ("reduce_labels: 'false'\n", "'reduce_labels' must be true or false"),  # bool('false') is True
        ("path: null\n", "'path' must be a folder or file name"),
    ],
)
def test_malformed_yaml_entries_are_errors_naming_the_file(tmp_path, body, message):
    write_pairs(tmp_path / "x", tmp_path / "y", ["p0", "p1", "p2"])
    (tmp_path / "odd.yaml").write_text("train: x\ntrain_masks: y\n" + body)
    with pytest.raises(SegtuneError, match=message) as info:
        load_data(tmp_path / "odd.yaml")
    assert str(info.value).startswith(str(tmp_path / "odd.yaml"))


def test_folder_entry_must_be_a_name(tmp_path):
    (tmp_path / "odd.yaml").write_text("train: [x]\ntrain_masks: y\n")
    with pytest.raises(SegtuneError, match=r"odd\.yaml: 'train' folders must be folder names"):
        load_data(tmp_path / "odd.yaml")


@pytest.mark.parametrize("val_split", [0.0, 1.0, 1.5, -0.2, 0.99])
def test_impossible_val_split_is_an_error(tmp_path, val_split):
    root = make_flat(tmp_path / "flat", n=5)
    with pytest.raises(SegtuneError, match=f"cannot split 5 pairs with val_split={val_split}"):
        load_data(root, val_split=val_split)


def test_a_single_pair_cannot_be_split(tmp_path):
    root = make_flat(tmp_path / "flat", n=1)
    with pytest.raises(SegtuneError, match="only 1 pair, too few to split"):
        load_data(root)


def test_jpeg_masks_are_named_as_the_problem(tmp_path):
    root = make_flat(tmp_path / "flat", n=3)
    (root / "annotations" / "img_01.png").rename(root / "annotations" / "img_01.jpg")
    with pytest.raises(SegtuneError, match=r"img_01\.png: image has no mask \(img_01\.jpg is not a mask file"):
        checked_labels(load_data(root), None)


def test_two_files_with_one_stem_are_an_error(tmp_path):
    root = make_flat(tmp_path / "flat", n=3)
    write_image(root / "images" / "img_01.jpg")
    with pytest.raises(SegtuneError, match="two files share the name 'img_01'") as info:
        checked_labels(load_data(root), None)
    assert len(str(info.value).splitlines()) == 1  # its mask is not also reported as orphaned


def test_hidden_and_other_files_are_skipped(tmp_path):
    root = make_flat(tmp_path / "flat", n=5)
    (root / "images" / ".DS_Store").write_bytes(b"\0\1")
    (root / "images" / "notes.txt").write_text("hello")
    (root / "annotations" / "._img_00.png").write_bytes(b"")
    data = load_data(root)
    assert sorted(stems(data.train + data.val)) == [f"img_{i:02d}" for i in range(5)]


# ---------------------------------------------------------------- `datasets` rows stored as arrays


def test_16_bit_images_stored_as_arrays_are_scaled_not_wrapped():
    """As to_rgb scales a 16-bit file: 65535 -> 255, 257 * k -> k; 8-bit arrays are kept."""
    from segtune.data.pairs import decode_row

    def image_of(pixels):
        row = {"image": pixels, "label": [[0, 1, 2], [2, 1, 0]]}
        return np.asarray(decode_row(row, "image", "label", "t row 1", MaskRules())[0])

    deep = np.array([[0, 257 * 100, 65535], [257, 300, 257 * 200]], dtype=np.uint16)
    want = [[0, 100, 255], [1, 1, 200]]
    assert image_of(deep)[..., 0].tolist() == want  # grey -> RGB, every channel alike
    assert image_of(deep.tolist())[..., 0].tolist() == want  # nested lists arrive as int64: told by range
    assert image_of(np.stack([deep] * 3, axis=-1))[..., 2].tolist() == want  # 16-bit RGB too
    eight = [[0, 7, 255], [1, 128, 200]]
    assert image_of(eight)[..., 1].tolist() == eight
    assert image_of(np.array(eight, np.uint8)).tolist() == np.stack([eight] * 3, -1).tolist()
    with pytest.raises(SegtuneError, match=r"^t row 1: cannot read column 'image' as an image "
                                           r"\(values -1\.\.70000 are outside 0\.\.65535\)$"):
        image_of([[-1, 0, 70000], [0, 0, 0]])
