"""Annotation-tool exports read as they are: COCO (RLE and polygons), YOLO segmentation labels,
Pascal VOC / CVAT mask folders and Label Studio brush PNGs, through every command."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segtune.cli import main
from segtune.data.sources import load_data
from segtune.errors import SegtuneError

from .conftest import save_tiny_model
from .helpers import H, W, write_image

NAMES = ["road", "car"]


def rle(binary: np.ndarray, compressed: bool = True) -> dict:
    """A COCO RLE of a 0/1 mask: compressed (string counts) or uncompressed (list counts, column-major)."""
    from pycocotools import mask as mask_utils

    if compressed:
        encoded = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
        return {"size": list(binary.shape), "counts": encoded["counts"].decode()}
    flat = binary.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = ([0] if flat[0] else []) + np.diff(bounds).tolist()  # runs start with the 0s
    return {"size": list(binary.shape), "counts": counts}


def coco_export(root, masks: dict, category_ids=(1, 2), offset=1, name="annotations.json", images_dir=None):
    """Images and a COCO JSON whose RLE annotations (one per class present) redraw `masks` {stem: ids}."""
    images_dir = images_dir or root
    images, annotations = [], []
    for i, (stem, mask) in enumerate(masks.items()):
        write_image(images_dir / f"{stem}.png", seed=i, size=(mask.shape[1], mask.shape[0]))
        images.append({"id": 100 + i, "file_name": f"{stem}.png", "height": mask.shape[0], "width": mask.shape[1]})
        for k, cid in enumerate(category_ids):
            if (mask == k + offset).any():
                annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": cid,
                                    "iscrowd": len(annotations) % 2, "segmentation": rle(mask == k + offset,
                                                                                         k % 2 == 0)})
    categories = [{"id": cid, "name": n} for cid, n in zip(category_ids, NAMES * 8)]
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories[::-1]}))
    return path


def random_masks(n=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return {f"img_{i}": rng.integers(0, classes, (H, W)) for i in range(n)}


def masks_of(data):
    return {s.image.stem: s.read_mask(data.rules) for s in data.train + data.val}


# ---------------------------------------------------------------- COCO


def test_coco_rle_both_ways_redraws_the_masks_exactly(tmp_path):
    masks = random_masks()
    path = coco_export(tmp_path, masks)
    data = load_data(path, val_split=0.25, seed=0)
    assert data.labels.names == ("background", "road", "car") and not data.problems
    drawn = masks_of(data)
    assert sorted(drawn) == sorted(masks)
    for stem, mask in masks.items():
        assert np.array_equal(drawn[stem], mask)
    sample = data.train[0]
    assert str(sample.mask).startswith(f"{path}: image 10")
    assert np.array_equal(pickle.loads(pickle.dumps(sample)).read_mask(data.rules), drawn[sample.image.stem])


def test_coco_polygons_follow_the_rasteriser_within_a_boundary_pixel(tmp_path):
    write_image(tmp_path / "images" / "a.png", size=(64, 48))
    triangle, square = [4.0, 4.0, 40.0, 6.0, 20.0, 40.0], [30.0, 10.0, 60.0, 10.0, 60.0, 44.0, 30.0, 44.0]
    spec = {"images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 64}],
            "categories": [{"id": 1, "name": "road"}, {"id": 2, "name": "car"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [triangle], "iscrowd": 0},
                            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [square], "iscrowd": 0}]}
    (tmp_path / "coco.json").write_text(json.dumps(spec))
    from segtune.data.sources.coco import coco_pairs

    (pair,) = coco_pairs(tmp_path / "coco.json", None, "class", 255, problems := [])
    assert pair.image == tmp_path / "images" / "a.png" and not problems  # found in images/ beside the JSON
    drawn = pair.mask.draw()
    reference = Image.new("L", (64, 48))
    draw = ImageDraw.Draw(reference)
    draw.polygon(triangle, fill=1)
    draw.polygon(square, fill=2)  # the square is the smaller: on top
    reference = np.array(reference)
    assert (drawn != reference).mean() < 0.06  # boundary pixels only
    assert (drawn == 2).sum() == pytest.approx(30 * 34, rel=0.1) and (drawn == 1).any()


def test_coco_overlap_puts_the_smaller_annotation_on_top_whatever_the_order(tmp_path):
    big, small = np.zeros((H, W), bool), np.zeros((H, W), bool)
    big[2:20, 2:30], small[5:10, 5:10] = True, True
    write_image(tmp_path / "a.png")
    for order in ((small, 2), (big, 1)), ((big, 1), (small, 2)):
        annotations = [{"id": i, "image_id": 1, "category_id": c, "segmentation": rle(m)}
                       for i, (m, c) in enumerate(order)]
        (tmp_path / "c.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}, {"id": 2, "file_name": "a.png",
                                                                                  "height": H, "width": W}],
            "categories": [{"id": 1, "name": "road"}, {"id": 2, "name": "car"}], "annotations": annotations}))
        data = load_data(tmp_path / "c.json", val_split=0.5, seed=0)
        by_id = {s.mask.image_id: s.read_mask(data.rules) for s in data.train + data.val}
        assert np.array_equal(by_id[1], np.where(small, 2, np.where(big, 1, 0)))
        assert not by_id[2].any()  # listed without annotations: all background


def test_coco_data_file_with_background_ignore(tmp_path):
    masks = random_masks(6)
    ignored = {s: np.where(m == 0, 255, m - 1) for s, m in masks.items()}  # categories 0..K-1
    train = dict(list(masks.items())[:4])
    val = dict(list(masks.items())[4:])
    coco_export(tmp_path, train, name="annotations/instances_train.json", images_dir=tmp_path / "images" / "train")
    coco_export(tmp_path, val, name="annotations/instances_val.json", images_dir=tmp_path / "images" / "val")
    (tmp_path / "data.yaml").write_text(
        "format: coco\npath: .\ntrain: {images: images/train, annotations: annotations/instances_train.json}\n"
        "val: {images: images/val, annotations: annotations/instances_val.json}\nbackground: ignore\n")
    data = load_data(tmp_path / "data.yaml")
    assert data.labels.names == ("road", "car") and len(data.train) == 4 and len(data.val) == 2
    for stem, mask in masks_of(data).items():
        assert np.array_equal(mask, ignored[stem])
    spec = json.loads((tmp_path / "annotations/instances_val.json").read_text())
    spec["categories"].append({"id": 0, "name": "background"})  # some tools list it: it is the class, id 0
    (tmp_path / "images/val/with_background.json").write_text(json.dumps(spec))  # beside its images
    assert load_data(tmp_path / "images/val/with_background.json", val_split=0.5, seed=0).labels.names == (
        "background", "road", "car")
    (tmp_path / "bad.yaml").write_text("format: coco\ntrain: {images: images/train}\nbackground: sometimes\n")
    with pytest.raises(SegtuneError, match="'background' must be 'class' or 'ignore'"):
        load_data(tmp_path / "bad.yaml")


def test_coco_rle_of_camvid_scores_exactly_like_its_png_masks(shared_data, tmp_path):
    """CamVid's validation masks as COCO RLE (11 = void: not covered, ignored) score as the PNGs do."""
    from segtune.data.reading import read_mask

    camvid = shared_data / "camvid-mini"
    names = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
             "Bicyclist"]
    images, annotations = [], []
    pred_dir = tmp_path / "predictions"
    pred_dir.mkdir()
    for i, path in enumerate(sorted((camvid / "valannot").glob("*.png"))):
        mask = read_mask(path)
        images.append({"id": i, "file_name": path.name, "height": mask.shape[0], "width": mask.shape[1]})
        for k in np.unique(mask[mask < 11]):
            annotations.append({"id": len(annotations), "image_id": i, "category_id": int(k) + 1,
                                "segmentation": rle(mask == k, compressed=i % 2 == 0), "iscrowd": i % 2})
        Image.fromarray(np.where(mask == 3, 4, np.roll(mask, 3, axis=1)).astype(np.uint8)).save(pred_dir / path.name)
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}
    (tmp_path / "val.json").write_text(json.dumps(coco))
    (tmp_path / "coco.yaml").write_text(f"format: coco\ntrain: {{images: {camvid / 'val'}, annotations: val.json}}\n"
                                        f"val: {{images: {camvid / 'val'}, annotations: val.json}}\n"
                                        "background: ignore\nignore_index: 11\n")
    (tmp_path / "png.yaml").write_text(f"path: {camvid}\ntrain: val\ntrain_masks: valannot\nval: val\n"
                                       f"val_masks: valannot\nnames: {json.dumps(names)}\nignore_index: 11\n")
    scores = {}
    for form in ("coco", "png"):
        out = tmp_path / f"out-{form}"
        assert main(["evaluate", "--predictions", str(pred_dir), "--data", str(tmp_path / f"{form}.yaml"),
                     "--output-dir", str(out), "--no-report"]) == 0
        scores[form] = json.loads((out / "metrics.json").read_text())
    assert scores["coco"]["num_images"] == 26
    for key in ("mean_iou", "overall_accuracy", "per_category_iou", "per_category_accuracy"):
        assert scores["coco"][key] == scores["png"][key], key


