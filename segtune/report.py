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
import heapq
import html
import io
import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .errors import SegtuneError
from .labels import LabelSet, load_labels
from .metrics import ConfusionMatrix, metrics_to_json

GALLERY_SIZE = 8
REPORT_DIR = "report"  # the PNGs, beside report.html
log = logging.getLogger("segtune")


# ---------------------------------------------------------------- per-image scores


class ImageScores:
    """An `evaluate_model(on_item=...)` callback: each image's mean IoU (`evaluate`'s semantics on
    that image alone: classes absent from both label and prediction left out) and pixel accuracy,
    plus the predictions of the `keep` lowest-IoU images, for the gallery."""

    def __init__(self, num_classes: int, ignore_index: int = 255, keep: int = GALLERY_SIZE):
        self.num_classes, self.ignore_index, self.keep = num_classes, ignore_index, keep
        self.scores: dict[int, tuple[float, float]] = {}  # index -> (mean IoU, pixel accuracy); NaN: no pixel
        self._worst: list = []  # heap of (-iou, index, prediction): the `keep` lowest

    def __call__(self, index: int, label, prediction) -> None:
        label, prediction = torch.as_tensor(label), torch.as_tensor(prediction)
        cm = ConfusionMatrix(self.num_classes, self.ignore_index, device=label.device)
        cm.update(label, prediction)
        if int(cm.mat.sum()) == 0:  # every pixel ignored: nothing to score
            self.scores[int(index)] = (float("nan"), float("nan"))
            return
        metrics = cm.compute()
        iou, accuracy = metrics["mean_iou"], metrics["overall_accuracy"]
        self.scores[int(index)] = (iou, accuracy)
        if self.keep > 0 and not math.isnan(iou):
            entry = (-iou, -int(index), prediction.cpu().numpy().astype(np.int32))
            if len(self._worst) < self.keep:
                heapq.heappush(self._worst, entry)
            elif entry[:2] > self._worst[0][:2]:
                heapq.heapreplace(self._worst, entry)

    def gather(self) -> None:
        """Under torch.distributed each rank scores its own share of the images: afterwards every rank
        holds all the scores and the `keep` lowest overall. A no-op in a single process."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, (self.scores, self._worst))
        self.scores = {index: score for scores, _ in parts for index, score in scores.items()}
        self._worst = heapq.nlargest(self.keep, (entry for _, worst in parts for entry in worst), key=lambda e: e[:2])
        heapq.heapify(self._worst)

    def worst(self) -> list[tuple[int, float, np.ndarray]]:
        """(index, mean IoU, prediction) of the kept images, lowest IoU first (ties: lower index)."""
        return [(-i, -iou, pred) for iou, i, pred in sorted(self._worst, key=lambda e: (-e[0], -e[1]))]


def score_model(model, processor, samples: list, rules, num_classes: int, *, batch_size: int = 2,
                num_workers: int = 0, keep: int = GALLERY_SIZE, progress: bool = True):
    """One evaluation pass: (confusion matrix, ImageScores)."""
    from .evaluate import EvalDataset, evaluate_model
    from .transforms import ProcessorTransform

    scores = ImageScores(num_classes, rules.ignore_index, keep)
    dataset = EvalDataset(samples, ProcessorTransform(processor), rules)
    cm = evaluate_model(model, dataset, num_classes, rules.ignore_index, batch_size, num_workers,
                        progress=progress, on_item=scores)
    return cm, scores


# ---------------------------------------------------------------- pictures


def _figure_png(fig, path: Path, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    data = buffer.getvalue()
    path.write_bytes(data)
    return data


def per_class_iou_chart(names, ious, colors, path: Path, mean_iou: float | None = None) -> bytes:
    """Horizontal bars, one per class in id order, in the class colours; n/a where IoU is NaN."""
    from matplotlib.figure import Figure

    n = len(names)
    fig = Figure(figsize=(7.5, 0.9 + 0.26 * max(n, 3)), layout="constrained")
    ax = fig.subplots()
    values = np.array([np.nan if v is None else v for v in ious], dtype=float)
    y = np.arange(n)
    ax.barh(y, np.nan_to_num(values), color=np.asarray(colors, dtype=float) / 255, edgecolor="0.4", linewidth=0.5)
    for i, v in enumerate(values):
        ax.text(0.005 if np.isnan(v) else v + 0.01, i, "n/a" if np.isnan(v) else f"{v:.3f}", va="center",
                fontsize="small", color="0.4" if np.isnan(v) else "black")
    if mean_iou is not None and not math.isnan(mean_iou):
        ax.axvline(mean_iou, color="0.3", linestyle="--", linewidth=1, label=f"mean IoU {mean_iou:.3f}")
        ax.legend(loc="lower right", fontsize="small")
    ax.set_yticks(y, [f"{i} {name}" for i, name in enumerate(names)], fontsize="small")
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("IoU")
    ax.set_title("per-class IoU")
    return _figure_png(fig, path)


def normalised_confusion(matrix: np.ndarray) -> np.ndarray:
    """Each true class's row divided by its pixel count (NaN for a class with no pixels)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, matrix / totals, np.nan)


def confusion_chart(names, matrix: np.ndarray, path: Path) -> bytes:
    """Heatmap of the row-normalised confusion matrix (rows: ground truth, columns: prediction)."""
    from matplotlib.figure import Figure

    n = len(names)
    norm = normalised_confusion(matrix)
    side = min(30.0, max(5.0, 0.42 * n + 2.5))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(norm), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class's pixels")
    ticks = np.arange(n)
    fontsize = "small" if n <= 30 else 5
    ax.set_xticks(ticks, names, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, names, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (each row sums to 1)")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                v = norm[i, j]
                if not np.isnan(v) and v >= 0.005:
                    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.5 else "black")
    return _figure_png(fig, path)


