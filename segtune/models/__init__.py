"""Models: which architectures segtune knows and how to build, load and re-head them.

- `architectures.py`: the one registry of per-architecture facts (offline configs, the ignore-index
  field, processor type, input constraint, head folding, export rewrites).
- `loading.py`: a model and its image processor, by Hub id, folder or offline name, sized to the labels.
- `folding.py`: SegFormer's decode head folded into fewer operations for inference.
"""
