"""The report's charts (per-class IoU bars, confusion heatmap, training curves) and the log they read,
and the image | ground truth | prediction | errors figure (the report's gallery, `predict --show-gt`).

Each chart is drawn with matplotlib's object-oriented API (no pyplot, so no global figure state),
written as a PNG and returned as its bytes, which the page embeds.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from ..data.drawing import ERROR_COLOR, IGNORED_COLOR, UNSCORED_COLOR, as_rgb, colorize, error_map
from ..data.labels import LabelSet
from ..errors import SegtuneError


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


def comparison_figure(image, ground_truth, prediction, labels: LabelSet, path, *,
                      ignore_index: int = 255, title: str | None = None, dpi: int = 100) -> None:
    """Save image | ground truth | prediction | error map side by side (no ground truth: image |
    prediction), with a legend of the classes present in either label map; ignored pixels are
    black in the label maps; in the error map wrong pixels are red, unscored ones grey."""
    # The object-oriented API with the Agg canvas: no pyplot, so no global backend/figure state.
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    image = as_rgb(image)
    maps = {"ground truth": ground_truth, "prediction": prediction}
    maps = {name: np.asarray(m) for name, m in maps.items() if m is not None}
    for name, label_map in maps.items():
        if label_map.shape != image.shape[:2]:
            raise SegtuneError(f"{name} is {label_map.shape} (H, W), the image {image.shape[:2]}")
    panels = {"image": image}
    panels.update({name: colorize(m, labels.colors, ignore_index) for name, m in maps.items()})
    if len(maps) == 2:
        gt, pred = maps["ground truth"], maps["prediction"]
        scored = gt != ignore_index
        wrong = float((gt[scored] != pred[scored]).mean()) if scored.any() else 0.0
        panels[f"errors ({100 * wrong:.1f}% wrong)"] = error_map(image, gt, pred, ignore_index)

    present = np.unique(np.concatenate([m.ravel() for m in maps.values()]))
    legend = [Patch(facecolor=labels.colors[i] / 255, edgecolor="0.5", label=labels.names[i])
              for i in present if 0 <= i < len(labels) and i != ignore_index]
    if len(legend) < len(present):  # ignore_index, or ids the label set does not cover
        legend.append(Patch(facecolor=IGNORED_COLOR, edgecolor="0.5", label="ignored"))
    if len(maps) == 2:
        legend.append(Patch(facecolor=np.array(ERROR_COLOR) / 255, edgecolor="0.5", label="wrong"))
        if (maps["ground truth"] == ignore_index).any():
            legend.append(Patch(facecolor=np.array(UNSCORED_COLOR) / 255, edgecolor="0.5", label="not scored"))
    legend_columns = max(1, min(len(legend), 3 * len(panels)))
    legend_rows = -(-len(legend) // legend_columns)

    height, width = image.shape[:2]
    panel_inches = 4.0
    fig = Figure(figsize=(panel_inches * len(panels),
                          panel_inches * height / width + 0.6 + 0.25 * legend_rows),
                 layout="constrained")
    for ax, (name, pixels) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        ax.imshow(pixels, interpolation="nearest")  # nearest: keep class boundaries crisp
        ax.set_title(name)
        ax.set_axis_off()
    fig.legend(handles=legend, loc="outside lower center", ncols=legend_columns,
               frameon=False, fontsize="small")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=dpi)
