"""`segtune export` and the exported model's runtimes (ONNX Runtime, OpenVINO) in predict, evaluate and the
Segmenter: the same label maps and scores as torch, and one line for each bad input."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from segtune.cli import main

from .helpers import make_flat

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TINY_RUN = ["--base-size", "64", "--crop-size", "48", "--max_steps", "4", "--eval_steps", "4", "--num-workers", "0",
            "--disable_tqdm", "true", "--no-report"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """A tiny run trained on a flat folder (splits.json holds its 3 held-out pairs), and its export,
    checked on that data (with masks)."""
    root = tmp_path_factory.mktemp("export")
    data = make_flat(root / "data", n=12)
    model = root / "run"
    assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output-dir", str(model),
                 "--val-split", "0.25", "--seed", "3", *TINY_RUN]) == 0
    export = root / "exported"
    assert main(["export", "--model", str(model), "--output-dir", str(export), "--check-data", str(data)]) == 0
    return data, model, export


@pytest.fixture(scope="module")
def untrained(tmp_path_factory, tiny_model_dir):
    """The tiny SegFormer with a processor saved beside it (short side 64), as train saves one."""
    from transformers import SegformerImageProcessorPil

    path = tmp_path_factory.mktemp("untrained")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    SegformerImageProcessorPil(size={"shortest_edge": 64}, do_reduce_labels=False).save_pretrained(path)
    return path


def error_line(capsys, argv) -> str:
    capsys.readouterr()
    assert main(list(map(str, argv))) == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]  # no progress bars
    assert len(err) == 1 and err[0].startswith("segtune: error: "), err
    return err[0]


def label_maps(folder, names):
    return {name: np.array(Image.open(folder / f"{name}.png")) for name in names}


def equal_share(a: dict, b: dict) -> float:
    return sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].size for k in a)


# ---------------------------------------------------------------- the export


def test_export_writes_a_self_describing_folder_and_a_passed_check(run):
    import onnx

    _, model, export = run
    assert {p.name for p in export.iterdir()} >= {"model.onnx", "config.json", "preprocessor_config.json",
                                                   "labels.json", "export.json", "splits.json"}
    summary = json.loads((export / "export.json").read_text())
    assert summary["passed"] is True and summary["opset"] == 18 and summary["folded_head"] is True
    check = summary["check"]
    assert check["masks"] and check["equal_pixels"] >= 0.9999 and check["max_logit_diff"] < 1e-4
    assert [row["ratio"] for row in check["rows"]] == [0.75, 1.0, 1.25]
    export_size = "x".join(map(str, summary["export_input_size"][2:]))
    sizes = {s for row in check["rows"] for s in row["input_sizes"]}
    assert len(sizes) >= 3 and export_size not in sizes  # sizes other than the export size
    for row in check["rows"]:
        assert row["mean_iou_onnx"] == pytest.approx(row["mean_iou_torch"], abs=1e-3)

    graph = onnx.load(str(export / "model.onnx"))
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert (inp.name, out.name) == ("pixel_values", "logits")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))  # batch, H, W dynamic
    meta = {p.key: p.value for p in graph.metadata_props}
    names = [entry["name"] for entry in json.loads(meta["segtune.labels"]).values()]
    assert names == list(json.loads((model / "config.json").read_text())["id2label"].values())
    assert json.loads(meta["segtune.preprocessor_config"])["size"] == {"shortest_edge": 64}


def test_plain_onnxruntime_with_the_saved_processor_gives_the_torch_label_maps(run):
    import onnxruntime
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessorPil

    data, model_dir, export = run
    processor = SegformerImageProcessorPil.from_pretrained(export)
    session = onnxruntime.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    model = SegformerForSemanticSegmentation.from_pretrained(model_dir).eval()
    images = [Image.open(p).convert("RGB") for p in sorted((data / "images").iterdir())[:4]]
    for size in [(24, 32), (40, 90), (77, 51)]:  # (height, width): other than the export size; batch of 4
        batch = [im.resize(size[::-1]) for im in images]
        inputs = processor(images=batch, return_tensors="pt")
        ours = session.run(["logits"], {"pixel_values": inputs["pixel_values"].numpy()})[0]
        with torch.no_grad():
            theirs = model(**inputs)
        assert ours.shape == tuple(theirs.logits.shape) and ours.shape[0] == 4
        np.testing.assert_allclose(ours, theirs.logits.numpy(), atol=1e-4)
        sizes = [im.size[::-1] for im in batch]
        ours_maps = processor.post_process_semantic_segmentation(
            type(theirs)(logits=torch.from_numpy(ours)), target_sizes=sizes)
        torch_maps = processor.post_process_semantic_segmentation(theirs, target_sizes=sizes)
        share = np.mean([(a == b).float().mean().item() for a, b in zip(ours_maps, torch_maps)])
        assert share >= 0.999


def test_generated_and_real_check_images(tmp_path, untrained, shared_data):
    out = tmp_path / "real"
    assert main(["export", "--model", str(untrained), "--output-dir", str(out), "--check-data",
                 str(shared_data / "camvid-mini" / "val"), "--check-images", "2", "--no-fold-head"]) == 0
    summary = json.loads((out / "export.json").read_text())
    assert summary["passed"] and summary["folded_head"] is False and summary["check"]["images"] == 2
    assert not summary["check"]["masks"] and summary["check"]["source"].endswith("val")


def test_a_failed_check_exits_with_one_line_and_marks_the_export_failed(tmp_path, untrained, capsys,
                                                                         monkeypatch):
    from segtune.inference.onnx_runners import OnnxRuntimeRunner

    real_call = OnnxRuntimeRunner.__call__
    noise = torch.Generator().manual_seed(0)

    def noisy(self, pixel_values):
        logits = real_call(self, pixel_values)
        return logits + torch.randn(logits.shape, generator=noise)

    monkeypatch.setattr(OnnxRuntimeRunner, "__call__", noisy)
    out = tmp_path / "failed"
    line = error_line(capsys, ["export", "--model", untrained, "--output-dir", out, "--check-images", "2"])
    assert "parity check failed" in line and "below --min-equal-pixels 99.99" in line
    summary = json.loads((out / "export.json").read_text())
    assert summary["passed"] is False and summary["check"]["failures"]


def test_an_operation_onnx_cannot_express_is_named(tmp_path, untrained, capsys, monkeypatch):
    import segtune.exporting.run

    monkeypatch.setattr(segtune.exporting.run._Logits, "forward",
                        lambda self, pixel_values: torch.special.i0(self.model(pixel_values=pixel_values).logits))
    line = error_line(capsys, ["export", "--model", untrained, "--output-dir", tmp_path / "x"])
    assert "cannot be exported to ONNX opset 18" in line and "aten::i0" in line
    assert not (tmp_path / "x" / "model.onnx").exists()


# ---------------------------------------------------------------- runtimes in predict, evaluate, Segmenter


RUNTIMES = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("openvino") is None, reason="openvino is not installed"))]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_predict_through_each_runtime_gives_the_torch_label_maps(run, tmp_path, runtime):
    data, model, export = run
    names = [p.stem for p in sorted((data / "images").iterdir())[:4]]
    images = [str(data / "images" / f"{n}.png") for n in names]
    modes = {"whole": ["--batch-size", "2", "--save-probs", "--show-gt", data / "annotations"],
             "slide": ["--mode", "slide", "--crop-size", "32", "--stride", "16"],
             "tta": ["--tta", "--tta-scales", "0.75", "1.0", "1.5"]}
    for mode, extra in modes.items():
        torch_out, onnx_out = tmp_path / f"torch-{mode}", tmp_path / f"{runtime}-{mode}"
        common = [*images, *map(str, extra), "--device", "cpu", "--num-workers", "0"]
        assert main(["predict", *common, "--model", str(model), "--output-dir", str(torch_out)]) == 0
        model_arg = export / "model.onnx" if runtime == "onnxruntime" else export  # a file or the folder
        assert main(["predict", *common, "--model", str(model_arg), "--runtime", runtime, "--threads", "1",
                     "--output-dir", str(onnx_out)]) == 0
        assert equal_share(label_maps(torch_out, names), label_maps(onnx_out, names)) >= 0.999, mode
        summary = json.loads((onnx_out / "predict.json").read_text())
        assert summary["runtime"] == runtime and summary["device"] == "cpu" and summary["streams"] == 1  # 1 thread
    from segtune.prediction.run import load_probabilities

    for n in names:
        a, b = (load_probabilities(tmp_path / f"{k}-whole" / "probs" / f"{n}.npz") for k in ("torch", runtime))
        assert np.abs(a - b).max() <= 1 / 255 + 1e-6
        assert (tmp_path / f"{runtime}-whole" / "compare" / f"{n}.png").is_file()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_evaluate_scores_the_exported_model_as_the_torch_one(run, tmp_path, runtime):
    data, model, export = run
    scores = {}
    for name, argv in {"torch": ["--model", model],
                       runtime: ["--model", export / "model.onnx", "--runtime", runtime]}.items():
        out = tmp_path / name
        assert main(["evaluate", "--data", str(data), "--output-dir", str(out), "--no-report",
                     *map(str, argv)]) == 0
        scores[name] = json.loads((out / "metrics.json").read_text())
    ours, theirs = scores[runtime], scores["torch"]
    assert ours["num_images"] == theirs["num_images"] == 3  # the run's own split: splits.json came along
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6)
    if runtime == "openvino":  # its bf16 inference precision scores too (the tiny model's near ties may flip)
        out = tmp_path / "bf16"
        assert main(["evaluate", "--data", str(data), "--output-dir", str(out), "--no-report", "--model", str(export),
                     "--runtime", "openvino", "--dtype", "bfloat16"]) == 0
        bf16 = json.loads((out / "metrics.json").read_text())
        assert bf16["num_images"] == 3 and bf16["overall_accuracy"] == pytest.approx(theirs["overall_accuracy"], abs=0.1)


def test_the_segmenter_runs_an_export_folder_or_file(run):
    from segtune.inference.onnx_runners import OnnxRuntimeRunner
    from segtune.inference.segmenter import Segmenter

    data, model, export = run
    image = Image.open(sorted((data / "images").iterdir())[0])
    reference = Segmenter.from_pretrained(model, device="cpu")
    for source in (export, export / "model.onnx"):
        segmenter = Segmenter.from_pretrained(source, threads=1)
        assert isinstance(segmenter.runner, OnnxRuntimeRunner) and segmenter.model is None
        assert segmenter.labels == reference.labels and segmenter.device.type == "cpu"
        assert (segmenter(image) == reference(image)).mean() >= 0.999
        np.testing.assert_allclose(segmenter.probabilities(image), reference.probabilities(image), atol=1e-5)
    if __import__("importlib").util.find_spec("openvino") is not None:
        bf16 = Segmenter.from_pretrained(export, runtime="openvino", dtype="bfloat16")
        assert bf16.dtype in (torch.bfloat16, torch.float32)  # bf16 where the CPU has it
        assert bf16(image).shape == reference(image).shape


@pytest.mark.skipif(__import__("importlib").util.find_spec("openvino") is None, reason="openvino is not installed")
def test_openvino_streams_run_batches_at_once_and_give_the_label_maps_of_one(run):
    import subprocess

    data, model, export = run
    # In a process of its own: after OpenVINO ran two streams in the test process, a later test's
    # subprocess start crashed it (SIGSEGV in waitpid, seen only after 260 earlier tests).
    script = f"""
