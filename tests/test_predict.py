"""Prediction: batching, sliding windows, TTA, the outputs of `segtune predict` and the error map."""

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.cli import main
from segtune.data.drawing import error_map
from segtune.data.labels import LabelSet
from segtune.errors import SegtuneError
from segtune.inference.geometry import slide_windows, window_counts
from segtune.inference.segmenter import Segmenter
from segtune.models.folding import FoldedSegformerHead
from segtune.prediction.inputs import collect_images
from segtune.prediction.run import load_probabilities, predict_images

from .conftest import tiny_segformer

SCALE = 32  # the tiny models' training scale (processor shortest_edge)


def rgb(seed, width, height):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def processor(scale=SCALE):
    from transformers import SegformerImageProcessorPil

    return SegformerImageProcessorPil(size={"shortest_edge": scale}, do_reduce_labels=False)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return tiny_segformer(3).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("predict-model")
    tiny.save_pretrained(path)
    processor().save_pretrained(path)
    LabelSet.from_names(["a", "b", "c"]).to_json(path / "labels.json")
    return path


class PixelModel(torch.nn.Module):
    """A stand-in model whose logits are a fixed 1x1 conv of each input pixel (no downsampling):
    exactly equivariant to flips and crops, so slide and TTA results are known in advance."""

    def __init__(self, num_labels=3):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, num_labels, 1)
        self.config = SimpleNamespace(id2label={i: f"c{i}" for i in range(num_labels)})

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.conv(pixel_values))


def assert_several_classes(*label_maps, least=2):
    """Equal label maps prove little when they hold one class only: each compared map must hold several."""
    for label_map in label_maps:
        assert len(np.unique(label_map)) >= least, f"classes {np.unique(label_map).tolist()}"


def transformers_label_map(model, image):
    """Plain transformers: processor, model, post_process_semantic_segmentation at the image size."""
    proc = processor()
    with torch.no_grad():
        outputs = model(**proc(images=image, return_tensors="pt"))
    return proc.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].numpy()


# ---------------------------------------------------------------- windows


def test_slide_windows_follow_mmseg_grid():
    # 682 x 512 (a 480 x 360 image at short side 512), crop 512, stride 341: two windows, the
    # second shifted back to end at the right border; the overlap is covered twice.
    windows = slide_windows(512, 682, 512, 341)
    assert windows == [(0, 512, 0, 512), (0, 512, 170, 682)]
    counts = window_counts(512, 682, windows)
    assert counts[0, :170].tolist() == [1] * 170 and (counts[:, 170:512] == 2).all() and (counts[:, 512:] == 1).all()

    windows = slide_windows(1000, 1000, 512, 341)
    assert [w[0] for w in windows[::3]] == [0, 341, 488]  # rows: 0, 341, then shifted back to 1000 - 512
    assert all(y2 - y1 == 512 and x2 - x1 == 512 for y1, y2, x1, x2 in windows) and len(windows) == 9
    counts = window_counts(1000, 1000, windows)
    assert counts.min() >= 1 and counts.sum() == 9 * 512 * 512
    assert counts[500, 500] == 9 and counts[400, 100] == 2 and counts[100, 100] == 1  # 488..511: all three rows

    assert slide_windows(80, 100, 512, 341) == [(0, 80, 0, 100)]  # smaller than a window: one window
    assert slide_windows(10, 30, (10, 12), (10, 9)) == [(0, 10, 0, 12), (0, 10, 9, 21), (0, 10, 18, 30)]


def test_slide_averages_overlapping_window_logits():
    segmenter = Segmenter(PixelModel(), processor(), LabelSet.numbered(3), crop_size=16, stride=5, batch_size=4)
    pixel_values = segmenter.prepare(rgb(0, 48, 32)).inputs[0][1]
    assert pixel_values.shape == (3, 32, 48)
    assert len(slide_windows(32, 48, 16, 5)) > 20  # many overlaps, batched in chunks of 4
    with torch.inference_mode():
        slid = segmenter._slide(pixel_values)
        whole = segmenter.model(pixel_values[None]).logits[0]
    # each pixel's logits are its windows' (identical) logits summed and divided by their count
    assert torch.allclose(slid, whole, atol=1e-5)


def test_slide_equals_whole_on_an_image_within_one_window(tiny):
    image = rgb(2, 45, 30)
    whole = Segmenter(tiny, processor(), LabelSet.numbered(3), mode="whole")
    slide = Segmenter(tiny, processor(), LabelSet.numbered(3), mode="slide", crop_size=64)
    assert_several_classes(whole(image), least=3)
    assert np.array_equal(slide(image), whole(image))
    assert np.array_equal(whole(image), transformers_label_map(tiny, Image.fromarray(image)))


