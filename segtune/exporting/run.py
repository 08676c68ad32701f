"""`segtune export`: a model as ONNX, described by the files beside it, and checked against torch.

OUT/model.onnx takes `pixel_values` (N, 3, H, W) float32, batch, height and width dynamic, and
gives `logits` (N, C, H/4, W/4) for SegFormer: the model's own function, with a SegFormer's decode
head folded (segtune.models.folding.fold_segformer_head: the same function, float rounding apart) unless
`--no-fold-head`. Its metadata holds the class names and colours, the processor and the model
config; beside it config.json, preprocessor_config.json and labels.json (and splits.json, when the
model folder has one, so `evaluate` scores the run's own split), so the folder describes itself.

The parity check runs the saved folder with ONNX Runtime, as `segtune predict` would, and the torch
model on the same images (`--check-data`, else generated ones) at 0.75, 1 and 1.25 times the
training scale, each as a batch of two (the image and its mirror): the largest logit difference,
the share of equal label-map pixels, and with masks the mean IoU of each model. It is written to
OUT/export.json and printed; below `--min-equal-pixels` (or above `--max-logit-diff`) the export is
marked failed there and the command exits with one line.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import SegtuneError
from ..inference.onnx_runners import (INPUT_NAME, META_CONFIG, META_FAST, META_LABELS, META_PROCESSOR, ONNX_FILE,
                                      OUTPUT_NAME, require)
from ..inference.bands import band_settings
from ..inference.preprocess import FastPreprocess

log = logging.getLogger("segtune")

EXPORT_JSON = "export.json"
CHECK_RATIOS = (0.75, 1.0, 1.25)
GENERATED_SIZES = ((683, 512), (480, 640), (500, 375), (320, 240))  # (width, height): several aspect ratios


class _Logits(torch.nn.Module):
    """The model's per-pixel scores (logits, or a mask classifier's semantic scores: models/masks.py) as a module
    of one tensor in, one out (what the exporter traces)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        from ..models.masks import pixel_scores

        return pixel_scores(self.model, pixel_values)


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise SegtuneError(f"{output_dir}: not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise SegtuneError(f"{output_dir}: output folder is not empty; pass --overwrite to write into it")


def _reason(error: BaseException) -> str:
    """The exporter's one line: which operation and why ("Exporting the operator 'aten::x' to ONNX opset 18
    is not supported", "Unsupported: ONNX export of operator adaptive_avg_pool2d, input size not accessible")."""
    text = " ".join(str(error).split())
    text = text.split(" Please feel free", 1)[0].split(". Please", 1)[0].strip().rstrip(".")
    if isinstance(error, torch.onnx.errors.UnsupportedOperatorError):
        return text
    return f"{type(error).__name__}: {text[:300]}"


TORCHSCRIPT, DYNAMO = "torch.onnx.export (TorchScript, dynamo=False)", "torch.onnx.export (dynamo=True)"


def export_onnx(model, path: Path, sample: torch.Tensor, opset: int, name: str, fixed_size: bool = False) -> str:
    """torch.onnx.export with the batch, height and width dynamic: the TorchScript exporter (dynamo=False:
    measured exact for SegFormer here), else, where it fails and onnxscript is installed, the dynamo
    exporter. Returns the exporter used; one line naming the operation when neither can.

    `fixed_size`: a model taking one input size only (architectures.input_size, which its processor
    resizes to), exported with the sample's height and width fixed and the batch dynamic."""
    import contextlib
    import importlib.util
    import io
    import warnings

    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 2: "logits_height",
                                                                            3: "logits_width"}}
    if fixed_size:
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    module = _Logits(model).eval()
    quiet = io.StringIO()  # the TorchScript exporter prints its graph on some failures
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")  # tracer warnings about shapes read as Python values
            torch.onnx.export(module, (sample,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        return TORCHSCRIPT
    except Exception as e:
        first = e
    if importlib.util.find_spec("onnxscript") is None:
        raise SegtuneError(f"{name}: cannot be exported to ONNX opset {opset}: {_reason(first)} (the dynamo "
                           "exporter may: pip install onnxscript)") from None
    log.warning("segtune: the TorchScript exporter failed (%s); trying the dynamo exporter", _reason(first))
    dynamic = torch.export.Dim.DYNAMIC
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (sample,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes={INPUT_NAME: {0: dynamic} if fixed_size else
                                              {0: dynamic, 2: dynamic, 3: dynamic}},
                              opset_version=opset, dynamo=True, verbose=False)
        return DYNAMO
    except Exception:
        raise SegtuneError(f"{name}: cannot be exported to ONNX opset {opset}: {_reason(first)}") from None


def add_metadata(path: Path, labels, processor, config) -> None:
    """The class names and colours, the processor and the model config in the ONNX metadata_props."""
    import tempfile

    onnx = require("onnx", "segtune export")
    with tempfile.TemporaryDirectory(prefix="segtune-export-") as tmp:
        labels.to_json(Path(tmp, "labels.json"))
        entries = {META_LABELS: Path(tmp, "labels.json").read_text(), META_PROCESSOR: processor.to_json_string(),
                   META_CONFIG: config.to_json_string()}
    fast = FastPreprocess.of(processor)
    if fast is not None:  # checked here, with the processor's class at hand: the exported model runs without it
        entries[META_FAST] = json.dumps(fast.settings())
    model = onnx.load(str(path))
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    model.producer_name, model.doc_string = "segtune export", f"segmentation model, {len(labels)} classes"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# ---------------------------------------------------------------- the parity check


@dataclass
class _Row:
    ratio: float
    sizes: set = field(default_factory=set)
    max_diff: float = 0.0
    equal: int = 0
    pixels: int = 0
    cms: tuple | None = None  # (torch, onnx) ConfusionMatrix, with masks

    def to_json(self, names=None) -> dict:
        out = {"ratio": self.ratio, "input_sizes": sorted(self.sizes, key=lambda s: [int(v) for v in s.split("x")]),
               "max_logit_diff": self.max_diff, "equal_pixels": self.equal / self.pixels if self.pixels else None}
        if self.cms is not None:
            out["mean_iou_torch"], out["mean_iou_onnx"] = (_mean_iou(cm) for cm in self.cms)
        return out


def _mean_iou(cm) -> float | None:
    value = cm.compute()["mean_iou"]
    return None if value is None or np.isnan(value) else float(value)


def check_images(check_data: str | None, count: int, label_options=None):
    """-> (source, [(PIL image, mask or None)], mask rules' ignore index or None): `count` images spread
    over the data (a dataset's validation pairs first, with masks; or a folder of images), else generated.
    `label_options` (options.LabelOptions: --reduce-labels, --ignore-index, --binary) rule the masks."""
    from PIL import Image

    if check_data is None:
        from ..data.demo_data import _render_scene

        rng = np.random.default_rng(0)
        images = []
        for i in range(count):
            width, height = GENERATED_SIZES[i % len(GENERATED_SIZES)]
            rgb, _ = _render_scene(rng, max(width, height))
            images.append((Image.fromarray(rgb[:height, :width]), None))
        return "generated", images, None
    from ..data.reading import read_image
    from ..data.sources import is_dataset, load_data
    from ..prediction.inputs import collect_images

    path = Path(check_data)
    if not is_dataset(path):  # a folder of images, no masks
        entries = collect_images([str(path)])
        return str(path), [(read_image(e.path), None) for e in _spread(entries, count)], None

    data = load_data(check_data)
    if label_options is not None:
        from ..data.checks import apply_label_options

        apply_label_options(data, label_options)
    if not hasattr(data, "train"):
        raise SegtuneError(f"--check-data {check_data}: a streamed dataset; give a folder of images or a dataset "
                           "listed ahead")
    pairs = _spread(data.val or data.train, count)
    if not pairs:
        raise SegtuneError(f"--check-data {check_data}: no image/mask pairs found")
    return str(check_data), [pair.read(data.rules) for pair in pairs], data.rules.ignore_index


def _spread(items: list, count: int) -> list:
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)]


