"""Data: from files on disk (or a `datasets` table) to checked image/mask pairs.

- `sources/`: finding the pairs (folders, YAML data files, Hugging Face datasets listed or streamed,
  annotation-tool exports) and the train/validation split; `sources.load_data` is the entry point.
- `reading.py`: one image and one mask read the same way everywhere; `MaskRules`.
- `pairs.py`: a pair (`Sample`, `RowSample`), the datasets they form (`SegmentationData`, `StreamedData`).
- `labels.py`, `ade20k.py`: class names and colours.
- `checks.py`, `label_checks.py`, `inspection.py`: every pair read once before a run; the label-space
  checks; `segtune inspect`.
- `transforms.py`: joint image/mask augmentation for training.
- `drawing.py`: label maps in their classes' colours (colour masks, overlays, label PNGs).
- `demo_data.py`: the demo's generated photo-like scenes.
"""
