"""What `segtune.train`, `.evaluate`, `.predict`, `.report`, `.inspect` and `.export` return, each
shown in a notebook cell (`_repr_html_`): the metrics, per-class IoU as bars, the report's pictures."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- HTML for notebook cells

_STYLE = ("<style>.segtune-r table{border-collapse:collapse;margin:4px 0}.segtune-r td,.segtune-r th{padding:1px 8px;"
          "text-align:left;font-size:12px}.segtune-r .bar{height:10px;background:#4c78a8;display:inline-block}"
          ".segtune-r .track{width:160px;background:#eee;display:inline-block}.segtune-r img{max-width:100%}</style>")


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"  # None, NaN


def _png(path: Path) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"/>'


def _colors(folder: Path | None) -> dict:
    """Class name -> CSS colour, from a run's labels.json, when there is one."""
    try:
        entries = json.loads((folder / "labels.json").read_text())
        return {e["name"]: "rgb({},{},{})".format(*e["color"]) for e in entries.values()}
    except (OSError, TypeError, ValueError, KeyError, AttributeError):
        return {}


def metrics_html(metrics: dict, folder: Path | None = None, title: str = "") -> str:
    """The metrics as a table, per-class IoU as bars, then the report's per-class and confusion PNGs
    found in `folder`/report/."""
    colors = _colors(folder)
    rows = "".join(f"<tr><th>{label}</th><td>{_fmt(metrics.get(key))}</td></tr>" for key, label in (
        ("mean_iou", "mean IoU"), ("mean_accuracy", "mean accuracy"), ("overall_accuracy", "overall accuracy"),
        ("foreground_iou", "foreground IoU")) if key in metrics)
    classes = []
    accuracy = metrics.get("per_category_accuracy") or {}
    for name, iou in (metrics.get("per_category_iou") or {}).items():
        width = 0 if iou is None else max(0.0, min(1.0, iou)) * 100
        color = colors.get(name, "#4c78a8")
        classes.append(f'<tr><td>{html.escape(str(name))}</td><td><span class="track"><span class="bar" '
                       f'style="width:{width:.1f}%;background:{color}"></span></span></td><td>{_fmt(iou)}</td>'
                       f"<td>{_fmt(accuracy.get(name))}</td></tr>")
    parts = [_STYLE, '<div class="segtune-r">', f"<b>{html.escape(title)}</b>" if title else "",
             f"<table>{rows}</table>"]
    if classes:
        parts.append("<table><tr><th>class</th><th>IoU</th><th></th><th>accuracy</th></tr>" + "".join(classes)
                     + "</table>")
    for name in ("per_class_iou.png", "confusion_matrix.png"):
        path = folder / "report" / name if folder is not None else None
        if path is not None and path.is_file():
            parts.append(_png(path))
    return "".join(parts) + "</div>"


# ---------------------------------------------------------------- results


@dataclass
class Report:
    """A report.html; shows inline in a notebook (the page in a frame)."""

    path: Path

    def _repr_html_(self) -> str:
        page = self.path.read_text(encoding="utf-8")
        return (f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:640px;border:1px '
                f'solid #ddd"></iframe>')

    def __str__(self) -> str:
        return str(self.path)


def report_in(folder: Path) -> Report | None:
    return Report(folder / "report.html") if (folder / "report.html").is_file() else None


@dataclass
class EvaluateResult:
    """What `evaluate` wrote: `metrics` (metrics.json's content), `output_dir`, `report` (or None)."""

    metrics: dict
    output_dir: Path
    report: Report | None = None

    def __getitem__(self, key: str):
        return self.metrics[key]

    def _repr_html_(self) -> str:
        return metrics_html(self.metrics, self.output_dir, f"segtune evaluate: {self.output_dir}")


@dataclass
class TrainResult(EvaluateResult):
    """What `train` wrote: the final validation `metrics` (metrics.json), `model_dir` (the saved model
    folder, also `output_dir`), `report` (or None)."""

    @property
    def model_dir(self) -> Path:
        return self.output_dir

    def _repr_html_(self) -> str:
        return metrics_html(self.metrics, self.output_dir, f"segtune train: {self.output_dir}")


