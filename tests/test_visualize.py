import numpy as np
import pytest
from PIL import Image

import segtune.data.drawing as drawing
from segtune.data.drawing import colorize, colorize_and_overlay, drawn_image, overlay, save_label_png
from segtune.data.labels import LabelSet, ade20k_labels
from segtune.errors import SegtuneError
from segtune.reporting.charts import comparison_figure

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_colorize_exact_pixels(dtype):
    label_map = np.array([[0, 1], [2, 255]], dtype=dtype)
    rgb = colorize(label_map, PALETTE)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb.tolist() == [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 0, 0]]]


def test_colorize_out_of_palette_and_custom_ignore_are_black():
    label_map = np.array([[0, 7, -1, 1]])
    assert colorize(label_map, PALETTE, ignore_index=1).tolist() == [[[255, 0, 0]] + [[0, 0, 0]] * 3]


def test_colorize_rejects_float_maps():
    with pytest.raises(TypeError):
        colorize(np.zeros((2, 2)), PALETTE)


def test_overlay_blends_and_keeps_ignored_pixels():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    label_map = np.array([[0, 1], [255, 2]])
    out = overlay(image, label_map, PALETTE, alpha=0.25)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [139, 75, 75]  # 0.75 * 100 + 0.25 * 255 = 138.75
    assert out[0, 1].tolist() == [75, 139, 75]
    assert out[1, 0].tolist() == [100, 100, 100]  # ignored: image unchanged
    assert out[1, 1].tolist() == [75, 75, 139]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.55, 1.0])
def test_overlay_and_colorize_equal_the_per_pixel_formula(alpha):
    # the lookup tables (one for colours, one for blends) against the arithmetic they replace,
    # on every uint8 value, with ids ignored, negative and past the palette
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    label_map = rng.integers(-2, 6, (64, 80))
    label_map[0, :3] = 255
    known = (label_map >= 0) & (label_map < len(PALETTE)) & (label_map != 255)
    colours = np.zeros((64, 80, 3), dtype=np.uint8)
    colours[known] = PALETTE[label_map[known]]
    expected = np.where(known[..., None], np.rint((1.0 - alpha) * image + alpha * colours), image).astype(np.uint8)
    assert np.array_equal(colorize(label_map, PALETTE), colours)
    assert np.array_equal(overlay(image, label_map, PALETTE, alpha=alpha), expected)
    both = colorize_and_overlay(image, label_map, PALETTE, alpha=alpha)
    assert np.array_equal(both[0], colours) and np.array_equal(both[1], expected)


@pytest.mark.parametrize("block", [1, 79, 81, 1 << 20])  # less than a row, a row, odd rows, the whole image
def test_drawing_in_blocks_of_rows_gives_the_same_pixels(block, monkeypatch):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (37, 80, 3), dtype=np.uint8)
    label_map = rng.integers(-1, 5, (37, 80))
    whole = (colorize(label_map, PALETTE), overlay(image, label_map, PALETTE, alpha=0.4))
    monkeypatch.setattr(drawing, "BLOCK_PIXELS", block)
    assert np.array_equal(np.asarray(drawn_image(label_map, PALETTE)), whole[0])
    for picture in (image, Image.fromarray(image)):  # an array, or a PIL image read a block at a time
        assert np.array_equal(np.asarray(drawn_image(label_map, PALETTE, picture, alpha=0.4)), whole[1])
    assert np.array_equal(colorize_and_overlay(image, label_map, PALETTE, alpha=0.4)[1], whole[1])
    with pytest.raises(SegtuneError, match="label map"):
        drawn_image(label_map[:-1], PALETTE, image)


def test_overlay_accepts_pil_and_checks_size():
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    out = overlay(image, np.zeros((2, 3), dtype=np.int64), PALETTE, alpha=1.0)
    assert (out == [255, 0, 0]).all()
    assert (overlay(image, np.zeros((2, 3), np.uint8), PALETTE, alpha=0.0) == [10, 20, 30]).all()
    with pytest.raises(SegtuneError, match="label map"):
        overlay(image, np.zeros((3, 2), dtype=np.uint8), PALETTE)


def test_save_label_png_palette_mode_round_trip(tmp_path):
    label_map = np.array([[0, 1, 2], [149, 255, 0]], dtype=np.int64)
    path = tmp_path / "label.png"
    save_label_png(label_map, path, ade20k_labels().colors)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert np.array_equal(np.array(image), label_map)
        colors = np.array(image.getpalette()).reshape(-1, 3)
    assert colors[0].tolist() == [120, 120, 120] and colors[2].tolist() == [6, 230, 230]
    assert colors[255].tolist() == [0, 0, 0]  # ignore shows black


def test_save_label_png_without_palette(tmp_path):
    label_map = np.array([[0, 3], [255, 7]], dtype=np.uint8)
    save_label_png(label_map, tmp_path / "label.png")
    with Image.open(tmp_path / "label.png") as image:
        assert image.mode == "P" and np.array_equal(np.array(image), label_map)


def test_save_label_png_16_bit_for_many_classes(tmp_path):
    label_map = np.array([[0, 299], [256, 255]], dtype=np.int32)
    path = tmp_path / "label.png"
    save_label_png(label_map, path, LabelSet.numbered(300).colors)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
        pixels = np.array(image)
    assert pixels.dtype.itemsize >= 2 and np.array_equal(pixels, label_map)


def test_save_label_png_rejects_ids_a_png_cannot_hold(tmp_path):
    with pytest.raises(ValueError):
        save_label_png(np.array([[-1, 0]]), tmp_path / "label.png")


@pytest.mark.parametrize("with_ground_truth", [True, False])
def test_comparison_figure_writes_wide_png(tmp_path, with_ground_truth):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ground_truth = np.zeros((48, 64), dtype=np.uint8)
    ground_truth[10:30, 20:40] = 2
    ground_truth[:5] = 255
    prediction = np.ones((48, 64), dtype=np.int64)
    path = tmp_path / "comparison.png"
    comparison_figure(Image.fromarray(image), ground_truth if with_ground_truth else None,
                      prediction, ade20k_labels(), path, title="sample 0")
    with Image.open(path) as figure:
        assert figure.format == "PNG" and figure.width > figure.height


def test_comparison_figure_checks_sizes(tmp_path):
    with pytest.raises(SegtuneError, match="prediction"):
        comparison_figure(np.zeros((4, 4, 3), np.uint8), None, np.zeros((4, 5), np.uint8),
                          LabelSet.numbered(2), tmp_path / "x.png")