import numpy as np
from PIL import Image
from pathlib import Path
from segtune.inference import Segmenter
images = [Image.open(p).convert("RGB") for p in sorted(Path({str(data / "images")!r}).iterdir())]
one = Segmenter.from_pretrained({str(export)!r}, runtime="openvino", threads=2, batch_size=1)
two = Segmenter.from_pretrained({str(export)!r}, runtime="openvino", threads=2, streams=2, batch_size=1)
assert one.runner.streams == 1 and two.runner.streams == 2 and len(images) >= 4
for a, b in zip(one.predict(images), two.predict(images)):  # several batches in flight, each map where it belongs
    assert a.shape == b.shape and (a == b).mean() >= 0.999
# a request is reused only once its result is kept: three started on two requests, then read
x = [one._pixel_values(im, 1.0, True)[None] for im in images[:3]]
started = [two.runner.submit(v) for v in x]
for v, s in zip(x, started):
    np.testing.assert_allclose(s.result().numpy(), one.runner(v).numpy(), atol=1e-4)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_predicting_with_an_exported_runtime_leaves_torch_one_thread_then_restores_it(run, tmp_path):
    from segtune.inference.segmenter import Segmenter
    from segtune.prediction.run import predict_images

    data, model, export = run
    segmenter = Segmenter.from_pretrained(export, threads=1)
    seen, runner = [], segmenter.runner

    class Watched:  # the runner, noting torch's thread count while the model runs
        def __init__(self):
            self.runtime, self.device, self.dtype = runner.runtime, runner.device, runner.dtype

        def __call__(self, pixel_values):
            seen.append(torch.get_num_threads())
            return runner(pixel_values)

    segmenter.runner = Watched()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        records = predict_images(segmenter, sorted((data / "images").iterdir())[:2], tmp_path / "out", progress=False)
        assert len(records) == 2 and seen and set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_streams_are_openvinos_alone(run, tmp_path, capsys):
    data, model, export = run
    image = str(sorted((data / "images").iterdir())[0])
    for model_arg, runtime in ((export, "onnxruntime"), (model, "torch")):
        line = error_line(capsys, ["predict", image, "--model", model_arg, "--runtime", runtime, "--streams", "2",
                                   "--output-dir", tmp_path / "out"])
        assert f"--streams 2: only --runtime openvino runs several requests at once (not {runtime})" in line
    assert not (tmp_path / "out").exists()


