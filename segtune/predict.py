"""Running a saved model on new images: label maps, colour masks, overlays, probabilities, comparisons.

Three ways to turn an image into class ids (MMSegmentation's test modes):

- `whole`: the saved processor's preprocessing, logits upsampled bilinearly to the image size,
  argmax: exactly what plain transformers gives (`post_process_semantic_segmentation`).
- `slide`: the image resized so its short side is the training scale, then overlapping
  `crop_size` windows every `stride` pixels (the last ones shifted back inside the image, as
  MMSeg's `slide_inference` does); each window's logits are upsampled to the window, summed,
  divided by the number of windows covering each pixel, then upsampled to the image size.
- `auto`: `slide` where the image, resized to the training scale, is more than `SLIDE_RATIO`
  crops long (panoramas, strips), else `whole`.

Test-time augmentation (`tta=True`) averages softmax probabilities over `scales` (ratios of the
training scale) and horizontal flips, each flipped back first, as MMSeg's `aug_test` does.

Images of equal preprocessed shape are batched (images are never padded: padding would change
the attention and so the output); decoding and preprocessing run in worker threads while the
model runs, and outputs are written by other threads.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .data import IMAGE_SUFFIXES, MaskRules, Sample, read_image, to_rgb
from .errors import SegtuneError
from .evaluate import class_argmax, upsampled_argmax
from .labels import LabelSet, load_labels
from .model import load_processor

MODES = ("auto", "whole", "slide")
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # MMSeg's aug_test img_ratios
SLIDE_RATIO = 2.0  # auto: slide when the resized image's long side exceeds this many crops
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROBS_SCALE = 255  # --save-probs stores round(p * 255) as uint8


# ---------------------------------------------------------------- device, dtype


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA, then Apple MPS, then CPU), 'cpu', 'cuda', 'cuda:1', 'mps'."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SegtuneError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SegtuneError(f"--device {name}: no CUDA device is available (torch {torch.__version__})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SegtuneError(f"--device {name}: Apple MPS is not available here")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SegtuneError(f"--dtype {dtype}: choose {', '.join(DTYPES)}")
    return DTYPES[dtype]


# ---------------------------------------------------------------- sliding windows


def slide_windows(height: int, width: int, crop: int | tuple[int, int], stride: int | tuple[int, int]):
    """(y1, y2, x1, x2) windows covering a height x width input, MMSeg's `slide_inference` grid:
    a window every `stride` pixels, the last one in each direction shifted back to end at the
    border; every window is min(crop, size) in each direction, so all have one shape."""
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    if min(ch, cw, sh, sw) <= 0:
        raise ValueError(f"crop {crop} and stride {stride} must be positive")
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            windows.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return windows


def window_counts(height: int, width: int, windows) -> np.ndarray:
    """How many windows cover each pixel (the divisor of the summed logits)."""
    counts = np.zeros((height, width), dtype=np.int64)
    for y1, y2, x1, x2 in windows:
        counts[y1:y2, x1:x2] += 1
    return counts


# ---------------------------------------------------------------- a faster SegFormer head


class FoldedSegformerHead(torch.nn.Module):
    """SegFormer's all-MLP decode head with its fuse layer and BatchNorm folded into the per-stage
    projections, for inference.

    The head projects each stage to D channels, upsamples all to 1/4 of the input, concatenates
    them (4D channels) and mixes them with a 1x1 conv, then BatchNorm, ReLU, classifier. Bilinear
    upsampling and 1x1 convs are both linear per pixel and channel, so mixing at each stage's own
    resolution before upsampling and summing is the same function; the (4D x H/4 x W/4) tensor and
    the largest matmul of the model disappear. Exact in real arithmetic; in float32 the logits
    move by about 1e-7, which can flip the argmax of near-tied pixels only.
    """

    def __init__(self, head):
        super().__init__()
        stages, width = len(head.linear_projections), head.linear_fuse.out_channels
        fuse = head.linear_fuse.weight[:, :, 0, 0].double()
        bn = head.batch_norm
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = bn.bias.double() - bn.running_mean.double() * scale
        weights = []
        for i, mlp in enumerate(head.linear_projections):
            block = fuse[:, (stages - 1 - i) * width : (stages - i) * width]  # the head concatenates c4..c1
            weights.append(scale[:, None] * (block @ mlp.proj.weight.double()))
            bias = bias + scale * (block @ mlp.proj.bias.double())
        dtype = head.linear_fuse.weight.dtype
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(w.to(dtype)[:, :, None, None], requires_grad=False) for w in weights)
        self.bias = torch.nn.Parameter(bias.to(dtype)[None, :, None, None], requires_grad=False)
        self.classifier = head.classifier

    def forward(self, encoder_hidden_states, **kwargs):
        size = encoder_hidden_states[0].shape[2:]
        total = None
        for i, (states, weight) in enumerate(zip(encoder_hidden_states, self.weights)):
            mixed = F.conv2d(states, weight)
            if i:
                mixed = F.interpolate(mixed, size=size, mode="bilinear", align_corners=False)
            total = mixed if total is None else total.add_(mixed)
        return self.classifier(torch.relu_(total.add_(self.bias)))


def fold_segformer_head(model) -> bool:
    """Replaces a SegFormer's decode head by FoldedSegformerHead (eval only); False if not a SegFormer."""
    head = getattr(model, "decode_head", None)
    if type(head).__name__ != "SegformerDecodeHead" or getattr(model.config, "reshape_last_stage", True) is False:
        return False
    model.decode_head = FoldedSegformerHead(head).to(next(head.parameters()).device)
    return True


