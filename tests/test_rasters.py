"""Multi-band, 16-bit and georeferenced imagery: reading, per-band statistics, N-channel models, tiled
prediction into GeoTIFFs, nodata, and the bad-input lines (docs/imagery.md)."""

import io
import json
import re

import numpy as np
import pytest
import torch

pytest.importorskip("rasterio")

from segtune.data.band_stats import BandAccumulator, BandPreprocess  # noqa: E402
from segtune.data.rasters import Raster, parse_bands  # noqa: E402
from segtune.errors import SegtuneError  # noqa: E402

from .conftest import SHARED_DATA, tiny_segformer  # noqa: E402
from .geo_helpers import make_geo_dataset, signal_pair, transform, write_geotiff  # noqa: E402

SAMPLES = SHARED_DATA / "geotiff-samples"


def band_model(path, count=4, bands=None, classes=("background", "building"), crop=32, nodata=0.0, seed=0):
    """A model folder as `segtune train` leaves one for `count`-band files: a tiny SegFormer with len(bands)
    input channels and a processor carrying its band settings."""
    from transformers import SegformerImageProcessorPil

    from segtune.data.labels import LabelSet

    bands = list(bands or range(1, count + 1))
    torch.manual_seed(seed)
    model = tiny_segformer(len(classes))
    from segtune.models.channels import with_channels

    with_channels(model, len(bands), None, pretrained=False)
    model.save_pretrained(path)
    n = len(bands)
    processor = SegformerImageProcessorPil(do_resize=False, do_rescale=False, image_mean=[30000.0] * n,
                                           image_std=[17000.0] * n)
    processor.segtune_bands = {"bands": bands, "count": count, "dtype": "uint16", "nodata": nodata,
                               "mean": [30000.0] * n, "std": [17000.0] * n, "clip": [None] * n, "crop_size": crop}
    processor.save_pretrained(path)
    LabelSet.from_names(list(classes)).to_json(path / "labels.json")
    return path


# ---------------------------------------------------------------- reading


def test_windows_read_bands_in_the_order_asked_with_nodata(tmp_path):
    image, _ = signal_pair(0, nodata_rows=3)
    path = write_geotiff(tmp_path / "a.tif", image, nodata=0)
    raster = Raster(path, [4, 2])
    pixels, valid = raster.read(2, 10, 5, 20)
    assert pixels.dtype == np.float32 and pixels.shape == (2, 8, 15)
    np.testing.assert_array_equal(pixels, image[[3, 1], 2:10, 5:20].astype(np.float32))
    assert not valid[:1].any() and valid[1:].all()  # rows 0..2 are nodata in every band
    assert parse_bands("4,3,2,8") == [4, 3, 2, 8] and parse_bands(None) is None and parse_bands("all") is None


def test_16_bit_and_grey_pngs_read_as_their_own_values(tmp_path):
    from PIL import Image

    values = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80)
    Image.fromarray(values).save(tmp_path / "deep.png")  # mode I;16
    grey = (np.arange(24 * 32) % 256).astype(np.uint8).reshape(24, 32)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    deep = Raster(tmp_path / "deep.png").read_all()[0]
    assert deep.shape == (1, 24, 32) and deep.max() == values.max() > 255
    np.testing.assert_array_equal(deep[0], values)
    np.testing.assert_array_equal(Raster(tmp_path / "grey.png").read_all()[0][0], grey)


def test_an_rgb_photo_dataset_keeps_the_rgb_path(tmp_path):
    from segtune.data.band_data import wants_bands
    from segtune.data.pairs import Sample

    from .helpers import write_image, write_mask

    sample = Sample(write_image(tmp_path / "a.png"), write_mask(tmp_path / "m.png"))
    assert not wants_bands([sample], None) and wants_bands([sample], [1, 2, 3])
    geo, _ = signal_pair(0)
    tif = Sample(write_geotiff(tmp_path / "g.tif", geo), sample.mask)
    assert wants_bands([tif], None)  # georeferenced, 4 bands, 16-bit


def test_without_rasterio_plain_tiffs_keep_the_rgb_path_and_others_name_the_extra(tmp_path, monkeypatch):
    import importlib.util

    from PIL import Image

    from segtune.data.band_data import wants_bands
    from segtune.data.pairs import Sample

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rasterio" else real(name, *a))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.tif")
    assert not wants_bands([Sample(tmp_path / "rgb.tif", None)], None)
    geo = write_geotiff(tmp_path / "geo.tif", signal_pair(0)[0])
    with pytest.raises(SegtuneError, match=r"geo.tif: a raster Pillow cannot read: .*pip install 'segtune\[geo\]'"):
        wants_bands([Sample(geo, None)], None)


