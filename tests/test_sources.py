"""Dataset layouts and data-file features (segtune.sources) on tiny datasets built as the real ones ship.

Pascal VOC (palette masks, split lists), Cityscapes (suffixes, city folders, label_map), CamVid
(colour-coded masks), TIFF, split-list problems, and `segtune inspect` / `segtune train --skip-bad`
through the real command line.
"""

import json
import re

import numpy as np
import pytest
from PIL import Image

from segtune.cli import main
from segtune.data.checks import checked_labels
from segtune.data.labels import load_labels
from segtune.data.pairs import PairDataset
from segtune.data.reading import read_image, read_mask
from segtune.data.sources import load_data
from segtune.errors import SegtuneError

from .helpers import H, W, make_flat, stems, write_image, write_mask


def run_cli(capsys, argv):
    """-> (exit code, stdout, stderr); a bad-input run must never show a traceback."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line.removeprefix("segtune: error: ") for line in err.splitlines() if line.startswith("segtune: error:")]


@pytest.fixture
def no_model(monkeypatch):
    """`train` must refuse bad data before any model is built."""
    import segtune.training.run

    def tripwire(*args, **kwargs):
        pytest.fail("a model was built although the input is bad")

    monkeypatch.setattr(segtune.training.run, "load_model", tripwire)
    monkeypatch.setattr(segtune.training.run, "training_processor", tripwire)


def expected_split(names, test_size, seed):
    from datasets import Dataset

    parts = Dataset.from_dict({"i": range(len(names))}).train_test_split(test_size=test_size, seed=seed)
    return [names[i] for i in parts["train"]["i"]], [names[i] for i in parts["test"]["i"]]


# ---------------------------------------------------------------- Pascal VOC


def voc_palette() -> list[int]:
    """The Pascal VOC colour map: index i -> a colour built from the bits of i (255 -> (224, 224, 192))."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_voc_mask(path, indices):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(indices, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette())
    img.save(path)


