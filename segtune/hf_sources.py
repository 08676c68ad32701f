"""Hugging Face `datasets` as a source: a Hub name, a `save_to_disk` folder, or parquet files.

Splits are chosen with the `datasets` split syntax ("train[:50]", "train[10%:]+validation");
without a validation split the training rows are split as the seeds do
(`train_test_split(test_size=val_split, seed=seed)`). `streaming` reads rows as they come
(for data larger than memory or disk); those are not checked ahead, so their labels must be
known (an id2label.json, the data file's names, or --labels).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .data import RowSample, SegmentationData, check_sizes, decode_row
from .errors import SegtuneError
from .labels import LabelSet
from .sources import labels_beside, split_samples

log = logging.getLogger("segtune")

IMAGE_COLUMNS = ("image", "pixel_values", "img", "images")
LABEL_COLUMNS = ("annotation", "label", "mask", "segmentation", "semantic_segmentation", "labels",
                 "segmentation_mask", "gt", "seg")
VAL_SPLITS = ("validation", "val", "valid")


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

        from .labels import load_labels

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
    """Applies a split spec such as "train[:50]+validation" to a DatasetDict."""
    import datasets
    from datasets.arrow_reader import ReadInstruction

    try:
        parts = ReadInstruction.from_spec(spec).to_absolute({k: len(v) for k, v in splits.items()})
    except (ValueError, AssertionError, KeyError) as e:
        raise SegtuneError(f"{source}: bad split '{spec}' ({e}; splits: {', '.join(splits)})") from None
    chosen = [splits[p.splitname].select(range(p.from_, p.to)) for p in parts]
    return chosen[0] if len(chosen) == 1 else datasets.concatenate_datasets(chosen)


def _select_streaming(splits, spec: str, source: str):
    name, _, rest = spec.partition("[")
    if name not in splits:
        raise SegtuneError(f"{source}: no split '{name}' (splits: {', '.join(splits)})")
    stream = splits[name]
    if rest:  # streams can only be cut at the front: "train[:N]"
        count = rest.rstrip("]").removeprefix(":")
        if not rest.startswith(":") or not count.isdecimal():
            raise SegtuneError(f"{source}: a streamed split can only be sliced as '{name}[:N]', not '{spec}'")
        stream = stream.take(int(count))
    return stream


def load_hf(source: str, *, val_split: float = 0.2, seed: int = 42, config: str | None = None,
            train_split: str | None = None, eval_split: str | None = None, image_column: str | None = None,
            label_column: str | None = None, streaming: bool = False) -> SegmentationData:
    splits, folder = _load(source, config, streaming)
    if not splits:
        raise SegtuneError(f"{source}: the dataset has no splits")
    train_split = train_split or ("train" if "train" in splits else None)
    eval_split = eval_split or next((s for s in VAL_SPLITS if s in splits), None)
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
        stream = StreamingSource(
            train=_select_streaming(splits, train_split, source) if train_split else None,
            val=_select_streaming(splits, eval_split, source) if eval_split else None,
            image_column=image_col, label_column=label_col, source=source,
        )
        if stream.val is None:
            raise SegtuneError(f"{source}: streaming needs a validation split (--eval-split)")
        return SegmentationData(source=source, train=[], val=[], labels=labels, streaming=stream)

    def rows(spec):
        table = _select(splits, spec, source)
        return [RowSample(table, i, image_col, label_col, f"{source}[{spec}]") for i in range(len(table))]

    train = rows(train_split) if train_split else []
    val = rows(eval_split) if eval_split else None
    val_is_split = val is None
    unsplit = (train, val_split, seed) if val_is_split else None  # --skip-bad splits the good rows again
    if val_is_split:
        train, val = split_samples(train, val_split, seed, source)
    return SegmentationData(source=source, train=train, val=val, labels=labels, val_is_split=val_is_split,
                            unsplit=unsplit)


class StreamingSource:
    """Train and validation streams plus the columns to read."""

    def __init__(self, train, val, image_column: str, label_column: str, source: str):
        self.train, self.val = train, val
        self.image_column, self.label_column, self.source = image_column, label_column, source

    def dataset(self, split: str, transform, rules, skip_bad: bool = False, shuffle_seed: int | None = None):
        """A torch IterableDataset over one split, this rank's shard only."""
        stream = getattr(self, split)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from datasets.distributed import split_dataset_by_node

            stream = split_dataset_by_node(
                stream, torch.distributed.get_rank(), torch.distributed.get_world_size()
            )
        if shuffle_seed is not None:
            stream = stream.shuffle(seed=shuffle_seed, buffer_size=256)
        return StreamDataset(stream, self, split, transform, rules, skip_bad)


class StreamDataset(torch.utils.data.IterableDataset):
    """Rows of a stream turned into model inputs; a bad row names itself (or is skipped)."""

    def __init__(self, stream, source: StreamingSource, split: str, transform, rules, skip_bad: bool):
        self.stream, self.source, self.split = stream, source, split
        self.transform, self.rules, self.skip_bad = transform, rules, skip_bad
        self.for_eval = split == "val"

    def set_epoch(self, epoch: int):  # reshuffles each epoch (the Trainer calls this)
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)

    def __iter__(self):
        rows = iter(self.stream)
        index = -1
        while True:
            index += 1
            name = f"{self.source.source}[{self.split}] row {index}"
            try:
                try:
                    row = next(rows)  # `datasets` decodes the images here
                except StopIteration:
                    return
                except Exception as e:  # a broken file inside the stream: name its row
                    raise SegtuneError(f"{name}: cannot decode ({type(e).__name__}: {e})") from None
                image, mask = decode_row(row, self.source.image_column, self.source.label_column, name, self.rules)
                check_sizes(_Named(name), image, mask)
            except SegtuneError as e:
                if not self.skip_bad:
                    raise
                log.warning("segtune: skipped %s", e)
                continue
            if self.for_eval:
                yield {"pixel_values": self.transform(image), "labels": torch.from_numpy(mask), "index": index}
            else:
                pixel_values, labels = self.transform(image, mask)
                yield {"pixel_values": pixel_values, "labels": labels}


class _Named:
    def __init__(self, name):
        self.mask_name = name
