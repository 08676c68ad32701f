"""Inference: an image in, a label map (or probabilities) out; writes no files.

- `segmenter.py`: `Segmenter`, whole / slide / TTA modes, batching, worker-thread reading.
- `runners.py`: the model-runner interface and `TorchRunner`; `onnx_runners.py`: ONNX Runtime and
  OpenVINO runners and what an export folder holds (`load_exported`).
- `preprocess.py`: the image processor's work, bit-equal and fast; `postprocess.py`: logits to class
  ids (upsampling and argmax, class pruning); `strips.py`: upsampling a strip of rows at a time, in
  bounded memory, bit-equal to one call; `geometry.py`: slide windows and the training scale.
"""

from .segmenter import Segmenter

__all__ = ["Segmenter"]
