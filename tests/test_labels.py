import json

import numpy as np
import pytest

from segtune.data.ade20k import ADE20K_CLASSES, ADE20K_PALETTE
from segtune.data.labels import LabelSet, ade20k_labels, generated_palette, load_labels
from segtune.errors import SegtuneError


def test_ade20k_constants():
    assert len(ADE20K_CLASSES) == 150 and len(ADE20K_PALETTE) == 150
    assert ADE20K_CLASSES[:5] == ("wall", "building", "sky", "floor", "tree")
    assert ADE20K_CLASSES[7] == "bed"  # MMSegmentation's 'bed ' with the space stripped
    assert ADE20K_CLASSES[-1] == "flag"
    assert len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_PALETTE[:3] == ((120, 120, 120), (180, 120, 120), (6, 230, 230))
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ADE20K_PALETTE)


def test_ade20k_palette_distinct_except_the_published_road_skyscraper_grey():
    # The standard palette repeats (140, 140, 140) for road (6) and skyscraper (48); kept as is.
    repeated = [i for i, c in enumerate(ADE20K_PALETTE) if ADE20K_PALETTE.count(c) > 1]
    assert repeated == [6, 48]
    assert len(set(ADE20K_PALETTE)) == 149


def test_ade20k_labels():
    labels = ade20k_labels()
    assert len(labels) == 150
    assert labels.names[0] == "wall" and labels.names[2] == "sky"
    assert labels.colors.shape == (150, 3) and labels.colors.dtype == np.uint8
    assert tuple(labels.colors[0]) == (120, 120, 120)
    assert labels.id2label[2] == "sky" and labels.label2id["sky"] == 2
    assert load_labels("ade20k") == labels


@pytest.mark.parametrize("n", [0, 1, 19, 150, 1000])
def test_generated_palette_distinct_deterministic_not_dark(n):
    palette = generated_palette(n)
    assert palette.shape == (n, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette}) == n
    assert np.array_equal(palette, generated_palette(n))
    if n:
        assert palette.max(axis=1).min() >= 150  # far from the black of ignored pixels


def test_generated_palette_well_separated_and_prefix_stable():
    palette = generated_palette(20).astype(int)
    distances = np.linalg.norm(palette[:, None] - palette[None], axis=-1)
    assert distances[~np.eye(20, dtype=bool)].min() > 80
    assert np.array_equal(generated_palette(150)[:20], generated_palette(20))
    generated_palette(3)[0] = 0  # callers get a copy, not the cached array
    assert generated_palette(3)[0].max() > 0


def test_labelset_constructors():
    labels = LabelSet.numbered(3)
    assert labels.names == ("class_0", "class_1", "class_2")
    assert np.array_equal(labels.colors, generated_palette(3))
    mixed = LabelSet.from_names(["a", "b"], [(1, 2, 3), None])
    assert tuple(mixed.colors[0]) == (1, 2, 3)
    assert tuple(mixed.colors[1]) == tuple(generated_palette(2)[1])
    with pytest.raises(ValueError):
        LabelSet(("a", "b"), np.zeros((3, 3)))


def test_from_id2label_accepts_str_and_int_keys_in_any_order():
    labels = LabelSet.from_id2label({"1": "road", "0": "sky", 2: "car"})
    assert labels.names == ("sky", "road", "car")
    assert np.array_equal(labels.colors, generated_palette(3))  # no ADE20K colours assumed
    with pytest.raises(SegtuneError, match="missing id 1"):
        LabelSet.from_id2label({"0": "sky", "2": "car"})


def test_json_round_trip(tmp_path):
    labels = LabelSet.from_names(["sky", "road", "car"], [(10, 20, 30), (40, 50, 60), (70, 80, 90)])
    path = tmp_path / "labels.json"
    labels.to_json(path)
    assert json.loads(path.read_text())["1"] == {"name": "road", "color": [40, 50, 60]}
    assert load_labels(path) == labels
    assert load_labels(str(path)) == labels


