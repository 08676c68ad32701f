"""Running a segmentation model on images: label maps, probabilities, overlays (no files written).

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
model runs.

The model is reached through a runner (`segtune.inference.runners.Runner`), so another engine can replace torch without
touching the modes or the outputs: a callable from a (B, 3, h, w) float32 CPU tensor of pixel
values, as the processor gives them, to (B, C, h', w') logits (a tensor or array of any float
dtype), with `device` (a torch.device: where the logits are upsampled and averaged) and `dtype`
(the torch.dtype it computes in, for reports). `TorchRunner` runs a transformers model, and
alone supports head folding and channels-last; `segtune.inference.onnx_runners` runs an exported model
(`segtune export`) with ONNX Runtime or OpenVINO.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..data.labels import LabelSet, load_labels
from ..data.reading import read_image, to_rgb
from ..errors import SegtuneError
from ..models import architectures
from ..models.masks import probabilities as class_probabilities
from ..models.loading import load_processor
from .geometry import default_stride, processor_fixed_size, processor_shortest_edge, training_scale, window_scores
from .postprocess import class_argmax, upsampled_argmax
from .preprocess import FastPreprocess, own_windows_off
from .runners import TorchRunner, resolve_device, resolve_dtype
from .strips import columns_of, strip_plan, upsample

MODES = ("auto", "whole", "slide")
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # MMSeg's aug_test img_ratios
SLIDE_RATIO = 2.0  # auto: slide when the resized image's long side exceeds this many crops


# ---------------------------------------------------------------- the segmenter


class _Done:
    """A forward pass already computed, as a started one."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


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