# ---------------------------------------------------------------- YOLO


def yolo_export(root, with_extra_keys=True):
    """An Ultralytics layout: images/{train,val}, labels/{train,val}, data.yaml with names as a mapping."""
    for split, stems in (("train", ["a", "b", "c"]), ("val", ["d"])):
        for i, stem in enumerate(stems):
            write_image(root / "images" / split / f"{stem}.jpg", seed=i, size=(40, 20))
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    # a: a car box right half; b: road triangle; c: no label file (background); d: both
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0 1 0 1 1 0.5 1\n")
    (root / "labels" / "train" / "b.txt").write_text("0 0 0 1 0 0 1\n")
    (root / "labels" / "val" / "d.txt").write_text("0 0 0 1 0 1 1 0 1\n1 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n")
    extra = "nc: 2\ntest:\ndownload: https://example.com/x.zip\n" if with_extra_keys else ""
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\n{extra}"
                                    "names:\n  0: road\n  1: car\n")
    return root / "data.yaml"


def test_an_ultralytics_data_yaml_works_as_it_is(tmp_path):
    data = load_data(yolo_export(tmp_path))
    assert data.labels.names == ("background", "road", "car") and not data.problems
    assert [s.image.name for s in data.train] == ["a.jpg", "b.jpg", "c.jpg"] and len(data.val) == 1
    drawn = masks_of(data)
    assert drawn["a"].shape == (20, 40)
    assert (drawn["a"][:, 21:] == 2).all() and (drawn["a"][:, :19] == 0).all()  # class 1 -> id 2
    assert (drawn["b"][0, :30] == 1).all() and drawn["b"][19, 39] == 0
    assert not drawn["c"].any()
    assert (drawn["d"][8:12, 15:25] == 2).all() and drawn["d"][1, 1] == 1  # the smaller car over the road
    (tmp_path / "forced.yaml").write_text("format: yolo\ntrain: images/train\nnames: [road, car]\n"
                                          "background: ignore\n")
    forced = load_data(tmp_path / "forced.yaml", val_split=0.34, seed=0)
    assert forced.labels.names == ("road", "car")
    assert (masks_of(forced)["c"] == 255).all() and (masks_of(forced)["a"][:, 21:] == 1).all()


