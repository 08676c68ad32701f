"""`segtune predict` on files and folders: which images, their ground truth, their outputs.

For each image a Segmenter (segtune/inference/segmenter.py) labels, this writes the label map (an indexed
PNG of class ids), a colour mask, an overlay and optionally a comparison with the ground truth
(`--show-gt`) and the class probabilities (`--save-probs`), plus a predictions.jsonl line; a run
into a folder holding predictions.jsonl skips the images already done. Outputs are written by
worker threads while the model runs; predict.json sums the run up. Under torchrun or `accelerate
launch`, each process takes every N-th image and logs to predictions.rank<r>.jsonl; rank 0 then
merges these into the predictions.jsonl and predict.json a single process would write.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.labels import LabelSet, load_labels
from ..data.reading import MaskRules
from ..errors import SegtuneError
from ..inference.postprocess import class_counts, label_dtype
from ..inference.segmenter import Segmenter, prefetch
from .inputs import InputImage, mask_rules, collect_images, ground_truth_masks, match_ground_truth
from .ranks import (Processes, fold_rank_files, process_rank, rank_file, read_records, record_key, take_rank_records,
                    use_local_gpu)

PROBS_SCALE = 255  # --save-probs stores round(p * 255) as uint8


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """A folder of earlier predictions (it holds predictions.jsonl) is continued: done images are
    skipped. Any other non-empty folder is refused unless `overwrite`."""
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite \
            and not (output_dir / "predictions.jsonl").is_file():
        raise SegtuneError(f"{output_dir}: output folder is not empty and holds no predictions.jsonl; "
                           "pass --overwrite to write into it")


# ---------------------------------------------------------------- outputs


_FIGURE_LOCK = threading.Lock()  # matplotlib is not thread-safe; figures are drawn one at a time


def _output_paths(output_dir: Path, name: str, show_gt: bool, save_probs: bool) -> dict[str, Path]:
    paths = {"label_map": output_dir / f"{name}.png", "color": output_dir / "color" / f"{name}.png",
             "overlay": output_dir / "overlay" / f"{name}.jpg"}
    if show_gt:
        paths["compare"] = output_dir / "compare" / f"{name}.png"
    if save_probs:
        paths["probabilities"] = output_dir / "probs" / f"{name}.npz"
    return paths


@dataclass
class Unreadable:
    """An image `Segmenter.prepare` could not read, and why (one line naming the file)."""

    entry: InputImage
    error: SegtuneError


def prepare_or_fail(segmenter: Segmenter, entry: InputImage):
    try:
        return segmenter.prepare(entry.path, key=entry)
    except SegtuneError as error:
        return Unreadable(entry, error)


def failed_record(entry: InputImage, paths: dict, error: SegtuneError, bar) -> dict:
    """The predictions.jsonl line of an image that failed, said at once in one line; a later run tries it again
    (its outputs are not all there)."""
    bar.write(f"segtune: warning: {error} (skipped; the other images go on)")
    return {"image": str(entry.path), "label_map": str(paths["label_map"]), "error": str(error)}


def save_probabilities(probs: np.ndarray, path: Path, class_names) -> None:
    """(C, H, W) probabilities as uint8 round(p * 255) in a compressed .npz (`probs`, `classes`),
    quantised a class plane at a time (no float copy of the whole array beside it)."""
    quantised = np.empty(probs.shape, dtype=np.uint8)
    for c, plane in enumerate(probs):
        quantised[c] = np.rint(np.clip(plane, 0.0, 1.0) * PROBS_SCALE)
    np.savez_compressed(path, probs=quantised, classes=np.array(class_names))


def load_probabilities(path) -> np.ndarray:
    """(C, H, W) float32 probabilities from a --save-probs file."""
    with np.load(path) as f:
        return f["probs"].astype(np.float32) / PROBS_SCALE


def _write_outputs(entry: InputImage, image, label_map, probs, paths, labels: LabelSet, alpha: float, mode: str,
                   gt_pair, rules: MaskRules) -> dict:

    from ..data.drawing import drawn_image, save_label_png
    from ..reporting.charts import comparison_figure

    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    save_label_png(label_map, paths["label_map"], labels.colors)
    # one picture at a time, each drawn in blocks of rows: a 48 MP photo's outputs stay near its own size
    drawn_image(label_map, labels.colors).save(paths["color"])
    drawn_image(label_map, labels.colors, image, alpha=alpha).save(paths["overlay"], quality=90)
    counts = class_counts(label_map)
    ids = np.flatnonzero(counts)
    counts = counts[ids]
    record = {
        "image": str(entry.path),
        "label_map": str(paths["label_map"]),
        "size": [int(label_map.shape[1]), int(label_map.shape[0])],
        "mode": mode,
        "class_share": {labels.names[i] if 0 <= i < len(labels) else str(i): round(c / label_map.size, 6)
                        for i, c in zip(ids.tolist(), counts.tolist())},
    }
    if probs is not None:
        save_probabilities(probs, paths["probabilities"], labels.names)
        record["probabilities"] = str(paths["probabilities"])
    if gt_pair is not None:
        gt = gt_pair.read_mask(rules)
        with _FIGURE_LOCK:
            comparison_figure(np.asarray(image), gt, label_map, labels, paths["compare"],
                              ignore_index=rules.ignore_index, title=entry.path.name)
        valid = gt != rules.ignore_index
        record["ground_truth"] = gt_pair.mask_name
        record["pixel_accuracy"] = round(float((gt[valid] == label_map[valid]).mean()), 6) if valid.any() else None
    return record


def predict_images(
    segmenter: Segmenter,
    images: list,
    output_dir: Path,
    *,
    alpha: float = 0.5,
    show_gt: Path | None = None,
    rules: MaskRules | dict | None = None,
    save_probs: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Writes, per image: OUT/<name>.png (class ids), color/, overlay/ (and compare/, probs/) and a
    predictions.jsonl line; images whose outputs all exist are skipped unless `overwrite`; then
    OUT/predict.json, the run's summary. `images`: paths or `InputImage`s. `rules` reads the `show_gt`
    masks: a MaskRules as is; None, the ground truth's own (a data file's); a dict, those with some
    fields replaced (`{"ignore_index": 11}`). Returns the records of every image, in input order.

    Under torchrun or `accelerate launch` (WORLD_SIZE > 1; every rank calls this with the same images),
    rank r segments images r, r + N, ... of those left to do and logs them to predictions.rank<r>.jsonl;
    rank 0 then writes predictions.jsonl and predict.json as one process would, and removes the rank files.
    A run cut short is continued by any number of processes. Every rank returns every record."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    if not 0.0 <= alpha <= 1.0:
        raise SegtuneError(f"--alpha {alpha}: must be between 0 and 1")
    entries = [e if isinstance(e, InputImage) else InputImage(Path(e), Path(e).stem) for e in images]
    output_dir = Path(output_dir)
    jsonl = output_dir / "predictions.jsonl"
    group = Processes()  # several under torchrun / accelerate launch: each does every N-th image left to do
    if group.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        fold_rank_files(output_dir, jsonl, discard=overwrite)  # the records of a run cut short under several
        if group.size > 1:
            open(jsonl, "w" if overwrite else "a").close()  # a folder of predictions from now on
    group.barrier()  # the folder ready: every rank reads the same records
    old = {} if overwrite else read_records(jsonl)
    paths = {e.name: _output_paths(output_dir, e.name, show_gt is not None, save_probs) for e in entries}
    done = {e.name for e in entries if record_key(paths[e.name]["label_map"]) in old
            and all(p.is_file() for p in paths[e.name].values())}
    todo = [e for e in entries if e.name not in done]
    group.barrier()  # every rank has seen the same outputs before any is written
    mine = todo[group.rank::group.size]

    gt_pairs, gt_rules = {}, None
    if show_gt is not None and mine:
        pairs, gt_rules = ground_truth_masks(Path(show_gt))
        gt_pairs = match_ground_truth(entries, pairs, show_gt)  # all of them: a skipped image may share a mask
    rules = mask_rules(rules, gt_rules, segmenter.labels)

    records = {e.name: old[record_key(paths[e.name]["label_map"])] for e in entries if e.name in done}
    workers = max(1, segmenter.num_workers)
    several = group.size > 1  # then rank 0's bar shows its own share
    bar = tqdm(total=len(mine) if several else len(entries), initial=0 if several else len(done),
               desc=f"predicting (rank 0 of {group.size})" if several else "predicting", unit="img",
               disable=not progress or group.rank != 0, dynamic_ncols=True)
    if done and group.rank == 0:
        bar.write(f"{len(done)} of {len(entries)} images already segmented in {output_dir}: skipped "
                  "(--overwrite redoes them)")
    writes = deque()
    with open(rank_file(output_dir, group.rank) if several else jsonl, "w" if overwrite else "a") as log, \
            ThreadPoolExecutor(workers, thread_name_prefix="segtune-write") as writer, _torch_threads_for(segmenter):

        def logged(name: str, record: dict) -> None:
            records[name] = record
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(1)

        def finish_oldest():
            name, future = writes.popleft()
            try:
                logged(name, future.result())
            except SegtuneError as error:  # its ground truth, say: that image fails, the others go on
                logged(name, failed_record(by_name[name], paths[name], error, bar))

        def readable(prepared):
            """The images that could be read; each one that could not gets its line and record, and the run
            goes on (a folder of 10,000 photos is not lost to one broken file)."""
            for item in prepared:
                if isinstance(item, Unreadable):
                    logged(item.entry.name, failed_record(item.entry, paths[item.entry.name], item.error, bar))
                else:
                    yield item

        by_name = {e.name: e for e in mine}
        items = prefetch(lambda e: prepare_or_fail(segmenter, e), mine, segmenter.num_workers,
                         depth=2 * segmenter.batch_size + segmenter.num_workers)
        # label maps in uint8 (up to 256 classes): a 48 MP photo's takes 48 MB, not 384
        dtype = label_dtype(len(segmenter.labels))
        for item, label_map, probs in segmenter.run(readable(items), probabilities=save_probs, dtype=dtype):
            e = item.key
            writes.append((e.name, writer.submit(_write_outputs, e, item.image, label_map, probs, paths[e.name],
                                                 segmenter.labels, alpha, item.mode, gt_pairs.get(e.name), rules)))
            while writes and (writes[0][1].done() or len(writes) > 2 * workers + segmenter.batch_size):
                finish_oldest()
        while writes:
            finish_oldest()
    bar.close()
    if several:
        group.barrier()  # every rank's records written: each takes all of them
        take_rank_records(records, todo, paths, output_dir, group.size)
        group.barrier()  # all read before rank 0 merges them
    ordered = [records[e.name] for e in entries]
    if group.rank == 0:
        current = {record_key(paths[e.name]["label_map"]) for e in entries}
        earlier = [r for k, r in old.items() if k not in current]  # other images of earlier runs stay listed
        tmp = jsonl.with_suffix(".jsonl.tmp")  # the final file: one line per image, this run's in input order
        tmp.write_text("".join(json.dumps(r) + "\n" for r in earlier + ordered))
        os.replace(tmp, jsonl)
        for rank in range(group.size if several else 0):
            rank_file(output_dir, rank).unlink(missing_ok=True)
        summary = _summary(segmenter, ordered, len(todo), time.perf_counter() - started, show_gt)
        (output_dir / "predict.json").write_text(json.dumps(summary, indent=2) + "\n")
    group.close()  # the other ranks return once rank 0 has written
    return ordered


@contextlib.contextmanager
def _torch_threads_for(segmenter: Segmenter):
    """With an exported runtime (ONNX Runtime, OpenVINO), torch only upsamples logits and takes argmaxes:
    one torch thread then. A second one made each of those small parallel ops wait for a core that the
    runtime's threads held (class_argmax took 28 ms an image instead of 4); with one, predict ran 5-12%
    more images/s on 2 cores. torch's own count comes back afterwards."""
    before = torch.get_num_threads()
    if getattr(segmenter.runner, "runtime", "torch") != "torch":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _summary(segmenter: Segmenter, records: list[dict], todo: int, seconds: float, show_gt) -> dict:
    """predict.json: what ran, how fast, the class pixel shares over all the images, and the images
    that failed (`todo`: how many this run tried)."""
    failed = [{"image": r["image"], "error": r["error"]} for r in records if "error" in r]
    records = [r for r in records if "error" not in r]
    segmented = todo - len(failed)
    pixels: dict[str, float] = {}
    for r in records:
        size = r["size"][0] * r["size"][1]
        for name, share in r["class_share"].items():
            pixels[name] = pixels.get(name, 0.0) + share * size
    total = sum(pixels.values()) or 1.0
    order = {name: i for i, name in enumerate(segmenter.labels.names)}
    summary = {
        "images": len(records) + len(failed), "segmented": segmented, "skipped": len(records) - segmented,
        "failed": failed,
        "model": getattr(segmenter.model, "name_or_path", None) or str(getattr(segmenter.runner, "path", "")) or None,
        "runtime": getattr(segmenter.runner, "runtime", "torch"), "mode": segmenter.mode,
        "modes_used": dict(Counter(r["mode"] for r in records)), "tta": segmenter.tta,
        "device": str(segmenter.device), "dtype": str(segmenter.dtype).removeprefix("torch."),
        "batch_size": segmenter.batch_size, "streams": getattr(segmenter.runner, "streams", 1),
        "fold_head": segmenter.fold_head, "seconds": round(seconds, 3),
        "images_per_second": round(segmented / seconds, 3) if segmented and seconds > 0 else None,
        "class_share": {name: round(pixels[name] / total, 6)
                        for name in sorted(pixels, key=lambda n: order.get(n, len(order)))},
    }
    if show_gt is not None:  # mean over the images with a pixel not ignored
        accuracies = [r["pixel_accuracy"] for r in records if r.get("pixel_accuracy") is not None]
        summary.update(ground_truth=str(show_gt),
                       mean_pixel_accuracy=round(float(np.mean(accuracies)), 6) if accuracies else None)
    return summary


