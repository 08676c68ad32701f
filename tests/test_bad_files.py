"""One bad file never stops a run: `predict` on a folder, `evaluate --predictions` and serve's batches
go on past it, name it in one line, list it, and still exit non-zero (or answer that one request)."""

import asyncio
import json

import numpy as np
import pytest
from PIL import Image

from segtune.cli import main
from segtune.inference.segmenter import Segmenter
from segtune.serve.batcher import Batcher

from .conftest import save_tiny_model
from .helpers import make_flat, write_mask


def photo(path, seed, size=(48, 40)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), ["sky", "road", "car"])


def test_predict_goes_on_past_a_broken_file_names_it_lists_it_and_exits_1(model, tmp_path, capsys, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    names = [f"p{i}" for i in range(5)]
    for i, name in enumerate(names):
        photo(folder / f"{name}.jpg", i)
    whole = (folder / "p2.jpg").read_bytes()
    (folder / "p2.jpg").write_bytes(whole[: len(whole) // 2])  # a truncated JPEG, in the middle
    (folder / "p4.jpg").write_bytes(b"")  # and an empty one, last
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--model", str(model), "--output-dir", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 1 and "Traceback" not in stdout + stderr
    for name in ("p0", "p1", "p3"):  # every good image, also the one after the broken file
        assert np.array(Image.open(out / f"{name}.png")).shape == (40, 48)
        assert (out / "overlay" / f"{name}.jpg").is_file() or (out / "overlay" / f"{name}.png").is_file()
    assert not (out / "p2.png").exists() and not (out / "p4.png").exists()
    said = stdout + stderr + caplog.text
    assert "p2.jpg" in said and "p4.jpg: empty file" in said  # each named as met
    summary = json.loads((out / "predict.json").read_text())
    assert summary["segmented"] == 3 and summary["images"] == 5
    assert [f["image"] for f in summary["failed"]] == [str(folder / "p2.jpg"), str(folder / "p4.jpg")]
    assert "cannot read image" in summary["failed"][0]["error"] and "empty file" in summary["failed"][1]["error"]
    assert "3 images segmented" in stdout and "2 could not be read" in stdout
    errors = [line for line in stderr.splitlines() if line.startswith("segtune: error:")]
    assert len(errors) == 1 and "p2.jpg" in errors[0] and "2 of 5 images could not be segmented" in errors[0]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["image"].rsplit("/", 1)[-1] for r in records if "error" in r) == ["p2.jpg", "p4.jpg"]

    # mended, the next run segments only those two (the others are done)
    photo(folder / "p2.jpg", 2)
    photo(folder / "p4.jpg", 4)
    assert main(["predict", str(folder), "--model", str(model), "--output-dir", str(out)]) == 0
    summary = json.loads((out / "predict.json").read_text())
    assert summary["segmented"] == 2 and summary["skipped"] == 3 and summary["failed"] == []
    assert (out / "p2.png").is_file() and (out / "p4.png").is_file()


def test_the_python_api_returns_the_failures_instead_of_raising(model, tmp_path):
    import segtune

    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "good.jpg", 0)
    (folder / "bad.png").write_text("not a png")
    result = segtune.predict(folder, model=model, output_dir=tmp_path / "out")
    assert len(result) == 2 and [r["image"] for r in result.failed] == [str(folder / "bad.png")]
    assert "not an image file" in result.failed[0]["error"]


def test_evaluate_predictions_scores_the_readable_ones_and_lists_the_rest(tmp_path, capsys):
    data = make_flat(tmp_path / "data", n=5)
    preds = tmp_path / "preds"
    for i in range(5):
        write_mask(preds / f"img_{i:02d}.png", seed=7)
    (preds / "img_01.png").write_text("not a png")
    (preds / "img_03.png").unlink()
    code = main(["evaluate", "--data", str(data), "--predictions", str(preds), "--output-dir", str(tmp_path / "ev")])
    stdout, stderr = capsys.readouterr()
    assert code == 1 and "Traceback" not in stdout + stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["num_images"] == 5 and metrics["num_scored"] == 3 and 0 <= metrics["mean_iou"] <= 1
    assert sorted(f["image"].rsplit("/", 1)[-1] for f in metrics["failed"]) == ["img_01.png", "img_03.png"]
    errors = [line for line in stderr.splitlines() if line.startswith("segtune: error:")]
    first = metrics["failed"][0]["image"].rsplit("/", 1)[-1]  # in the order scored
    assert len(errors) == 1 and first in errors[0] and "2 of 5 predictions" in errors[0]

    # the same three predictions alone give the same numbers: the bad two were left out, not counted
    alone = tmp_path / "alone"
    alone.mkdir()
    for i in (0, 2, 4):
        (alone / f"img_{i:02d}.png").write_bytes((preds / f"img_{i:02d}.png").read_bytes())
    subset = tmp_path / "subset"
    make_flat(subset, n=5)
    for i in (1, 3):
        (subset / "images" / f"img_{i:02d}.png").unlink()
        (subset / "annotations" / f"img_{i:02d}.png").unlink()
    assert main(["evaluate", "--data", str(subset), "--predictions", str(alone), "--output-dir",
                 str(tmp_path / "ev2")]) == 0
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["mean_iou"] == metrics["mean_iou"]


def test_one_bad_image_in_a_served_batch_fails_alone(model, monkeypatch):
    segmenter = Segmenter.from_pretrained(model, device="cpu", batch_size=8)
    images = [Image.fromarray(np.full((20 + i, 24, 3), 40 * i, np.uint8)) for i in range(4)]
    real = segmenter.prepare

    def prepare(image, key=None):
        if image.height == 22:  # the third: a failure no upload check foresaw
            raise ValueError("this image breaks the model")
        return real(image, key)

    monkeypatch.setattr(segmenter, "prepare", prepare)

    async def scenario():
        batcher = Batcher(segmenter, max_batch_size=8, timeout_ms=50)
        answers = await asyncio.gather(*(batcher.submit(im) for im in images), return_exceptions=True)
        batcher.close()
        return answers

    answers = asyncio.run(scenario())
    assert isinstance(answers[2], ValueError)
    for i in (0, 1, 3):
        monkeypatch.setattr(segmenter, "prepare", real)
        assert np.array_equal(answers[i], segmenter(images[i])), i
