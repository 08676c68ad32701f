"""Bad input through the real command line: one `segtune: error:` line naming the file and the problem.

`train` must stop in the data check, before any model is built, so every case here is fast;
`load_model` and `training_processor` are replaced by tripwires to make sure of it.
"""

import json
import re

import numpy as np
import pytest
from PIL import Image

from segtune.cli import main
from segtune.errors import SegtuneError

from .helpers import H, W, make_flat, write_image, write_mask, write_pairs


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    import segtune.training.run

    def tripwire(*args, **kwargs):
        pytest.fail("a model was built although the input is bad")

    monkeypatch.setattr(segtune.training.run, "load_model", tripwire)
    monkeypatch.setattr(segtune.training.run, "training_processor", tripwire)


def train_argv(data, output_dir, *extra):
    return ["train", "--data", str(data), "--output-dir", str(output_dir),
            "--model", "mit-b0", "--max_steps", "1", *extra]


def fails(capsys, argv, name, problem):
    """Runs the CLI; asserts exit 1 and a `segtune: error:` line holding `name` and matching `problem`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("segtune: error:")]
    assert errors, err
    matching = [line for line in errors if name in line and re.search(problem, line)]
    assert matching, f"no error line names {name!r} with {problem!r}:\n{err}"
    assert "rerun with --debug" not in "".join(matching)  # a foreseen problem, not an unforeseen crash
    return errors


@pytest.fixture
def flat(tmp_path):
    """A good flat dataset with 5 pairs (img_00 .. img_04) to spoil."""
    return make_flat(tmp_path / "data", n=5)


def run_train(capsys, data, tmp_path, name, problem, *extra):
    out_dir = tmp_path / "run"
    errors = fails(capsys, train_argv(data, out_dir, *extra), name, problem)
    assert not out_dir.exists()  # nothing written for a run that never started
    return errors


# ---------------------------------------------------------------- datasets


def test_empty_folder(capsys, tmp_path):
    (tmp_path / "nothing").mkdir()
    run_train(capsys, tmp_path / "nothing", tmp_path, "nothing", "not a dataset folder")


def test_empty_images_and_annotations(capsys, tmp_path):
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "annotations").mkdir()
    run_train(capsys, tmp_path / "d", tmp_path, "images", "no images found")


def test_missing_folder(capsys, tmp_path):
    run_train(capsys, tmp_path / "not_there", tmp_path, "not_there", "no such file or folder")


def test_image_without_mask(capsys, tmp_path, flat):
    write_image(flat / "images" / "lonely.png")
    run_train(capsys, flat, tmp_path, "lonely.png", "has no mask")


def test_mask_without_image(capsys, tmp_path, flat):
    write_mask(flat / "annotations" / "orphan.png")
    run_train(capsys, flat, tmp_path, "orphan.png", "has no image")


def test_unreadable_image(capsys, tmp_path, flat):
    (flat / "images" / "notes.jpg").write_text("this is not a JPEG\n")
    write_mask(flat / "annotations" / "notes.png")
    run_train(capsys, flat, tmp_path, "notes.jpg", "not an image file")


def test_zero_byte_image(capsys, tmp_path, flat):
    (flat / "images" / "zero.jpg").write_bytes(b"")
    write_mask(flat / "annotations" / "zero.png")
    run_train(capsys, flat, tmp_path, "zero.jpg", "empty file")


def test_zero_byte_mask(capsys, tmp_path, flat):
    (flat / "annotations" / "img_03.png").write_bytes(b"")
    run_train(capsys, flat, tmp_path, "img_03.png", "empty file")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image(capsys, tmp_path, flat, suffix):
    path = write_image(flat / "images" / f"cut{suffix}", seed=9)
    write_mask(flat / "annotations" / "cut.png")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    run_train(capsys, flat, tmp_path, f"cut{suffix}", "cannot read image.*(truncated|Truncated)")


def test_truncated_mask(capsys, tmp_path, flat):
    path = flat / "annotations" / "img_02.png"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    run_train(capsys, flat, tmp_path, "img_02.png", "cannot read mask.*truncated")


def test_mask_size_differs_from_its_image(capsys, tmp_path, flat):
    write_mask(flat / "annotations" / "img_01.png", size=(16, 16))
    run_train(capsys, flat, tmp_path, "img_01.png", f"mask is 16x16 but its image is {W}x{H}")


def test_mask_values_outside_the_classes(capsys, tmp_path, flat):
    values = np.zeros((H, W), dtype=np.uint8)
    values[3, 4] = 7
    write_mask(flat / "annotations" / "img_04.png", values)
    labels = tmp_path / "three.json"
    labels.write_text(json.dumps({"0": "a", "1": "b", "2": "c"}))
    errors = run_train(capsys, flat, tmp_path, "img_04.png", "class id 7, outside the 3 classes", "--labels", labels)
    assert len(errors) == 1  # the other masks are fine


def test_colour_mask(capsys, tmp_path, flat):
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[:, : W // 2] = (128, 64, 0)
    Image.fromarray(rgb, mode="RGB").save(flat / "annotations" / "img_00.png")
    run_train(capsys, flat, tmp_path, "img_00.png", "colour")


def test_several_bad_files_each_get_a_line(capsys, tmp_path, flat):
    (flat / "images" / "img_00.png").write_bytes(b"")
    write_mask(flat / "annotations" / "img_01.png", size=(8, 8))
    errors = run_train(capsys, flat, tmp_path, "img_00.png", "empty file")
    assert any("img_01.png" in line and "8x8" in line for line in errors)


# ---------------------------------------------------------------- output folder, data file, options


def test_non_empty_output_dir_is_refused(capsys, tmp_path, flat):
    out_dir = tmp_path / "previous_run"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("precious")
    fails(capsys, train_argv(flat, out_dir), "previous_run", "not empty")
    assert (out_dir / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in out_dir.iterdir()) == ["keep.txt"]


def test_output_path_is_a_file(capsys, tmp_path, flat):
    (tmp_path / "taken").write_text("x")
    fails(capsys, train_argv(flat, tmp_path / "taken"), "taken", "not a folder")
    assert (tmp_path / "taken").read_text() == "x"


def test_invalid_yaml_data_file(capsys, tmp_path):
    (tmp_path / "broken.yaml").write_text("train: [imgs\nval: {\n")
    run_train(capsys, tmp_path / "broken.yaml", tmp_path, "broken.yaml", "cannot read data file")


def test_yaml_data_file_without_splits(capsys, tmp_path):
    (tmp_path / "nosplit.yaml").write_text("names: [a, b]\n")
    run_train(capsys, tmp_path / "nosplit.yaml", tmp_path, "nosplit.yaml", "needs 'train'")


def test_yaml_data_file_pointing_to_a_missing_folder(capsys, tmp_path):
    write_pairs(tmp_path / "imgs", tmp_path / "masks", ["a", "b", "c"])
    (tmp_path / "set.yaml").write_text("train: imgs\ntrain_masks: masks\nval: nowhere\nval_masks: masks\n")
    run_train(capsys, tmp_path / "set.yaml", tmp_path, "nowhere", "image folder not found")
    (tmp_path / "set.yaml").write_text("train: imgs\ntrain_masks: no_masks_here\n")
    run_train(capsys, tmp_path / "set.yaml", tmp_path, "no_masks_here", "mask folder not found")


def test_data_given_as_a_non_yaml_file(capsys, tmp_path):
    (tmp_path / "data.txt").write_text("images/\n")
    run_train(capsys, tmp_path / "data.txt", tmp_path, "data.txt", "YAML data file")


def test_unknown_training_option(capsys, tmp_path, flat):
    fails(capsys, train_argv(flat, tmp_path / "run", "--no_such_option", "3"), "--no_such_option", "unknown option")
    assert not (tmp_path / "run").exists()


def test_labels_json_with_a_missing_id(capsys, tmp_path, flat):
    labels = tmp_path / "gappy.json"
    labels.write_text(json.dumps({"0": "a", "2": "c", "3": "d"}))
    run_train(capsys, flat, tmp_path, "gappy.json", "missing id 1", "--labels", labels)


def test_labels_file_not_found(capsys, tmp_path, flat):
    run_train(capsys, flat, tmp_path, "absent.json", "not found", "--labels", tmp_path / "absent.json")


def test_debug_lets_the_error_through(tmp_path):
    with pytest.raises(SegtuneError, match="no such file or folder"):
        main(train_argv(tmp_path / "not_there", tmp_path / "run", "--debug"))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- evaluate --predictions


def _predictions_for(data_root, pred_dir, stems, size=(W, H)):
    for stem in stems:
        write_mask(pred_dir / f"{stem}.png", size=size, seed=7)


def evaluate_argv(data, preds, tmp_path, *extra):
    return ["evaluate", "--data", str(data), "--predictions", str(preds), "--output-dir", str(tmp_path / "ev"), *extra]


def test_evaluate_predictions_good_run_for_contrast(capsys, tmp_path, flat):
    _predictions_for(flat, tmp_path / "preds", [f"img_{i:02d}" for i in range(5)])
    assert main(evaluate_argv(flat, tmp_path / "preds", tmp_path)) == 0
    out, err = capsys.readouterr()
    assert "mean IoU" in out and "segtune: error" not in err
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_images"] == 5


def test_evaluate_missing_prediction(capsys, tmp_path, flat):
    _predictions_for(flat, tmp_path / "preds", [f"img_{i:02d}" for i in range(5) if i != 3])
    fails(capsys, evaluate_argv(flat, tmp_path / "preds", tmp_path), "img_03.png", "prediction missing")


def test_evaluate_prediction_of_another_size(capsys, tmp_path, flat):
    _predictions_for(flat, tmp_path / "preds", [f"img_{i:02d}" for i in range(5)])
    write_mask(tmp_path / "preds" / "img_02.png", size=(10, 12))
    fails(capsys, evaluate_argv(flat, tmp_path / "preds", tmp_path), "img_02.png", f"is 10x12 but .* is {W}x{H}")


def test_evaluate_unreadable_prediction(capsys, tmp_path, flat):
    _predictions_for(flat, tmp_path / "preds", [f"img_{i:02d}" for i in range(5)])
    (tmp_path / "preds" / "img_01.png").write_text("not a png")
    fails(capsys, evaluate_argv(flat, tmp_path / "preds", tmp_path), "img_01.png", "cannot read")


def test_evaluate_colour_prediction(capsys, tmp_path, flat):
    _predictions_for(flat, tmp_path / "preds", [f"img_{i:02d}" for i in range(5)])
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "preds" / "img_04.png")
    fails(capsys, evaluate_argv(flat, tmp_path / "preds", tmp_path), "img_04.png", "colour")


def test_evaluate_missing_predictions_folder(capsys, tmp_path, flat):
    fails(capsys, evaluate_argv(flat, tmp_path / "no_preds", tmp_path), "no_preds", "missing")


def test_evaluate_bad_dataset(capsys, tmp_path, flat):
    write_image(flat / "images" / "lonely.png")
    fails(capsys, evaluate_argv(flat, tmp_path / "preds", tmp_path), "lonely.png", "has no mask")


def test_evaluate_checks_every_mask_it_scores(capsys, tmp_path, flat):
    """A flat dataset is scored whole (`--split auto`), so every mask must pass the class check."""
    from segtune.data.sources import load_data

    data = load_data(flat, val_split=0.2, seed=42)  # as cmd_evaluate loads it
    values = np.zeros((H, W), dtype=np.uint8)
    values[0, 0] = 7
    for sample in data.train:  # spoil only the pairs outside the drawn validation share
        write_mask(sample.mask, values)
    _predictions_for(flat, tmp_path / "preds", [f"img_{i:02d}" for i in range(5)])
    labels = tmp_path / "three.json"
    labels.write_text(json.dumps(["a", "b", "c"]))
    errors = fails(capsys, evaluate_argv(flat, tmp_path / "preds", tmp_path, "--labels", labels),
                   data.train[0].mask.name, "outside the 3 classes")
    assert len(errors) == len(data.train), errors


def test_impossible_val_split(capsys, tmp_path, flat):
    run_train(capsys, flat, tmp_path, "data", "cannot split 5 pairs with val_split=1.0", "--val-split", "1")


def test_jpeg_mask(capsys, tmp_path, flat):
    (flat / "annotations" / "img_02.png").rename(flat / "annotations" / "img_02.jpg")
    run_train(capsys, flat, tmp_path, "img_02.jpg", "not a mask file")


def test_yaml_names_with_a_gap(capsys, tmp_path):
    write_pairs(tmp_path / "imgs", tmp_path / "masks", ["a", "b", "c"])
    (tmp_path / "gap.yaml").write_text("train: imgs\ntrain_masks: masks\nnames: {0: sky, 2: car}\n")
    run_train(capsys, tmp_path / "gap.yaml", tmp_path, "gap.yaml", "missing id 1")
