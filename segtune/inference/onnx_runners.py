"""Exported models: runners for ONNX Runtime and OpenVINO, and what an export folder holds.

`segtune export` (segtune/exporting/run.py) writes OUT/model.onnx, input `pixel_values` (N, 3, H, W)
float32, output `logits` (N, C, H/4, W/4), with the class names, colours, processor and model
config in its metadata, and beside it config.json, preprocessor_config.json and labels.json.
`Segmenter.from_pretrained` reaches an exported model through `load_exported`: a runner (the
`Runner` protocol of runners.py: pixel values in, logits out, on the CPU), the processor
and the labels, from the files beside the model or else from its metadata.

Both runtimes are optional extras (`pip install "segtune[onnx]"`, `"segtune[openvino]"`); a
missing one is one line with the pip command.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import SegtuneError

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
ONNX_FILE = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
# keys of the ONNX metadata (metadata_props) that segtune export writes
META_LABELS, META_PROCESSOR, META_CONFIG = "segtune.labels", "segtune.preprocessor_config", "segtune.config"
META_FAST = "segtune.fast_preprocess"  # FastPreprocess settings (preprocess.py), where exact for the processor
EXTRAS = {"onnxruntime": "onnx", "onnx": "onnx", "openvino": "openvino"}


def require(module: str, what: str):
    """Imports an optional dependency, or one line saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise SegtuneError(f'{what} needs {package}: pip install "segtune[{EXTRAS.get(package, "all")}]"') from None


def default_threads() -> int:
    """torch's intra-op thread count: the physical cores, or OMP_NUM_THREADS / torch.set_num_threads."""
    return max(1, torch.get_num_threads())


# ---------------------------------------------------------------- finding an exported model


def onnx_path(model: str | Path) -> Path | None:
    """The ONNX file `model` names (a .onnx file, or a folder holding model.onnx); None if it names neither."""
    path = Path(str(model))
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise SegtuneError(f"{path}: no such file")
        return path
    if path.is_dir() and (path / ONNX_FILE).is_file():
        return path / ONNX_FILE
    return None


def _check_input(path: Path, inputs: list[tuple[str, list]]) -> None:
    names = [name for name, _ in inputs]
    if names != [INPUT_NAME]:
        raise SegtuneError(f"{path}: the model's input is {', '.join(names) or 'missing'}, not {INPUT_NAME} "
                           "(N x 3 x H x W float32, as segtune export writes it)")


# ---------------------------------------------------------------- runners


class OnnxRuntimeRunner:
    """An ONNX model run by ONNX Runtime's CPU provider, as a Runner (float32)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None):
        ort = require("onnxruntime", "--runtime onnxruntime")
        self.path = Path(path)
        self.threads = threads or default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 4  # fatal only: a failed run raises, with its message
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types (InvalidProtobuf, Fail ...)
            raise SegtuneError(f"{self.path}: not a model ONNX Runtime can load ({_first_line(e)})") from None
        _check_input(self.path, [(i.name, i.shape) for i in self.session.get_inputs()])
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    device = torch.device("cpu")
    dtype = torch.float32

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(pixel_values.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([self.output], {INPUT_NAME: x})[0])


OPENVINO_PRECISIONS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


class OpenVinoRunner:
    """An ONNX model compiled by OpenVINO for the CPU, as a Runner. `dtype` sets its inference precision
    (bfloat16: bf16 where the CPU has it, AVX512-BF16 or AMX); `dtype` reports the precision it runs.

    `streams`: inference requests that run at once, each on its share of the threads. 1 (the default):
    one request on every thread, the lowest latency per call. None: OpenVINO's throughput choice (2 on
    2 cores, where two single-thread requests gave 1.3x the images/s of one two-thread request,
    docs/export.md, runtimes); `submit` then keeps that many in flight."""

    runtime = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, dtype: torch.dtype = torch.float32,
                 streams: int | None = 1):
        ov = require("openvino", "--runtime openvino")
        self.path = Path(path)
        self.threads = threads or default_threads()
        if streams is not None and streams < 1:
            raise SegtuneError(f"--streams {streams}: must be at least 1")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as e:
            raise SegtuneError(f"{self.path}: not a model OpenVINO can read ({_first_line(e)})") from None
        _check_input(self.path, [(i.get_any_name(), i.get_partial_shape()) for i in model.inputs])
        outputs = [o.get_any_name() for o in model.outputs]
        self.output = outputs.index(OUTPUT_NAME) if OUTPUT_NAME in outputs else 0
        self.metadata = {}
        for key in (META_LABELS, META_PROCESSOR, META_CONFIG, META_FAST):  # ONNX metadata_props, as OpenVINO keeps them
            if model.has_rt_info(["framework", key]):
                self.metadata[key] = model.get_rt_info(["framework", key]).astype(str)
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[dtype], "INFERENCE_NUM_THREADS": self.threads,
                  "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT"}
        if streams is not None:
            config["NUM_STREAMS"] = streams
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise SegtuneError(f"{self.path}: OpenVINO cannot compile it for the CPU ({_first_line(e)})") from None
        precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
        self.dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}.get(precision, dtype)
        self.streams = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
        self.pending: list[_Pending | None] = [None] * self.streams
        self.next = 0

    device = torch.device("cpu")

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.submit(pixel_values).result()

    def submit(self, pixel_values: torch.Tensor) -> _Pending:
        """Starts an inference on the next request; `.result()` waits for its logits. A request still
        holding an uncollected result keeps it (in its _Pending) before it is reused."""
        slot, self.next = self.next, (self.next + 1) % self.streams
        if self.pending[slot] is not None:
            self.pending[slot].result()
        x = np.ascontiguousarray(pixel_values.detach().cpu().numpy(), dtype=np.float32)
        self.requests[slot].start_async({0: x})  # copies the input: x may go
        self.pending[slot] = _Pending(self.requests[slot], self.output)
        return self.pending[slot]


class _Pending:
    """An OpenVINO inference started: `result()` waits for it and copies its logits out, once."""

    def __init__(self, request, output: int):
        self.request, self.output, self.value = request, output, None

    def result(self) -> torch.Tensor:
        if self.value is None:
            self.request.wait()
            self.value = torch.from_numpy(self.request.get_output_tensor(self.output).data.copy())
        return self.value


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def make_runner(path: Path, runtime: str, dtype: torch.dtype = torch.float32, threads: int | None = None,
                streams: int | None = 1):
    """`streams`: OpenVINO's requests at once (OpenVinoRunner); None there is its choice, elsewhere 1."""
    if threads is not None and threads < 1:
        raise SegtuneError(f"--threads {threads}: must be at least 1")
    if runtime == "onnxruntime":
        if dtype != torch.float32:
            raise SegtuneError(f"--dtype {str(dtype).removeprefix('torch.')}: onnxruntime runs the exported model in "
                               "float32; use --runtime openvino for bfloat16")
        check_streams(streams, runtime)
        return OnnxRuntimeRunner(path, threads)
    if runtime == "openvino":
        if dtype not in OPENVINO_PRECISIONS:
            raise SegtuneError(f"--dtype {dtype}: openvino runs float32, bfloat16 or float16")
        return OpenVinoRunner(path, threads, dtype, streams)
    raise SegtuneError(f"--runtime {runtime}: choose {', '.join(RUNTIMES)}")