# ---------------------------------------------------------------- VOC / CVAT


def voc_folder(root, masks: dict, labelmap: str | None, palette_mode: bool):
    from segtune.data.sources.voc import voc_palette

    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    colours = voc_palette()
    if labelmap is not None:
        (root / "labelmap.txt").write_text(labelmap)
        colours = np.array([[0, 0, 0], [250, 50, 83], [51, 221, 255]] + [[0, 0, 0]] * 253, np.uint8)
        colours[255] = (224, 224, 192)
    for i, (stem, mask) in enumerate(masks.items()):
        write_image(root / "JPEGImages" / f"{stem}.jpg", seed=i)
        (root / "SegmentationClass").mkdir(exist_ok=True)
        if palette_mode:
            img = Image.fromarray(mask.astype(np.uint8), mode="P")
            img.putpalette(colours.ravel().tolist())
        else:
            img = Image.fromarray(colours[mask])
        img.save(root / "SegmentationClass" / f"{stem}.png")
    stems = list(masks)
    (root / "ImageSets" / "Segmentation" / ("train.txt" if labelmap is None else "default.txt")).write_text(
        "\n".join(stems[:3]) + "\n")
    if labelmap is None:
        (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(stems[3:]) + "\n")
    return root


def test_pascal_voc_palette_masks_and_boundary(tmp_path):
    masks = random_masks(5, classes=21)
    for m in masks.values():
        m[0, :] = 255  # VOC's boundary
    data = load_data(voc_folder(tmp_path / "voc", masks, None, palette_mode=True))
    assert data.labels.names[:2] == ("background", "aeroplane") and len(data.labels) == 21
    assert len(data.train) == 3 and len(data.val) == 2 and not data.val_is_split
    for stem, mask in masks_of(data).items():
        assert np.array_equal(mask, masks[stem])
    rgb = load_data(voc_folder(tmp_path / "voc-rgb", masks, None, palette_mode=False))  # same, saved as RGB
    for stem, mask in masks_of(rgb).items():
        assert np.array_equal(mask, masks[stem])


