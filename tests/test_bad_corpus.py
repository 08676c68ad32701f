"""A corpus of broken files in one dataset: `segtune inspect` and `segtune train` give each file exactly
its one clear line, exit 1, and never a traceback."""

import json
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from segtune.cli import main
from segtune.data.checks import checked_labels
from segtune.data.labels import load_labels
from segtune.data.sources import load_data

from .helpers import H, W, make_flat, write_image, write_mask

TRUNCATED = r"\(.*[Tt]runcated.*\)"


def png_bomb(path, side: int = 20000):
    """A valid 1-bit PNG declaring side x side pixels (400 megapixels): about 50 KB, written in a blink."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte + the row's bits, all black
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """-> (dataset root, labels file, {bad file: the line it must get, as a regex after '<file>: '})."""
    root = make_flat(tmp_path_factory.mktemp("corpus") / "data", n=6)  # img_00 .. img_05 are good
    images, masks = root / "images", root / "annotations"

    def pair(stem, image_suffix=".png"):
        return write_image(images / f"{stem}{image_suffix}", seed=len(stem)), write_mask(masks / f"{stem}.png")

    expected = {}
    image, _ = pair("zero_image", ".jpg")
    image.write_bytes(b"")
    expected[image] = r"empty file \(0 bytes\)"
    _, mask = pair("zero_mask")
    mask.write_bytes(b"")
    expected[mask] = r"empty file \(0 bytes\)"
    image, _ = pair("text", ".jpg")
    image.write_text("this is a note, not a JPEG\n")
    expected[image] = r"not an image file, or a format Pillow cannot read"
    _, mask = pair("text_mask")
    mask.write_text("class ids: see the wiki\n")
    expected[mask] = r"not an image file, or a format Pillow cannot read"
    image, _ = pair("cut_png")
    truncate(image)
    expected[image] = r"cannot read image " + TRUNCATED
    image, _ = pair("cut_jpeg", ".jpg")
    truncate(image)
    expected[image] = r"cannot read image " + TRUNCATED
    _, mask = pair("cut_mask")
    truncate(mask)
    expected[mask] = r"cannot read mask " + TRUNCATED
    image, _ = pair("bomb")
    png_bomb(image)
    expected[image] = r"image is too large to decode safely \(over 89 megapixels: Pillow's decompression-bomb limit\)"
    _, mask = pair("bomb_mask")
    png_bomb(mask)
    expected[mask] = r"mask is too large to decode safely \(over 89 megapixels: Pillow's decompression-bomb limit\)"
    _, mask = pair("colour")
    Image.fromarray(np.full((H, W, 3), (200, 30, 30), np.uint8), mode="RGB").save(mask)
    expected[mask] = (r"mask is a colour \(RGB\) image; expected a single-channel index mask "
                      r"\(for colour-coded masks give each class's colour in the labels file\)")
    _, mask = pair("small")
    write_mask(mask, size=(16, 16))
    expected[mask] = rf"mask is 16x16 but its image is {W}x{H}"
    image = write_image(images / "lonely.png")
    expected[image] = rf"image has no mask \({re.escape(str(masks / 'lonely.png'))} is missing\)"
    mask = write_mask(masks / "orphan.png")
    expected[mask] = rf"mask has no image in {re.escape(str(images))}"
    for stem, top in (("far_out", 9), ("unreduced", 3)):
        values = np.zeros((H, W), np.uint8)
        values[5, 7] = top
        _, mask = pair(stem)
        write_mask(mask, values)
        hint = r" \(ADE20K-style data needs --reduce-labels\)" if top == 3 else ""
        expected[mask] = (rf"mask has class id {top}, outside the 3 classes 0\.\.2 and not the ignore index 255"
                          + hint)
    image, mask = pair("jpeg_mask")
    Image.open(mask).save(mask.with_suffix(".jpg"))
    mask.unlink()
    expected[image] = r"image has no mask \(jpeg_mask\.jpg is not a mask file: use \.bmp, \.png, \.tif, \.tiff\)"
    image, _ = pair("twin", ".jpg")
    write_image(images / "twin.png")
    expected[images / "twin.png"] = r"two files share the name 'twin' \(twin\.jpg\); rename one"

    labels = root.parent / "labels.json"
    labels.write_text(json.dumps(["sky", "road", "car"]))
    return root, labels, expected


def check_lines(lines, expected):
    """Every bad file gets exactly one line, which names it first and says what is wrong; no other lines."""
    by_file = {}
    for line in lines:
        assert "\n" not in line and "Traceback" not in line
        named = line.split(": ", 1)[0]
        by_file.setdefault(named, []).append(line)
    assert sorted(by_file) == sorted(str(p) for p in expected), "\n".join(lines)
    for path, pattern in expected.items():
        (line,) = by_file[str(path)]
        assert re.fullmatch(re.escape(str(path)) + ": " + pattern, line), line


def test_the_bomb_is_a_real_png_of_400_megapixels(corpus, monkeypatch):
    root, _, _ = corpus
    path = root / "images" / "bomb.png"
    assert path.stat().st_size < 100_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(path) as img:  # the header only: nothing is decoded
        assert img.size == (20000, 20000) and img.format == "PNG"


def test_inspect_gives_every_bad_file_its_one_line(corpus, tmp_path):
    root, labels, expected = corpus
    result = subprocess.run(  # a real process: no traceback, no stray warning
        [sys.executable, "-m", "segtune", "inspect", "--data", str(root), "--labels", str(labels),
         "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "Warning" not in result.stderr
    report = json.loads((tmp_path / "inspect.json").read_text())
    check_lines(report["blocking_problems"], expected)
    printed = [line.removeprefix("problem: ") for line in result.stdout.splitlines() if line.startswith("problem: ")]
    assert printed == report["blocking_problems"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("segtune: error:")]
    summary = f"{len(expected)} problem(s) would stop training (listed above and in {tmp_path / 'inspect.json'})"
    assert errors == [f"segtune: error: {summary}"]
    # good pairs and bad ones are each counted once
    splits = report["splits"]
    good, bad = (sum(s[key] for s in splits.values()) for key in ("pairs", "bad"))
    assert good == 6 and bad == len([p for p in expected if "share the name" not in expected[p]
                                     and "has no" not in expected[p]])
    assert (tmp_path / "inspect.png").is_file()


def test_train_gives_every_bad_file_its_one_line(corpus, tmp_path, capsys, monkeypatch):
    import segtune.training.run

    def tripwire(*args, **kwargs):
        pytest.fail("a model was built although the input is bad")

    monkeypatch.setattr(segtune.training.run, "load_model", tripwire)
    monkeypatch.setattr(segtune.training.run, "training_processor", tripwire)
    root, labels, expected = corpus
    code = main(["train", "--data", str(root), "--labels", str(labels), "--output-dir", str(tmp_path / "run"),
                 "--model", "mit-b0", "--max_steps", "1"])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err and "rerun with --debug" not in err
    lines = [line.removeprefix("segtune: error: ") for line in err.splitlines() if line.startswith("segtune: error:")]
    check_lines(lines, expected)
    assert not (tmp_path / "run").exists()


def test_skip_bad_keeps_the_good_pairs_and_splits_them_afresh(corpus):
    from datasets import Dataset

    root, labels, _ = corpus
    data = load_data(root, val_split=0.2, seed=5)
    assert len(data.train) + len(data.val) > 6  # bad pairs are in both splits until checked
    assert checked_labels(data, load_labels(labels), skip_bad=True).names == ("sky", "road", "car")
    good = [root / "images" / f"img_{i:02d}.png" for i in range(6)]
    parts = Dataset.from_dict({"i": range(6)}).train_test_split(test_size=0.2, seed=5)
    assert [s.image for s in data.train] == [good[i] for i in parts["train"]["i"]]
    assert [s.image for s in data.val] == [good[i] for i in parts["test"]["i"]]


def test_bad_rows_of_a_datasets_table_each_get_their_line(tmp_path, capsys, monkeypatch):
    """`datasets` decodes images as a row is read: a broken one names its row and column, never a traceback."""
    import io

    import datasets

    import segtune.training.run

    def encoded(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        return buffer.getvalue()

    rng = np.random.default_rng(0)
    rows = {"image": [], "annotation": []}
    for i in range(8):
        image = encoded(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        mask = encoded(rng.integers(0, 3, (H, W), dtype=np.uint8))
        image = image[: len(image) // 2] if i == 2 else image
        mask = mask[: len(mask) // 2] if i == 3 else b"not a mask" if i == 5 else mask
        rows["image"].append({"bytes": image, "path": None})
        rows["annotation"].append({"bytes": mask, "path": None})
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "table"))
    source = f"{tmp_path / 'table'}[train] row"
    expected = {
        f"{source} 2": r"cannot read column 'image' as an image " + TRUNCATED,
        f"{source} 3": r"cannot read column 'annotation' as an image " + TRUNCATED,
        f"{source} 5": r"column 'annotation' is not an image, or a format Pillow cannot read",
    }

    assert main(["inspect", "--data", str(tmp_path / "table"), "--output-dir", str(tmp_path / "out")]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "rerun with --debug" not in err
    check_lines(json.loads((tmp_path / "out" / "inspect.json").read_text())["blocking_problems"], expected)

    def tripwire(*args, **kwargs):
        pytest.fail("a model was built although the input is bad")

    monkeypatch.setattr(segtune.training.run, "load_model", tripwire)
    monkeypatch.setattr(segtune.training.run, "training_processor", tripwire)
    code = main(["train", "--data", str(tmp_path / "table"), "--output-dir", str(tmp_path / "run"),
                 "--model", "mit-b0", "--max_steps", "1"])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err and "rerun with --debug" not in err
    check_lines([line.removeprefix("segtune: error: ") for line in err.splitlines()
                 if line.startswith("segtune: error:")], expected)


@pytest.mark.parametrize("mask, problem", [
    ([[0, 1, 2], [0, 1]], r"cannot read column 'label' as a mask \(.*inhomogeneous"),  # ragged nested lists
    ([0, 1, 2, 0, 1, 2], r"column 'label' has shape \(6,\): expected \(height, width\) class ids"),
    ([["sky", "sky", "road"]] * 2, r"cannot read column 'label' as a mask \(invalid literal"),
    (np.zeros((2, 3, 1)), r"column 'label' has shape \(2, 3, 1\)"),
])
def test_malformed_mask_rows_are_one_line_errors(mask, problem):
    from segtune.data.pairs import decode_row
    from segtune.data.reading import MaskRules
    from segtune.errors import SegtuneError

    row = {"image": Image.new("RGB", (3, 2)), "label": mask}
    with pytest.raises(SegtuneError, match=r"^table row 7: " + problem):
        decode_row(row, "image", "label", "table row 7", MaskRules())
    row["label"] = [[0, 1, 2], [2, 1, 0]]  # the well-formed nested list for contrast
    assert decode_row(row, "image", "label", "table row 7", MaskRules())[1].tolist() == [[0, 1, 2], [2, 1, 0]]


# ---------------------------------------------------------------- annotation-tool exports


def coco_corpus(root):
    """A COCO export with one bad annotation of each kind beside good images -> (json, expected lines)."""
    from pycocotools import mask as mask_utils

    images_dir = root / "images"
    spec = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "road"}, {"id": 2, "name": "car"}]}
    for iid in range(1, 11):  # 1..6 good, 7..10 get one bad annotation each
        write_image(images_dir / f"im{iid}.png", seed=iid)
        spec["images"].append({"id": iid, "file_name": f"im{iid}.png", "height": H, "width": W})
        spec["annotations"].append({"id": 100 + iid, "image_id": iid, "category_id": 1 + iid % 2, "iscrowd": 0,
                                    "segmentation": [[1, 1, 20, 1, 20, 15, 1, 15]]})
    square = np.zeros((10, 10), np.uint8, order="F")
    square[2:5, 2:5] = 1
    wrong_size = mask_utils.encode(square)
    wrong_size["counts"] = wrong_size["counts"].decode()
    spec["annotations"] += [
        {"id": 1, "image_id": 999, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 2, "image_id": 7, "category_id": 77, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 3, "image_id": 8, "category_id": 1, "segmentation": [[1, 1, 5, 5]]},
        {"id": 4, "image_id": 9, "category_id": 2, "iscrowd": 1, "segmentation": wrong_size},
        {"id": 5, "image_id": 10, "category_id": 2, "segmentation": {"polygon": "no"}},
    ]
    spec["images"] += [{"id": 11, "file_name": "gone.png", "height": H, "width": W},
                       {"id": 12, "file_name": "small.png", "height": H, "width": W}]
    write_image(images_dir / "small.png", size=(16, 16))
    write_image(images_dir / "corrupt.png")
    spec["images"].append({"id": 13, "file_name": "corrupt.png", "height": H, "width": W})
    spec["annotations"].append({"id": 6, "image_id": 13, "category_id": 1, "iscrowd": 1,
                                "segmentation": {"size": [H, W], "counts": "!!"}})  # not RLE: met when drawn
    path = root / "annotations.json"
    path.write_text(json.dumps(spec))
    expected = [f"{path}: image 999, annotation 1: the image is not in 'images'",
                f"{path}: image 7, annotation 2: unknown category id 77",
                f"{path}: image 8, annotation 3: polygon with 2 point(s) (at least 3 needed)",
                f"{path}: image 9, annotation 4: RLE size 10x10 differs from the image's {W}x{H}",
                f"{path}: image 10, annotation 5: segmentation is neither polygons nor RLE",
                f"{path}: image 11 (gone.png): file not found in {root} or {images_dir}",
                f"{path}: image 12 (small.png): mask is {W}x{H} but its image is 16x16",
                f"{path}: image 13 (corrupt.png), annotation 6: cannot draw its segmentation (Invalid RLE mask "
                "representation)"]
    return path, expected


def test_a_bad_coco_export_gives_each_annotation_its_one_line(tmp_path, capsys, monkeypatch):
    import segtune.training.run

    path, expected = coco_corpus(tmp_path / "coco")
    result = subprocess.run(  # a real process: no traceback, no stray warning
        [sys.executable, "-m", "segtune", "inspect", "--data", str(path), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "Warning" not in result.stderr
    assert sorted(json.loads((tmp_path / "out" / "inspect.json").read_text())["blocking_problems"]) == sorted(expected)

    def tripwire(*args, **kwargs):
        pytest.fail("a model was built although the input is bad")

    monkeypatch.setattr(segtune.training.run, "load_model", tripwire)
    monkeypatch.setattr(segtune.training.run, "training_processor", tripwire)
    code = main(["train", "--data", str(path), "--output-dir", str(tmp_path / "run"), "--model", "mit-b0",
                 "--max_steps", "1"])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err
    lines = [line.removeprefix("segtune: error: ") for line in err.splitlines() if line.startswith("segtune: error:")]
    assert sorted(lines) == sorted(expected)
    assert not (tmp_path / "run").exists()
    data = load_data(path, val_split=0.3, seed=0)  # --skip-bad: the six good images
    assert checked_labels(data, None, skip_bad=True).names == ("background", "road", "car")
    assert sorted(s.image.name for s in data.train + data.val) == [f"im{i}.png" for i in range(1, 7)]


def test_bad_yolo_label_lines_each_get_their_line(tmp_path, capsys):
    root = tmp_path / "yolo"
    for stem in ("a", "b", "c", "d"):
        write_image(root / "images" / "train" / f"{stem}.jpg", seed=len(stem))
    labels = root / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "a.txt").write_text("0 0.1 0.1 0.9 0.1 0.5 0.9\n")
    (labels / "b.txt").write_text("0 0.1 0.1 0.9 0.1 0.5 0.9\n5 0.1 0.1 0.9 0.1 0.5 0.9\n1 0.5 0.5 0.2 0.2\n")
    (labels / "c.txt").write_text("1 0.1 0.1 0.9 0.1\nroad 0.1 0.1 0.9 0.1 0.5 0.9\n0 0.1 0.1 1.9 0.1 0.5 0.9\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [road, car]\nnc: 2\n")
    code = main(["inspect", "--data", str(root / "data.yaml"), "--output-dir", str(tmp_path / "out")])
    assert code == 1
    b, c = labels / "b.txt", labels / "c.txt"
    assert sorted(json.loads((tmp_path / "out" / "inspect.json").read_text())["blocking_problems"]) == sorted([
        f"{b}: line 2 (image b.jpg): class 5 is not one of the 2 classes 0..1 in 'names'",
        f"{b}: line 3 (image b.jpg): polygon with 2 point(s) (at least 3 needed) (a detection box: this needs "
        "segmentation labels)",
        f"{c}: line 1 (image c.jpg): polygon with 2 point(s) (at least 3 needed) (a detection box: this needs "
        "segmentation labels)",
        f"{c}: line 2 (image c.jpg): expected a class id and x y pairs, got 'road 0.1 0.1 0.9 0.1 0.5 0.9'",
        f"{c}: line 3 (image c.jpg): coordinates must be normalised to 0..1",
    ])