@pytest.mark.parametrize(
    "content, names, first_color",
    [
        ({"1": "road", "0": "sky"}, ("sky", "road"), None),  # HF id2label.json
        (["sky", "road"], ("sky", "road"), None),
        ({"0": {"name": "sky", "color": "#0a141e"}, "1": {"name": "road"}}, ("sky", "road"), (10, 20, 30)),
        ({"id2label": {"0": "sky", "1": "road"}, "model_type": "segformer"}, ("sky", "road"), None),
    ],
)
def test_json_layouts(tmp_path, content, names, first_color):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(content))
    labels = load_labels(path)
    assert labels.names == names
    if first_color:
        assert tuple(labels.colors[0]) == first_color


@pytest.mark.parametrize(
    "text",
    [
        "id,name,r,g,b\n1,road,40,50,60\n0,sky,10,20,30\n",
        "id,name,color\n1,road,#28323c\n0,sky,#0a141e\n",
        "ID, Name, Color\n0, sky, 10 20 30\n1, road, 40 50 60\n",
        "\ufeffid,name,color\n0,sky,10 20 30\n1,road,#28323c\n",  # Excel's BOM
    ],
)
def test_csv_layouts(tmp_path, text):
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    labels = load_labels(path)
    assert labels.names == ("sky", "road")
    assert labels.colors.tolist() == [[10, 20, 30], [40, 50, 60]]


def test_csv_without_colours_gets_generated_palette(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("id,name\n0,sky\n1,road\n")
    assert load_labels(path) == LabelSet.from_names(["sky", "road"])


@pytest.mark.parametrize(
    "file_name, text, problem",
    [
        ("gap.json", '{"0": "sky", "1": "road", "2": "car", "4": "bus"}', "missing id 3"),
        ("dup.json", '{"0": "sky", "1": "road", "1": "car"}', "duplicate key '1'"),
        ("dup_norm.json", '{"0": "sky", "1": "road", "01": "car"}', "duplicate id 1"),
        ("nonint.json", '{"0": "sky", "one": "road"}', "non-integer id 'one'"),
        ("color.json", '{"0": {"name": "sky", "color": [300, 0, 0]}}', "bad colour"),
        ("hex.json", '{"0": {"name": "sky", "color": "#zzzzzz"}}', "bad colour"),
        ("broken.json", '{"0": "sky",', "invalid JSON"),
        ("empty.json", "", "invalid JSON"),
        ("nothing.json", "{}", "no classes"),
        ("scalar.json", "42", "expected a JSON object"),
        ("noname.json", '{"0": {"color": [1, 2, 3]}}', "expected a name"),
        ("empty.csv", "", "empty file"),
        ("header_only.csv", "id,name\n", "no classes"),
        ("gap.csv", "id,name\n0,sky\n1,road\n2,car\n4,bus\n", "missing id 3"),
        ("dup.csv", "id,name\n0,sky\n1,road\n1,car\n", "duplicate id 1"),
        ("nonint.csv", "id,name\n0,sky\n1.5,road\n", "non-integer id '1.5'"),
        ("color.csv", "id,name,color\n0,sky,10 20\n", "bad colour"),
        ("rgb.csv", "id,name,r,g,b\n0,sky,10,x,30\n", "bad colour"),
        ("columns.csv", "index,label\n0,sky\n", "'id' and 'name'"),
        ("labels.txt", "sky\nroad\n", "unknown label file type"),
    ],
)
def test_bad_label_files_raise_segtune_error_naming_the_file(tmp_path, file_name, text, problem):
    path = tmp_path / file_name
    path.write_text(text)
    with pytest.raises(SegtuneError, match=problem) as error:
        load_labels(path)
    assert file_name in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(SegtuneError, match="nope.json: label file not found"):
        load_labels(tmp_path / "nope.json")
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"0": "caf\xe9"}')
    with pytest.raises(SegtuneError, match="latin1.json: cannot read"):
        load_labels(path)