@dataclass
class InspectReport:
    """What `inspect` found (inspect.json's content as `data`): `problems` (those that would stop
    training), `classes` (id, name, pixel share, images), `picture` (inspect.png)."""

    data: dict
    output_dir: Path

    @property
    def problems(self) -> list[str]:
        return self.data["blocking_problems"]

    @property
    def classes(self) -> list[dict]:
        return self.data["classes"]

    @property
    def picture(self) -> Path:
        return self.output_dir / "inspect.png"

    def __getitem__(self, key: str):
        return self.data[key]

    def _repr_html_(self) -> str:
        splits = "".join(f"<tr><td>{html.escape(name)}</td><td>{s['pairs']}</td><td>{s['bad']}</td>"
                         f"<td>{s['ignored_share']:.1%}</td></tr>" for name, s in self.data["splits"].items())
        share = max([c["pixel_share"] for c in self.classes] + [1e-9])
        classes = "".join(f'<tr><td>{c["id"]}</td><td>{html.escape(c["name"])}</td><td><span class="track"><span '
                          f'class="bar" style="width:{100 * c["pixel_share"] / share:.1f}%"></span></span></td>'
                          f'<td>{c["pixel_share"]:.2%}</td><td>{c["images"]}</td></tr>' for c in self.classes)
        notes = [("problem", p) for p in self.problems] + [
            (f["severity"], f["message"]) for f in self.data.get("findings", []) if f["message"] not in self.problems]
        notes += [("note", n) for n in self.data.get("warnings", [])]
        parts = [_STYLE, '<div class="segtune-r">', f"<b>segtune inspect: {html.escape(self.data['data'])}</b>",
                 "<table><tr><th>split</th><th>good pairs</th><th>bad</th><th>ignored</th></tr>" + splits + "</table>",
                 "".join(f"<div><b>{html.escape(kind)}</b>: {html.escape(text)}</div>" for kind, text in notes)
                 or "<div>no problems found: ready to train</div>",
                 "<table><tr><th>id</th><th>class</th><th>pixels</th><th></th><th>images</th></tr>" + classes
                 + "</table>"]
        if self.picture.is_file():
            parts.append(_png(self.picture))
        return "".join(parts) + "</div>"


@dataclass
class PredictResult:
    """What `predict` wrote: one record per image (as predictions.jsonl lists them; an image that could not
    be read has an `error` instead of outputs: `.failed`), `output_dir`."""

    records: list
    output_dir: Path

    @property
    def failed(self) -> list:
        """The records of the images that could not be segmented (each with its `error` line)."""
        return [r for r in self.records if "error" in r]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def _repr_html_(self) -> str:
        pictures = sorted((self.output_dir / "overlays").glob("*.png"))[:4] if self.output_dir.is_dir() else []
        return (f'{_STYLE}<div class="segtune-r"><b>segtune predict: {len(self.records)} image(s) into '
                f'{html.escape(str(self.output_dir))}</b><div>' + "".join(_png(p) for p in pictures) + "</div></div>")


@dataclass
class ExportResult:
    """What `export` wrote: `info` (export.json's content: the ONNX file, opset, the parity check),
    `output_dir`; `onnx` is the model file."""

    info: dict
    output_dir: Path

    @property
    def onnx(self) -> Path:
        return Path(self.info["onnx"])

    def __getitem__(self, key: str):
        return self.info[key]

    def _repr_html_(self) -> str:
        check = self.info.get("check") or {}
        rows = [("ONNX file", self.info.get("onnx")), ("opset", self.info.get("opset")),
                ("folded head", self.info.get("folded_head")), ("classes", self.info.get("classes")),
                ("parity check", {True: "passed", False: "FAILED", None: "not run"}[self.info.get("passed")])]
        if check:
            rows += [("equal label-map pixels", f"{100 * check['equal_pixels']:.4f}%"),
                     ("largest logit difference", f"{check['max_logit_diff']:.3g}")]
        table = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f'{_STYLE}<div class="segtune-r"><b>segtune export</b><table>{table}</table></div>'
