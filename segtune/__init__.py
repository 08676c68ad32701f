"""segtune: fine-tune, evaluate and run semantic-segmentation models (SegFormer first)."""

__version__ = "0.1.0"
