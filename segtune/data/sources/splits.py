"""What every kind of source shares: the seeds' train/validation split, and the classes file that
may sit beside the data.

The folder layouts, YAML data files and `datasets` sources all end here; this module imports
nothing from the other `sources` modules, so any of them (and checks.py, which splits the good
pairs again under `--skip-bad`) can use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...errors import SegtuneError
from ..labels import LabelSet, load_labels
from ..pairs import SegmentationData


def split_samples(samples: list, val_split: float, seed: int, source, problems=()) -> tuple[list, list]:
    """The seeds' split: `datasets.Dataset.train_test_split(test_size=val_split, seed=seed)`.

    `problems`: the pairing problems, named first when they leave too few pairs to split.
    """
    from datasets import Dataset

    if len(samples) < 2:
        more = [f"... and {len(problems) - 20} more problems"] if len(problems) > 20 else []
        raise SegtuneError("\n".join([*problems[:20], *more, f"{source}: only {len(samples)} pair, too few to split"]))
    try:
        parts = Dataset.from_dict({"i": list(range(len(samples)))}).train_test_split(test_size=val_split, seed=seed)
    except ValueError as e:  # val_split outside (0, 1), or leaving one side empty
        raise SegtuneError(f"{source}: cannot split {len(samples)} pairs with val_split={val_split} ({e})") from None
    return [samples[i] for i in parts["train"]["i"]], [samples[i] for i in parts["test"]["i"]]


def with_validation(source, train: list, val: list | None, val_split: float, seed: int, problems: list | None = None,
                    **rules) -> SegmentationData:
    """The pairs found, as a dataset; without a validation split (`val` None), `val_split` of the
    training pairs are held out as the seeds do. `rules`: SegmentationData's class and mask fields."""
    problems = [] if problems is None else problems
    val_is_split = val is None
    unsplit = (train, val_split, seed) if val_is_split else None  # --skip-bad splits the good pairs again
    if val_is_split:
        train, val = split_samples(train, val_split, seed, source, problems)
    return SegmentationData(source=source, train=train, val=val, problems=problems, val_is_split=val_is_split,
                            unsplit=unsplit, **rules)


def labels_beside(root: Path) -> LabelSet | None:
    """The classes in an id2label.json (or labels.json) beside the data, as the Hub's datasets ship them."""
    for name in ("id2label.json", "labels.json"):
        if (root / name).is_file():
            return load_labels(root / name)
    return None


# ---------------------------------------------------------------- which pairs a command scores

SPLITS_FILE = "splits.json"  # written by `segtune train`: the names of the pairs in each split


def sample_key(sample) -> str:
    """A pair's name in splits.json: the image's absolute path (so a run can be matched from another
    folder or a relative --data path), or a `datasets` row's name."""
    image = getattr(sample, "image", None)
    return str(Path(image).resolve()) if image is not None else sample.name


def write_splits(data, out_dir: Path) -> None:
    """Records which pairs went where, so a run can be repeated and audited and evaluate can find
    the run's own validation pairs."""
    # a stream's rows are not known ahead (StreamedData has no lists): its lists are empty
    listing = {"data": str(data.source), **{split: [sample_key(s) for s in getattr(data, split, ())]
                                            for split in ("train", "val")}}
    (Path(out_dir) / SPLITS_FILE).write_text(json.dumps(listing, indent=1))


def read_splits(model: str | Path | None) -> tuple[dict[str, set], Path] | None:
    """A local model folder's splits.json as {split: set of keys}, and its path; None without one."""
    path = Path(str(model)) / SPLITS_FILE if model is not None else None
    if path is None or not path.is_file():
        return None
    try:
        listing = json.loads(path.read_text())
        # names from older runs were paths as given then: resolved from here, as best we can
        return {split: {str(Path(n).resolve()) if Path(n).is_absolute() or Path(n).exists() else n
                        for n in listing.get(split, [])} for split in ("train", "val")}, path
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise SegtuneError(f"{path}: cannot read the run's split lists ({e})") from None


@dataclass
class Selection:
    samples: list
    note: str  # one line saying what is scored, and why
    warning: str | None = None  # scored pairs the run trained on


def select_split(data: SegmentationData, split: str = "auto", run: tuple | None = None,
                 val_split_given: bool = False) -> Selection:
    """The pairs `evaluate` and `report` score, with a line saying which and why.

    - `auto`: with the run's splits.json (`run`, from read_splits) and data without a split of its
      own, the run's validation pairs; data the run never saw is scored whole. Else the data's own
      validation split; else every pair, or the held-out part when --val-split was given.
    - `val` / `train`: the run's lists when there are some for this data, else the data's split.
    - `all`: every pair.
    A warning names how many scored pairs are in the run's training split.
    """
    every = list(data.train) + list(data.val)
    lists, run_file = run if run is not None else (None, None)
    known = lists is not None and any(sample_key(s) in lists["train"] | lists["val"] for s in every)
    if split == "all":
        chosen, note = every, f"scoring all {len(every)} pairs (--split all)"
    elif split in ("train", "val") and known and data.val_is_split:
        chosen = [s for s in every if sample_key(s) in lists[split]]
        note = f"scoring the run's own {split} split: {len(chosen)} pairs listed in {run_file}"
    elif split in ("train", "val"):
        chosen = list(getattr(data, split))
        note = f"scoring the {split} split: {len(chosen)} pairs"
    elif known and data.val_is_split:  # auto, on the data the run was trained on
        chosen = [s for s in every if sample_key(s) in lists["val"]]
        note = f"scoring the run's own validation split: {len(chosen)} pairs listed in {run_file}"
        if not chosen:  # e.g. only its training pairs
            chosen = [s for s in every if sample_key(s) not in lists["train"]]
            note = f"scoring the {len(chosen)} pairs the run did not train on ({run_file})"
            if not chosen:
                raise SegtuneError(f"{data.source}: every pair is in the run's training split ({run_file}); "
                                   "pass --split all to score them anyway")
    elif not data.val_is_split:
        chosen = list(data.val)
        note = f"scoring the data's validation split: {len(chosen)} pairs"
    elif val_split_given:
        chosen = list(data.val)
        unsplit = data.unsplit or ((), None, None)
        note = (f"scoring the held-out part of --val-split {unsplit[1]} --seed {unsplit[2]}: {len(chosen)} "
                f"of {len(every)} pairs")
    else:
        chosen = every
        why = f"none of them is in {run_file}" if lists is not None else "the model folder has no splits.json"
        note = (f"scoring all {len(every)} pairs: the data has no validation split and {why} "
                "(--val-split F scores a held-out part)")
    if not chosen:
        raise SegtuneError(f"{data.source}: no pairs to score in the {split} split")
    warning = None
    if lists is not None:
        trained = sum(sample_key(s) in lists["train"] for s in chosen)
        if trained:
            warning = (f"{trained} of the {len(chosen)} scored pairs are in the run's training split "
                       f"({run_file}): their scores are not a validation result")
    return Selection(chosen, note, warning)