# ---------------------------------------------------------------- statistics


def test_band_statistics_are_exact_and_clip_long_tails_only():
    rng = np.random.default_rng(0)
    normal = np.clip(rng.normal(1000, 100, (1, 200, 200)), 0, 65535).astype(np.uint16)
    tailed = normal.copy()
    tailed[0, :1, :] = 60000  # 0.5% saturated pixels: a long tail
    valid = np.ones((200, 200), bool)
    valid[:, :10] = False  # left out of the statistics
    acc = BandAccumulator(2, "uint16")
    half = np.concatenate([normal, tailed]).astype(np.float32)
    acc.add(half[:, :100], valid[:100])
    acc.add(half[:, 100:], valid[100:])
    stats = acc.result()
    plain = normal[0][valid].astype(np.float64)
    assert stats["clip"][0] is None and "mean/std alone" in stats["why"][0]
    assert stats["mean"][0] == pytest.approx(plain.mean(), rel=1e-12)
    assert stats["std"][0] == pytest.approx(plain.std(), rel=1e-9)
    lo, hi = stats["clip"][1]
    assert "long tails" in stats["why"][1] and hi < 2000 and lo == pytest.approx(np.percentile(plain, 1), abs=2)
    clipped = np.clip(tailed[0][valid].astype(np.float64), lo, hi)
    assert stats["mean"][1] == pytest.approx(clipped.mean(), rel=1e-9)
    assert stats["valid_pixels"] == [190 * 200] * 2
    # other pixel types: exact sums, percentiles from a seeded sample of at most SAMPLE_SIZE values
    floats = BandAccumulator(1, "float32")
    reflectance = rng.normal(0.2, 0.05, (1, 300, 300)).astype(np.float32)
    floats.add(reflectance, np.ones((300, 300), bool))
    result = floats.result()
    assert result["clip"] == [None] and result["mean"][0] == pytest.approx(reflectance.mean(dtype=np.float64), rel=1e-9)
    # the preprocessing applies exactly these numbers
    pre = BandPreprocess(stats)(half[:, :2, :3].copy(), np.ones((2, 3), bool))
    expected = (np.clip(half[1, :2, :3], lo, hi) - np.float32(stats["mean"][1])) / np.float32(stats["std"][1])
    np.testing.assert_allclose(pre[1], expected, rtol=1e-6)


# ---------------------------------------------------------------- N-channel models


def test_adapted_first_layer_holds_the_rgb_kernels_on_the_rgb_bands():
    from segtune.models.channels import first_conv, with_channels

    torch.manual_seed(0)
    model = tiny_segformer(2)
    rgb = first_conv(model)[1].weight.detach().clone()  # (out, 3, k, k)
    with_channels(model, 5, [3, 2, 1])  # --rgb-bands naming bands 4, 3, 2 of the bands 1..5
    weight = first_conv(model, 5)[1].weight.detach()
    assert weight.shape[1] == 5 and model.config.num_channels == 5
    scale = 3 / 5
    for colour, channel in enumerate([3, 2, 1]):
        torch.testing.assert_close(weight[:, channel], rgb[:, colour] * scale)
    for other in (0, 4):
        torch.testing.assert_close(weight[:, other], rgb.mean(1) * scale)
    # equal bands: the layer's output keeps the RGB model's scale (the sum over channels is unchanged)
    torch.testing.assert_close(weight.sum(1), rgb.sum(1), rtol=1e-5, atol=1e-6)
    assert model(pixel_values=torch.zeros(1, 5, 32, 32)).logits.shape[1] == 2


@pytest.mark.parametrize("kind", ["segformer", "upernet-convnext", "upernet-swin", "dpt", "beit", "mobilevit",
                                  "mobilenet_v2"])