def _size_value(processor, key: str):
    size = getattr(processor, "size", None)
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


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

    `model`: a transformers model (run by a TorchRunner) or any Runner. `segmenter(image)` takes a
    PIL image, an (H, W, 3) uint8 array or a path; `predict(images)` batches; `probabilities(image)`
    gives (C, H, W) class probabilities; `overlay(image)` draws.
    """

    def __init__(self, model, processor, labels: LabelSet, *, mode: str = "auto", crop_size: int | None = None,
                 stride: int | None = None, tta: bool = False, scales: Iterable[float] = DEFAULT_SCALES,
                 flip: bool = True, batch_size: int | None = None, num_workers: int = 2,
                 channels_last: bool | None = None, fold_head: bool | None = False):
        if mode not in MODES:
            raise SegtuneError(f"--mode {mode}: choose {', '.join(MODES)}")
        self.runner = TorchRunner(model) if isinstance(model, torch.nn.Module) else model
        self.processor, self.labels = processor, labels
        self.fast_preprocess = FastPreprocess.of(processor)  # None: the processor's own call
        self.mode, self.tta, self.flip = mode, bool(tta), bool(flip)
        self.scales = tuple(float(s) for s in scales) if tta else (1.0,)
        if not self.scales or min(self.scales) <= 0:
            raise SegtuneError(f"--tta-scales {' '.join(map(str, scales))}: give positive ratios")
        cpu = self.device.type == "cpu"
        torch_runner = isinstance(self.runner, TorchRunner)
        if fold_head is None:  # auto: fold a SegFormer run by torch on a CPU, where it is 1.7x faster; its
            # logits differ from the unfolded head's by float rounding (~1e-7): a near-tied pixel may flip
            arch = architectures.of_config(self.runner.model.config) if torch_runner else None
            fold_head = torch_runner and cpu and arch is not None and arch.foldable
        if batch_size is None:  # measured on 2 CPU cores, mit-b0 at 683x512 (benchmarks/README.md); GPUs want more
            batch_size = 16 if self.device.type == "cuda" else 1 if (cpu and fold_head) else 4
        if batch_size < 1:
            raise SegtuneError(f"--batch-size {batch_size}: must be at least 1")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.scale = training_scale(processor)
        # a model taking one square size only (models/architectures.py): every scale runs at that size
        self.fixed_size = processor_fixed_size(processor)[0] is not None and (
            architectures.runner_input_size(self.runner) is not None or architectures.of_processor(processor) is not None)
        # a mask classifier's scores are no logits: probabilities normalise them by their sum (models/masks.py)
        config = architectures.runner_config(self.runner)
        self.family = architectures.family(config) if config is not None else "pixel"
        # EoMT: the short side resized to its square input, then always slide mode over square windows
        arch = architectures.of_processor(processor) or (architectures.of_config(config) if config else None)
        self.windows = bool(arch and arch.windows)
        if self.windows:
            self.mode, self.fixed_size = "slide", False
            crop_size = architectures.runner_input_size(self.runner) or self.scale
        self.crop_size = self.scale if self.fixed_size else (crop_size or self.scale or 512)
        self.stride = stride or default_stride(self.crop_size)
        if self.crop_size < 1 or self.stride < 1 or self.stride > self.crop_size:
            raise SegtuneError(f"--crop-size {self.crop_size} --stride {self.stride}: need 0 < stride <= crop size "
                               "(windows must overlap or touch)")
        if fold_head and not (torch_runner and self.runner.fold_head()):
            name = type(self.model if torch_runner else self.runner).__name__
            raise SegtuneError(f"--fold-head: only for SegFormer models run by torch, not {name}")
        self.fold_head = bool(fold_head)
        # Channels-last: faster on CUDA, and on CPU for the folded head (16% less CPU per image here);
        # on CPU it changes float rounding and slows the unfolded head, so the exact path stays as is.
        if channels_last is None:
            channels_last = torch_runner and (self.device.type == "cuda" or (cpu and self.fold_head))
        if channels_last and not torch_runner:
            raise SegtuneError(f"channels-last: only for torch models, not {type(self.runner).__name__}")
        self.channels_last = bool(channels_last)
        if channels_last:
            self.runner.use_channels_last()

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "auto", trust_remote_code: bool = False,
                        dtype: str | torch.dtype | None = None, runtime: str = "auto", threads: int | None = None,
                        streams: int | None = 1, **options) -> Segmenter:
        """Loads a model folder (or Hub id), its processor and its labels; `options` as in __init__.

        `model_dir` may also be an exported model (`segtune export`: a model.onnx, or the folder holding
        it), run by `runtime` "onnxruntime" (its default) or "openvino" on the CPU; "torch" (the default
        for a model folder) runs the transformers model. `threads`: the runtime's threads (default: torch's);
        `streams`: OpenVINO's inference requests at once (1: lowest latency; None: OpenVINO's throughput
        choice, which `predict` of many images gains from)."""
        from ..hub import check_hub
        from .onnx_runners import RUNTIMES, check_streams, load_exported, onnx_path

        if runtime not in RUNTIMES:
            raise SegtuneError(f"--runtime {runtime}: choose {', '.join(RUNTIMES)}")
        exported = onnx_path(model_dir)
        if runtime == "auto":
            runtime = "torch" if exported is None else "onnxruntime"
        if runtime != "torch":
            if str(device) not in ("auto", "cpu"):
                raise SegtuneError(f"--device {device}: --runtime {runtime} runs on the CPU here; give --device cpu")
            runner, processor, labels = load_exported(model_dir, runtime, resolve_dtype(dtype), threads, streams)
            return cls(runner, processor, labels, **options)
        if exported is not None:
            raise SegtuneError(f"{model_dir}: an exported ONNX model; torch runs model folders: give --runtime "
                               "onnxruntime or openvino, or the model folder it was exported from")
        check_streams(streams, runtime)
        if threads is not None:
            if threads < 1:
                raise SegtuneError(f"--threads {threads}: must be at least 1")
            torch.set_num_threads(threads)
        dev, dt = resolve_device(device), resolve_dtype(dtype)
        check_hub(model_dir)  # offline: one line at once, not 25 s of retries
        from ..models.loading import load_saved_model  # here: an exported model runs without transformers

        model = load_saved_model(model_dir, trust_remote_code)
        labels_file = Path(model_dir, "labels.json")
        labels = load_labels(labels_file) if labels_file.is_file() else LabelSet.from_id2label(model.config.id2label)
        return cls(model.to(device=dev, dtype=dt), load_processor(model_dir), labels, **options)

    @property
    def model(self):
        """The torch model a TorchRunner runs (the runner's `model`, or None, for other runners)."""
        return getattr(self.runner, "model", None)

    @property
    def device(self) -> torch.device:
        return torch.device(self.runner.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.runner.dtype

    # ------------------------------------------------------------ public API

    def __call__(self, image) -> np.ndarray:
        """(H, W) int64 class ids for one image."""
        return self.predict([image])[0]

    def predict(self, images: Iterable, *, probabilities: bool = False, dtype: torch.dtype = torch.int64) -> list:
        """Class ids for each image, in order, in `dtype` (`postprocess.label_dtype(classes)`: the smallest);
        with `probabilities`, (label map, (C, H, W) float32) pairs."""
        results = {}
        items = prefetch(lambda pair: self.prepare(pair[1], key=pair[0]), enumerate(images),
                         self.num_workers, depth=2 * self.batch_size + self.num_workers)
        for item, label_map, probs in self.run(items, probabilities=probabilities, dtype=dtype):
            results[item.key] = (label_map, probs) if probabilities else label_map
        return [results[i] for i in range(len(results))]

    def probabilities(self, image) -> np.ndarray:
        """(C, H, W) float32 class probabilities at the image size (averaged over augmentations with TTA)."""
        return self.predict([image], probabilities=True)[0][1]

    def overlay(self, image, label_map: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
        """The class colours blended over the image, (H, W, 3) uint8; predicts when no label map is given."""
        from ..data.drawing import overlay

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
        if self.fixed_size:  # TTA's scales and slide's aspect do not apply: the model takes one size
            pass
        elif ratio != 1.0 or (keep_aspect and self.scale and not processor_shortest_edge(self.processor)):
            kwargs = self._resize_kwargs(image, ratio, keep_aspect)
        if self.fast_preprocess is not None and kwargs.keys() <= {"size"} and image.mode == "RGB":
            return self.fast_preprocess(image, kwargs.get("size"))
        return self.processor(images=image, return_tensors="pt", **kwargs, **own_windows_off(self.processor))[
            "pixel_values"][0]

    def _resize_kwargs(self, image, ratio: float, keep_aspect: bool) -> dict:
        def scaled(n):
            return max(1, round(n * ratio))

        if self.scale is None:  # the processor does not resize: scale the image itself
            return {"do_resize": True, "size": {"height": scaled(image.height), "width": scaled(image.width)}}
        if keep_aspect or processor_shortest_edge(self.processor):
            cap = _size_value(self.processor, "longest_edge")  # Mask2Former's long-side cap scales along
            return {"size": {"shortest_edge": scaled(self.scale), **({"longest_edge": scaled(cap)} if cap else {})}}
        height, width = processor_fixed_size(self.processor)
        return {"size": {"height": scaled(height), "width": scaled(width)}}

    # ------------------------------------------------------------ the model

    def _logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) float32 logits on the device, whatever the runner returns."""
        return self._as_logits(self.runner(pixel_values))

    def _as_logits(self, output) -> torch.Tensor:
        return torch.as_tensor(output).to(self.device).float()

    @torch.inference_mode()
    def run(self, items: Iterable[_Item], *, probabilities: bool = False, dtype: torch.dtype = torch.int64) -> Iterator:
        """(item, (H, W) label map in `dtype`, (C, H, W) float32 probabilities or None) per item, in
        completion order: batchable items wait for a full batch of their shape. A runner with several
        streams (OpenVINO's) gets that many batches at once; each is finished while the next ones run."""
        pending: dict[tuple, list] = {}
        running = deque()  # (items, started inference), oldest first
        depth = getattr(self.runner, "streams", 1)

        def start(group):
            running.append((group, self._start(torch.stack([item.inputs[0][1] for item in group]))))
            while len(running) >= depth:  # with one stream: finished at once
                yield from self._finish(*running.popleft(), probabilities, dtype)

        for item in items:
            if not item.batchable:
                yield item, *self._one(item, probabilities, dtype)
                continue
            shape = tuple(item.inputs[0][1].shape)
            pending.setdefault(shape, []).append(item)
            if len(pending[shape]) >= self.batch_size:
                yield from start(pending.pop(shape))
            elif sum(map(len, pending.values())) >= 4 * self.batch_size:  # many shapes: bound the memory
                yield from start(pending.pop(next(iter(pending))))
        for group in pending.values():
            yield from start(group)
        while running:
            yield from self._finish(*running.popleft(), probabilities, dtype)

    def _start(self, pixel_values: torch.Tensor):
        """A started forward pass: `.result()` gives its output (a runner's own `submit`, else computed now)."""
        submit = getattr(self.runner, "submit", None)
        return submit(pixel_values) if submit is not None else _Done(self.runner(pixel_values))

    def _finish(self, items: list[_Item], started, probabilities: bool, dtype: torch.dtype):
        """Whole mode, one shape: the batch's logits, then each image's upsampling and argmax."""
        logits = self._as_logits(started.result())
        for item, item_logits in zip(items, logits):
            if probabilities:
                yield item, *self._label_map([item_logits], item.size, probabilities, False, dtype)
            else:
                yield item, upsampled_argmax(item_logits, item.size, dtype).cpu().numpy(), None

    def _one(self, item: _Item, probabilities: bool, dtype: torch.dtype):
        """Slide mode and/or TTA: scores at the image size, softmax-averaged over augmentations."""
        flips = (False, True) if self.tta and self.flip else (False,)
        logits = [augmented for _, pixel_values in item.inputs
                  for augmented in self._augmented_logits(pixel_values, flips, item.mode)]
        return self._label_map(logits if self.tta else logits[:1], item.size, probabilities, self.tta, dtype)

    def _label_map(self, logits: list[torch.Tensor], size, probabilities: bool, average: bool, dtype: torch.dtype):
        """(H, W) class ids in `dtype` (and (C, H, W) float32 probabilities) of (C, h, w) logits upsampled to
        `size`; `average`: of the softmax averaged over the logits of each augmentation (TTA). Computed a
        strip of rows at a time (strips.py), so the memory holds the logits and one strip of scores, not
        classes x pixels; each strip's scores are exactly the whole image's (their softmax may differ in
        the last bit, as torch's own softmax does between thread counts)."""
        logits = [x.contiguous() for x in logits]  # one kernel's rounding on every path (strips.py)
        plan = strip_plan([x.shape for x in logits], size, self.device.type)
        columns = [columns_of(x, size[1]) if len(plan) > 1 else None for x in logits]
        label_map = torch.empty(tuple(size), dtype=dtype)
        probs = np.empty((logits[0].shape[0], *size), dtype=np.float32) if probabilities else None
        for lo, hi in plan:
            total = None
            for x, cols in zip(logits, columns):
                scores = upsample(x, size, lo, hi, cols)
                if not average:
                    break
                share = class_probabilities(scores, self.family)
                total = share if total is None else total.add_(share)
            if average:
                scores = total / len(logits)
            label_map[lo:hi] = class_argmax(scores).cpu()
            if probabilities:
                probs[:, lo:hi] = (scores if average else class_probabilities(scores, self.family)).cpu().numpy()
        return label_map.numpy(), probs

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
        """Window logits, each upsampled to its window, summed and divided by the coverage count
        (geometry.window_scores). An input that fits in one window is run whole (so slide equals whole
        there), except for a model of square windows (EoMT), which pads it to one."""
        return window_scores(self._logits, pixel_values, self.crop_size, self.stride, self.batch_size, pad=self.windows)
