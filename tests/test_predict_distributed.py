"""`segtune predict` under torchrun and `accelerate launch`: 2 CPU processes (gloo) split the images,
each is written once, and the outputs equal a single process's; a run cut short under 2 processes
is continued by 1 or 2."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.cli import main
from segtune.prediction.run import load_probabilities

from .conftest import save_tiny_model

TIMINGS = ("seconds", "images_per_second")
NAMES = [f"img{i}" for i in range(7)]  # 7 images over 2 ranks: 4 and 3

# Each process logs the images it writes (segtune.prediction.run._write_outputs) to WRITTEN/rank<r>.txt:
# loaded at start-up through PYTHONPATH, so the command under test stays `-m segtune predict`.
HOOK = '''
import os
if os.environ.get("SEGTUNE_TEST_WRITTEN") and os.environ.get("RANK") is not None:
    import segtune.prediction.run as predict
    original = predict._write_outputs

    def logged(entry, *args, **kwargs):
        path = os.path.join(os.environ["SEGTUNE_TEST_WRITTEN"], "rank%s.txt" % os.environ["RANK"])
        with open(path, "a") as f:
            f.write(entry.name + "\\n")
        return original(entry, *args, **kwargs)

    predict._write_outputs = logged
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(name: str) -> list[str]:
    if name == "torchrun":  # --standalone: a free port of its own
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # `accelerate launch --cpu` starts one process whatever --num_processes says; --multi_gpu is its
    # data-parallel launcher, and on a machine without GPUs its processes run on the CPU
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("predict-model"), ["a", "b", "c"])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(NAMES):
        size = (40, 30) if i % 3 else (30, 40)
        image = np.random.default_rng(100 + i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{name}.png")
    return folder


def predict_args(model_dir, photos, out) -> list[str]:
    return ["predict", "--model", str(model_dir), str(photos), "--output-dir", str(out), "--save-probs",
            "--batch-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def single(tmp_path_factory, model_dir, photos):
    """A single process's run, with the output folder given relatively (as the distributed runs' are), so
    the records' label-map paths compare equal."""
    cwd = tmp_path_factory.mktemp("single")
    here = os.getcwd()
    os.chdir(cwd)
    try:
        assert main(predict_args(model_dir, photos, "out")) == 0
    finally:
        os.chdir(here)
    return cwd / "out"


def launch(name: str, model_dir, photos, cwd: Path, written: Path) -> subprocess.CompletedProcess:
    hook = cwd.parent / f"{cwd.name}-hook"
    cwd.mkdir(exist_ok=True)
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    written.mkdir(exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, SEGTUNE_TEST_WRITTEN=str(written),
               PYTHONPATH=os.pathsep.join(filter(None, [str(hook), str(repo), os.environ.get("PYTHONPATH")])))
    command = [*launcher(name), "-m", "segtune", *predict_args(model_dir, photos, "out")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run


def written_by_rank(written: Path) -> dict[int, list[str]]:
    """The names each rank wrote, sorted (they are written as batches and threads finish)."""
    return {int(p.stem.removeprefix("rank")): sorted(p.read_text().split()) for p in written.glob("rank*.txt")}


def assert_same_outputs(out: Path, single: Path, resumed: bool = False):
    assert not list(out.glob("predictions.rank*.jsonl"))  # merged, then removed
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (single / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["image"]).stem for r in records] == NAMES and records == want
    summary, want_summary = (json.loads((d / "predict.json").read_text()) for d in (out, single))
    if not resumed:  # a resumed run skipped some images: it says so
        assert {k: v for k, v in summary.items() if k not in TIMINGS} == \
            {k: v for k, v in want_summary.items() if k not in TIMINGS}
    else:
        assert summary["images"] == 7 and summary["segmented"] + summary["skipped"] == 7
        assert summary["class_share"] == want_summary["class_share"]
    for name in NAMES:
        for sub in ("", "color/"):  # the label map pixel for pixel, and its colours
            assert np.array_equal(np.array(Image.open(out / f"{sub}{name}.png")),
                                  np.array(Image.open(single / f"{sub}{name}.png"))), f"{sub}{name}.png"
        assert np.array_equal(load_probabilities(out / "probs" / f"{name}.npz"),
                              load_probabilities(single / "probs" / f"{name}.npz"))
        assert (out / "overlay" / f"{name}.jpg").is_file()
    return summary


@pytest.mark.parametrize("name", ["torchrun", "accelerate"])
def test_two_processes_split_the_images_and_write_what_one_would(tmp_path, model_dir, photos, single, name):
    run = launch(name, model_dir, photos, tmp_path / "run", tmp_path / "written")
    out = tmp_path / "run" / "out"
    assert_same_outputs(out, single)
    # rank r wrote images r, r + 2, ...: each image once
    assert written_by_rank(tmp_path / "written") == {0: NAMES[0::2], 1: NAMES[1::2]}
    assert run.stdout.count("images segmented into") == 1  # rank 0's line only


def interrupted(tmp_path: Path, single: Path) -> Path:
    """The folder a 2-process run leaves when stopped: rank 0 logged img0 and img2, rank 1 img1 (and a
    line cut short), img3 was written but not logged, the others not written; predictions.jsonl empty."""
    out = tmp_path / "out"
    shutil.copytree(single, out)
    records = {Path(r["image"]).stem: line for line in (single / "predictions.jsonl").read_text().splitlines()
               for r in [json.loads(line)]}
    (out / "predictions.jsonl").write_text("")
    (out / "predict.json").unlink()
    (out / "predictions.rank0.jsonl").write_text(records["img0"] + "\n" + records["img2"] + "\n")
    (out / "predictions.rank1.jsonl").write_text(records["img1"] + "\n" + records["img5"][:20])
    for name in NAMES[4:]:
        for path in out.rglob(f"{name}.*"):
            path.unlink()
    return out


def test_a_run_cut_short_under_two_processes_is_continued_by_two(tmp_path, model_dir, photos, single):
    interrupted(tmp_path / "run", single)
    launch("torchrun", model_dir, photos, tmp_path / "run", tmp_path / "written")
    summary = assert_same_outputs(tmp_path / "run" / "out", single, resumed=True)
    assert (summary["segmented"], summary["skipped"]) == (4, 3)
    # the 4 left (img3, img4, img5, img6) split between the ranks, each written once
    assert written_by_rank(tmp_path / "written") == {0: ["img3", "img5"], 1: ["img4", "img6"]}


def test_a_run_cut_short_under_two_processes_is_continued_by_one(tmp_path, model_dir, photos, single, monkeypatch):
    out = interrupted(tmp_path, single)
    monkeypatch.chdir(tmp_path)
    assert main(predict_args(model_dir, photos, "out")) == 0
    summary = assert_same_outputs(out, single, resumed=True)
    assert (summary["segmented"], summary["skipped"]) == (4, 3)