def test_every_architecture_takes_n_channels_and_reloads_with_them(kind, tmp_path):
    from transformers import AutoModelForSemanticSegmentation

    from segtune.models.architectures import input_size
    from segtune.models.channels import with_channels

    from .arch_tiny import tiny_config

    torch.manual_seed(0)
    model = AutoModelForSemanticSegmentation.from_config(tiny_config(kind))
    with_channels(model, 6, [2, 1, 0])
    model.save_pretrained(tmp_path)
    again = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    side = input_size(again.config) or 64
    x = torch.rand(1, 6, side, side)
    with torch.no_grad():
        torch.testing.assert_close(again(pixel_values=x).logits, model.eval()(pixel_values=x).logits)


def test_an_architecture_that_cannot_take_n_channels_says_so():
    from segtune.models.channels import with_channels

    class NoConv(torch.nn.Module):
        config = type("C", (), {"model_type": "linear-only"})()

        def forward(self, pixel_values):
            return pixel_values

    with pytest.raises(SegtuneError, match="^linear-only: cannot take 4 input channels"):
        with_channels(NoConv(), 4)


# ---------------------------------------------------------------- training, evaluation, prediction


def _train(data, model_dir, out, bands=None, steps=60):
    import segtune

    return segtune.train(data=str(data), model=str(model_dir), output_dir=str(out), crop_size=32, max_steps=steps,
                         eval_steps=steps, learning_rate=1e-3, per_device_train_batch_size=4, report=False,
                         disable_tqdm=True, bands=bands, bf16=False)


def test_a_four_band_model_learns_from_the_fourth_band(tmp_path, tiny_model_dir):
    data = make_geo_dataset(tmp_path / "data", n=6, nodata_rows=4)
    run = _train(data, tiny_model_dir, tmp_path / "run")
    rgb_only = _train(data, tiny_model_dir, tmp_path / "rgb", bands="1,2,3")
    assert run.metrics["mean_iou"] > 0.8  # the signal is in band 4 alone: bands 1-3 are noise
    assert rgb_only.metrics["mean_iou"] < run.metrics["mean_iou"] - 0.2
    saved = json.loads((tmp_path / "run" / "preprocessor_config.json").read_text())
    assert saved["segtune_bands"]["bands"] == [1, 2, 3, 4] and len(saved["image_mean"]) == 4
    assert json.loads((tmp_path / "run" / "config.json").read_text())["num_channels"] == 4
    card = (tmp_path / "run" / "README.md").read_text()
    assert "band_clip" in card and "[1, 2, 3, 4]" in card  # the model card records the bands

    import segtune

    scores = segtune.evaluate(model=str(tmp_path / "run"), data=str(data), output_dir=str(tmp_path / "eval"))
    assert scores.metrics["mean_iou"] == pytest.approx(run.metrics["mean_iou"], abs=1e-12)  # the same numbers


def test_training_windows_are_seeded_and_ignore_nodata(tmp_path):
    from segtune.data.band_data import RasterSample
    from segtune.data.reading import MaskRules
    from segtune.data.transforms import AugmentConfig
    from segtune.training.band_windows import BandTrainDataset

    data = make_geo_dataset(tmp_path / "data", n=1, size=(80, 96), nodata_rows=30)
    sample = RasterSample(data / "images" / "tile_00.tif", data / "annotations" / "tile_00.tif", (1, 2, 3, 4))
    settings = {"mean": [0.0] * 4, "std": [1.0] * 4, "clip": [None] * 4}
    dataset = BandTrainDataset([sample], MaskRules(), settings, AugmentConfig(crop_size=32), 255)
    assert len(dataset) == 3 * 3  # windows an epoch: the tiles of 32 covering 80 x 96
    items = [dataset[k] for k in range(2 * len(dataset))]
    again = dataset[5]
    assert torch.equal(again["pixel_values"], items[5]["pixel_values"])
    assert torch.equal(again["labels"], items[5]["labels"])
    for item in items:
        assert item["pixel_values"].shape == (4, 32, 32) and item["labels"].shape == (32, 32)
        nodata = (item["pixel_values"] == 0).all(0)
        assert (item["labels"][nodata] == 255).all()  # nodata is never learnt
    # the image's nodata pixels (its mask says class 0 there) are ignored too
    _, mask = sample.read(MaskRules(), (0, 40, 0, 96))
    assert (mask[:30] == 255).all() and (mask[30:] != 255).all()


