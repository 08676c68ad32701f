"""Reporting: what a person looks at.

- `report.py`: `segtune report`, one self-contained report.html (template in `templates/`).
- `charts.py`: its matplotlib pictures, and the image | ground truth | prediction | errors figure.
- `notebook.py`: what the Python jobs return, shown in a notebook cell.
"""
