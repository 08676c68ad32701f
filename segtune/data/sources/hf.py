"""Hugging Face `datasets` as a source: a Hub name, a `save_to_disk` folder, or parquet files.

Splits are chosen with the `datasets` split syntax ("train[:50]", "train[10%:]+validation");
without a validation split, or with eval_split "none", the training rows are split as the seeds
do (`train_test_split(test_size=val_split, seed=seed)`). `streaming` reads rows as they come
(for data larger than memory or disk, stream.py); those are not checked ahead, so their labels
must be known (an id2label.json, the data file's names, or --labels).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ...errors import SegtuneError
from ...hub import check_hub
from ..labels import LabelSet, load_labels
from ..pairs import RowSample, SegmentationData, StreamedData
from .splits import labels_beside, with_validation

log = logging.getLogger("segtune")

IMAGE_COLUMNS = ("image", "pixel_values", "img", "images")
LABEL_COLUMNS = ("annotation", "label", "mask", "segmentation", "semantic_segmentation", "labels",
                 "segmentation_mask", "gt", "seg")
VAL_SPLITS = ("validation", "val", "valid")
NO_EVAL_SPLIT = "none"  # eval_split "none": split the training rows even when a validation split exists


def _load(source: str, config: str | None, streaming: bool):
    """-> (DatasetDict or IterableDatasetDict, folder to look for id2label.json in, or None)."""
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # offline retries would print a warning each; the error says it once
    path = Path(source)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.Dataset):
                loaded = datasets.DatasetDict({"train": loaded})
            if streaming:
                loaded = datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in loaded.items()})
            return loaded, path
        if path.is_file():  # one parquet file: its rows are the training split
            return datasets.load_dataset("parquet", data_files={"train": str(path)}, streaming=streaming), path.parent
        # A folder of parquet files (split names taken from file names, as the Hub does), or a Hub name.
        if not path.is_dir():
            check_hub(source, "dataset")  # offline: one line at once, not 25 s of retries
        loaded = datasets.load_dataset(source, config, streaming=streaming)
        return loaded, path if path.is_dir() else None
    except SegtuneError:
        raise
    except Exception as e:  # datasets raises many kinds (ConnectionError, FileNotFoundError, ValueError ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SegtuneError(f"{source}: cannot load dataset ({first})") from None


def _hub_labels(name: str) -> LabelSet | None:
    """An id2label.json in the dataset repository, as the seeds read it (segments/sidewalk-semantic)."""
    try:
        from huggingface_hub import hf_hub_download

        return load_labels(hf_hub_download(name, "id2label.json", repo_type="dataset"))
    except Exception:  # no such file, or no network: classes come from elsewhere
        return None


def _column(features, given: str | None, candidates, what: str, source: str, flag: str) -> str:
    columns = list(features)
    if given is not None:
        if given not in columns:
            raise SegtuneError(f"{source}: no column '{given}' (columns: {', '.join(columns)})")
        return given
    for name in candidates:
        if name in columns:
            return name
    raise SegtuneError(f"{source}: no {what} column among {', '.join(columns)}; name it with {flag}")


def _select(splits, spec: str, source: str):
    """Applies a split spec such as "train[:50]+validation" to a DatasetDict.

    -> (table, each row's origin: (split name, row number in that split)).
    """
    import datasets
    from datasets.arrow_reader import ReadInstruction

    try:
        parts = ReadInstruction.from_spec(spec).to_absolute({k: len(v) for k, v in splits.items()})
    except (ValueError, AssertionError, KeyError) as e:
        raise SegtuneError(f"{source}: bad split '{spec}' ({e}; splits: {', '.join(splits)})") from None
    chosen = [splits[p.splitname].select(range(p.from_, p.to)) for p in parts]
    origins = [(p.splitname, row) for p in parts for row in range(p.from_, p.to)]
    return (chosen[0] if len(chosen) == 1 else datasets.concatenate_datasets(chosen)), origins


def _stream_slice(spec: str, splits, source: str) -> tuple[str, int, int | None]:
    """'train', 'train[:N]', 'train[N:]' or 'train[N:M]' -> (split, first row, end row or None).

    A stream is read in order, so only row numbers work (no percentages, no '+').
    """
    match = re.fullmatch(r"(\w+(?:\.\w+)*)(?:\[(\d*):(\d*)\])?", spec.strip())
    if match is None:
        raise SegtuneError(f"{source}: a streamed split takes 'name', 'name[:N]', 'name[N:]' or 'name[N:M]' "
                           f"with row numbers, not '{spec}'")
    name, start, stop = match[1], int(match[2] or 0), int(match[3]) if match[3] else None
    if name not in splits:
        raise SegtuneError(f"{source}: no split '{name}' (splits: {', '.join(splits)})")
    if stop is not None and stop <= start:
        raise SegtuneError(f"{source}: split '{spec}' selects no rows")
    return name, start, stop


def _streams(splits, train_spec: str | None, eval_spec: str, source: str):
    """The training and validation streams; the validation rows must not also be training rows."""
    val = _stream_slice(eval_spec, splits, source)
    train = _stream_slice(train_spec, splits, source) if train_spec else None
    if train is not None and train[0] == val[0]:
        inf = float("inf")
        if max(train[1], val[1]) < min(train[2] or inf, val[2] or inf):
            raise SegtuneError(f"{source}: the validation rows '{eval_spec}' are also training rows "
                               f"('{train_spec}'); hold rows out with disjoint ranges, e.g. --train-split "
                               f"'{val[0]}[N:]' --eval-split '{val[0]}[:N]'")

    def cut(name, start, stop):
        stream = splits[name].skip(start) if start else splits[name]
        return stream.take(stop - start) if stop is not None else stream

    return (cut(*train) if train else None), cut(*val)


def load_hf(source: str, *, val_split: float = 0.2, seed: int = 42, config: str | None = None,
            train_split: str | None = None, eval_split: str | None = None, image_column: str | None = None,
            label_column: str | None = None, streaming: bool = False) -> SegmentationData | StreamedData:
    """The rows of a `datasets` source: listed ahead (SegmentationData), or as streams (StreamedData)."""
    splits, folder = _load(source, config, streaming)
    if not splits:
        raise SegtuneError(f"{source}: the dataset has no splits")
    split_train = isinstance(eval_split, str) and eval_split.strip().lower() == NO_EVAL_SPLIT
    train_split = train_split or ("train" if "train" in splits else None)
    eval_split = None if split_train else eval_split or next((s for s in VAL_SPLITS if s in splits), None)
    if train_split is None and eval_split is None:
        raise SegtuneError(f"{source}: no 'train' or 'validation' split (splits: {', '.join(splits)}); "
                           "name one with --train-split or --eval-split")
    features = next(iter(splits.values())).features  # the splits of one dataset share their columns
    if features is None:
        raise SegtuneError(f"{source}: the stream does not declare its columns; name them with "
                           "--image-column and --label-column")
    image_col = _column(features, image_column, IMAGE_COLUMNS, "image", source, "--image-column")
    label_col = _column(features, label_column, LABEL_COLUMNS, "mask", source, "--label-column")
    labels = labels_beside(folder) if folder is not None else _hub_labels(source)
    log.info("segtune: %s: images from '%s', masks from '%s', training split %s, validation split %s",
             source, image_col, label_col, train_split, eval_split or f"{val_split:.0%} of the training rows")
    if streaming:
        if eval_split is None:  # a stream has no length, so no share of it can be drawn at random
            held = train_split.partition("[")[0] if train_split else "train"
            raise SegtuneError(f"{source}: a stream cannot be split by --val-split: name a validation split with "
                               f"--eval-split, or hold out its first N rows with --train-split '{held}[N:]' "
                               f"--eval-split '{held}[:N]'")
        from .stream import StreamingSource

        train, val = _streams(splits, train_split, eval_split, source)
        stream = StreamingSource(train=train, val=val, image_column=image_col, label_column=label_col,
                                 source=source)
        return StreamedData(source=source, stream=stream, labels=labels)

    def rows(spec):
        table, origins = _select(splits, spec, source)
        return [RowSample(table, i, image_col, label_col, f"{source}[{spec}]", origin)
                for i, origin in enumerate(origins)]

    train = rows(train_split) if train_split else []
    val = rows(eval_split) if eval_split else None
    return with_validation(source, train, val, val_split, seed, labels=labels)


def is_hf_source(path: Path) -> bool:
    """A local `datasets` source: a save_to_disk folder, a parquet file, or a folder of parquet files."""
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return True
    # Parquet where the Hub keeps it (top level or data/), and not an image folder holding a stray export.
    if (path / "images").is_dir() and (path / "annotations").is_dir():
        return False
    return any(path.glob("*.parquet")) or any((path / "data").rglob("*.parquet"))