def test_nodata_is_left_out_of_the_metric(tmp_path):
    from segtune.data.band_data import RasterSample
    from segtune.data.reading import MaskRules
    from segtune.evaluation.rasters import RasterEvalDataset
    from segtune.inference.bands import band_settings

    data = make_geo_dataset(tmp_path / "data", n=1, nodata_rows=10)
    model = band_model(tmp_path / "model")
    sample = RasterSample(data / "images" / "tile_00.tif", data / "annotations" / "tile_00.tif", (1, 2, 3, 4))
    from transformers import AutoModelForSemanticSegmentation

    net = AutoModelForSemanticSegmentation.from_pretrained(model)
    cm = RasterEvalDataset([sample], MaskRules(), band_settings(model)).evaluate_into(net, 2, 255, progress=False)
    assert int(cm.mat.sum()) == 38 * 64  # 48 x 64 less the 10 nodata rows


def test_predict_writes_a_tiled_geotiff_on_the_input_grid(tmp_path):
    import rasterio

    from segtune.cli import main
    from segtune.inference.bands import BandSegmenter

    image, _ = signal_pair(3, size=(70, 90), nodata_rows=5)
    src = write_geotiff(tmp_path / "in" / "scene.tif", image, nodata=0)
    model = band_model(tmp_path / "model", crop=32)
    out = tmp_path / "out"
    rc = main(["predict", "--model", str(model), str(src), "--output-dir", str(out), "--probabilities",
               "--vector", str(tmp_path / "scene.geojson"), "--stride", "20"])
    assert rc == 0
    with rasterio.open(out / "scene.tif") as dst, rasterio.open(src) as inp:
        assert dst.crs == inp.crs and dst.transform == inp.transform and dst.transform == transform()
        assert dst.count == 1 and dst.dtypes[0] == "uint8" and dst.nodata == 255
        assert dst.profile["tiled"] and dst.compression.name.lower() == "deflate"
        labels = dst.read(1)
    assert (labels[:5] == 255).all() and set(np.unique(labels[5:])) <= {0, 1}
    # tile by tile equals one whole-raster slide, pixel for pixel
    whole = BandSegmenter.from_pretrained(model, stride=20, tile=4096)
    np.testing.assert_array_equal(labels, whole(image.astype(np.float32)))
    tiled = BandSegmenter.from_pretrained(model, stride=20, tile=24)
    t_labels, t_probs = tiled(image.astype(np.float32), probabilities=True)
    np.testing.assert_array_equal(t_labels, labels)
    with rasterio.open(out / "scene_probabilities.tif") as probs:
        assert probs.count == 2 and probs.descriptions == ("background", "building") and probs.crs == dst.crs
        stored = probs.read()
    np.testing.assert_array_equal(stored[:, 5:], np.rint(t_probs[:, 5:] * 255).astype(np.uint8))
    features = json.loads((tmp_path / "scene.geojson").read_text())["features"]
    assert features and {f["properties"]["class"] for f in features} <= {"background", "building"}
    x0 = transform().c
    xs = [pt[0] for f in features for pt in f["geometry"]["coordinates"][0]]
    assert min(xs) >= x0 and max(xs) <= x0 + 90 * 10  # map coordinates, on the raster's extent
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert record["size"] == [90, 70] and json.loads((out / "predict.json").read_text())["images"] == 1


def test_predict_polygons_into_a_geopackage(tmp_path):
    pyogrio = pytest.importorskip("pyogrio")
    from segtune.cli import main

    image, _ = signal_pair(1)
    src = write_geotiff(tmp_path / "scene.tif", image, nodata=0)
    model = band_model(tmp_path / "model")
    assert main(["predict", "--model", str(model), str(src), "--output-dir", str(tmp_path / "out"),
                 "--vector", str(tmp_path / "classes.gpkg")]) == 0
    info = pyogrio.read_info(tmp_path / "classes.gpkg", layer="scene")
    assert info["crs"] == "EPSG:32618" and info["features"] > 0 and list(info["fields"]) == ["class_id", "class"]


# ---------------------------------------------------------------- bad input