def test_pascal_voc_layout_with_split_lists(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    names = ["2007_000032", "2007_000039", "2007_000063", "2008_000002", "2008_000008"]
    truth = {}
    for i, stem in enumerate(names):
        write_image(root / "JPEGImages" / f"{stem}.jpg", seed=i)
        indices = np.zeros((H, W), dtype=np.uint8)
        indices[4:20, 3 + i: 20 + i] = i + 1  # object of class i + 1
        indices[4:20, 3 + i] = 255  # VOC's "void" border around the object
        write_voc_mask(root / "SegmentationClass" / f"{stem}.png", indices)
        truth[stem] = indices
    write_image(root / "JPEGImages" / "2009_000001.jpg", seed=9)  # detection-only image: no mask, in no list
    write_voc_mask(root / "SegmentationClass" / "2009_000002.png", np.zeros((H, W)))  # in no list either
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2008_000002\n2007_000032\n2007_000063\n")  # list order, not sorted
    (lists / "val.txt").write_text("2008_000008\n2007_000039\n")
    names_yaml = "[background, aeroplane, bicycle, bird, boat, bottle]"
    (tmp_path / "voc.yaml").write_text(
        "path: VOCdevkit/VOC2012\n"
        "train: {images: JPEGImages, masks: SegmentationClass, list: ImageSets/Segmentation/train.txt}\n"
        "val: JPEGImages\nval_masks: SegmentationClass\nval_list: ImageSets/Segmentation/val.txt\n"
        f"names: {names_yaml}\n"
        "colors: [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]]\n"
    )
    data = load_data(tmp_path / "voc.yaml")
    assert stems(data.train) == ["2008_000002", "2007_000032", "2007_000063"]
    assert stems(data.val) == ["2008_000008", "2007_000039"]
    assert data.problems == [] and data.val_is_split is False
    for sample in data.train + data.val:
        assert sample.image == (root / "JPEGImages" / f"{sample.stem}.jpg").resolve()
        assert sample.mask == (root / "SegmentationClass" / f"{sample.stem}.png").resolve()
        assert Image.open(sample.mask).mode == "P"
        # palette indices, not colours: the VOC colours are not even the data file's colours
        assert np.array_equal(sample.read_mask(data.rules), truth[sample.stem])
    labels = checked_labels(data, None)
    assert labels.names == ("background", "aeroplane", "bicycle", "bird", "boat", "bottle")
    assert data.mask_max == {"train": 4, "val": 5}  # 255 is ignored, not a class


# ---------------------------------------------------------------- Cityscapes


CITYSCAPES_MAP = {7: 0, 8: 1, 11: 2, 26: 3, 0: 255, 1: 255, 3: 255, 4: 255}  # raw id -> train id


def cityscapes_raw(i: int) -> np.ndarray:
    """Raw label ids, columns cycling through every mapped id, shifted per image."""
    ids = np.array(list(CITYSCAPES_MAP), dtype=np.uint8)
    return np.tile(np.roll(ids, i), (H, W // len(ids)))


def write_cityscapes(root, images="leftImg8bit", masks="gtFine", splits=None):
    splits = splits or {"train": ["aachen", "bochum"], "val": ["frankfurt"]}
    count = 0
    for split, cities in splits.items():
        for city in cities:
            for j in range(2):
                stem = f"{city}_{j:06d}_000019"
                write_image(root / images / split / city / f"{stem}_leftImg8bit.png", seed=count)
                folder = root / masks / split / city
                write_mask(folder / f"{stem}_gtFine_labelIds.png", cityscapes_raw(count))
                Image.fromarray(cityscapes_raw(count).astype(np.uint16) * 1000).save(
                    folder / f"{stem}_gtFine_instanceIds.png")
                Image.fromarray(np.full((H, W, 3), (128, 64, 128), np.uint8)).save(folder / f"{stem}_gtFine_color.png")
                (folder / f"{stem}_gtFine_polygons.json").write_text("{}")
                count += 1


def test_cityscapes_layout_with_suffixes_and_label_map(tmp_path):
    write_cityscapes(tmp_path)
    (tmp_path / "cityscapes.yaml").write_text(
        "train: leftImg8bit/train\ntrain_masks: gtFine/train\nval: leftImg8bit/val\nval_masks: gtFine/val\n"
        "image_suffix: _leftImg8bit.png\nmask_suffix: _gtFine_labelIds.png\n"
        "names: [road, sidewalk, building, car]\n"
        "label_map: {7: 0, 8: 1, 11: 2, 26: 3, 0: 255, 1: 255, 3: 255, 4: 255}\n"
    )
    data = load_data(tmp_path / "cityscapes.yaml")
    assert data.problems == [] and data.label_map == CITYSCAPES_MAP
    pairs = [(str(s.image.relative_to(tmp_path)), s.mask.name) for s in data.train]
    assert pairs == [
        (f"leftImg8bit/train/{city}/{city}_{j:06d}_000019_leftImg8bit.png", f"{city}_{j:06d}_000019_gtFine_labelIds.png")
        for city in ("aachen", "bochum") for j in range(2)
    ]
    assert [s.mask.relative_to(tmp_path).parts[:3] for s in data.val] == [("gtFine", "val", "frankfurt")] * 2
    mapping = np.vectorize(CITYSCAPES_MAP.get)
    for i, sample in enumerate(data.train + data.val):
        got = sample.read_mask(data.rules)
        # each raw id mapped exactly once: 3 -> 255 although 26 -> 3, and 1 -> 255 although 8 -> 1
        assert np.array_equal(got, mapping(cityscapes_raw(i)))
        assert set(np.unique(got)) == {0, 1, 2, 3, 255}
    assert checked_labels(data, None).names == ("road", "sidewalk", "building", "car")
    assert data.mask_max == {"train": 3, "val": 3}

    # a split list of Cityscapes file names, with or without their folders
    (tmp_path / "few.txt").write_text("leftImg8bit/train/bochum/bochum_000001_000019_leftImg8bit.png\n"
                                      "aachen/aachen_000000_000019_leftImg8bit.png\n")
    (tmp_path / "listed.yaml").write_text((tmp_path / "cityscapes.yaml").read_text() + "train_list: few.txt\n")
    listed = load_data(tmp_path / "listed.yaml")
    assert stems(listed.train) == ["bochum_000001_000019_leftImg8bit", "aachen_000000_000019_leftImg8bit"]
    assert listed.problems == []

    # the command line's suffixes win over the data file's
    instances = load_data(tmp_path / "cityscapes.yaml", mask_suffix="_gtFine_instanceIds.png")
    assert [s.mask.name for s in instances.val] == [f"frankfurt_{j:06d}_000019_gtFine_instanceIds.png" for j in range(2)]


def test_cityscapes_like_folder_with_suffix_options_on_the_command_line(tmp_path, capsys):
    root = tmp_path / "cs"
    write_cityscapes(root, images="images", masks="annotations", splits={"": ["aachen", "bochum"]})
    with pytest.raises(SegtuneError) as info:  # without the suffixes nothing pairs, and each file says so
        load_data(root)
    lines = str(info.value).splitlines()
    assert lines[0] == (f"{root / 'images' / 'aachen' / 'aachen_000000_000019_leftImg8bit.png'}: image has no mask "
                        f"({root / 'annotations' / 'aachen' / 'aachen_000000_000019_leftImg8bit.png'} is missing)")
    assert sum("image has no mask" in line for line in lines) == 4
    assert sum("mask has no image" in line for line in lines) == 12  # labelIds, instanceIds and color
    assert len(lines) == 17 and lines[-1] == f"{root}: only 0 pair, too few to split"

    data = load_data(root, image_suffix="_leftImg8bit.png", mask_suffix="_gtFine_labelIds.png")
    assert data.problems == [] and len(data.train) + len(data.val) == 4 and data.val_is_split is True
    assert all(s.mask.name.endswith("_gtFine_labelIds.png") and s.mask.parent.name == s.image.parent.name
               for s in data.train + data.val)
    code, out, _ = run_cli(capsys, ["inspect", "--data", root, "--image-suffix", "_leftImg8bit.png",
                                    "--mask-suffix", "_gtFine_labelIds.png", "--output-dir", tmp_path / "inspect"])
    assert code == 0, out
    report = json.loads((tmp_path / "inspect" / "inspect.json").read_text())
    assert report["splits"]["train"]["pairs"] + report["splits"]["val"]["pairs"] == 4
    assert report["blocking_problems"] == []


def test_jpeg_mask_in_a_sub_folder_is_named_as_the_problem(tmp_path):
    root = make_flat(tmp_path / "flat", n=3)
    for stem in ("x", "y[1]"):  # a glob character in the name too
        write_image(root / "images" / "city" / f"{stem}.png")
        write_mask(root / "annotations" / "city" / f"{stem}.png")
        Image.open(root / "annotations" / "city" / f"{stem}.png").save(root / "annotations" / "city" / f"{stem}.jpg")
        (root / "annotations" / "city" / f"{stem}.png").unlink()
    write_mask(root / "annotations" / "x.tif")  # a file of that name elsewhere is not its mask
    data = load_data(root)
    assert [p for p in data.problems if "city" in p] == [
        f"{root / 'images' / 'city' / f'{stem}.png'}: image has no mask ({stem}.jpg is not a mask file: use "
        ".bmp, .png, .tif, .tiff)" for stem in ("x", "y[1]")
    ]


# ---------------------------------------------------------------- CamVid colour-coded masks

CAMVID = [("Sky", (128, 128, 128)), ("Building", (128, 0, 0)), ("Pole", (192, 192, 128)), ("Road", (128, 64, 128)),
          ("Pavement", (60, 40, 222)), ("Tree", (128, 128, 0)), ("SignSymbol", (192, 128, 128)),
          ("Fence", (64, 64, 128)), ("Car", (64, 0, 128)), ("Pedestrian", (64, 64, 0)),
          ("Bicyclist", (0, 128, 192)), ("Void", (0, 0, 0))]
CAMVID_COLOURS = np.array([c for _, c in CAMVID], dtype=np.uint8)


def write_camvid(root):
    """train/ trainannot/ val/ valannot/ with RGB masks; -> {mask file name: class ids}."""
    truth = {}
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            name = f"0001TP_{split}{i}.png"
            ids = np.random.default_rng(i + 10 * (split == "val")).integers(0, len(CAMVID), (H, W))
            write_image(root / split / name, seed=i)
            (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
            Image.fromarray(CAMVID_COLOURS[ids], mode="RGB").save(root / f"{split}annot" / name)
            truth[name] = ids
    # every pixel grey, and every grey a class colour: Sky (128, 128, 128) and Void (0, 0, 0)
    ids = np.zeros((H, W), dtype=np.int64)
    ids[H // 2:] = 11
    Image.fromarray(CAMVID_COLOURS[ids], mode="RGB").save(root / "trainannot" / "0001TP_train2.png")
    truth["0001TP_train2.png"] = ids
    (root / "labels.csv").write_text(
        "id,name,r,g,b\n" + "".join(f"{i},{name},{r},{g},{b}\n" for i, (name, (r, g, b)) in enumerate(CAMVID)))
    folders = "train: train\ntrain_masks: trainannot\nval: val\nval_masks: valannot\nignore_index: 11\n"
    (root / "plain.yaml").write_text(folders)
    (root / "coloured.yaml").write_text(
        folders + f"names: {[n for n, _ in CAMVID]}\ncolors: {[list(c) for _, c in CAMVID]}\n")
    return truth


@pytest.mark.parametrize("classes", ["labels csv", "yaml names and colors"])
def test_camvid_colour_masks_map_through_the_class_colours(tmp_path, classes):
    truth = write_camvid(tmp_path)
    if classes == "labels csv":
        data = load_data(tmp_path / "plain.yaml")
        labels = checked_labels(data, load_labels(tmp_path / "labels.csv"))
    else:
        data = load_data(tmp_path / "coloured.yaml")
        labels = checked_labels(data, None)
    assert labels.names == tuple(n for n, _ in CAMVID) and np.array_equal(labels.colors, CAMVID_COLOURS)
    assert data.ignore_index == 11 and len(data.train) == 3 and len(data.val) == 2
    for sample in data.train + data.val:
        assert np.array_equal(sample.read_mask(data.rules), truth[sample.mask.name]), sample.mask.name
    grey = next(s for s in data.train if s.mask.name == "0001TP_train2.png")
    assert np.unique(grey.read_mask(data.rules)).tolist() == [0, 11]  # by colour, not the grey values 128 and 0
    image, mask = PairDataset(data.train, None, data.rules).load(0)  # the training path reads it the same
    assert np.array_equal(mask, truth[data.train[0].mask.name]) and image.size == (W, H)


def spoil_with_unknown_colours(root):
    """A CamVid mask with 12 pixels of (10, 20, 30) and 3 of (250, 0, 250), both no class's colour."""
    path = root / "valannot" / "0001TP_val1.png"
    rgb = np.array(Image.open(path))
    rgb[:3, :4] = (10, 20, 30)
    rgb[5, :3] = (250, 0, 250)
    Image.fromarray(rgb, mode="RGB").save(path)
    return path


UNKNOWN = r"mask colour \(10, 20, 30\) \(12 pixels\) is not the colour of any class \(and 1 more unknown colours\)"


@pytest.mark.parametrize("classes", [["--labels", "labels.csv"], []], ids=["labels csv", "yaml colors"])
def test_unknown_mask_colour_through_inspect_and_train(tmp_path, capsys, no_model, classes):
    write_camvid(tmp_path)
    bad = spoil_with_unknown_colours(tmp_path)
    data_file = tmp_path / ("plain.yaml" if classes else "coloured.yaml")
    extra = [tmp_path / c if c.endswith(".csv") else c for c in classes]

    code, out, err = run_cli(capsys, ["inspect", "--data", data_file, "--output-dir", tmp_path / "inspect", *extra])
    assert code == 1
    report = json.loads((tmp_path / "inspect" / "inspect.json").read_text())
    assert len(report["blocking_problems"]) == 1
    assert re.fullmatch(re.escape(str(bad)) + ": " + UNKNOWN, report["blocking_problems"][0])
    assert f"problem: {report['blocking_problems'][0]}" in out.splitlines()

    code, out, err = run_cli(capsys, ["train", "--data", data_file, "--output-dir", tmp_path / "run",
                                      "--model", "mit-b0", "--max_steps", "1", *extra])
    assert code == 1 and not (tmp_path / "run").exists()
    assert error_lines(err) == [report["blocking_problems"][0]]


# ---------------------------------------------------------------- TIFF


def test_tiff_images_and_8_and_16_bit_tiff_masks(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    masks.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    for name in ("a", "b", "c"):
        Image.fromarray(rgb).save(images / f"{name}.tif")
    deep = (np.arange(H * W).reshape(H, W) * 85).astype(np.uint16)  # 16-bit grey photo, up to 65195
    Image.fromarray(deep).save(images / "d.tiff")
    ids8 = np.random.default_rng(1).integers(0, 4, (H, W)).astype(np.uint8)
    ids16 = ids8.astype(np.uint16)
    ids16[0, :2] = (300, 257)
    Image.fromarray(ids8).save(masks / "a.tif")
    Image.fromarray(ids16).save(masks / "b.tiff")
    Image.fromarray(ids8).save(masks / "c.tif", compression="tiff_lzw")
    Image.fromarray(ids8).save(masks / "d.tif")
    assert Image.open(masks / "a.tif").mode == "L" and Image.open(masks / "b.tiff").mode == "I;16"

    data = load_data(tmp_path)
    assert data.problems == []
    pairs = sorted((s.image.name, s.mask.name) for s in data.train + data.val)
    assert pairs == [("a.tif", "a.tif"), ("b.tif", "b.tiff"), ("c.tif", "c.tif"), ("d.tiff", "d.tif")]
    assert read_mask(masks / "a.tif").tolist() == ids8.tolist()
    assert read_mask(masks / "b.tiff").tolist() == ids16.tolist()  # 16-bit ids kept, not clipped to 255
    assert read_mask(masks / "c.tif").tolist() == ids8.tolist()
    assert np.array_equal(np.array(read_image(images / "a.tif")), rgb)
    grey = np.array(read_image(images / "d.tiff"))
    assert np.array_equal(grey[..., 0], np.round(deep / 257).astype(np.uint8)) and (grey[..., 1] == grey[..., 0]).all()
    assert len(checked_labels(data, None)) == 301  # numbered up to the largest 16-bit id


# ---------------------------------------------------------------- label_map, reduce_labels, ignore index


def test_label_map_applies_once_before_reduction_and_the_ignore_index(tmp_path):
    stored = np.array([[0, 1, 2, 3, 5, 255]] * 4, dtype=np.uint8)
    write_image(tmp_path / "imgs" / "p0.png", size=(6, 4))
    write_mask(tmp_path / "masks" / "p0.png", stored)
    (tmp_path / "set.yaml").write_text(
        "train: imgs\ntrain_masks: masks\nval: imgs\nval_masks: masks\n"
        "label_map: {5: 1, 1: 2, 2: 0}\nreduce_labels: true\nignore_index: 99\nnames: [a, b, c]\n"
    )
    data = load_data(tmp_path / "set.yaml")
    # label_map once (1 -> 2, not on to 0): 0 1 2 3 5 255 -> 0 2 0 3 1 255; then 0 -> 99, k -> k-1, 255 -> 99
    want = [[99, 1, 99, 2, 0, 99]] * 4
    assert data.train[0].read_mask(data.rules).tolist() == want
    assert data.train[0].read_mask(data.rules).tolist() == want  # the rules are not changed by use
    assert PairDataset(data.val, None, data.rules).load(0)[1].tolist() == want
    assert checked_labels(data, None).names == ("a", "b", "c")  # 99 ignored, ids 0..2 in range
    assert stored.tolist() == [[0, 1, 2, 3, 5, 255]] * 4


def test_colour_masks_map_to_ids_before_the_label_map(tmp_path):
    ids = np.array([[0, 1, 2, 2]] * 3)
    colours = np.array([(10, 10, 200), (200, 10, 10), (10, 200, 10)], dtype=np.uint8)
    write_image(tmp_path / "imgs" / "p0.png", size=(4, 3))
    (tmp_path / "masks").mkdir()
    Image.fromarray(colours[ids], mode="RGB").save(tmp_path / "masks" / "p0.png")
    (tmp_path / "set.yaml").write_text(
        "train: imgs\ntrain_masks: masks\nval: imgs\nval_masks: masks\nnames: [water, boat, weed]\n"
        "colors: [[10, 10, 200], [200, 10, 10], [10, 200, 10]]\nlabel_map: {2: 255, 0: 1, 1: 0}\n"
    )
    data = load_data(tmp_path / "set.yaml")
    assert data.train[0].read_mask(data.rules).tolist() == [[1, 0, 255, 255]] * 3


# ---------------------------------------------------------------- split lists


def test_split_list_problems_and_two_column_lines(tmp_path):
    for i in range(4):
        write_image(tmp_path / "train" / f"f{i}.png", seed=i)
        write_mask(tmp_path / "trainannot" / f"f{i}.png", seed=i)
    write_image(tmp_path / "train" / "nomask.png")
    (tmp_path / "train.txt").write_text(
        "# CamVid ships 'image mask' lines\n"
        "/SegNet/CamVid/train/f2.png /SegNet/CamVid/trainannot/f2.png\n"
        "train/ghost.png trainannot/ghost.png\n"
        "\n"
        "f0\n"
        "f3.png\n"
        "nomask\n"
    )
    (tmp_path / "val.txt").write_text("f1 anything\n")
    (tmp_path / "set.yaml").write_text(
        "train: train\ntrain_masks: trainannot\ntrain_list: train.txt\n"
        "val: {images: train, masks: trainannot, list: val.txt}\n")
    data = load_data(tmp_path / "set.yaml")
    assert stems(data.train) == ["f2", "f0", "f3"] and stems(data.val) == ["f1"]  # in list order
    assert all(s.mask == s.image.parent.parent / "trainannot" / s.image.name for s in data.train + data.val)
    assert data.problems == [
        f"{tmp_path / 'train.txt'}: 'train/ghost.png' is listed but has no image in {tmp_path / 'train'}",
        f"{tmp_path / 'train' / 'nomask.png'}: image has no mask ({tmp_path / 'trainannot' / 'nomask.png'} is missing)",
    ]  # and no complaint about masks that are simply in the other split's list
    with pytest.raises(SegtuneError) as info:
        checked_labels(data, None)
    assert str(info.value).splitlines() == data.problems
    assert len(checked_labels(data, None, skip_bad=True)) == 3
    assert stems(data.train) == ["f2", "f0", "f3"] and stems(data.val) == ["f1"]  # lists are kept as listed

    (tmp_path / "val.txt").write_text("# nothing\n\n")
    with pytest.raises(SegtuneError, match=re.escape(f"{tmp_path / 'val.txt'}: split list is empty")):
        load_data(tmp_path / "set.yaml")


# ---------------------------------------------------------------- segtune inspect


def test_inspect_a_good_dataset(tmp_path, capsys):
    masks = {  # split -> stem -> (W, H) and class ids drawn by hand
        "train": {"t0": np.repeat([[0] * 16 + [1] * 16], 24, axis=0),
                  "t1": np.vstack([np.full((1, 40), 255), np.zeros((29, 40))]),
                  "t2": np.ones((12, 16))},
        "val": {"v0": np.full((24, 32), 2), "v1": np.vstack([np.zeros((10, 20)), np.ones((10, 20))])},
    }
    for split, by_stem in masks.items():
        for i, (stem, values) in enumerate(by_stem.items()):
            write_image(tmp_path / split / f"{stem}.jpg", seed=i, size=values.shape[::-1])
            write_mask(tmp_path / f"{split}_masks" / f"{stem}.png", values)
    (tmp_path / "set.yaml").write_text(
        "train: train\ntrain_masks: train_masks\nval: val\nval_masks: val_masks\nnames: [sky, road, car, boat]\n")

    code, out, err = run_cli(capsys, ["inspect", "--data", tmp_path / "set.yaml", "--output-dir", tmp_path / "out"])
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert report["splits"] == {
        "train": {"pairs": 3, "bad": 0, "min_size": [16, 12], "max_size": [40, 30], "ignored_share": round(40 / 2160, 6)},
        "val": {"pairs": 2, "bad": 0, "min_size": [20, 20], "max_size": [32, 24], "ignored_share": 0.0},
    }
    pixels = {"sky": 384 + 1160 + 200, "road": 384 + 192 + 200, "car": 768, "boat": 0}
    total = sum(pixels.values())
    classes = {c["name"]: c for c in report["classes"]}
    assert [c["id"] for c in report["classes"]] == [0, 1, 2, 3]
    for name, count in pixels.items():
        assert classes[name]["pixels"] == count
        assert classes[name]["pixel_share"] == pytest.approx(count / total, abs=1e-6)
    assert sum(c["pixel_share"] for c in report["classes"]) == pytest.approx(1, abs=1e-5)
    images = {"sky": (2, 1), "road": (2, 1), "car": (0, 1), "boat": (0, 0)}  # (train, val) images holding it
    for name, (train, val) in images.items():
        assert (classes[name]["train_images"], classes[name]["val_images"], classes[name]["images"]) == (
            train, val, train + val)
    assert report["classes_never_present"] == ["boat"]
    assert report["warnings"] == ["1 class(es) never present: boat",
                                  "class 'car' appears in validation but never in training"]
    assert report["blocking_problems"] == [] and report["val_is_split"] is False
    assert "no problems found" in out and "problem:" not in out

    with Image.open(tmp_path / "out" / "inspect.png") as grid:
        grid.load()
        assert grid.width >= 300 and grid.height >= 200
        assert np.asarray(grid.convert("RGB")).std() > 10  # pictures, not a blank page


def test_inspect_a_bad_dataset_names_every_problem(tmp_path, capsys):
    train, masks = tmp_path / "imgs", tmp_path / "masks"
    for i in range(4):
        write_image(train / f"good{i}.png", seed=i)
        write_mask(masks / f"good{i}.png", seed=i)
    write_image(train / "nomask.png")
    write_mask(masks / "orphan.png")
    cut = write_image(train / "cut.png", seed=7)
    cut.write_bytes(cut.read_bytes()[:200])
    write_mask(masks / "cut.png")
    write_image(train / "size.png")
    write_mask(masks / "size.png", size=(16, 16))
    write_image(train / "range.png")
    values = np.zeros((H, W), np.uint8)
    values[1, 1] = 7
    write_mask(masks / "range.png", values)
    write_image(train / "rgb.png")
    Image.fromarray(np.full((H, W, 3), (200, 30, 30), np.uint8)).save(masks / "rgb.png")
    write_image(train / "dup.jpg")
    write_image(train / "dup.png")
    write_mask(masks / "dup.png")
    write_image(tmp_path / "vimgs" / "v0.png")  # in no list
    write_mask(tmp_path / "vmasks" / "v0.png")
    (tmp_path / "val.txt").write_text("gone\n")
    (tmp_path / "set.yaml").write_text(
        "train: imgs\ntrain_masks: masks\nval: {images: vimgs, masks: vmasks, list: val.txt}\n")
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b", "c"]))

    argv = ["inspect", "--data", tmp_path / "set.yaml", "--labels", tmp_path / "labels.json",
            "--output-dir", tmp_path / "out"]
    code, out, err = run_cli(capsys, argv)
    assert code == 1
    expected = {  # the file each line names first -> what it says
        train / "nomask.png": r"image has no mask",
        masks / "orphan.png": r"mask has no image",
        train / "cut.png": r"cannot read image \(image file is truncated",
        masks / "size.png": rf"mask is 16x16 but its image is {W}x{H}",
        masks / "range.png": r"mask has class id 7, outside the 3 classes 0\.\.2",
        masks / "rgb.png": r"mask is a colour \(RGB\) image",
        train / "dup.png": r"two files share the name 'dup' \(dup\.jpg\)",
        tmp_path / "val.txt": rf"'gone' is listed but has no image in {re.escape(str(tmp_path / 'vimgs'))}",
        tmp_path / "set.yaml": r"the validation split is empty",
    }
    report = json.loads((tmp_path / "out" / "inspect.json").read_text())
    problems = report["blocking_problems"]
    assert len(problems) == len(expected), problems
    for path, pattern in expected.items():
        lines = [line for line in problems if line.startswith(f"{path}: ")]
        assert len(lines) == 1 and re.search(pattern, lines[0]), (path, problems)
        assert f"problem: {lines[0]}" in out.splitlines()
    assert not any("good" in line for line in problems)
    # every pair is counted once: good or bad (an out-of-range mask is not also a good pair)
    assert (report["splits"]["train"]["pairs"], report["splits"]["train"]["bad"]) == (4, 4)
    assert (report["splits"]["val"]["pairs"], report["splits"]["val"]["bad"]) == (0, 0)
    assert sum(c["pixels"] for c in report["classes"]) == 4 * W * H  # the good masks' pixels only
    assert f"{len(expected)} problem(s) would stop training" in err


def test_inspect_flags_what_stops_training_in_the_whole_dataset(tmp_path, capsys):
    """An empty training split, or masks holding nothing but the ignore index, as `train` refuses them."""
    for i in range(2):
        write_image(tmp_path / "v" / f"v{i}.png", seed=i)
        write_mask(tmp_path / "vm" / f"v{i}.png", np.full((H, W), 255))
    (tmp_path / "set.yaml").write_text("val: v\nval_masks: vm\n")
    code, out, _ = run_cli(capsys, ["inspect", "--data", tmp_path / "set.yaml", "--output-dir", tmp_path / "out"])
    assert code == 1 and "ready to train" not in out
    assert json.loads((tmp_path / "out" / "inspect.json").read_text())["blocking_problems"] == [
        f"{tmp_path / 'set.yaml'}: the training split is empty",
        f"{tmp_path / 'set.yaml'}: every mask pixel is ignored; nothing to learn or score",
    ]


def test_inspect_with_no_good_pair_writes_a_picture_saying_so(tmp_path, capsys):
    """inspect.png is still written (replacing an older grid) and says there is nothing to show."""
    for i in range(2):
        write_image(tmp_path / "t" / f"t{i}.png", seed=i)
        write_mask(tmp_path / "tm" / f"t{i}.png", size=(8, 8))  # every mask the wrong size
    (tmp_path / "set.yaml").write_text("train: t\ntrain_masks: tm\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    Image.new("RGB", (900, 700), "red").save(out_dir / "inspect.png")  # a previous run's grid
    code, out, _ = run_cli(capsys, ["inspect", "--data", tmp_path / "set.yaml", "--output-dir", out_dir])
    assert code == 1 and f"written: {out_dir / 'inspect.json'}, {out_dir / 'inspect.png'}" in out
    with Image.open(out_dir / "inspect.png") as picture:
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.shape[:2] == (120, 480)  # 6 x 1.5 inches at 80 dpi: the notice, not the old grid
    dark = (pixels < 100).all(axis=-1)
    assert 0 < dark.mean() < 0.2  # text on white


# ---------------------------------------------------------------- segtune train --skip-bad


TRAIN_ARGS = ["--base-size", "32", "--crop-size", "32", "--max_steps", "2", "--eval_steps", "2",
              "--per_device_train_batch_size", "2", "--dataloader-num-workers", "0", "--disable_tqdm", "true",
              "--seed", "3"]


@pytest.fixture
def two_bad_of_eight(tmp_path):
    root = make_flat(tmp_path / "data", n=8)
    cut = root / "images" / "img_02.png"
    cut.write_bytes(cut.read_bytes()[:150])
    write_mask(root / "annotations" / "img_05.png", size=(12, 12))
    return root


def test_train_refuses_bad_pairs_naming_both(two_bad_of_eight, tmp_path, capsys, no_model):
    root = two_bad_of_eight
    code, _, err = run_cli(capsys, ["train", "--data", root, "--output-dir", tmp_path / "run", "--model", "mit-b0",
                                    *TRAIN_ARGS])
    assert code == 1 and not (tmp_path / "run").exists()
    lines = error_lines(err)
    assert len(lines) == 2
    assert any(line.startswith(f"{root / 'images' / 'img_02.png'}: cannot read image") for line in lines)
    assert any(line.startswith(f"{root / 'annotations' / 'img_05.png'}: mask is 12x12") for line in lines)


def test_train_skip_bad_trains_on_the_good_pairs(two_bad_of_eight, tmp_path, capsys, caplog, tiny_model_dir):
    root = two_bad_of_eight
    out_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--data", root, "--output-dir", out_dir, "--model", tiny_model_dir,
                                    "--skip-bad", *TRAIN_ARGS])
    assert code == 0, err
    assert "leaving out 2 problem(s)" in caplog.text and "img_02.png" in caplog.text and "img_05.png" in caplog.text
    splits = json.loads((out_dir / "splits.json").read_text())
    good = [str(root / "images" / f"img_{i:02d}.png") for i in (0, 1, 3, 4, 6, 7)]
    # the good pairs are split afresh, as `datasets` splits them, with the run's seed
    assert (splits["train"], splits["val"]) == expected_split(good, 0.2, 3)
    assert json.loads((out_dir / "metrics.json").read_text())["step"] == 2