def run_prediction(opts, inputs: list[str]) -> list[dict]:
    """`segtune predict`: `opts` a segtune.options.PredictOptions, `inputs` files, folders or glob patterns."""
    from ..inference.bands import band_settings

    model_dir = Path(opts.model).parent if str(opts.model).lower().endswith(".onnx") else opts.model
    if band_settings(model_dir) is not None:  # a multi-band model: rasters in, GeoTIFFs out (rasters.py)
        from .rasters import run_raster_prediction

        check_output_dir(Path(opts.output_dir), opts.overwrite)
        return run_raster_prediction(opts, inputs)
    if opts.probabilities or opts.vector:
        raise SegtuneError(f"--{'probabilities' if opts.probabilities else 'vector'}: for rasters segmented by a "
                           f"multi-band model; {opts.model} is an RGB model (--save-probs saves its probabilities)")
    images = collect_images(inputs, recursive=opts.recursive)
    output_dir = Path(opts.output_dir)
    check_output_dir(output_dir, opts.overwrite)  # before loading the model: a refusal should come fast
    options = dict(mode=opts.mode, crop_size=opts.crop_size, stride=opts.stride, tta=opts.tta, flip=opts.tta_flip,
                   batch_size=opts.batch_size, num_workers=opts.num_workers, fold_head=opts.fold_head)
    if opts.tta_scales:
        options["scales"] = opts.tta_scales
    use_local_gpu(opts.device)  # several processes on a CUDA machine: a GPU each
    segmenter = Segmenter.from_pretrained(opts.model, device=opts.device, dtype=opts.dtype,
                                          trust_remote_code=opts.trust_remote_code, runtime=opts.runtime,
                                          threads=opts.threads, streams=opts.streams, **options)
    if opts.labels:
        segmenter.labels = load_labels(opts.labels)
    # --show-gt masks are read by the data file's rules (label_map, ignore_index, reduce_labels);
    # the options given here replace them.
    rules = {key: value for key, value in (("reduce_labels", opts.reduce_labels), ("ignore_index", opts.ignore_index),
                                           ("binary", opts.binary)) if value is not None}
    if opts.labels and segmenter.labels.colors_given:
        rules["colors"] = segmenter.labels.colors
    records = predict_images(segmenter, images, output_dir, alpha=opts.alpha, show_gt=opts.show_gt, rules=rules,
                             save_probs=opts.save_probs, overwrite=opts.overwrite)
    if process_rank()[0] == 0:
        failed = sum("error" in r for r in records)
        print(f"{len(records) - failed:,} images segmented into {output_dir}" +
              (f", {failed:,} could not be read: see predict.json" if failed else
               " (predictions.jsonl lists them, predict.json sums them up)"))
    return records