def test_bad_rasters_get_one_line_naming_the_file_and_nothing_is_written(tmp_path, tiny_model_dir, capsys):
    from segtune.cli import main

    data = make_geo_dataset(tmp_path / "data", n=3)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--model", str(tiny_model_dir), "--output-dir", str(out),
            "--max_steps", "1"]
    assert main(argv + ["--bands", "2,5"]) == 1
    assert re.search(r"images/tile_0\d.tif: --bands 2,5 names band 5, but the file has 4 band\(s\)\n$",
                     capsys.readouterr().err)
    assert not out.exists()

    mask = data / "annotations" / "tile_01.tif"
    write_geotiff(mask, signal_pair(1)[1], nodata=255, origin=(1.0, 2.0))  # another grid
    assert main(argv) == 1
    assert f"{mask}: mask has another transform" in capsys.readouterr().err
    write_geotiff(mask, signal_pair(1)[1], nodata=255, origin=(501000.0, 4100000.0))

    write_geotiff(data / "images" / "tile_02.tif", signal_pair(2, bands=3, signal_band=3)[0], nodata=0)
    assert main(argv) == 1
    assert re.search(r"tile_02.tif: 3 bands, but tile_0[01].tif has 4: every image needs the same bands",
                     capsys.readouterr().err)

    write_geotiff(data / "images" / "tile_02.tif", signal_pair(2)[0].astype(np.complex64), nodata=None)
    assert main(argv) == 1
    assert "tile_02.tif: pixel type complex64 is not one segtune reads" in capsys.readouterr().err
    assert not out.exists()


def test_predict_refuses_a_raster_of_another_band_count(tmp_path, capsys):
    from segtune.cli import main

    src = write_geotiff(tmp_path / "three.tif", signal_pair(0, bands=3, signal_band=3)[0], nodata=0)
    model = band_model(tmp_path / "model")
    assert main(["predict", "--model", str(model), str(src), "--output-dir", str(tmp_path / "out")]) == 1
    assert "three.tif: 3 bands, but the model was trained on files of 4" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- real GeoTIFFs


@pytest.mark.skipif(not (SAMPLES / "RGB.byte.tif").is_file(), reason="geotiff samples absent")
def test_a_real_landsat_scene_keeps_its_grid_and_nodata(tmp_path):
    import rasterio

    from segtune.cli import main

    model = band_model(tmp_path / "model", count=3, crop=64)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(SAMPLES / "RGB.byte.tif"), "--output-dir", str(out)]) == 0
    with rasterio.open(out / "RGB.byte.tif") as dst, rasterio.open(SAMPLES / "RGB.byte.tif") as src:
        assert (dst.width, dst.height, dst.crs, dst.transform) == (src.width, src.height, src.crs, src.transform)
        nodata = (src.read() == 0).all(0)
        labels = dst.read(1)
    assert nodata.any() and (labels[nodata] == 255).all() and (labels[~nodata] != 255).all()


def test_inspect_prints_band_statistics_crs_resolution_and_nodata(tmp_path, capsys):
    from segtune.cli import main

    data = make_geo_dataset(tmp_path / "data", n=4, nodata_rows=4)
    assert main(["inspect", "--data", str(data), "--output-dir", str(tmp_path / "out"), "--bands", "4,1"]) == 0
    report = json.loads((tmp_path / "out" / "inspect.json").read_text())["rasters"]
    assert report["crs"] == ["EPSG:32618"] and report["resolution"] == [[10.0, 10.0]]
    assert report["bands"] == [4, 1] and report["count"] == 4
    assert report["nodata_share"] == pytest.approx(4 / 48, abs=1e-6)
    band4 = report["per_band"][0]
    assert band4["band"] == 4 and band4["min"] >= 8000 and band4["max"] < 42000 and band4["clip"] is None
    out = capsys.readouterr().out
    assert "CRS EPSG:32618; resolution 10 x 10; nodata 8.3%" in out and (tmp_path / "out" / "inspect.png").is_file()