def test_auto_mode_slides_only_over_long_images(tiny):
    segmenter = Segmenter(tiny, processor(), LabelSet.numbered(3))  # crop = training scale = 32
    assert segmenter.mode_for(480, 640) == "whole" and segmenter.mode_for(100, 300) == "slide"
    item = segmenter.prepare(rgb(3, 200, 20))  # 200 x 20 -> 320 x 32 at the training scale: 10 crops long
    assert item.mode == "slide" and tuple(item.inputs[0][1].shape) == (3, 32, 320)
    label_map = segmenter(rgb(3, 200, 20))
    assert label_map.shape == (20, 200) and label_map.min() >= 0 and label_map.max() < 3


# ---------------------------------------------------------------- whole mode, batching


def test_batched_prediction_equals_one_at_a_time_and_transformers(tiny):
    sizes = [(40, 30), (30, 40), (40, 30), (50, 50), (40, 30), (30, 40), (40, 30), (64, 48)]
    images = [Image.fromarray(rgb(i, w, h)) for i, (w, h) in enumerate(sizes)]
    batched = Segmenter(tiny, processor(), LabelSet.numbered(3), batch_size=3, num_workers=2)
    single = Segmenter(tiny, processor(), LabelSet.numbered(3), batch_size=1, num_workers=0)
    passes = []
    hook = tiny.register_forward_pre_hook(lambda m, args, kwargs: passes.append(kwargs["pixel_values"].shape),
                                          with_kwargs=True)
    try:
        got = batched.predict(images)
    finally:
        hook.remove()
    assert max(shape[0] for shape in passes) == 3 and len(passes) < len(images)  # batches were formed
    assert sum(shape[0] for shape in passes) == len(images)
    for image, label_map in zip(images, got):
        assert label_map.shape == (image.height, image.width)
        assert_several_classes(label_map)
        assert np.array_equal(label_map, single(image))
        assert np.array_equal(label_map, transformers_label_map(tiny, image))


def test_segmenter_from_pretrained_probabilities_and_overlay(model_dir):
    segmenter = Segmenter.from_pretrained(model_dir, device="cpu")
    image = rgb(4, 40, 30)
    label_map, probs = segmenter.predict([image], probabilities=True)[0]
    assert probs.shape == (3, 30, 40) and probs.dtype == np.float32
    assert np.allclose(probs.sum(0), 1, atol=1e-5) and np.array_equal(probs.argmax(0), label_map)
    drawn = segmenter.overlay(image, alpha=1.0)
    assert drawn.shape == (30, 40, 3) and np.array_equal(drawn, segmenter.labels.colors[label_map])
    with pytest.raises(SegtuneError, match="--device"):
        Segmenter.from_pretrained(model_dir, device="tpu")