def read_log(path: Path) -> list[dict]:
    """log.jsonl records; after a resume, a step logged twice keeps its last record."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "step" in record:
                records.append(record)
    return records


def _series(records: list[dict], key: str) -> tuple[list, list]:
    by_step = {}
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            by_step[r["step"]] = value
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def training_chart(records: list[dict], path: Path) -> bytes | None:
    """Loss, learning rate and validation mean IoU by step; None when the log has no training."""
    from matplotlib.figure import Figure

    panels = [("loss", "training loss"), ("learning_rate", "learning rate"), ("eval_mean_iou", "validation mean IoU")]
    series = {key: _series(records, key) for key, _ in panels}
    if not series["loss"][0]:
        return None
    fig = Figure(figsize=(13.5, 3.6), layout="constrained")
    for ax, (key, title) in zip(fig.subplots(1, 3), panels):
        steps, values = series[key]
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3,
                    color={"loss": "tab:red", "learning_rate": "tab:purple"}.get(key, "tab:blue"))
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
        if key == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _figure_png(fig, path)


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


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .note { color: #777; font-style: italic; }
table { border-collapse: collapse; margin: 0.5rem 0; font-variant-numeric: tabular-nums; }
th, td { padding: 0.2rem 0.7rem; border-bottom: 1px solid #eee; text-align: right; }
th:nth-child(-n+3), td:nth-child(-n+3) { text-align: left; }
.swatch { display: inline-block; width: 0.9rem; height: 0.9rem; border: 1px solid #888; vertical-align: middle; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
figure { margin: 1rem 0 2rem; } figcaption { color: #444; }
.columns { display: flex; gap: 2rem; flex-wrap: wrap; align-items: flex-start; }
"""


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


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
    from .data import MaskRules
    from .visualize import comparison_figure

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


def _page(run_dir, metrics, labels, ious, accs, saved_confusion, per_image, bar_png, cm_png, curves_png,
          gallery, title) -> str:
    e = html.escape
    name = title or run_dir.resolve().name
    share = None
    if saved_confusion:
        rows = np.array(saved_confusion["matrix"], dtype=np.float64).sum(axis=1)
        share = rows / rows.sum() if rows.sum() else None
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>segtune report: {e(name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>segtune report: {e(name)}</h1>",
    ]
    meta = [f"folder <code>{e(str(run_dir))}</code>"]
    if metrics.get("step") is not None:
        meta.append(f"step {e(str(metrics['step']))}")
    if metrics.get("data"):
        meta.append(f"data <code>{e(str(metrics['data']))}</code>")
    if metrics.get("num_images") is not None:
        meta.append(f"{e(str(metrics['num_images']))} images scored")
    elif per_image is not None:
        meta.append(f"{len(per_image)} validation images")
    meta.append(f"written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    parts.append(f'<p class="meta">{" &middot; ".join(meta)}</p>')

    parts.append("<h2>Metrics</h2><table>")
    for key, label in (("mean_iou", "mean IoU"), ("mean_accuracy", "mean accuracy"),
                       ("overall_accuracy", "overall (pixel) accuracy")):
        parts.append(f"<tr><th>{label}</th><td></td><td></td><td>{_fmt(metrics.get(key))}</td></tr>")
    parts.append("</table>")

    parts.append('<h2>Per class</h2><div class="columns"><table><tr><th>id</th><th></th><th>class</th>'
                 "<th>IoU</th><th>accuracy</th>" + ("<th>pixel share</th>" if share is not None else "") + "</tr>")
    for i, (cls, color) in enumerate(zip(labels.names, labels.colors)):
        swatch = f'<span class="swatch" style="background: rgb({color[0]}, {color[1]}, {color[2]})"></span>'
        row = f"<tr><td>{i}</td><td>{swatch}</td><td>{e(cls)}</td><td>{_fmt(ious[i])}</td><td>{_fmt(accs[i])}</td>"
        if share is not None:
            row += f"<td>{100 * share[i]:.2f}%</td>"
        parts.append(row + "</tr>")
    parts.append(f"</table><div>{_img(bar_png, 'per-class IoU bar chart')}</div></div>")

    parts.append("<h2>Confusion matrix</h2>")
    if cm_png:
        parts.append(_img(cm_png, "normalised confusion matrix"))
    else:
        parts.append('<p class="note">Not computed: run <code>segtune report RUN_DIR --data PATH</code> '
                     "to score the validation images.</p>")

    parts.append("<h2>Training</h2>")
    if curves_png:
        parts.append(_img(curves_png, "training curves: loss, learning rate, validation mean IoU"))
    else:
        parts.append('<p class="note">No training log (log.jsonl) in this folder: an evaluation only.</p>')

    parts.append(f"<h2>Lowest-IoU validation images ({len(gallery)})</h2>")
    if gallery:
        parts.append("<p>Image | ground truth | prediction | errors (red: wrong, grey: not scored), "
                     "lowest mean IoU first.</p>")
        for caption, _, png in gallery:
            parts.append(f"<figure>{_img(png, caption)}<figcaption>{e(caption)}</figcaption></figure>")
    else:
        parts.append('<p class="note">No per-image scores (scoring saved predictions keeps none): '
                     "<code>segtune report RUN_DIR --data PATH</code> scores a model.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
