"""`segtune report`: one self-contained report.html for a training or evaluation run.

The page holds the metrics table, per-class IoU as a bar chart, the row-normalised confusion
matrix as a heatmap, the training curves (loss, learning rate, validation mean IoU by step) when
the run trained, and a gallery of the validation images with the lowest per-image IoU, each
beside its ground truth, the prediction and an error map. Every picture is embedded (base64),
so the page can be mailed or attached as one file; the same pictures are written as PNGs in
`report/` beside it.

Scores the page needs beyond metrics.json (the confusion matrix and per-image IoU) come from
an evaluation pass: `write_report` runs one when given a model and the validation samples, or
takes the results of a pass already made (`evaluate_model(..., on_item=ImageScores(...))`). They
are saved as confusion_matrix.json and per_image_iou.json, so a later `segtune report RUN_DIR`
rebuilds the page without the data.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..data.labels import LabelSet, load_labels
from ..errors import SegtuneError
from ..evaluation.metrics import ConfusionMatrix, metrics_to_json
from ..evaluation.scoring import GALLERY_SIZE, ImageScores
from .charts import confusion_chart, per_class_iou_chart, read_log, training_chart

log = logging.getLogger("segtune")
REPORT_DIR = "report"  # the PNGs, beside report.html


def score_model(model, processor, samples: list, rules, num_classes: int, *, batch_size: int = 2,
                num_workers: int = 0, keep: int = GALLERY_SIZE, progress: bool = True):
    """One evaluation pass: (confusion matrix, ImageScores)."""
    from ..evaluation.scoring import EvalDataset, evaluate_model
    from ..inference.preprocess import ProcessorTransform

    scores = ImageScores(num_classes, rules.ignore_index, keep)
    dataset = EvalDataset(samples, ProcessorTransform(processor), rules)
    cm = evaluate_model(model, dataset, num_classes, rules.ignore_index, batch_size, num_workers,
                        progress=progress, on_item=scores)
    return cm, scores


# ---------------------------------------------------------------- saved scores


def save_confusion(path: Path, cm: ConfusionMatrix, names) -> dict:
    """confusion_matrix.json: pixels per (true class row, predicted class column)."""
    mat = cm.mat.cpu().numpy()
    n = cm.num_classes
    payload = {
        "classes": list(names),
        "ignore_index": cm.ignore_index,
        "rows": "true class", "columns": "predicted class",
        "matrix": mat[:n, :n].tolist(),
        "label_out_of_range_pixels": int(mat[n, :].sum()),  # label ids outside the classes (not ignored)
        "prediction_out_of_range_pixels": int(mat[:, n].sum()),
    }
    path.write_text(json.dumps(payload) + "\n")
    return payload


def _sample_names(sample) -> tuple[str, str]:
    return str(getattr(sample, "name", sample)), str(getattr(sample, "mask_name", ""))


# ---------------------------------------------------------------- the page


def _base64(png: bytes | None) -> str | None:
    return None if png is None else base64.b64encode(png).decode("ascii")


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _labels_for(run_dir: Path, metrics: dict, saved_confusion: dict | None) -> LabelSet:
    if (run_dir / "labels.json").is_file():
        return load_labels(run_dir / "labels.json")
    config = run_dir / "config.json"
    if config.is_file():
        id2label = json.loads(config.read_text()).get("id2label")
        if id2label:
            return LabelSet.from_id2label(id2label)
    if saved_confusion:
        return LabelSet.from_names(saved_confusion["classes"])
    if metrics.get("per_category_iou"):
        return LabelSet.from_names(list(metrics["per_category_iou"]))
    raise SegtuneError(f"{run_dir}: cannot tell the classes (no labels.json, config.json or metrics.json)")


def write_report(
    run_dir: str | Path,
    *,
    labels: LabelSet | None = None,
    samples: list | None = None,
    rules=None,
    model=None,
    processor=None,
    confusion: ConfusionMatrix | None = None,
    scores: ImageScores | None = None,
    gallery_size: int = GALLERY_SIZE,
    batch_size: int = 2,
    num_workers: int = 0,
    output_dir: str | Path | None = None,
    title: str | None = None,
    progress: bool = True,
) -> Path:
    """Writes OUTPUT_DIR/report.html and OUTPUT_DIR/report/*.png (OUTPUT_DIR: `run_dir` by default).

    - metrics.json and log.jsonl (if any) are read from `run_dir`;
    - with `model`, `processor`, `samples` (the validation pairs) and `rules` (`data.rules`), the
      samples are scored once: confusion matrix and per-image IoU; or pass `confusion` and/or
      `scores` from a pass already made (`samples` and `rules` are still needed for the gallery);
    - without either, confusion_matrix.json and per_image_iou.json from an earlier report are used.
    Returns the path of report.html.
    """
    from ..data.reading import MaskRules
    from .charts import comparison_figure

    run_dir = Path(run_dir)
    out = Path(output_dir) if output_dir is not None else run_dir
    pictures = out / REPORT_DIR
    pictures.mkdir(parents=True, exist_ok=True)
    rules = rules or MaskRules()

    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    saved_cm_path, saved_scores_path = out / "confusion_matrix.json", out / "per_image_iou.json"
    if labels is None:
        saved = json.loads(saved_cm_path.read_text()) if saved_cm_path.is_file() else None
        labels = _labels_for(run_dir, metrics, saved)
    names = list(labels.names)

    if confusion is None and scores is None and model is not None and samples:
        if processor is None:
            raise ValueError("write_report: a model needs its processor")
        confusion, scores = score_model(model, processor, samples, rules, len(labels), batch_size=batch_size,
                                        num_workers=num_workers, keep=gallery_size, progress=progress)
    if confusion is not None:
        saved_confusion = save_confusion(saved_cm_path, confusion, names)
        if not metrics:
            metrics = metrics_to_json(confusion.compute(), names)
    elif saved_cm_path.is_file():
        saved_confusion = json.loads(saved_cm_path.read_text())
        if saved_confusion.get("classes") != names:
            saved_confusion = None  # scored with other classes: not this run's
    else:
        saved_confusion = None
    if not metrics:
        raise SegtuneError(f"{run_dir}: no metrics.json (expected a `segtune train` or `segtune evaluate` "
                           "output folder)")

    gallery: list[tuple[str, float, bytes]] = []  # (caption, IoU, PNG)
    if scores is not None and samples is not None:
        per_image = []
        for index, (iou, accuracy) in sorted(scores.scores.items()):
            image_name, mask_name = _sample_names(samples[index])
            per_image.append({"image": image_name, "mask": mask_name, "mean_iou": None if math.isnan(iou) else iou,
                              "pixel_accuracy": None if math.isnan(accuracy) else accuracy})
        saved_scores_path.write_text(json.dumps(per_image, indent=1) + "\n")
        for old in pictures.glob("gallery_*.png"):
            old.unlink()
        for rank, (index, iou, prediction) in enumerate(scores.worst()[:gallery_size], start=1):
            sample = samples[index]
            image, mask = sample.read(rules)
            path = pictures / f"gallery_{rank:02d}_{sample.stem}.png"
            caption = f"{rank}. {_sample_names(sample)[0]}: mean IoU {iou:.3f}"
            comparison_figure(np.asarray(image), mask, prediction, labels, path, ignore_index=rules.ignore_index,
                              title=f"{Path(_sample_names(sample)[0]).name}: mean IoU {iou:.3f}", dpi=80)
            gallery.append((caption, iou, path.read_bytes()))
    elif saved_scores_path.is_file() and confusion is None:  # rebuilding: an earlier report's gallery
        per_image = json.loads(saved_scores_path.read_text())
        for path in sorted(pictures.glob("gallery_*.png"))[:gallery_size]:
            gallery.append((path.stem.split("_", 2)[-1], float("nan"), path.read_bytes()))
    else:
        per_image = None
        if confusion is not None:  # a new pass without per-image scores: an earlier gallery would contradict it
            saved_scores_path.unlink(missing_ok=True)
            for old in pictures.glob("gallery_*.png"):
                old.unlink()

    ious = [metrics.get("per_category_iou", {}).get(n) for n in names]
    accs = [metrics.get("per_category_accuracy", {}).get(n) for n in names]
    bar_png = per_class_iou_chart(names, ious, labels.colors, pictures / "per_class_iou.png", metrics.get("mean_iou"))
    cm_png = (confusion_chart(names, np.array(saved_confusion["matrix"]), pictures / "confusion_matrix.png")
              if saved_confusion else None)
    curves_png = training_chart(read_log(run_dir / "log.jsonl"), pictures / "training_curves.png")
    for stale, made in (("confusion_matrix.png", cm_png), ("training_curves.png", curves_png)):
        if made is None and (pictures / stale).is_file():
            (pictures / stale).unlink()

    page = _page(run_dir, metrics, labels, ious, accs, saved_confusion, per_image, bar_png, cm_png, curves_png,
                 gallery, title)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_report_or_warn(run_dir: str | Path, **kwargs) -> Path | None:
    """`write_report` at the end of `train` and `evaluate`, whose results are saved by then: a failure
    costs only the page, as one warning line, not the run."""
    try:
        return write_report(run_dir, **kwargs)
    except Exception as e:  # noqa: BLE001 (whatever broke, the model and metrics.json stay)
        page = Path(kwargs.get("output_dir") or run_dir) / "report.html"
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = text if isinstance(e, SegtuneError) else f"{type(e).__name__}: {text}"
        log.warning("segtune: warning: %s: not written (%s); try again with `segtune report %s`", page, reason,
                    run_dir)
        return None


def _architecture(run_dir: Path) -> str | None:
    """The model_type of the model in the run folder (config.json), which the page names."""
    try:
        return json.loads((run_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _page(run_dir, metrics, labels, ious, accs, saved_confusion, per_image, bar_png, cm_png, curves_png,
          gallery, title) -> str:
    share = None
    if saved_confusion:
        rows = np.array(saved_confusion["matrix"], dtype=np.float64).sum(axis=1)
        share = rows / rows.sum() if rows.sum() else None
    classes = [{"id": i, "name": name, "color": [int(c) for c in color], "iou": _fmt(ious[i]),
                "accuracy": _fmt(accs[i]), "share": None if share is None else f"{100 * share[i]:.2f}%"}
               for i, (name, color) in enumerate(zip(labels.names, labels.colors))]
    return _template().render(
        name=title or run_dir.resolve().name,
        folder=str(run_dir),
        architecture=_architecture(run_dir),
        step=metrics.get("step"),
        data=metrics.get("data"),
        num_images=metrics.get("num_images"),
        num_validation=None if per_image is None else len(per_image),
        written=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        summary=[(label, _fmt(metrics.get(key))) for key, label in (
            ("mean_iou", "mean IoU"), ("mean_accuracy", "mean accuracy"),
            ("overall_accuracy", "overall (pixel) accuracy"))],
        classes=classes,
        with_share=share is not None,
        bar_png=_base64(bar_png),
        cm_png=_base64(cm_png),
        curves_png=_base64(curves_png),
        gallery=[(caption, _base64(png)) for caption, _, png in gallery],
        findings=metrics.get("data_findings") or [],  # label checks recorded by train (segtune/data/label_checks.py)
    )


@functools.lru_cache(maxsize=1)
def _template():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("segtune.reporting", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),  # class names, paths and captions are the user's text
        undefined=jinja2.StrictUndefined,  # a misspelt name fails here, not as a silently empty cell
        trim_blocks=True, lstrip_blocks=True,  # block tags on their own lines leave no blank lines behind
        keep_trailing_newline=True,
    )
    return environment.get_template("report.html")


def run_report(opts, run_dir: str | Path) -> Path:
    """`segtune report RUN_DIR`: `opts` a segtune.options.ReportOptions. With `opts.data`, the model is
    scored afresh on the pairs `opts.split` selects (as `segtune evaluate` does); without it, the scores
    an earlier report saved are drawn again."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise SegtuneError(f"{run_dir}: no metrics.json (expected a `segtune train` or `segtune evaluate` "
                           "output folder)")
    scoring = {}
    if opts.data:
        from ..evaluation.run import load_scored_data
        from ..inference.segmenter import Segmenter

        model = opts.model or (run_dir if (run_dir / "config.json").is_file()
                               else json.loads(metrics_path.read_text()).get("source"))
        if not model:
            raise SegtuneError(f"{run_dir}: holds no model; name the one to score with --model")
        from ..evaluation.run import band_model

        if band_model(model):  # its rasters are scored tile by tile, with no per-image gallery
            raise SegtuneError(f"{model}: a multi-band model; `segtune report --data` re-scores RGB models only "
                               f"(`segtune evaluate --model {model} --data {opts.data}` scores it and writes "
                               "report.html)")
        segmenter = Segmenter.from_pretrained(model, trust_remote_code=opts.trust_remote_code)
        labels = load_labels(opts.labels) if opts.labels else segmenter.labels
        data, labels, _ = load_scored_data(opts, model, labels)
        scoring = dict(model=segmenter.model, processor=segmenter.processor, samples=data.val, rules=data.rules,
                       labels=labels)
    return write_report(run_dir, output_dir=opts.output_dir, gallery_size=opts.gallery, batch_size=opts.batch_size,
                        num_workers=opts.num_workers, **scoring)