def test_torchrun_splits_the_tiles_and_writes_the_single_process_geotiff(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import rasterio

    from segtune.cli import main

    image, _ = signal_pair(5, size=(60, 1030), nodata_rows=3)  # two 1024-pixel tiles side by side
    src = write_geotiff(tmp_path / "wide.tif", image, nodata=0)
    model = band_model(tmp_path / "model")
    args = ["predict", "--model", str(model), str(src), "--probabilities", "--device", "cpu"]
    assert main([*args, "--output-dir", str(tmp_path / "single")]) == 0
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "segtune", *args, "--output-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("wide.tif", "wide_probabilities.tif"):
        with rasterio.open(tmp_path / "single" / name) as one, rasterio.open(tmp_path / "two" / name) as two:
            assert (one.crs, one.transform, one.nodata) == (two.crs, two.transform, two.nodata)
            np.testing.assert_array_equal(one.read(), two.read())
    assert not list((tmp_path / "two").glob("*.partial"))  # the parts, merged and removed
    assert json.loads((tmp_path / "two" / "predict.json").read_text())["processes"] == 2
    single, both = ((tmp_path / d / "predictions.jsonl").read_text() for d in ("single", "two"))
    assert json.loads(single)["class_share"] == json.loads(both)["class_share"]


def test_export_and_predict_a_four_band_model_with_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    import rasterio

    from segtune.cli import main

    model = band_model(tmp_path / "model")
    assert main(["export", "--model", str(model), "--output-dir", str(tmp_path / "onnx")]) == 0
    report = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert report["passed"] and report["input"]["shape"][1] == 4 and report["check"]["equal_pixels"] > 0.9999
    image, _ = signal_pair(2, size=(50, 70), nodata_rows=2)
    src = write_geotiff(tmp_path / "scene.tif", image, nodata=0)
    for name, source in (("torch", model), ("onnx", tmp_path / "onnx")):
        assert main(["predict", "--model", str(source), str(src), "--output-dir", str(tmp_path / f"pred-{name}")]) == 0
    with rasterio.open(tmp_path / "pred-torch" / "scene.tif") as a, \
            rasterio.open(tmp_path / "pred-onnx" / "scene.tif") as b:
        assert a.crs == b.crs and a.transform == b.transform
        assert (a.read() == b.read()).mean() > 0.999
    assert json.loads((tmp_path / "pred-onnx" / "predict.json").read_text())["runtime"] == "onnxruntime"


def test_serve_takes_tiff_uploads_of_the_models_band_count(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from segtune.inference.bands import BandSegmenter
    from segtune.options import ServeOptions
    from segtune.serve import create_app, load_segmenter

    model = band_model(tmp_path / "model")
    serving = load_segmenter(ServeOptions(model=str(model), device="cpu"))
    image, _ = signal_pair(4, size=(40, 56), nodata_rows=2)
    four = write_geotiff(tmp_path / "four.tif", image, nodata=0).read_bytes()
    three = write_geotiff(tmp_path / "three.tif", image[:3], nodata=0).read_bytes()
    want = BandSegmenter.from_pretrained(model)(image.astype(np.float32))
    with TestClient(create_app(serving, max_megapixels=0.0024), raise_server_exceptions=False) as client:
        answer = client.post("/v1/segment", content=four, headers={"Content-Type": "image/tiff"})
        assert answer.status_code == 200
        np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(answer.content))), want)
        shares = client.post("/v1/segment?format=json", content=four, headers={"Content-Type": "image/tiff"}).json()
        assert shares["width"] == 56 and {c["name"] for c in shares["classes"]} <= {"background", "building", "255"}
        overlay = client.post("/v1/segment?format=overlay", content=four, headers={"Content-Type": "image/tiff"})
        assert overlay.status_code == 200 and Image.open(io.BytesIO(overlay.content)).size == (56, 40)
        wrong = client.post("/v1/segment", content=three, headers={"Content-Type": "image/tiff"})
        assert wrong.status_code == 422
        assert wrong.json() == {"error": "the upload has 3 band(s); the model takes images of 4 (bands 1,2,3,4)"}
        mode = client.post("/v1/segment?mode=whole", content=four, headers={"Content-Type": "image/tiff"})
        assert mode.status_code == 422 and "do not apply to a multi-band model" in mode.json()["error"]
        big = write_geotiff(tmp_path / "big.tif", np.zeros((4, 50, 50), np.uint16)).read_bytes()
        assert client.post("/v1/segment", content=big, headers={"Content-Type": "image/tiff"}).status_code == 413


def test_16_bit_grey_pngs_train_and_predict_as_one_band(tmp_path, tiny_model_dir):
    import rasterio
    from PIL import Image

    import segtune

    for i in range(5):  # one 16-bit band (values 8000..42000): the class is the brightness
        image, mask = signal_pair(i, size=(40, 48), bands=1, signal_band=1)
        (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "annotations").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(tmp_path / "data" / "images" / f"cell{i}.png")
        Image.fromarray(mask, mode="L").save(tmp_path / "data" / "annotations" / f"cell{i}.png")
    run = _train(tmp_path / "data", tiny_model_dir, tmp_path / "run", bands="1")
    settings = json.loads((tmp_path / "run" / "preprocessor_config.json").read_text())["segtune_bands"]
    assert settings["dtype"] == "uint16" and settings["bands"] == [1] and settings["max"][0] > 40000
    assert run.metrics["mean_iou"] > 0.8
    out = tmp_path / "pred"
    assert segtune.predict(model=str(tmp_path / "run"), inputs=[str(tmp_path / "data" / "images" / "cell0.png")],
                           output_dir=str(out))
    with rasterio.open(out / "cell0.tif") as dst:
        assert (dst.width, dst.height, dst.count) == (48, 40, 1) and dst.crs is None