def check_streams(streams: int | None, runtime: str) -> None:
    """Several requests at once is OpenVINO's alone (ONNX Runtime ran slower so here, and torch shares one
    thread pool): any other runtime takes None or 1."""
    if streams not in (None, 1):
        raise SegtuneError(f"--streams {streams}: only --runtime openvino runs several requests at once "
                           f"(not {runtime})")


# ---------------------------------------------------------------- labels and processor


def load_exported(model: str | Path, runtime: str = "onnxruntime", dtype: torch.dtype = torch.float32,
                  threads: int | None = None, streams: int | None = 1):
    """-> (runner, processor, labels) of an exported model (`model`: a .onnx file or an export folder).
    labels.json and preprocessor_config.json (with config.json) beside the file come first, else the
    ONNX metadata; neither is one line."""
    from ..data.labels import load_labels
    from ..models.loading import load_processor

    path = onnx_path(model)
    if path is None:
        raise SegtuneError(f"{model}: neither a .onnx file nor an export folder holding {ONNX_FILE} "
                           "(segtune export writes one)")
    folder = path.parent
    runner = make_runner(path, runtime, dtype, threads, streams)
    meta = runner.metadata
    if (folder / "labels.json").is_file():
        labels = load_labels(folder / "labels.json")
    elif META_LABELS in meta:
        labels = _labels_from_json(meta[META_LABELS], path)
    else:
        raise SegtuneError(f"{path}: no class names: neither labels.json beside it nor segtune's ONNX metadata "
                           "(export it with segtune export)")
    beside = folder / "preprocessor_config.json"
    if META_FAST in meta and (not beside.is_file() or _same_json(beside.read_text(), meta.get(META_PROCESSOR))):
        from .preprocess import SavedProcessor

        processor = SavedProcessor(json.loads(meta[META_FAST]))  # exact, and no transformers import
    elif beside.is_file() and (folder / "config.json").is_file():
        processor = load_processor(folder)
    elif META_PROCESSOR in meta:
        with tempfile.TemporaryDirectory(prefix="segtune-onnx-") as tmp:
            Path(tmp, "preprocessor_config.json").write_text(meta[META_PROCESSOR])
            Path(tmp, "config.json").write_text(meta.get(META_CONFIG) or json.dumps({"model_type": "segformer"}))
            processor = load_processor(tmp)
    else:
        raise SegtuneError(f"{path}: no image processor: neither preprocessor_config.json beside it nor segtune's "
                           "ONNX metadata (export it with segtune export)")
    return runner, processor, labels


def _same_json(text: str, other: str | None) -> bool:
    try:
        return other is not None and json.loads(text) == json.loads(other)
    except ValueError:
        return False


def _labels_from_json(text: str, path: Path):
    from ..data.labels import load_labels

    with tempfile.TemporaryDirectory(prefix="segtune-onnx-") as tmp:
        file = Path(tmp, "labels.json")
        file.write_text(text)
        try:
            return load_labels(file)
        except SegtuneError as e:
            raise SegtuneError(f"{path}: the class names in its metadata are unreadable ({e})") from None

