"""Every image mode becomes the same 8-bit RGB, upright, for training and prediction alike."""

import numpy as np
from PIL import Image

from segtune.data.checks import checked_labels
from segtune.data.reading import read_image, read_mask
from segtune.data.sources import load_data


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    pixels = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = np.array(read_image(tmp_path / "deep.png"))
    assert rgb.shape == (1, 4, 3) and rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_grey_palette_rgba_and_cmyk_all_become_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    palette = Image.fromarray(rgb).quantize(8)
    palette.save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert np.array_equal(np.array(read_image(tmp_path / "rgba.png")), rgb)
    assert np.array_equal(np.array(read_image(tmp_path / "grey.png")), np.repeat(rgb[..., :1], 3, axis=2))
    assert np.array_equal(np.array(read_image(tmp_path / "palette.png")), np.array(palette.convert("RGB")))
    cmyk = np.array(read_image(tmp_path / "cmyk.jpg")).astype(int)
    assert cmyk.shape == rgb.shape and np.abs(cmyk - rgb).mean() < 12


def test_exif_orientation_is_applied_so_image_and_mask_line_up(tmp_path):
    """A phone photo stored 40 wide x 20 high with 'rotate 90' matches a 20 x 40 mask."""
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    for stem in ("a", "b"):
        Image.fromarray(stored).save(tmp_path / "images" / f"{stem}.jpg", exif=exif, quality=100)
        Image.fromarray(np.zeros((40, 20), dtype=np.uint8)).save(tmp_path / "annotations" / f"{stem}.png")
    image = read_image(tmp_path / "images" / "a.jpg")
    assert image.size == (20, 40)
    top, bottom = np.array(image)[:20].mean(), np.array(image)[20:].mean()
    assert top > 200 and bottom < 50  # the stored left half is on top once upright
    data = load_data(tmp_path, val_split=0.5, seed=0)
    checked_labels(data, None)  # no size mismatch reported
    assert read_mask(tmp_path / "annotations" / "a.png").shape == (40, 20)


def test_segmenter_accepts_paths_arrays_and_images_alike(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSemanticSegmentation, SegformerImageProcessorPil

    from segtune.data.labels import LabelSet
    from segtune.inference.segmenter import Segmenter

    processor = SegformerImageProcessorPil(size={"shortest_edge": 32})
    model = AutoModelForSemanticSegmentation.from_pretrained(tiny_model_dir)
    segmenter = Segmenter(model, processor, LabelSet.numbered(3))
    rgb = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    from_path = segmenter(tmp_path / "x.png")
    assert from_path.shape == (30, 50)
    assert np.array_equal(segmenter(rgb), from_path)
    assert np.array_equal(segmenter(Image.fromarray(rgb).convert("RGBA")), from_path)