# ---------------------------------------------------------------- the segmenter


@dataclass
class _Item:
    """One image, preprocessed: `inputs` holds (scale ratio, (3, h, w) pixel values) per scale."""

    key: object
    image: object  # PIL RGB, kept for drawing
    size: tuple[int, int]  # (H, W)
    mode: str  # "whole" or "slide"
    inputs: list

    @property
    def batchable(self) -> bool:
        return self.mode == "whole" and len(self.inputs) == 1


def _as_image(image):
    from PIL import Image

    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    if isinstance(image, np.ndarray):
        return to_rgb(Image.fromarray(image))
    if isinstance(image, Image.Image):
        return to_rgb(image)
    raise TypeError(f"expected a PIL image, an (H, W, 3) uint8 array or a path, got {type(image).__name__}")


def prefetch(fn, iterable: Iterable, workers: int, depth: int) -> Iterator:
    """`map(fn, iterable)` in `workers` threads, in order, at most `depth` calls ahead."""
    if workers <= 0:
        yield from map(fn, iterable)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="segtune-read")
    futures = deque()
    try:
        for x in iterable:
            futures.append(pool.submit(fn, x))
            if len(futures) >= depth:
                yield futures.popleft().result()
        while futures:
            yield futures.popleft().result()
    finally:
        for f in futures:
            f.cancel()
        pool.shutdown(wait=True)


