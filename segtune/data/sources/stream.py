"""Streamed `datasets` rows as torch datasets: the training and validation streams of a
StreamedData (hf.py's load_hf with streaming), read row by row, each bad row naming itself
(or skipped with `--skip-bad`) as training reaches it.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from ...errors import SegtuneError
from ..pairs import check_sizes, decode_row
from ..reading import BOMB_ERRORS, bombs_refused, too_large

log = logging.getLogger("segtune")


class StreamingSource:
    """Train and validation streams plus the columns to read."""

    def __init__(self, train, val, image_column: str, label_column: str, source: str):
        self.train, self.val = train, val
        self.image_column, self.label_column, self.source = image_column, label_column, source

    def dataset(self, split: str, transform, rules, skip_bad: bool = False, shuffle_seed: int | None = None):
        """A torch IterableDataset over one split; for "val", this rank's shard only.

        The training stream is whole on every rank: the Trainer's accelerate wraps it in an
        IterableDatasetShard that gives each rank its own batches of it (pre-sharding it here
        would make each rank keep only its share of its own shard, dropping most rows). The
        validation stream is scored by evaluate.evaluate_model, which expects its rank's shard.
        """
        stream = getattr(self, split)
        if split == "val" and torch.distributed.is_available() and torch.distributed.is_initialized():
            from datasets.distributed import split_dataset_by_node

            stream = split_dataset_by_node(
                stream, torch.distributed.get_rank(), torch.distributed.get_world_size()
            )
        if shuffle_seed is not None:
            stream = stream.shuffle(seed=shuffle_seed, buffer_size=256)
        return StreamDataset(stream, self, split, transform, rules, skip_bad, seed=shuffle_seed or 0)


class StreamDataset(torch.utils.data.IterableDataset):
    """Rows of a stream turned into model inputs; a bad row names itself (or is skipped)."""

    def __init__(self, stream, source: StreamingSource, split: str, transform, rules, skip_bad: bool, seed: int = 0):
        self.stream, self.source, self.split, self.seed = stream, source, split, seed
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
                    with bombs_refused():
                        row = next(rows)  # `datasets` decodes the images here
                except StopIteration:
                    return
                except BOMB_ERRORS:
                    raise too_large(name, "an image") from None
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
                # each row's own generator, from (seed, row): as TrainDataset draws per (seed, epoch, image)
                rng = random.Random(int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0]))
                pixel_values, labels = self.transform(image, mask, rng)
                yield {"pixel_values": pixel_values, "labels": labels}


class _Named:
    """A streamed row as check_sizes names it in its message."""

    def __init__(self, name):
        self.mask_name = name
