"""Exporting: `segtune export`, the model as ONNX with its parity check against torch (`run.py`).
Running an export is inference's job (`segtune.inference.onnx_runners`)."""