def test_a_fixed_size_architecture_trains_and_predicts_on_rasters(tmp_path):
    import rasterio

    from segtune.cli import main

    from .arch_tiny import save_tiny

    data = make_geo_dataset(tmp_path / "data", n=3)
    model = save_tiny(tmp_path / "beit", "beit")  # takes 32 x 32 inputs only: its window
    _train(data, model, tmp_path / "run", steps=2)
    assert main(["predict", "--model", str(tmp_path / "run"), str(data / "images" / "tile_00.tif"),
                 "--output-dir", str(tmp_path / "out")]) == 0
    with rasterio.open(tmp_path / "out" / "tile_00.tif") as dst:
        assert (dst.width, dst.height) == (64, 48) and set(np.unique(dst.read(1))) <= {0, 1}


def test_each_window_runs_once_and_a_bounded_cache_changes_no_pixel():
    from segtune.data.labels import LabelSet
    from segtune.inference.bands import ArrayRaster, BandSegmenter
    from segtune.inference.geometry import axis_windows

    import torch.nn.functional as F

    class Counting:  # a runner: logits at 1/4 of the window, from the pixels, counting the windows it runs
        device, dtype, windows = torch.device("cpu"), torch.float32, 0

        def __call__(self, x):
            Counting.windows += x.shape[0]
            pooled = F.avg_pool2d(x, 4)
            return torch.cat([pooled[:, :1], -pooled[:, :1], pooled[:, 1:2] * 0.5], 1)

    pixels = np.random.default_rng(0).normal(0, 1, (2, 300, 420)).astype(np.float32)
    settings = {"mean": [0.0, 0.0], "std": [1.0, 1.0]}
    maps = {}
    for cache in (0, 2**30):
        Counting.windows = 0
        seg = BandSegmenter(Counting(), settings, LabelSet.numbered(3), crop_size=64, stride=40, tile=100,
                            cache_bytes=cache)
        maps[cache] = seg(ArrayRaster(pixels), probabilities=True)
        runs = Counting.windows
        grid = len(axis_windows(300, 64, 40)) * len(axis_windows(420, 64, 40))
        assert runs == grid if cache else runs > 1.5 * grid  # once each, or again for every tile it touches
    np.testing.assert_array_equal(maps[0][0], maps[2**30][0])
    np.testing.assert_array_equal(maps[0][1], maps[2**30][1])


def test_predict_continues_a_folder_and_refuses_rgb_only_options(tmp_path, capsys):
    from segtune.cli import main

    src = write_geotiff(tmp_path / "in" / "a.tif", signal_pair(0)[0], nodata=0)
    write_geotiff(tmp_path / "in" / "b.tif", signal_pair(1)[0], nodata=0)
    model = band_model(tmp_path / "model")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(src), "--output-dir", str(out)]) == 0
    first = (out / "a.tif").stat().st_mtime_ns
    assert main(["predict", "--model", str(model), str(tmp_path / "in"), "--output-dir", str(out)]) == 0
    assert (out / "a.tif").stat().st_mtime_ns == first and (out / "b.tif").is_file()  # a.tif was done already
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    assert main(["predict", "--model", str(model), str(src), "--output-dir", str(tmp_path / "o2"), "--tta"]) == 1
    assert "--tta: for RGB models" in capsys.readouterr().err


def test_a_band_model_fine_tunes_again_and_another_band_count_is_refused(tmp_path, capsys):
    from segtune.cli import main

    data = make_geo_dataset(tmp_path / "data", n=3)
    model = band_model(tmp_path / "model")  # 4 channels already
    _train(data, model, tmp_path / "again", steps=2)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["num_channels"] == 4
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--model", str(model), "--output-dir", str(tmp_path / "three"),
                 "--bands", "1,2", "--max_steps", "1"]) == 1
    assert "takes 4 input channels, not 2" in capsys.readouterr().err
