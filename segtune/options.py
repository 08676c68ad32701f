"""Every command-line option, declared once: a dataclass field with its default and help.

`segtune.cli` turns these dataclasses into each command's parser, reading each field as
`HfArgumentParser` reads `TrainingArguments` (which `train` adds), so names, defaults and help
live here and nowhere else, and a YAML/JSON `--config` file goes through the same fields. A field without `help`
is for Python callers only and is left off the command line. Options shared by commands are
one dataclass that each of them includes (`LabelOptions`, `SourceOptions`, `SplitOptions`).

segtune's own options are spelt with dashes (`--reduce-labels`); underscores work too, as
they do for every `TrainingArguments` option (`--learning_rate`, `--learning-rate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


def option(default, help: str, **argparse_kwargs):
    """A field shown on the command line; `argparse_kwargs` go to `add_argument` (nargs, metavar ...)."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


def flag(help: str, default: bool | None = False):
    """A switch: `--name` alone means true; `--name false` also works (HfArgumentParser's booleans).
    A default of None means "as the data file says"."""
    return field(default=default, metadata={"help": help, "nargs": "?", "const": True})


@dataclass(kw_only=True)
class CommonOptions:
    """What every command takes."""

    output_dir: Path | None = option(None, "where results and *.json files are written")
    debug: bool = flag("show Python tracebacks")


@dataclass(kw_only=True)
class LabelOptions:
    """The classes and how mask values become class ids."""

    labels: str | None = option(None, "'ade20k', or a JSON/CSV file of id -> name (and colour)")
    reduce_labels: bool | None = flag("ADE20K reduction on masks: 0 -> ignored, k -> k-1 (default: as the "
                                      "data file says, else off)", default=None)
    ignore_index: int | None = option(None, "mask value to ignore (default: the data file's, else 255)")
    binary: bool | None = flag("0/255 masks: 0 background, 255 (any value >= 128) foreground, classes background/"
                               "foreground unless --labels (default: as the data file says, else off)", default=None)


@dataclass(kw_only=True)
class SourceOptions:
    """How to find the pairs in a folder or a Hugging Face `datasets` source."""

    image_suffix: str | None = option(None, "image file ending, e.g. _leftImg8bit.png")
    mask_suffix: str | None = option(None, "mask file ending, e.g. _gtFine_labelIds.png")
    data_config: str | None = option(None, "`datasets` configuration name")
    train_split: str | None = option(None, "`datasets` split, e.g. 'train[:50]'")
    eval_split: str | None = option(None, "`datasets` validation split, e.g. validation, or a slice such as "
                                    "'train[:50]' when streaming; none: hold out --val-split of the training "
                                    "rows as the seeds do")
    image_column: str | None = option(None, "`datasets` image column (default: found)")
    label_column: str | None = option(None, "`datasets` mask column (default: found)")

    def source_kwargs(self) -> dict:
        """These options as `segtune.sources.load_data` keywords (only those given)."""
        names = {"image_suffix": "image_suffix", "mask_suffix": "mask_suffix", "data_config": "config",
                 "train_split": "train_split", "eval_split": "eval_split", "image_column": "image_column",
                 "label_column": "label_column"}
        out = {kw: getattr(self, name) for name, kw in names.items() if getattr(self, name) is not None}
        if getattr(self, "streaming", False):
            out["streaming"] = True
        return out


@dataclass(kw_only=True)
class BandOptions:
    """Which bands of multi-band rasters a model takes (docs/imagery.md)."""

    bands: str | None = option(None, "bands to read, 1-based as GDAL numbers them, in the model's order, e.g. "
                               "4,3,2,8 (default: every band; also reads grey and 16-bit PNGs as their own bands)")


SPLITS = ("auto", "val", "train", "all")


@dataclass(kw_only=True)
class SplitOptions:
    """Which pairs a command scores: see docs/evaluate.md."""

    split: Literal["auto", "val", "train", "all"] = option(
        "auto", "auto: the run's own validation split when the model folder has splits.json and this is its "
        "data; else the data's validation split; else every pair (or the held-out part of --val-split)")
    val_split: float | None = option(None, "for data without a split or splits.json: hold out this share "
                                     "(split as `segtune train` does) and score that part")
    seed: int = option(42, "seed of --val-split's split (segtune train's default seed)")