def test_cvat_segmentation_mask_export_with_labelmap(tmp_path):
    masks = random_masks(5)
    masks["img_0"][0, :5] = 255
    labelmap = "# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:250,50,83::\ncar:51,221,255::\n"
    root = voc_folder(tmp_path / "cvat", masks, labelmap, palette_mode=False)
    data = load_data(root, val_split=0.4, seed=0)
    assert data.labels.names == ("background", "road", "car") and data.val_is_split
    assert data.labels.colors[1].tolist() == [250, 50, 83]
    drawn = masks_of(data)
    assert len(drawn) == 3  # default.txt lists three
    for stem, mask in drawn.items():
        assert np.array_equal(mask, masks[stem])
    (tmp_path / "cvat.yaml").write_text("format: cvat\npath: cvat\n")
    assert masks_of(load_data(tmp_path / "cvat.yaml", val_split=0.4, seed=0)).keys() == drawn.keys()
    Image.fromarray(np.full((H, W, 3), 77, np.uint8)).save(root / "SegmentationClass" / "img_1.png")
    bad = next(s for s in data.train + data.val if s.image.stem == "img_1")
    with pytest.raises(SegtuneError, match=r"img_1\.png: mask colour \(77, 77, 77\) is not in the labelmap"):
        bad.read_mask(data.rules)


def test_export_check_data_and_show_gt_read_a_voc_folders_masks(tmp_path):
    # export --check-data and predict --show-gt ask one question (segtune.sources.is_dataset): a VOC
    # folder is a dataset, so its masks are read, not taken for a folder of plain images.
    from segtune.exporting.run import check_images
    from segtune.prediction.inputs import ground_truth_masks

    masks = random_masks(5, classes=21)
    root = voc_folder(tmp_path / "voc", masks, None, palette_mode=True)
    source, images, ignore = check_images(str(root), 2, None)
    assert len(images) == 2 and ignore == 255
    for image, mask in images:
        assert mask is not None and mask.shape == (image.height, image.width)
        assert any(np.array_equal(mask, m) for m in masks.values())
    pairs, rules = ground_truth_masks(root)
    assert rules is not None and sorted(p.stem for p in pairs) == sorted(masks)


# ---------------------------------------------------------------- Label Studio


