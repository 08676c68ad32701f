"""`segtune evaluate`: the pairs a run is scored on (its own validation split by default), one
scoring pass, the per-class table and metrics.json. The report is the caller's (`segtune.api`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .metrics import ConfusionMatrix
from .scoring import EvalDataset, ImageScores, evaluate_model, evaluate_predictions, format_table


@dataclass
class Evaluation:
    """One `segtune evaluate` pass: metrics.json's content, and what a report draws from the same pass."""

    metrics: dict  # as metrics.json holds them
    output_dir: Path
    confusion: ConfusionMatrix
    scores: ImageScores | None  # per-image scores, when the report asks for them
    samples: list  # the scored pairs
    rules: object  # their MaskRules
    labels: object  # their LabelSet


def load_scored_data(opts, model: str | Path | None, labels=None, bands=False):
    """The data to score and its classes, checked: the pairs `opts.split` selects (sources.splits.select_split),
    using the model folder's splits.json when it has one; says in one line what is scored, and warns
    when any scored pair is one the run trained on. `opts`: EvaluateOptions or ReportOptions."""
    import logging

    from ..data.checks import load_checked_data
    from ..data.sources.splits import read_splits, select_split

    log = logging.getLogger("segtune")
    run = read_splits(model)
    chosen = {}

    def choose(data):
        chosen["selection"] = select_split(data, opts.split, run, val_split_given=opts.val_split is not None)
        return chosen["selection"].samples

    data, labels = load_checked_data(opts.data, opts, val_split=opts.val_split or 0.2, seed=opts.seed, labels=labels,
                                     source_kwargs=opts.source_kwargs(), choose=choose, skip_bad=opts.skip_bad,
                                     bands=bands)
    selection = chosen["selection"]
    log.info("segtune: %s", selection.note)
    if selection.warning:
        log.warning("segtune: warning: %s", selection.warning)
    return data, labels, selection


def _run_folder(model):
    """The folder whose splits.json tells the run's split: a model.onnx's own folder (segtune export copies it)."""
    if model is not None and str(model).lower().endswith(".onnx"):
        return Path(str(model)).parent
    return model


def run_evaluation(opts) -> Evaluation:
    """`segtune evaluate`: `opts` a segtune.options.EvaluateOptions. Prints the table, writes metrics.json
    to opts.output_dir; takes each image's score too when `opts.report` (for the report's gallery)."""
    from ..data.labels import load_labels
    from ..inference.preprocess import ProcessorTransform

    labels = load_labels(opts.labels) if opts.labels else None
    segmenter, failed = None, []
    if opts.model and band_model(opts.model):  # multi-band rasters, scored tile by tile (rasters.py)
        return evaluate_rasters(opts, labels)
    if opts.model:
        from ..inference.segmenter import Segmenter

        segmenter = Segmenter.from_pretrained(opts.model, trust_remote_code=opts.trust_remote_code,
                                              runtime=opts.runtime, threads=opts.threads, dtype=opts.dtype)
        labels = labels or segmenter.labels
    data, labels, selection = load_scored_data(opts, _run_folder(opts.model), labels)
    samples = data.val
    # each image's score for the report's gallery, taken in the one scoring pass
    scores = ImageScores(len(labels), data.ignore_index) if opts.report else None
    if segmenter is not None:
        dataset = EvalDataset(samples, ProcessorTransform(segmenter.processor), data.rules)
        model = segmenter.model if segmenter.model is not None else segmenter.runner  # torch, or an exported model
        cm = evaluate_model(model, dataset, len(labels), data.ignore_index, opts.batch_size,
                            opts.num_workers, on_item=scores)
    else:  # a prediction missing or broken is said and left out; the others are scored (and the command fails)
        cm = evaluate_predictions(samples, Path(opts.predictions), len(labels), data.rules, on_item=scores,
                                  failed=failed)
    return _finish(opts, cm, labels, data, selection, samples, scores, failed)


def evaluate_rasters(opts, labels) -> Evaluation:
    """`segtune evaluate` with a multi-band model: the scored pairs read band by band with the model's bands,
    each raster scored whole, tile by tile."""
    from ..errors import SegtuneError
    from ..inference.bands import BandSegmenter
    from .rasters import RasterEvalDataset
    from .scoring import evaluate_model

    segmenter = BandSegmenter.from_pretrained(opts.model, trust_remote_code=opts.trust_remote_code, dtype=opts.dtype,
                                              runtime=opts.runtime, threads=opts.threads, batch_size=opts.batch_size)
    settings = segmenter.settings
    labels = labels or segmenter.labels
    data, labels, selection = load_scored_data(opts, _run_folder(opts.model), labels, bands=settings["bands"])
    if data.band_layout.count != settings["count"]:
        raise SegtuneError(f"{data.val[0].image}: {data.band_layout.count} bands, but {opts.model} was trained on "
                           f"files of {settings['count']}")
    dataset = RasterEvalDataset(data.val, data.rules, settings)
    model = getattr(segmenter.runner, "model", None) or segmenter.runner  # torch, or an exported model
    cm = evaluate_model(model, dataset, len(labels), data.ignore_index, opts.batch_size)
    return _finish(opts, cm, labels, data, selection, data.val, None, [])


def band_model(model) -> bool:
    from ..inference.bands import band_settings

    return band_settings(_run_folder(model)) is not None  # a model folder, or an export folder or its model.onnx


def _finish(opts, cm, labels, data, selection, samples, scores, failed) -> Evaluation:
    """The table, metrics.json and the Evaluation of one scoring pass."""
    import json

    from .metrics import metrics_to_json

    metrics = cm.compute()
    print(format_table(metrics, labels.names))
    out_dir = Path(opts.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = metrics_to_json(metrics, labels.names)
    out.update(num_images=len(samples), data=str(opts.data), source=str(opts.model or opts.predictions),
               split=selection.note, **({"split_warning": selection.warning} if selection.warning else {}),
               data_findings=[finding.to_json() for finding in data.findings],
               **({"failed": failed, "num_scored": len(samples) - len(failed)} if failed else {}))
    (out_dir / "metrics.json").write_text(json.dumps(out, indent=2))
    print(f"metrics written to {out_dir / 'metrics.json'}" +
          (f" ({len(samples) - len(failed):,} images scored, {len(failed):,} could not be: listed there)"
           if failed else ""))
    return Evaluation(out, out_dir, cm, scores, samples, data.rules, labels)