@dataclass(kw_only=True)
class EvaluateOptions(CommonOptions, LabelOptions, SourceOptions, SplitOptions):
    """`segtune evaluate`: score a model, or saved predictions, against masks."""

    data: str | None = option(None, "dataset folder, YAML data file, COCO JSON or `datasets` source (required)")
    model: str | None = option(None, "model folder, Hub id, or an exported model.onnx or export folder (or give "
                               "--predictions)")
    predictions: Path | None = option(None, "folder of label PNGs named like the annotations (or give --model)")
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = option(
        "auto", "what runs the model: torch for a model folder, onnxruntime for an exported one (auto), or openvino")
    threads: int | None = option(None, "the runtime's CPU threads (default: the physical cores, as torch uses)")
    dtype: Literal["float32", "float16", "bfloat16"] = option("float32", "model precision (openvino: its "
                                                              "inference precision, bfloat16 where the CPU has it)")
    skip_bad: bool = flag("score the good pairs only")
    batch_size: int = option(2, "images per forward pass")
    num_workers: int = option(0, "DataLoader worker processes")
    report: bool = option(True, "report.html (confusion matrix, lowest-IoU images); --no-report: none")
    trust_remote_code: bool = flag("run a Hub model's own code (only for models you trust)")


@dataclass(kw_only=True)
class ReportOptions(CommonOptions, LabelOptions, SourceOptions, SplitOptions):
    """`segtune report RUN_DIR`: report.html of a train or evaluate output folder."""

    data: str | None = option(None, "score the model on this data (confusion matrix, gallery); without it, "
                              "the scores saved by an earlier report are used")
    model: str | None = option(None, "model to score with (default: RUN_DIR, or the model metrics.json names)")
    skip_bad: bool = flag("score the good pairs only")
    gallery: int = option(8, "lowest-IoU images shown")
    batch_size: int = option(2, "images per forward pass")
    num_workers: int = option(0, "DataLoader worker processes")
    trust_remote_code: bool = flag("run a Hub model's own code (only for models you trust)")


@dataclass(kw_only=True)
class InspectOptions(CommonOptions, LabelOptions, SourceOptions, BandOptions):
    """`segtune inspect`: count, measure and check a dataset before training."""

    data: str | None = option(None, "dataset folder, YAML data file, COCO JSON or `datasets` source (required)")
    val_split: float = option(0.2, "validation share when the data has no split (as segtune train)")
    seed: int = option(42, "seed of that split (segtune train's default seed)")
    samples: int = option(8, "images in inspect.png")


@dataclass(kw_only=True)
class RuntimeOptions:
    """What runs the model: `segtune predict` and `segtune serve` load it alike."""

    model: str | None = option(None, "model folder, Hub id, or an exported model.onnx or export folder (required)")
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = option(
        "auto", "what runs the model: torch for a model folder, onnxruntime for an exported one (auto), or openvino")
    threads: int | None = option(None, "the runtime's CPU threads (default: the physical cores, as torch uses)")
    streams: int | None = option(None, "openvino: inference requests at once, each on a share of the threads "
                                 "(default: predict takes OpenVINO's throughput choice, 2 on 2 cores; serve 1, the "
                                 "lowest latency)")
    device: str = option("auto", "auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N, mps")
    dtype: Literal["float32", "float16", "bfloat16"] = option("float32", "model precision (openvino: its inference "
                                                              "precision, bfloat16 where the CPU has it)")
    fold_head: bool | None = flag("SegFormer: fold the decode head's fuse layer into each stage, 1.7x faster on "
                                  "CPU; logits differ by float rounding (~1e-7), so a near-tied pixel may flip "
                                  "(default: on for a SegFormer run by torch on a CPU; --fold-head false keeps "
                                  "transformers' own head, whose maps equal transformers' exactly)", default=None)
    trust_remote_code: bool = flag("run a Hub model's own code (only for models you trust)")


