"""`segtune inspect`: what a dataset holds and what is wrong with it, before hours of training.

Prints a summary, writes inspect.json (for machines) and inspect.png (sample images with
their masks overlaid and a legend). The caller exits non-zero when a problem would stop
training.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import SegtuneError
from .band_data import as_band_data, wants_bands
from .band_inspection import print_raster_report, raster_report
from .checks import apply_label_options, blocking_problems, scan
from .label_checks import WARNING, binary_labels, label_findings, problem_lines
from .labels import LabelSet, load_labels
from .pairs import StreamedData
from .rasters import parse_bands
from .sources import load_data


def _class_table(stats: dict, labels: LabelSet) -> list[dict]:
    n = len(labels)
    pixels = sum(np.pad(s.pixel_counts[:n], (0, max(0, n - len(s.pixel_counts)))) for s in stats.values())
    images = sum(np.pad(s.image_counts[:n], (0, max(0, n - len(s.image_counts)))) for s in stats.values())
    total = max(1, int(np.sum(pixels)))
    rows = []
    for i, name in enumerate(labels.names):
        row = {"id": i, "name": name, "pixels": int(pixels[i]), "pixel_share": round(int(pixels[i]) / total, 6),
               "images": int(images[i])}
        for split, s in stats.items():
            row[f"{split}_images"] = int(s.image_counts[i]) if i < len(s.image_counts) else 0
        rows.append(row)
    return rows


def _warnings(data, stats: dict, classes: list[dict], labels: LabelSet) -> list[str]:
    notes = []
    absent = [c["name"] for c in classes if c["pixels"] == 0]
    if absent:
        notes.append(f"{len(absent)} class(es) never present: {', '.join(absent[:20])}")
    for c in classes:
        if c["pixels"] and "train" in stats and c.get("train_images", 0) == 0:
            notes.append(f"class '{c['name']}' appears in validation but never in training")
    if not data.val_is_split and data.train and data.val:
        both = {s.stem for s in data.train} & {s.stem for s in data.val}
        if both:
            notes.append(f"{len(both)} name(s) in both training and validation, e.g. '{sorted(both)[0]}'")
    return notes


def _sample_grid(data, labels: LabelSet, path: Path, count: int) -> None:
    """Evenly spaced good pairs, masks overlaid, with a legend of the classes shown."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from .drawing import overlay

    samples = data.train + data.val
    chosen = [samples[int(i)] for i in np.linspace(0, len(samples) - 1, min(count, len(samples)))] if samples else []
    shown = []
    for sample in chosen:
        try:
            # a raster: a window of it, shown as a stretched colour composite (band_data.RasterSample)
            image, mask = sample.preview(data.rules) if hasattr(sample, "preview") else sample.read(data.rules)
        except SegtuneError:
            continue
        if mask.shape == (image.height, image.width):
            shown.append((sample, image, mask))
    if not shown:  # still written: an older grid left in the folder would show pairs that are not there
        fig = Figure(figsize=(6, 1.5))
        fig.text(0.5, 0.5, "no good image/mask pair to show", ha="center", va="center", fontsize="large")
        fig.savefig(path, dpi=80)
        return
    columns = min(4, len(shown))
    rows = -(-len(shown) // columns)
    fig = Figure(figsize=(4 * columns, 3.4 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    present = set()
    for ax, (sample, image, mask) in zip(axes, shown):
        ax.imshow(overlay(image, mask, labels.colors, alpha=0.55, ignore_index=data.ignore_index))
        ax.set_title(Path(sample.stem).name[:40], fontsize="small")
        present |= {int(v) for v in np.unique(mask) if 0 <= v < len(labels) and v != data.ignore_index}
    for ax in axes:
        ax.set_axis_off()
    legend = [Patch(facecolor=labels.colors[i] / 255, edgecolor="0.5", label=labels.names[i]) for i in sorted(present)]
    if legend:
        fig.legend(handles=legend, loc="outside lower center", ncols=min(len(legend), 6), frameon=False,
                   fontsize="small")
    fig.savefig(path, dpi=80)


def _print_summary(report: dict) -> None:
    print(f"dataset {report['data']}")
    for split, s in report["splits"].items():
        sizes = f"{s['min_size'][0]}x{s['min_size'][1]} .. {s['max_size'][0]}x{s['max_size'][1]}" if s["min_size"] \
            else "-"
        print(f"  {split:<5} {s['pairs']:>6} good pairs, {s['bad']:>4} bad, image sizes {sizes}, "
              f"{s['ignored_share']:.1%} of pixels ignored")
    width = max([len(c["name"]) for c in report["classes"]] + [5])
    print(f"\n  {'id':>4}  {'class':<{width}}  {'pixels':>8}  {'images':>6}")
    for c in report["classes"]:
        print(f"  {c['id']:>4}  {c['name']:<{width}}  {c['pixel_share']:>8.2%}  {c['images']:>6}")
    findings = report.get("findings", [])
    never_present = any(f["code"] == "classes_never_present" for f in findings)
    for note in report["warnings"]:
        if not (never_present and "never present" in note):  # the finding below says it, with the fix
            print(f"note: {note}")
    for f in findings:  # label checks (label_checks.py); problems among them are printed below
        if f["message"] not in report["blocking_problems"]:
            print(f"{f['severity']} [{f['code']}]: {f['message']}")
    for line in report["blocking_problems"]:
        print(f"problem: {line}")
    if report.get("binary"):
        print("binary masks: 0 background, 255 (>= 128) foreground; train and evaluate report foreground_iou")
    warnings = sum(f["severity"] == WARNING for f in findings)
    if not report["blocking_problems"]:
        print(f"no blocking problems, but {warnings} warning(s) above: read them before training" if warnings
              else "no problems found: ready to train")


def inspect_data(opts) -> dict:
    """`opts` a segtune.options.InspectOptions: reads every pair once, writes inspect.json and inspect.png."""
    from tqdm.auto import tqdm

    data_path, out_dir, labels = opts.data, Path(opts.output_dir), opts.labels
    data = load_data(data_path, val_split=opts.val_split, seed=opts.seed, **opts.source_kwargs())
    if isinstance(data, StreamedData):
        raise SegtuneError(f"{data_path}: inspect reads every pair; it does not take --streaming")
    apply_label_options(data, opts)
    bands = parse_bands(opts.bands)
    if wants_bands(data.train or data.val, bands):  # rasters, read band by band (band_data.py)
        data.band_layout = as_band_data(data, bands)
    label_set = load_labels(labels) if labels else data.labels or (binary_labels() if data.binary else None)
    data.read_colours_of(label_set)
    num_classes = len(label_set) if label_set is not None else None
    stats = scan(data, progress=partial(tqdm, leave=False), num_classes=num_classes)
    findings = label_findings(data, stats, label_set)
    problems = problem_lines(findings) + blocking_problems(data, stats)
    if not data.train:
        problems.append(f"{data.source}: the training split is empty")
    if label_set is None:
        top = max(data.mask_max.values())
        if top < 0 and any(s.pairs for s in stats.values()):  # as checked_labels refuses it
            problems.append(f"{data.source}: every mask pixel is ignored; nothing to learn or score")
        label_set = LabelSet.numbered(max(0, top + 1))
    classes = _class_table(stats, label_set)
    report = {
        "data": str(data_path),
        "splits": {
            split: {
                "pairs": s.pairs, "bad": len(s.bad), "min_size": s.min_size, "max_size": s.max_size,
                "ignored_share": round(s.ignored_pixels / max(1, s.ignored_pixels + int(s.pixel_counts.sum())), 6),
            }
            for split, s in stats.items()
        },
        "val_is_split": data.val_is_split,
        "reduce_labels": data.reduce_labels,
        "ignore_index": data.ignore_index,
        "binary": data.binary,
        "classes": classes,
        "classes_never_present": [c["name"] for c in classes if c["pixels"] == 0],
        "warnings": _warnings(data, stats, classes, label_set),
        "blocking_problems": problems,
        "findings": [f.to_json() for f in findings],  # label checks: code, severity, message
    }
    if data.band_layout is not None:
        report["rasters"] = raster_report(data, progress=partial(tqdm, leave=False))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "inspect.json").write_text(json.dumps(report, indent=2))
    _sample_grid(data, label_set, out_dir / "inspect.png", opts.samples)
    _print_summary(report)
    if "rasters" in report:
        print_raster_report(report["rasters"])
    print(f"written: {out_dir / 'inspect.json'}, {out_dir / 'inspect.png'}")
    return report


def blocking_error(report: dict, output_dir) -> SegtuneError | None:
    """The error `segtune inspect` exits with (status 1) when a problem would stop training."""
    if not report["blocking_problems"]:
        return None
    return SegtuneError(f"{len(report['blocking_problems'])} problem(s) would stop training "
                        f"(listed above and in {Path(output_dir) / 'inspect.json'})")


def run_inspection(opts) -> dict:
    """`segtune inspect`: `opts` a segtune.options.InspectOptions; a blocking problem is an error (exit 1)."""
    report = inspect_data(opts)
    error = blocking_error(report, opts.output_dir)
    if error is not None:
        raise error
    return report