def brush(path, on: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((on * 255).astype(np.uint8), mode="L").save(path)


def test_label_studio_brushes_merge_into_one_mask(tmp_path):
    root = tmp_path / "ls"
    road, car = np.zeros((H, W), bool), np.zeros((H, W), bool)
    road[10:, :], car[12:16, 4:12] = True, True
    for task in (1, 2, 3):
        write_image(root / "images" / f"{task}.jpg", seed=task)
        brush(root / "masks" / f"task-{task}-annotation-{task}-by-1-tag-road-0.png", road)
        brush(root / "masks" / f"task-{task}-annotation-{task}-by-1-tag-car-0.png", car)
    brush(root / "masks" / "task-4-whatever-car.png", car)  # the short form: the last part is the label
    write_image(root / "images" / "ab12cd34-street.jpg", seed=4)
    (root / "tasks.json").write_text(json.dumps([{"id": 4, "data": {"image": "/data/upload/1/ab12cd34-street.jpg"}}]))
    data = load_data(root, val_split=0.25, seed=0)
    assert data.labels.names == ("background", "car", "road") and not data.problems
    drawn = masks_of(data)
    assert sorted(drawn) == ["1", "2", "3", "ab12cd34-street"]
    assert np.array_equal(drawn["1"], np.where(car, 1, np.where(road, 2, 0)))  # the smaller car on top
    assert np.array_equal(drawn["ab12cd34-street"], car.astype(int))
    (root / "data.yaml").write_text("format: label-studio\ntrain: {images: images, masks: masks}\n"
                                    "names: [background, road, car, person]\n")
    named = load_data(root / "data.yaml", val_split=0.25, seed=0)
    assert named.labels.names == ("background", "road", "car", "person")
    assert np.array_equal(masks_of(named)["1"], np.where(car, 2, np.where(road, 1, 0)))


# ---------------------------------------------------------------- the commands


def test_commands_read_a_coco_json(tmp_path):
    masks = random_masks(4)
    path = coco_export(tmp_path / "data", masks)
    out = tmp_path / "inspect"
    assert main(["inspect", "--data", str(path), "--output-dir", str(out)]) == 0
    report = json.loads((out / "inspect.json").read_text())
    assert report["blocking_problems"] == []
    pixels = sum(m.size for m in masks.values())
    assert [(c["name"], c["pixel_share"]) for c in report["classes"]] == [
        (name, round(sum(int((m == k).sum()) for m in masks.values()) / pixels, 6))
        for k, name in enumerate(["background", "road", "car"])]
    model = save_tiny_model(tmp_path / "model", ["background", "road", "car"])
    scores = {}
    for form, data in (("coco", path), ("png", tmp_path / "png")):
        if form == "png":
            for stem, mask in masks.items():
                write_image(data / "images" / f"{stem}.png", seed=list(masks).index(stem))
                Image.fromarray(mask.astype(np.uint8)).save((data / "annotations").mkdir(parents=True, exist_ok=True)
                                                            or data / "annotations" / f"{stem}.png")
        assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all",
                     "--output-dir", str(tmp_path / form), "--no-report"]) == 0
        scores[form] = json.loads((tmp_path / form / "metrics.json").read_text())
    assert scores["coco"]["mean_iou"] == scores["png"]["mean_iou"]
    assert scores["coco"]["per_category_iou"] == scores["png"]["per_category_iou"]
    out = tmp_path / "predict"
    assert main(["predict", "--model", str(model), str(tmp_path / "data"), "--output-dir", str(out),
                 "--show-gt", str(path)]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["pixel_accuracy"] is not None for r in records)


def test_predict_show_gt_reads_a_voc_folder(tmp_path):
    masks = random_masks(4, classes=21)
    root = voc_folder(tmp_path / "voc", masks, None, palette_mode=True)
    model = save_tiny_model(tmp_path / "model", ["background", "aeroplane", "bicycle"])
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(root / "JPEGImages"), "--output-dir", str(out),
                 "--show-gt", str(root)]) == 0
    records = {json.loads(line)["image"]: json.loads(line) for line in (out / "predictions.jsonl").read_text()
               .splitlines()}
    stem = "img_0"
    pred = np.array(Image.open(out / f"{stem}.png"))
    (record,) = [r for name, r in records.items() if stem in name]
    assert record["pixel_accuracy"] == pytest.approx((pred == masks[stem]).mean(), abs=1e-6)


def test_train_on_a_yolo_export_in_worker_processes(tmp_path, tiny_model_dir):
    """The masks are drawn in the DataLoader's worker processes; the classes reach the model's id2label."""
    data = yolo_export(tmp_path / "yolo")
    out = tmp_path / "run"
    args = ["train", "--data", data, "--model", tiny_model_dir, "--output-dir", out, "--base-size", "32",
            "--crop-size", "32", "--max_steps", "2", "--eval_steps", "2", "--per_device_train_batch_size", "2",
            "--dataloader-num-workers", "1", "--disable_tqdm", "true", "--no-report"]
    assert main([str(a) for a in args]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "background", "1": "road", "2": "car"}