@dataclass(kw_only=True)
class PredictOptions(CommonOptions, LabelOptions, RuntimeOptions):
    """`segtune predict INPUTS ...`: segment images with a trained model."""

    recursive: bool = flag("take folders' sub-folders too (outputs mirror them)")
    batch_size: int | None = option(None, "images (or windows) per pass (default: 4 on CPU, 1 with --fold-head "
                                    "on CPU, 16 on CUDA)")
    num_workers: int = option(2, "threads decoding images and writing outputs while the model runs (0: none)")
    mode: Literal["auto", "whole", "slide"] = option("auto", "whole image, sliding windows, or auto: slide for "
                                                     "images over 2 crops long")
    crop_size: int | None = option(None, "slide window (default: the training scale)")
    stride: int | None = option(None, "slide step (default: 2/3 of the window)")
    tta: bool = flag("average probabilities over scales and flips")
    tta_scales: list[float] | None = option(None, "TTA scales, ratios of the training scale (default 0.5 0.75 "
                                            "1.0 1.25 1.5 1.75)", nargs="+", metavar="RATIO")
    tta_flip: bool = option(True, "TTA with horizontal flips; --no-tta-flip: without")
    alpha: float = option(0.5, "overlay opacity")
    save_probs: bool = flag("per-class probabilities, uint8 (p x 255) in compressed probs/<name>.npz")
    probabilities: bool = flag("rasters (multi-band models): <name>_probabilities.tif beside the label GeoTIFF, a "
                               "uint8 (p x 255) band per class")
    vector: str | None = option(None, "rasters (multi-band models): polygons of the classes, with their names, into "
                                "this file (.gpkg, or .geojson), one layer per raster", metavar="FILE")
    show_gt: Path | None = option(None, "ground truth (mask folder or dataset): image | truth | prediction | "
                                  "error figures")
    overwrite: bool = flag("redo images whose outputs exist; write into a folder of other files")


@dataclass(kw_only=True)
class DemoOptions(CommonOptions):
    """`segtune demo`: generate the demo data, train, evaluate and predict, offline."""

    seed: int = option(0, "seed of the generated data and of training")
    bf16: bool | None = flag("train in bf16 autocast (default: where the CPU or GPU runs bf16 natively); "
                             "--bf16 false: float32", default=None)


@dataclass(kw_only=True)
class ExportOptions(CommonOptions, LabelOptions):
    """`segtune export`: the model as ONNX (OUT/model.onnx), checked against torch."""

    model: str | None = option(None, "model folder or Hub id to export (required)")
    opset: int = option(18, "ONNX opset version")
    fold_head: bool = option(True, "SegFormer: export the folded decode head (the same function, faster); "
                             "--no-fold-head: the head as trained")
    check_data: str | None = option(None, "images for the parity check: a folder of images, or a dataset (its "
                                    "masks add the mean IoU of both models); default: generated images")
    check_images: int = option(4, "images in the parity check, each at 3 sizes (0: no check)")
    min_equal_pixels: float = option(99.99, "the check fails below this percentage of equal label-map pixels")
    max_logit_diff: float | None = option(None, "the check also fails above this largest logit difference")
    overwrite: bool = flag("write into a non-empty output folder")
    trust_remote_code: bool = flag("run a Hub model's own code (only for models you trust)")


@dataclass(kw_only=True)
class ServeOptions(RuntimeOptions):
    """`segtune serve`: an HTTP API and a web page for a model (docs/serve.md)."""

    host: str = option("127.0.0.1", "address to listen on (loopback by default; 0.0.0.0: every interface)")
    port: int = option(8000, "TCP port (0: any free port)")
    mode: Literal["auto", "whole", "slide"] = option("auto", "default inference mode (a request's ?mode= wins)")
    tta: bool = flag("default to test-time augmentation (a request's ?tta= wins)")
    max_batch_size: int = option(8, "most images per model call")
    batch_timeout_ms: float = option(10.0, "how long the batcher waits for more images after the first")
    max_upload_mb: float = option(20.0, "largest request body, in MiB (413 above)")
    max_megapixels: float = option(40.0, "largest image, in megapixels, also once resized to the model's scale "
                                   "(413 above)")
    max_queue: int = option(64, "requests waiting for the model; more are answered 503 with Retry-After")
    body_timeout: float = option(30.0, "seconds a request body may take to arrive (408 after: a body that "
                                 "trickles in)")
    keep_alive_timeout: float = option(5.0, "seconds an idle keep-alive connection stays open")
    max_connections: int = option(100, "open connections; more are answered 503 with Retry-After and closed")
    api_key_env: str | None = option(None, "environment variable holding the API key; requests then need "
                                     "'Authorization: Bearer KEY' or 'X-API-Key: KEY' (401)")
    debug: bool = flag("show Python tracebacks")