class CheckFailed(Exception):
    """The exported model does not run where torch does."""


def _scores(segmenter, batch: torch.Tensor) -> torch.Tensor:
    """A batch's scores as the segmenter computes them: one pass, or a model of windows' (EoMT's) windows."""
    if segmenter.windows:
        return torch.stack([segmenter._slide(pixel_values) for pixel_values in batch])
    return segmenter._logits(batch)


def parity_check(torch_segmenter, onnx_segmenter, images, ignore_index) -> list[_Row]:
    """Each image at CHECK_RATIOS of the training scale, as a batch of it and its mirror, through both."""
    from ..evaluation.metrics import ConfusionMatrix
    from ..inference.postprocess import upsampled_argmax

    num_classes = len(torch_segmenter.labels)
    rows = {ratio: _Row(ratio) for ratio in CHECK_RATIOS}
    if any(mask is not None for _, mask in images):
        for row in rows.values():
            row.cms = (ConfusionMatrix(num_classes, ignore_index), ConfusionMatrix(num_classes, ignore_index))
    with torch.inference_mode():
        for image, mask in images:
            size = (image.height, image.width)
            ours, theirs = torch_segmenter.prepare(image), onnx_segmenter.prepare(image)
            for (ratio, pv_torch), (_, pv_onnx) in zip(ours.inputs, theirs.inputs):
                row = rows[ratio]
                row.sizes.add(f"{pv_torch.shape[-2]}x{pv_torch.shape[-1]}")
                logits = [_scores(torch_segmenter, torch.stack([pv_torch, pv_torch.flip(-1)]))]
                batch = torch.stack([pv_onnx, pv_onnx.flip(-1)])
                try:
                    logits.append(_scores(onnx_segmenter, batch))
                except Exception as e:  # a size the graph fixed at export (a reshape of constant shape ...)
                    raise CheckFailed(f"ONNX Runtime cannot run the export at input {'x'.join(map(str, batch.shape))}"
                                      f" ({_reason(e)[:200]})") from None
                if logits[0].shape != logits[1].shape:
                    raise SegtuneError(f"ONNX logits are {tuple(logits[1].shape)} where torch gives "
                                       f"{tuple(logits[0].shape)} for input {tuple(pv_torch.shape)}")
                row.max_diff = max(row.max_diff, float((logits[0] - logits[1]).abs().max()))
                maps = [[upsampled_argmax(item, size) for item in batch] for batch in logits]
                for a, b in zip(*maps):
                    row.equal += int((a == b).sum())
                    row.pixels += a.numel()
                if row.cms is not None and mask is not None:
                    for cm, batch in zip(row.cms, maps):
                        cm.update(torch.from_numpy(mask), batch[0])
    return list(rows.values())