def test_an_export_runs_without_transformers_and_preprocesses_as_its_processor(run, tmp_path):
    import subprocess

    from segtune.inference.preprocess import SavedProcessor
    from segtune.inference.segmenter import Segmenter
    from segtune.models.loading import load_processor

    data, model, export = run
    segmenter = Segmenter.from_pretrained(export)
    assert isinstance(segmenter.processor, SavedProcessor)  # from the ONNX metadata segtune export wrote
    processor = load_processor(model)
    for path in sorted((data / "images").iterdir())[:3]:
        image = Image.open(path).convert("RGB")
        assert torch.equal(segmenter.processor(images=image)["pixel_values"],
                           processor(images=image, return_tensors="pt")["pixel_values"])
    script = (f"import sys\nfrom segtune.inference import Segmenter\ns = Segmenter.from_pretrained({str(export)!r})\n"
              f"s.predict([{str(path)!r}])\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"  # no processor class, no AutoConfig: about a second less start-up
    # nor the command: its parser reads segtune's options itself (TrainingArguments' only for train)
    script = (f"import sys\nfrom segtune.cli import main\nrc = main(['predict', {str(path)!r}, '--model', "
              f"{str(export)!r}, '--output-dir', {str(tmp_path / 'cli')!r}])\n"
              "print(rc, sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert loaded.strip().splitlines()[-1] == "0 []" and (tmp_path / "cli" / f"{path.stem}.png").is_file()
    edited = tmp_path / "edited"  # a processor edited beside the model wins over the metadata
    shutil.copytree(export, edited)
    settings = json.loads((edited / "preprocessor_config.json").read_text())
    settings["size"] = {"shortest_edge": 40}
    (edited / "preprocessor_config.json").write_text(json.dumps(settings))
    other = Segmenter.from_pretrained(edited)
    assert not isinstance(other.processor, SavedProcessor) and other.processor.size.shortest_edge == 40


def test_metadata_alone_describes_a_bare_onnx_file(run, tmp_path):
    from segtune.inference.segmenter import Segmenter

    _, _, export = run
    bare = tmp_path / "alone.onnx"
    shutil.copyfile(export / "model.onnx", bare)
    segmenter = Segmenter.from_pretrained(bare)
    reference = Segmenter.from_pretrained(export)
    assert segmenter.labels == reference.labels
    assert segmenter.processor.size == reference.processor.size


# ---------------------------------------------------------------- bad input: one line, exit 1


def test_bad_exported_models_get_one_line(run, tmp_path, capsys):
    import onnx

    data, model, export = run
    image = data / "images" / "img_00.png"
    out = tmp_path / "out"

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is no ONNX model")
    assert "not a model ONNX Runtime can load" in error_line(
        capsys, ["predict", image, "--model", garbage, "--output-dir", out])
    assert "not a model OpenVINO can read" in error_line(
        capsys, ["predict", image, "--model", garbage, "--runtime", "openvino", "--output-dir", out])
    assert "no such file" in error_line(capsys, ["predict", image, "--model", tmp_path / "missing.onnx",
                                                 "--output-dir", out])

    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    graph = onnx.load(str(export / "model.onnx"))
    del graph.metadata_props[:]
    onnx.save(graph, str(unlabelled / "model.onnx"))
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copyfile(export / name, unlabelled / name)
    assert "no class names" in error_line(capsys, ["predict", image, "--model", unlabelled, "--output-dir", out])
    assert "no class names" in error_line(capsys, ["evaluate", "--data", data, "--model", unlabelled,
                                                   "--output-dir", out])

    renamed = tmp_path / "renamed"
    shutil.copytree(export, renamed)
    graph = onnx.load(str(renamed / "model.onnx"))
    for node in graph.graph.node:
        node.input[:] = ["images" if name == "pixel_values" else name for name in node.input]
    graph.graph.input[0].name = "images"
    onnx.save(graph, str(renamed / "model.onnx"))
    for runtime in ("onnxruntime", "openvino"):
        line = error_line(capsys, ["predict", image, "--model", renamed, "--runtime", runtime, "--output-dir", out])
        assert "the model's input is images, not pixel_values" in line

    assert "give --runtime onnxruntime or openvino" in error_line(
        capsys, ["predict", image, "--model", export, "--runtime", "torch", "--output-dir", out])
    assert "neither a .onnx file nor an export folder" in error_line(
        capsys, ["predict", image, "--model", model, "--runtime", "onnxruntime", "--output-dir", out])
    assert "use --runtime openvino for bfloat16" in error_line(
        capsys, ["predict", image, "--model", export, "--dtype", "bfloat16", "--output-dir", out])
    assert "already an exported ONNX model" in error_line(
        capsys, ["export", "--model", export, "--output-dir", tmp_path / "again"])
    assert not out.exists() and not (tmp_path / "again").exists()


def test_a_runtime_not_installed_gets_the_pip_command(run, tmp_path, capsys, monkeypatch):
    data, _, export = run
    image = data / "images" / "img_00.png"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "openvino", None)
    line = error_line(capsys, ["predict", image, "--model", export, "--output-dir", tmp_path / "out"])
    assert line.endswith('needs onnxruntime: pip install "segtune[onnx]"')
    line = error_line(capsys, ["evaluate", "--data", data, "--model", export, "--runtime", "openvino",
                               "--output-dir", tmp_path / "out"])
    assert line.endswith('needs openvino: pip install "segtune[openvino]"')
    assert 'pip install "segtune[onnx]"' in error_line(
        capsys, ["export", "--model", run[1], "--output-dir", tmp_path / "export"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "export").exists()


def test_export_overwrites_nothing_without_overwrite(run, tmp_path, capsys, untrained):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("an earlier file")
    line = error_line(capsys, ["export", "--model", untrained, "--output-dir", out, "--check-images", "0"])
    assert "not empty" in line and "--overwrite" in line
    assert (out / "model.onnx").read_text() == "an earlier file" and len(list(out.iterdir())) == 1
    assert main(["export", "--model", str(untrained), "--output-dir", str(out), "--check-images", "0",
                 "--overwrite"]) == 0
    summary = json.loads((out / "export.json").read_text())
    assert summary["passed"] is None and summary["check"] is None
    assert (out / "model.onnx").stat().st_size > 1000
    assert "--check-images -1" in error_line(capsys, ["export", "--model", untrained, "--output-dir",
                                                      tmp_path / "neg", "--check-images", "-1"])
    assert not (tmp_path / "neg").exists()


def test_an_export_that_fixed_a_size_fails_the_check_in_one_line(tmp_path, capsys):
    """MobileViT's graph has one input size (exported at its config's image_size, docs/models.md); with a
    processor that does not resize to it, the check runs it at other sizes and fails in one line."""
    from transformers import MobileViTConfig, MobileViTForSemanticSegmentation, SegformerImageProcessorPil

    torch.manual_seed(0)
    model = tmp_path / "mobilevit"
    config = MobileViTConfig(num_labels=3, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32])
    MobileViTForSemanticSegmentation(config).save_pretrained(model)
    SegformerImageProcessorPil(size={"shortest_edge": 64}, do_reduce_labels=False).save_pretrained(model)
    out = tmp_path / "out"
    line = error_line(capsys, ["export", "--model", model, "--output-dir", out, "--check-images", "1"])
    assert "parity check failed: ONNX Runtime cannot run the export at input 2x3x" in line
    summary = json.loads((out / "export.json").read_text())
    assert summary["passed"] is False and summary["folded_head"] is False


def test_the_check_reads_masks_with_the_label_options(tmp_path, untrained, demo_dataset):
    """--reduce-labels (and --ignore-index, --binary) rule the check's masks as they rule evaluate's."""
    scores = {}
    for reduce in ("true", "false"):
        out = tmp_path / reduce
        assert main(["export", "--model", str(untrained), "--output-dir", str(out), "--check-data",
                     str(demo_dataset), "--check-images", "2", "--reduce-labels", reduce]) == 0
        check = json.loads((out / "export.json").read_text())["check"]
        assert check["masks"]
        scores[reduce] = [row["mean_iou_torch"] for row in check["rows"]]
    assert scores["true"] != scores["false"]  # 0 -> ignored, k -> k-1 against the masks as they are