def test_bfloat16_agrees_with_float32_on_almost_every_pixel(model_dir):
    # Images on which the model predicts all three classes (each on >= 10% of the pixels), so the
    # agreement is not that of a one-class map (chance would be far lower); measured: 99.2% and
    # 99.6% of the pixels agree (bfloat16 moves near-tied pixels only).
    images = [rgb(6, 64, 48), rgb(10, 64, 48)]
    full = Segmenter.from_pretrained(model_dir, device="cpu").predict(images)
    bf16 = Segmenter.from_pretrained(model_dir, device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    for want, got in zip(full, bf16.predict(images)):
        assert got.shape == want.shape
        assert (np.bincount(want.ravel(), minlength=3) / want.size).min() >= 0.1
        assert (got == want).mean() >= 0.97


def test_folded_head_matches_the_original_head(tiny):
    pixel_values = processor()(images=Image.fromarray(rgb(6, 64, 48)), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        tiny.decode_head.batch_norm.running_mean.normal_()  # non-trivial BatchNorm statistics to fold
        tiny.decode_head.batch_norm.running_var.uniform_(0.5, 2.0)
        try:
            want = tiny(pixel_values=pixel_values).logits
            original, tiny.decode_head = tiny.decode_head, FoldedSegformerHead(tiny.decode_head)
            got = tiny(pixel_values=pixel_values).logits
        finally:
            tiny.decode_head = original
            tiny.decode_head.batch_norm.reset_running_stats()
    assert torch.allclose(got, want, atol=1e-5)


def test_fold_head_defaults_on_cpu_and_agrees_with_the_exact_path(model_dir):
    exact = Segmenter.from_pretrained(model_dir, device="cpu")
    folded = Segmenter.from_pretrained(model_dir, device="cpu", fold_head=True)
    assert (exact.batch_size, exact.channels_last, exact.fold_head) == (4, False, False)
    assert (folded.batch_size, folded.channels_last, folded.fold_head) == (1, True, True)
    assert isinstance(folded.model.decode_head, FoldedSegformerHead)
    patch_conv = folded.model.segformer.stages[0].patch_embeddings.proj.weight  # a 7x7 kernel: formats differ
    assert patch_conv.is_contiguous(memory_format=torch.channels_last) and not patch_conv.is_contiguous()
    images = [rgb(20 + i, 64, 48) for i in range(3)]
    for want, got in zip(exact.predict(images), folded.predict(images)):
        assert_several_classes(want)
        assert got.shape == want.shape and (got == want).mean() > 0.99


def test_the_command_folds_a_segformer_on_cpu_by_default_and_fold_head_false_keeps_the_exact_head(model_dir, tmp_path):
    from segtune.cli import main

    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(rgb(21, 64, 48)).save(image)
    for flags, folded in (([], True), (["--fold-head", "false"], False)):
        out = tmp_path / f"out-{folded}"
        assert main(["predict", str(image), "--model", str(model_dir), "--output-dir", str(out), *flags]) == 0
        summary = json.loads((out / "predict.json").read_text())
        assert summary["fold_head"] is folded and summary["batch_size"] == (1 if folded else 4)


# ---------------------------------------------------------------- runners


class NumpyRunner:
    """A runner that is no torch module: a plain callable from pixel values to logits, with device
    and dtype, returning numpy as ONNX Runtime or OpenVINO would."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, model):
        self.net, self.shapes = model, []

    def __call__(self, pixel_values):
        self.shapes.append(tuple(pixel_values.shape))
        with torch.no_grad():
            return self.net(pixel_values=pixel_values).logits.numpy()


@pytest.mark.parametrize("mode,scale,options", [("whole", SCALE, {}),
                                               ("slide", 64, {"crop_size": 32, "stride": 24, "batch_size": 4})])
def test_a_custom_runner_gives_the_label_maps_of_the_torch_model(tiny, tmp_path, mode, scale, options):
    images = [rgb(6, 64, 48), rgb(10, 64, 48), rgb(2, 45, 30)]
    runner = NumpyRunner(tiny)
    custom = Segmenter(runner, processor(scale), LabelSet.numbered(3), mode=mode, **options)
    direct = Segmenter(tiny, processor(scale), LabelSet.numbered(3), mode=mode, **options)
    assert custom.runner is runner and custom.model is None and direct.model is tiny
    got, want = custom.predict(images, probabilities=True), direct.predict(images, probabilities=True)
    for (label_map, probs), (want_map, want_probs) in zip(got, want):
        assert_several_classes(want_map, least=3)
        assert np.array_equal(label_map, want_map) and np.array_equal(probs, want_probs)
    if mode == "slide":  # 85 x 64 and 96 x 64 at the training scale: 3 x 4 windows each, 4 per call
        assert set(runner.shapes) == {(4, 3, 32, 32)} and len(runner.shapes) == 3 * 3
    else:
        assert {shape[-2:] for shape in runner.shapes} == {(32, 42), (32, 48)}
    with pytest.raises(SegtuneError, match="--fold-head: only for SegFormer models run by torch, not NumpyRunner"):
        Segmenter(runner, processor(), LabelSet.numbered(3), fold_head=True)

    Image.fromarray(images[0]).save(tmp_path / "x.png")  # the outputs need nothing but the runner
    predict_images(custom, [tmp_path / "x.png"], tmp_path / "out", progress=False)
    assert np.array_equal(np.array(Image.open(tmp_path / "out" / "x.png")), want[0][0])
    summary = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert (summary["model"], summary["device"], summary["dtype"]) == (None, "cpu", "float32")


# ---------------------------------------------------------------- TTA


def test_tta_with_one_scale_and_no_flip_equals_whole(tiny):
    image = rgb(7, 50, 34)
    whole = Segmenter(tiny, processor(), LabelSet.numbered(3), mode="whole")
    tta = Segmenter(tiny, processor(), LabelSet.numbered(3), mode="whole", tta=True, scales=(1.0,), flip=False)
    assert_several_classes(whole(image))
    assert np.array_equal(tta(image), whole(image))


def test_tta_flip_leaves_a_flip_equivariant_model_unchanged():
    model, image = PixelModel(), rgb(8, 48, 32)
    whole = Segmenter(model, processor(), LabelSet.numbered(3), mode="whole")
    flipped = Segmenter(model, processor(), LabelSet.numbered(3), mode="whole", tta=True, scales=(1.0,), flip=True)
    assert_several_classes(whole(image), least=3)
    assert np.array_equal(flipped(image), whole(image))
    assert np.array_equal(flipped.probabilities(image), whole.probabilities(image))


def test_full_tta_averages_probabilities(tiny):
    image = rgb(9, 40, 32)
    segmenter = Segmenter(tiny, processor(64), LabelSet.numbered(3), tta=True)  # 6 scales x 2 flips
    assert [ratio for ratio, _ in segmenter.prepare(image).inputs] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert [tuple(pv.shape[-2:]) for _, pv in segmenter.prepare(image).inputs][::5] == [(32, 40), (112, 140)]
    label_map, probs = segmenter.predict([image], probabilities=True)[0]
    assert probs.shape == (3, 32, 40) and np.allclose(probs.sum(0), 1, atol=1e-5)
    assert np.array_equal(label_map, probs.argmax(0))


# ---------------------------------------------------------------- inputs


def test_collect_images_files_folders_globs_and_recursion(tmp_path):
    for rel in ("a.png", "b.jpg", "sub/c.png", "sub/deeper/d.png", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb(0, 8, 8)).save(tmp_path / rel, format="PNG") if rel.endswith(".png") else \
            (tmp_path / rel).write_bytes(b"x")
    Image.fromarray(rgb(0, 8, 8)).save(tmp_path / "b.jpg")
    assert [e.name for e in collect_images([tmp_path])] == ["a", "b"]
    assert [e.name for e in collect_images([tmp_path], recursive=True)] == ["a", "b", "sub/c", "sub/deeper/d"]
    assert [e.name for e in collect_images([str(tmp_path / "**" / "*.png")])] == ["a", "c", "d"]
    assert [e.name for e in collect_images([tmp_path / "a.png", tmp_path / "a.png"])] == ["a"]  # given twice
    with pytest.raises(SegtuneError, match="no image matches"):
        collect_images([str(tmp_path / "*.tif")])
    (tmp_path / "other").mkdir()
    Image.fromarray(rgb(0, 8, 8)).save(tmp_path / "other" / "a.png")
    with pytest.raises(SegtuneError, match="both would be written"):
        collect_images([tmp_path / "a.png", tmp_path / "other" / "a.png"])


# ---------------------------------------------------------------- the command


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    # seeds on which the tiny model predicts all three classes (seed 12 for p2 gave one class only)
    for name, size, seed in [("p0", (40, 30), 10), ("p1", (30, 40), 11), ("sub/p2", (40, 30), 17)]:
        Image.fromarray(rgb(seed, *size)).save(folder / f"{name}.png")
    return folder


def test_predict_command_writes_every_output(model_dir, photos, tmp_path):
    out = tmp_path / "out"
    args = ["predict", "--model", model_dir, photos, "--recursive", "--output-dir", out, "--save-probs",
            "--batch-size", "2", "--alpha", "0.4"]
    assert main([str(a) for a in args]) == 0
    segmenter = Segmenter.from_pretrained(model_dir)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == [str(photos / n) for n in ("p0.png", "p1.png", "sub/p2.png")]
    for name, record in zip(("p0", "p1", "sub/p2"), records):
        image = np.array(Image.open(photos / f"{name}.png"))
        want = segmenter(image)
        assert_several_classes(want)
        label_png = Image.open(out / f"{name}.png")
        assert label_png.mode == "P" and np.array_equal(np.array(label_png), want)
        assert np.array_equal(np.array(Image.open(out / "color" / f"{name}.png")), segmenter.labels.colors[want])
        assert Image.open(out / "overlay" / f"{name}.jpg").size == (image.shape[1], image.shape[0])
        probs = load_probabilities(out / "probs" / f"{name}.npz")
        assert probs.shape == (3, *image.shape[:2]) and np.abs(probs.sum(0) - 1).max() <= 3 / 255
        at_label = np.take_along_axis(probs, want[None], 0)[0]
        assert (at_label >= probs.max(0) - 1 / 255).all()  # the label's probability is the largest, to rounding
        shares = record["class_share"]
        assert abs(sum(shares.values()) - 1) < 1e-4 and record["mode"] == "whole" and record["size"] == [
            image.shape[1], image.shape[0]]
        for cls, share in shares.items():
            assert share == pytest.approx((want == segmenter.labels.names.index(cls)).mean(), abs=1e-6)


def test_predict_skips_done_images_unless_overwrite(model_dir, photos, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_dir), str(photos / "p0.png"), "--output-dir", str(out)]) == 0
    first = (out / "p0.png").stat().st_mtime_ns
    os.utime(out / "p0.png", ns=(first - 10**9, first - 10**9))
    before = (out / "p0.png").stat().st_mtime_ns
    assert main(["predict", "--model", str(model_dir), str(photos), "--output-dir", str(out)]) == 0
    assert (out / "p0.png").stat().st_mtime_ns == before  # skipped
    assert (out / "p1.png").is_file()
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["image"] for line in lines] == [str(photos / "p0.png"), str(photos / "p1.png")]
    assert main(["predict", "--model", str(model_dir), str(photos), "--output-dir", str(out), "--overwrite"]) == 0
    assert (out / "p0.png").stat().st_mtime_ns != before
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2


def test_predict_show_gt_draws_four_panels(model_dir, photos, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for name, (w, h) in (("p0", (40, 30)), ("p1", (30, 40))):
        values = np.random.default_rng(0).integers(0, 3, (h, w))
        values[:4] = 255
        Image.fromarray(values.astype(np.uint8)).save(masks / f"{name}.png")
    out = tmp_path / "out"
    args = ["predict", "--model", model_dir, photos, "--output-dir", out, "--show-gt", masks]
    assert main([str(a) for a in args]) == 0
    with Image.open(out / "compare" / "p0.png") as figure:
        assert figure.format == "PNG" and figure.width > 3 * figure.height  # four panels side by side
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    gt = np.array(Image.open(masks / "p0.png")).astype(np.int64)
    pred = np.array(Image.open(out / "p0.png"))
    assert record["pixel_accuracy"] == pytest.approx((gt == pred)[gt != 255].mean(), abs=1e-6)


def test_predict_show_gt_reads_masks_by_the_data_files_rules(model_dir, photos, tmp_path):
    """CamVid-style: void stored as 11 and ignored, and a label_map (7 -> 2); the command line wins."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    stored = {}
    for seed, name in enumerate(("p0", "p1")):
        shutil.copy(photos / f"{name}.png", data / "images" / f"{name}.png")
        w, h = Image.open(photos / f"{name}.png").size
        stored[name] = np.random.default_rng(seed).choice([0, 1, 7, 11], (h, w))
        Image.fromarray(stored[name].astype(np.uint8)).save(data / "masks" / f"{name}.png")
    (data / "data.yaml").write_text("train: images\ntrain_masks: masks\nnames: [a, b, c]\nignore_index: 11\n"
                                    "label_map: {7: 2}\n")

    def accuracies(out, *options):
        args = ["predict", "--model", model_dir, photos, "--output-dir", out, "--show-gt", data / "data.yaml", *options]
        assert main([str(a) for a in args]) == 0
        return {Path(r["image"]).stem: r["pixel_accuracy"]
                for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}

    by_file = accuracies(tmp_path / "out")
    by_option = accuracies(tmp_path / "out-255", "--ignore-index", "255")
    for name, values in stored.items():
        pred = np.array(Image.open(tmp_path / "out" / f"{name}.png"))
        gt = np.where(values == 7, 2, values)
        assert by_file[name] == pytest.approx((pred == gt)[gt != 11].mean(), abs=1e-6)  # 11 ignored, 7 read as 2
        assert by_option[name] == pytest.approx((pred == gt).mean(), abs=1e-6)  # 11 scored: --ignore-index won
    summary = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert summary["mean_pixel_accuracy"] == pytest.approx(np.mean(list(by_file.values())), abs=1e-6)


def test_predict_show_gt_matches_masks_by_relative_path(model_dir, photos, tmp_path, capsys):
    Image.fromarray(rgb(20, 40, 30)).save(photos / "sub" / "p0.png")  # two images named p0
    mirrored = tmp_path / "mirrored"
    for i, name in enumerate(("p0", "p1", "sub/p0", "sub/p2")):
        size = Image.open(photos / f"{name}.png").size
        (mirrored / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(size[::-1], i % 3, dtype=np.uint8)).save(mirrored / f"{name}.png")
    out = tmp_path / "out"
    args = ["predict", "--model", model_dir, photos, "--recursive", "--output-dir", out, "--show-gt", mirrored]
    assert main([str(a) for a in args]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {r["image"]: r["ground_truth"] for r in records} == {
        str(photos / f"{n}.png"): str(mirrored / f"{n}.png") for n in ("p0", "p1", "sub/p0", "sub/p2")}
    for r in records:  # each image scored against its own mask (each mask one class)
        name = Path(r["label_map"]).relative_to(out).with_suffix("").as_posix()
        pred = np.array(Image.open(r["label_map"]))
        want = ("p0", "p1", "sub/p0", "sub/p2").index(name) % 3
        assert r["pixel_accuracy"] == pytest.approx((pred == want).mean(), abs=1e-6)

    flat = tmp_path / "flat"  # one p0.png for two images named p0: which one is it?
    flat.mkdir()
    for name in ("p0", "p1", "sub/p2"):
        shutil.copy(mirrored / f"{name}.png", flat / f"{Path(name).name}.png")
    args[-1], args[-3] = flat, tmp_path / "out-flat"
    assert main([str(a) for a in args]) == 1
    err = capsys.readouterr().err
    assert err.count("segtune: error:") == 1 and str(photos / "p0.png") in err and str(photos / "sub" / "p0.png") in err

    twice = tmp_path / "twice"  # two masks named p1 in sub-folders, for an image outside both
    for folder in ("a", "b"):
        (twice / folder).mkdir(parents=True)
        shutil.copy(mirrored / "p1.png", twice / folder / "p1.png")
    args = ["predict", "--model", model_dir, photos / "p1.png", "--output-dir", tmp_path / "out-twice",
            "--show-gt", twice]
    assert main([str(a) for a in args]) == 1
    err = capsys.readouterr().err
    assert str(twice / "a" / "p1.png") in err and str(twice / "b" / "p1.png") in err


def test_predict_writes_a_summary_json(model_dir, photos, tmp_path):
    out = tmp_path / "out"
    args = ["predict", "--model", model_dir, photos, "--recursive", "--output-dir", out, "--device", "cpu"]
    assert main([str(a) for a in args]) == 0
    summary = json.loads((out / "predict.json").read_text())
    assert summary["images"] == summary["segmented"] == 3 and summary["skipped"] == 0
    assert summary["model"] == str(model_dir) and summary["mode"] == "auto" and summary["modes_used"] == {"whole": 3}
    assert summary["device"] == "cpu" and summary["dtype"] == "float32" and summary["tta"] is False
    rate = summary["images_per_second"]  # of the unrounded seconds: agrees to the rounding of seconds
    assert summary["seconds"] > 0 and rate * summary["seconds"] == pytest.approx(3, abs=0.0006 * rate + 0.001)
    maps = [np.array(Image.open(out / f"{n}.png")) for n in ("p0", "p1", "sub/p2")]
    ids, counts = np.unique(np.concatenate([m.ravel() for m in maps]), return_counts=True)
    want = {["a", "b", "c"][i]: c / counts.sum() for i, c in zip(ids, counts)}
    assert list(summary["class_share"]) == sorted(want) and summary["class_share"] == pytest.approx(want, abs=1e-5)
    assert "mean_pixel_accuracy" not in summary

    assert main([str(a) for a in args]) == 0  # everything done already: all skipped
    again = json.loads((out / "predict.json").read_text())
    assert (again["segmented"], again["skipped"], again["images_per_second"]) == (0, 3, None)
    assert again["class_share"] == summary["class_share"]  # still the shares of all three images


def test_predict_refuses_a_folder_of_other_files(model_dir, photos, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    args = ["predict", "--model", str(model_dir), str(photos), "--output-dir", str(tmp_path / "out")]
    assert main(args) == 1 and "not empty" in capsys.readouterr().err


def test_error_map_pixels():
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    gt = np.array([[0, 1, 255], [2, 2, 1]])
    pred = np.array([[0, 2, 1], [2, 0, 1]])
    out = error_map(image, gt, pred)
    assert out[0, 0].tolist() == [30, 30, 30]  # correct: the image darkened
    assert out[0, 1].tolist() == [255, 0, 0] and out[1, 1].tolist() == [255, 0, 0]  # wrong: red
    assert out[0, 2].tolist() == [128, 128, 128]  # ignored: grey, whatever the prediction
    with pytest.raises(SegtuneError):
        error_map(image, gt[:1], pred)