def format_check(rows: list[_Row], runtime: str = "onnx") -> str:
    with_masks = rows[0].cms is not None
    head = f"{'scale':>5}  {'input sizes (h x w)':<24}  {'max |logit diff|':>16}  {'equal pixels':>12}"
    if with_masks:
        head += f"  {'mIoU torch':>10}  {'mIoU ' + runtime:>10}"
    lines = [head]
    for row in rows:
        j = row.to_json()
        sizes = j["input_sizes"]
        shown = sizes[0] if len(sizes) == 1 else f"{sizes[0]} .. {sizes[-1]} ({len(sizes)})"
        scale = "x" + format(row.ratio, "g")
        line = f"{scale:>5}  {shown:<24}  {row.max_diff:>16.3g}  {100 * j['equal_pixels']:>11.4f}%"
        if with_masks:
            fmt = lambda v: f"{'n/a':>10}" if v is None else f"{v:>10.4f}"  # noqa: E731
            line += f"  {fmt(j['mean_iou_torch'])}  {fmt(j['mean_iou_onnx'])}"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------- `segtune export`


def run_export(opts) -> dict:
    """`segtune export`: `opts` a segtune.options.ExportOptions. Writes OUT/model.onnx, config.json,
    preprocessor_config.json, labels.json and export.json; returns export.json's content."""
    from ..inference.geometry import training_scale
    from ..inference.onnx_runners import onnx_path
    from ..inference.segmenter import Segmenter
    from ..models.architectures import input_size
    from ..models.exportable import make_exportable
    from ..models.folding import fold_segformer_head

    started = time.perf_counter()
    out = Path(opts.output_dir)
    if opts.opset < 7:
        raise SegtuneError(f"--opset {opts.opset}: ONNX opsets start at 7 here (default 18)")
    if opts.check_images < 0:
        raise SegtuneError(f"--check-images {opts.check_images}: give 0 (no check) or more")
    if not 0.0 <= opts.min_equal_pixels <= 100.0:
        raise SegtuneError(f"--min-equal-pixels {opts.min_equal_pixels}: a percentage, 0 to 100")
    if onnx_path(opts.model) is not None:
        raise SegtuneError(f"{opts.model}: already an exported ONNX model; give the model folder it came from")
    check_output_dir(out, opts.overwrite)
    require("onnx", "segtune export")
    if opts.check_images:
        require("onnxruntime", "segtune export's parity check")
    # the torch model as `segtune predict` runs it, and the images, before anything is written
    reference = Segmenter.from_pretrained(opts.model, device="cpu", runtime="torch",
                                          trust_remote_code=opts.trust_remote_code, mode="whole", tta=True,
                                          scales=CHECK_RATIOS, flip=False, num_workers=0)
    model, processor, labels = reference.model, reference.processor, reference.labels
    backbone = getattr(getattr(model.config, "backbone_config", None), "model_type", "")
    if reference.family == "mask" and backbone in ("swin", "maskformer-swin"):
        raise SegtuneError(f"{opts.model}: a {model.config.model_type} on Swin cannot be exported with a free input "
                           "size: the exporter records Swin's padding to whole windows as constants, so the graph "
                           "would run one size only, where segtune resizes by the short side (EoMT exports)")
    bands = band_settings(processor)  # a multi-band model: N input channels, checked on rasters (bands.py)
    source, images, ignore_index = check_images(opts.check_data, opts.check_images, opts) \
        if opts.check_images and bands is None else (None, [], None)

    exported = copy.deepcopy(model).float().eval()
    folded = bool(opts.fold_head) and fold_segformer_head(exported)
    make_exportable(exported)  # pyramid pooling (UperNet, BEiT) as an exportable computation
    fixed = input_size(model.config)  # the one size such a model takes (its processor resizes to it)
    side = fixed or min(training_scale(processor) or 512, 1024)
    sample = torch.rand(1, len(bands["mean"]) if bands else 3, side, side)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{ONNX_FILE}.partial"
    try:
        exporter = export_onnx(exported, tmp, sample, opts.opset, str(opts.model), fixed_size=fixed is not None)
        add_metadata(tmp, labels, processor, model.config)
        (out / EXPORT_JSON).unlink(missing_ok=True)  # --overwrite: an earlier verdict is not this model's
        os.replace(tmp, out / ONNX_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    exported_seconds = time.perf_counter() - started
    model.config.save_pretrained(out)
    processor.save_pretrained(out)
    labels.to_json(out / "labels.json")
    splits = Path(str(opts.model)) / "splits.json"
    if splits.is_file():
        shutil.copyfile(splits, out / "splits.json")

    result = {
        "passed": None, "model": str(opts.model), "onnx": str(out / ONNX_FILE), "opset": opts.opset,
        "exporter": exporter, "folded_head": folded,
        "input": {"name": INPUT_NAME, "shape": ["batch", sample.shape[1], fixed or "height", fixed or "width"],
                  "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(labels), "logits_height", "logits_width"]},
        "export_input_size": list(sample.shape), "classes": len(labels),
        "torch": torch.__version__, "seconds_export": round(exported_seconds, 3), "check": None,
    }
    if opts.check_images and bands is not None:
        from .bands import run_band_check

        result["check"] = run_band_check(reference, out, opts)
        result["passed"] = not result["check"]["failures"]
    elif opts.check_images:
        import onnxruntime

        result["onnxruntime"] = onnxruntime.__version__
        check_started = time.perf_counter()
        onnx_segmenter = Segmenter.from_pretrained(out, runtime="onnxruntime", mode="whole", tta=True,
                                                   scales=CHECK_RATIOS, flip=False, num_workers=0)
        failures = []
        try:
            rows = parity_check(reference, onnx_segmenter, images, ignore_index)
        except CheckFailed as e:
            rows, failures = [_Row(ratio) for ratio in CHECK_RATIOS], [str(e)]
        equal = sum(r.equal for r in rows) / max(sum(r.pixels for r in rows), 1)
        max_diff = max(r.max_diff for r in rows)
        if not failures and 100.0 * equal < opts.min_equal_pixels:
            failures.append(f"{100 * equal:.4f}% of label-map pixels equal, below --min-equal-pixels "
                            f"{opts.min_equal_pixels:g}")
        if opts.max_logit_diff is not None and max_diff > opts.max_logit_diff:
            failures.append(f"largest logit difference {max_diff:.3g}, above --max-logit-diff {opts.max_logit_diff:g}")
        result["passed"] = not failures
        result["check"] = {
            "runtime": "onnxruntime", "images": len(images), "source": source, "ratios": list(CHECK_RATIOS),
            "batch": "each input with its mirror image, as a batch of 2", "masks": rows[0].cms is not None,
            "min_equal_pixels": opts.min_equal_pixels, "max_logit_diff_allowed": opts.max_logit_diff,
            "max_logit_diff": max_diff, "equal_pixels": equal, "rows": [r.to_json() for r in rows],
            "failures": failures, "seconds": round(time.perf_counter() - check_started, 3),
        }
        print(f"parity check: ONNX Runtime against torch, {len(images)} {source} image(s) at {len(rows)} scales, "
              "each with its mirror as a batch of 2")
        if not failures or rows[0].pixels:
            print(format_check(rows))
    (out / EXPORT_JSON).write_text(json.dumps(result, indent=2) + "\n")
    if result["passed"] is False:
        raise SegtuneError(f"parity check failed: {'; '.join(result['check']['failures'])} "
                           f"(the export is marked failed in {out / EXPORT_JSON})")
    checked = "checked against torch" if result["passed"] else "not checked (--check-images 0)"
    print(f"exported {opts.model} to {out / ONNX_FILE} ({checked}; export.json sums it up)")
    return result