class Segmenter:
    """A model plus its saved processor: image in, (H, W) class ids out.

    `segmenter(image)` takes a PIL image, an (H, W, 3) uint8 array or a path; `predict(images)`
    batches; `probabilities(image)` gives (C, H, W) class probabilities; `overlay(image)` draws.
    """

    def __init__(self, model, processor, labels: LabelSet, *, mode: str = "auto", crop_size: int | None = None,
                 stride: int | None = None, tta: bool = False, scales: Iterable[float] = DEFAULT_SCALES,
                 flip: bool = True, batch_size: int | None = None, num_workers: int = 2,
                 channels_last: bool | None = None,
                 fold_head: bool = False):
        if mode not in MODES:
            raise SegtuneError(f"--mode {mode}: choose {', '.join(MODES)}")
        self.model, self.processor, self.labels = model.eval(), processor, labels
        self.mode, self.tta, self.flip = mode, bool(tta), bool(flip)
        self.scales = tuple(float(s) for s in scales) if tta else (1.0,)
        if not self.scales or min(self.scales) <= 0:
            raise SegtuneError(f"--tta-scales {' '.join(map(str, scales))}: give positive ratios")
        cpu = self.device.type == "cpu"
        if batch_size is None:  # measured on 2 CPU cores, mit-b0 at 683x512 (benchmarks/README.md); GPUs want more
            batch_size = 16 if self.device.type == "cuda" else 1 if (cpu and fold_head) else 4
        if batch_size < 1:
            raise SegtuneError(f"--batch-size {batch_size}: must be at least 1")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.scale = training_scale(processor)
        self.crop_size = crop_size or self.scale or 512
        self.stride = stride or max(1, round(self.crop_size * 2 / 3))
        if self.crop_size < 1 or self.stride < 1 or self.stride > self.crop_size:
            raise SegtuneError(f"--crop-size {self.crop_size} --stride {self.stride}: need 0 < stride <= crop size "
                               "(windows must overlap or touch)")
        if fold_head and not fold_segformer_head(self.model):
            raise SegtuneError(f"--fold-head: only for SegFormer models, not {type(self.model).__name__}")
        self.fold_head = bool(fold_head)
        # Channels-last: faster on CUDA, and on CPU for the folded head (16% less CPU per image here);
        # on CPU it changes float rounding and slows the unfolded head, so the exact path stays as is.
        if channels_last is None:
            channels_last = self.device.type == "cuda" or (cpu and self.fold_head)
        self.channels_last = channels_last
        if channels_last:  # after folding, so the folded weights are converted too
            self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "auto", trust_remote_code: bool = False,
                        dtype: str | torch.dtype | None = None, **options) -> Segmenter:
        """Loads a model folder (or Hub id), its processor and its labels; `options` as in __init__."""
        from transformers import AutoModelForSemanticSegmentation

        dev, dt = resolve_device(device), resolve_dtype(dtype)
        try:
            model = AutoModelForSemanticSegmentation.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        except OSError as e:
            raise SegtuneError(f"{model_dir}: cannot load model: {str(e).splitlines()[0]}") from None
        labels_file = Path(model_dir, "labels.json")
        labels = load_labels(labels_file) if labels_file.is_file() else LabelSet.from_id2label(model.config.id2label)
        return cls(model.to(device=dev, dtype=dt), load_processor(model_dir), labels, **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------ public API

    def __call__(self, image) -> np.ndarray:
        """(H, W) int64 class ids for one image."""
        return self.predict([image])[0]

    def predict(self, images: Iterable, *, probabilities: bool = False) -> list:
        """Class ids for each image, in order; with `probabilities`, (label map, (C, H, W) float32) pairs."""
        results = {}
        items = prefetch(lambda pair: self.prepare(pair[1], key=pair[0]), enumerate(images),
                         self.num_workers, depth=2 * self.batch_size + self.num_workers)
        for item, label_map, probs in self.run(items, probabilities=probabilities):
            results[item.key] = (label_map, probs) if probabilities else label_map
        return [results[i] for i in range(len(results))]

    def probabilities(self, image) -> np.ndarray:
        """(C, H, W) float32 class probabilities at the image size (averaged over augmentations with TTA)."""
        return self.predict([image], probabilities=True)[0][1]

    def overlay(self, image, label_map: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
        """The class colours blended over the image, (H, W, 3) uint8; predicts when no label map is given."""
        from .visualize import overlay

        image = _as_image(image)
        if label_map is None:
            label_map = self(image)
        return overlay(image, label_map, self.labels.colors, alpha=alpha)

    # ------------------------------------------------------------ preprocessing (thread-safe)

    def mode_for(self, height: int, width: int) -> str:
        if self.mode != "auto":
            return self.mode
        ratio = self.scale / min(height, width) if self.scale else 1.0
        return "slide" if max(height, width) * ratio > SLIDE_RATIO * self.crop_size else "whole"

    def prepare(self, image, key=None) -> _Item:
        """Decodes (if a path) and preprocesses one image: the part that runs in worker threads."""
        image = _as_image(image)
        height, width = image.height, image.width
        mode = self.mode_for(height, width)
        inputs = [(ratio, self._pixel_values(image, ratio, keep_aspect=mode == "slide")) for ratio in self.scales]
        return _Item(key, image, (height, width), mode, inputs)

    def _pixel_values(self, image, ratio: float, keep_aspect: bool) -> torch.Tensor:
        kwargs = {}
        if ratio != 1.0 or (keep_aspect and self.scale and not _shortest_edge(self.processor)):
            kwargs = self._resize_kwargs(image, ratio, keep_aspect)
        return self.processor(images=image, return_tensors="pt", **kwargs)["pixel_values"][0]

    def _resize_kwargs(self, image, ratio: float, keep_aspect: bool) -> dict:
        def scaled(n):
            return max(1, round(n * ratio))

        if self.scale is None:  # the processor does not resize: scale the image itself
            return {"do_resize": True, "size": {"height": scaled(image.height), "width": scaled(image.width)}}
        if keep_aspect or _shortest_edge(self.processor):
            return {"size": {"shortest_edge": scaled(self.scale)}}
        height, width = _fixed_size(self.processor)
        return {"size": {"height": scaled(height), "width": scaled(width)}}

    # ------------------------------------------------------------ the model

    def _logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(self.device, self.dtype, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(pixel_values=x).logits.float()

    @torch.inference_mode()
    def run(self, items: Iterable[_Item], *, probabilities: bool = False) -> Iterator:
        """(item, (H, W) int64 label map, (C, H, W) float32 probabilities or None) per item, in
        completion order: batchable items wait for a full batch of their shape."""
        pending: dict[tuple, list] = {}
        for item in items:
            if not item.batchable:
                yield item, *self._one(item, probabilities)
                continue
            shape = tuple(item.inputs[0][1].shape)
            pending.setdefault(shape, []).append(item)
            if len(pending[shape]) >= self.batch_size:
                yield from self._batch(pending.pop(shape), probabilities)
            elif sum(map(len, pending.values())) >= 4 * self.batch_size:  # many shapes: bound the memory
                yield from self._batch(pending.pop(next(iter(pending))), probabilities)
        for group in pending.values():
            yield from self._batch(group, probabilities)

    def _batch(self, items: list[_Item], probabilities: bool):
        """Whole mode, one shape: one forward pass, then each image's upsampling and argmax."""
        logits = self._logits(torch.stack([item.inputs[0][1] for item in items]))
        for item, item_logits in zip(items, logits):
            if probabilities:
                scores = F.interpolate(item_logits[None], size=item.size, mode="bilinear", align_corners=False)[0]
                yield item, class_argmax(scores).cpu().numpy(), scores.softmax(0).cpu().numpy()
            else:
                yield item, upsampled_argmax(item_logits, item.size).cpu().numpy(), None

    def _one(self, item: _Item, probabilities: bool):
        """Slide mode and/or TTA: scores at the image size, softmax-averaged over augmentations."""
        flips = (False, True) if self.tta and self.flip else (False,)
        total, count = None, 0
        for _, pixel_values in item.inputs:
            for logits in self._augmented_logits(pixel_values, flips, item.mode):
                scores = F.interpolate(logits[None], size=item.size, mode="bilinear", align_corners=False)[0]
                if not self.tta:
                    return class_argmax(scores).cpu().numpy(), scores.softmax(0).cpu().numpy() if probabilities else None
                total = scores.softmax(0) if total is None else total.add_(scores.softmax(0))
                count += 1
        probs = total / count
        return class_argmax(probs).cpu().numpy(), probs.cpu().numpy() if probabilities else None

    def _augmented_logits(self, pixel_values: torch.Tensor, flips, mode: str):
        """Logits (C, h, w) of the input and of its mirror image, each mirrored back."""
        if mode == "whole":
            batch = torch.stack([pixel_values.flip(-1) if f else pixel_values for f in flips])
            for f, logits in zip(flips, self._logits(batch)):
                yield logits.flip(-1) if f else logits
        else:
            for f in flips:
                logits = self._slide(pixel_values.flip(-1) if f else pixel_values)
                yield logits.flip(-1) if f else logits

    def _slide(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Window logits, each upsampled to its window, summed and divided by the coverage count.
        An input that fits in one window is run whole (so slide equals whole there)."""
        height, width = pixel_values.shape[-2:]
        windows = slide_windows(height, width, self.crop_size, self.stride)
        if len(windows) == 1:
            return self._logits(pixel_values[None])[0]
        total, count = None, torch.zeros((1, height, width), device=self.device)
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start : start + self.batch_size]
            crops = torch.stack([pixel_values[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
            logits = F.interpolate(self._logits(crops), size=crops.shape[-2:], mode="bilinear", align_corners=False)
            if total is None:
                total = torch.zeros((logits.shape[1], height, width), device=self.device)
            for (y1, y2, x1, x2), window_logits in zip(chunk, logits):
                total[:, y1:y2, x1:x2] += window_logits
                count[:, y1:y2, x1:x2] += 1
        return total / count


def _shortest_edge(processor) -> int | None:
    size = getattr(processor, "size", None)
    if size is None:
        return None
    value = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    return int(value) if value else None


def _fixed_size(processor) -> tuple[int | None, int | None]:
    size = getattr(processor, "size", None)
    if isinstance(size, dict):
        return size.get("height"), size.get("width")
    return getattr(size, "height", None), getattr(size, "width", None)


def training_scale(processor) -> int | None:
    """The short side the model sees: the processor's shortest_edge, or its fixed size's smaller side."""
    if not getattr(processor, "do_resize", True):
        return None
    if (edge := _shortest_edge(processor)) is not None:
        return edge
    height, width = _fixed_size(processor)
    return min(height, width) if height and width else None


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputImage:
    """An image to segment and its output name (stem, or relative path without suffix)."""

    path: Path
    name: str


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def collect_images(inputs: list[str], recursive: bool = False) -> list[InputImage]:
    """Files as given, folders' images (sorted; sub-folders too with `recursive`, their outputs
    then in matching sub-folders), and glob patterns (`*`, `?`, `[...]`, `**`)."""
    found: list[InputImage] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            files = sorted(path.rglob("*") if recursive else path.iterdir())
            images = [p for p in files if _is_image(p)]
            if not images:
                hint = "" if recursive or not any(p.is_dir() for p in files) else " (sub-folders: use --recursive)"
                raise SegtuneError(f"{path}: no images found in this folder{hint}")
            found += [InputImage(p, p.relative_to(path).with_suffix("").as_posix() if recursive else p.stem)
                      for p in images]
        elif path.is_file():
            found.append(InputImage(path, path.stem))
        elif glob.has_magic(item):
            matches = [Path(p) for p in sorted(glob.glob(item, recursive=True))]
            images = [p for p in matches if _is_image(p)]
            if not images:
                raise SegtuneError(f"{item}: no image matches this pattern")
            found += [InputImage(p, p.stem) for p in images]
        else:
            raise SegtuneError(f"{path}: no such file or folder")
    unique, by_name = [], {}
    for entry in found:
        same = by_name.get(entry.name)
        if same is not None and same.path.resolve() == entry.path.resolve():
            continue  # given twice
        if same is not None:
            raise SegtuneError(f"{same.path} and {entry.path}: both would be written as '{entry.name}.png'; "
                               "segment them in separate runs, or give their common folder with --recursive")
        by_name[entry.name] = entry
        unique.append(entry)
    return unique


def ground_truth_masks(path: Path) -> tuple[list, MaskRules | None]:
    """The ground-truth pairs (each has `.stem` and `.read_mask(rules)`) of a plain folder of masks (its
    sub-folders too) or of any dataset `load_data` reads, and that dataset's own mask rules (a data
    file's label_map, ignore_index, reduce_labels, colours); None for a plain folder."""
    from .data import MASK_SUFFIXES
    from .sources import load_data

    if path.is_dir() and not (path / "annotations").is_dir() and not any(path.glob("*.parquet")) \
            and not (path / "dataset_dict.json").is_file():
        masks = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in MASK_SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        return [Sample(p, p) for p in masks], None
    data = load_data(path)
    return data.train + data.val, data.rules


def _path_parts(pair) -> tuple[str, ...]:
    image = getattr(pair, "image", None)  # `datasets` rows have no file: their stem is the row number
    return Path(image).with_suffix("").parts if image is not None else (pair.stem,)


def match_ground_truth(entries: list[InputImage], pairs: list, source) -> dict:
    """Each image's ground-truth pair, by output name: among the pairs of the image's stem, those whose
    path ends with the image's relative path (--recursive: sub-folders mirrored), else all of them;
    the shortest path of these wins (masks/x.png before masks/vis/x.png). Two equally near pairs, or
    one pair taken by two images, is an error: a wrong mask would be compared silently."""
    by_stem: dict[str, list] = {}
    for pair in pairs:
        by_stem.setdefault(pair.stem, []).append(pair)
    matched, taken = {}, {}
    for e in entries:
        parts = Path(e.name).parts
        candidates = by_stem.get(parts[-1], [])
        candidates = [p for p in candidates if _path_parts(p)[-len(parts):] == parts] or candidates
        if not candidates:
            raise SegtuneError(f"{e.path}: no ground-truth mask for '{e.name}' in {source}")
        nearest = sorted(candidates, key=lambda p: len(_path_parts(p)))
        if len(nearest) > 1 and len(_path_parts(nearest[0])) == len(_path_parts(nearest[1])):
            raise SegtuneError(f"{nearest[0].mask_name} and {nearest[1].mask_name}: both could be the ground truth "
                               f"of {e.path}; give the mask folder whose sub-folders mirror the images'")
        pair = nearest[0]
        if id(pair) in taken:
            raise SegtuneError(f"{taken[id(pair)].path} and {e.path}: both would take the ground truth "
                               f"{pair.mask_name}; give a mask folder whose sub-folders mirror the images'")
        matched[e.name], taken[id(pair)] = pair, e
    return matched


def _mask_rules(rules, gt_rules: MaskRules | None, labels: LabelSet) -> MaskRules:
    """`rules` itself when a MaskRules; else the ground truth's own rules (for colour masks without
    colours of their own, the model's class colours) with the fields of a dict `rules` replacing them."""
    if isinstance(rules, MaskRules):
        return rules
    base = gt_rules or MaskRules()
    if base.colors is None and labels.colors_given:
        base = dataclasses.replace(base, colors=labels.colors)
    return dataclasses.replace(base, **(rules or {}))


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


def save_probabilities(probs: np.ndarray, path: Path, class_names) -> None:
    """(C, H, W) probabilities as uint8 round(p * 255) in a compressed .npz (`probs`, `classes`)."""
    quantised = np.rint(np.clip(probs, 0.0, 1.0) * PROBS_SCALE).astype(np.uint8)
    np.savez_compressed(path, probs=quantised, classes=np.array(class_names))


def load_probabilities(path) -> np.ndarray:
    """(C, H, W) float32 probabilities from a --save-probs file."""
    with np.load(path) as f:
        return f["probs"].astype(np.float32) / PROBS_SCALE


def _write_outputs(entry: InputImage, image, label_map, probs, paths, labels: LabelSet, alpha: float, mode: str,
                   gt_pair, rules: MaskRules) -> dict:
    from PIL import Image

    from .visualize import colorize, comparison_figure, overlay, save_label_png

    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    save_label_png(label_map, paths["label_map"], labels.colors)
    Image.fromarray(colorize(label_map, labels.colors)).save(paths["color"])
    Image.fromarray(overlay(image, label_map, labels.colors, alpha=alpha)).save(paths["overlay"], quality=90)
    ids, counts = np.unique(label_map, return_counts=True)
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


def _key(label_path) -> str:
    return str(Path(label_path).resolve())


def _read_records(path: Path) -> dict[str, dict]:
    """Earlier predictions.jsonl lines by label map (resolved path); the last line wins."""
    records = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                records[_key(record["label_map"])] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a crash: that image is done again
    return records


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
    fields replaced (`{"ignore_index": 11}`). Returns the records of every image, in input order."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    if not 0.0 <= alpha <= 1.0:
        raise SegtuneError(f"--alpha {alpha}: must be between 0 and 1")
    entries = [e if isinstance(e, InputImage) else InputImage(Path(e), Path(e).stem) for e in images]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    jsonl = output_dir / "predictions.jsonl"
    old = {} if overwrite else _read_records(jsonl)
    paths = {e.name: _output_paths(output_dir, e.name, show_gt is not None, save_probs) for e in entries}
    done = {e.name for e in entries if _key(paths[e.name]["label_map"]) in old
            and all(p.is_file() for p in paths[e.name].values())}
    todo = [e for e in entries if e.name not in done]

    gt_pairs, gt_rules = {}, None
    if show_gt is not None and todo:
        pairs, gt_rules = ground_truth_masks(Path(show_gt))
        gt_pairs = match_ground_truth(entries, pairs, show_gt)  # all of them: a skipped image may share a mask
    rules = _mask_rules(rules, gt_rules, segmenter.labels)

    records = {e.name: old[_key(paths[e.name]["label_map"])] for e in entries if e.name in done}
    workers = max(1, segmenter.num_workers)
    bar = tqdm(total=len(entries), initial=len(done), desc="predicting", unit="img", disable=not progress,
               dynamic_ncols=True)
    if done:
        bar.write(f"{len(done)} of {len(entries)} images already segmented in {output_dir}: skipped "
                  "(--overwrite redoes them)")
    writes = deque()
    with open(jsonl, "w" if overwrite else "a") as log, \
            ThreadPoolExecutor(workers, thread_name_prefix="segtune-write") as writer:

        def finish_oldest():
            name, future = writes.popleft()
            records[name] = future.result()
            log.write(json.dumps(records[name]) + "\n")
            log.flush()
            bar.update(1)

        items = prefetch(lambda e: segmenter.prepare(e.path, key=e), todo, segmenter.num_workers,
                         depth=2 * segmenter.batch_size + segmenter.num_workers)
        for item, label_map, probs in segmenter.run(items, probabilities=save_probs):
            e = item.key
            writes.append((e.name, writer.submit(_write_outputs, e, item.image, label_map, probs, paths[e.name],
                                                 segmenter.labels, alpha, item.mode, gt_pairs.get(e.name), rules)))
            while writes and (writes[0][1].done() or len(writes) > 2 * workers + segmenter.batch_size):
                finish_oldest()
        while writes:
            finish_oldest()
    bar.close()
    ordered = [records[e.name] for e in entries]
    current = {_key(paths[e.name]["label_map"]) for e in entries}
    earlier = [r for k, r in old.items() if k not in current]  # other images of earlier runs stay listed
    tmp = jsonl.with_suffix(".jsonl.tmp")  # the final file: one line per image, this run's in input order
    tmp.write_text("".join(json.dumps(r) + "\n" for r in earlier + ordered))
    os.replace(tmp, jsonl)
    summary = _summary(segmenter, ordered, len(todo), time.perf_counter() - started, show_gt)
    (output_dir / "predict.json").write_text(json.dumps(summary, indent=2) + "\n")
    return ordered


def _summary(segmenter: Segmenter, records: list[dict], segmented: int, seconds: float, show_gt) -> dict:
    """predict.json: what ran, how fast, and the class pixel shares over all the images."""
    pixels: dict[str, float] = {}
    for r in records:
        size = r["size"][0] * r["size"][1]
        for name, share in r["class_share"].items():
            pixels[name] = pixels.get(name, 0.0) + share * size
    total = sum(pixels.values()) or 1.0
    order = {name: i for i, name in enumerate(segmenter.labels.names)}
    summary = {
        "images": len(records), "segmented": segmented, "skipped": len(records) - segmented,
        "model": getattr(segmenter.model, "name_or_path", None), "mode": segmenter.mode,
        "modes_used": dict(Counter(r["mode"] for r in records)), "tta": segmenter.tta,
        "device": str(segmenter.device), "dtype": str(segmenter.dtype).removeprefix("torch."),
        "batch_size": segmenter.batch_size, "seconds": round(seconds, 3),
        "images_per_second": round(segmented / seconds, 3) if segmented and seconds > 0 else None,
        "class_share": {name: round(pixels[name] / total, 6)
                        for name in sorted(pixels, key=lambda n: order.get(n, len(order)))},
    }
    if show_gt is not None:  # mean over the images with a pixel not ignored
        accuracies = [r["pixel_accuracy"] for r in records if r.get("pixel_accuracy") is not None]
        summary.update(ground_truth=str(show_gt),
                       mean_pixel_accuracy=round(float(np.mean(accuracies)), 6) if accuracies else None)
    return summary
