"""The benchmark runner's summary table and the FLOP counting the flops benchmark relies on."""

import json

from benchmarks.__main__ import build_summary
from tests.conftest import tiny_segformer

MACHINE = {"device": "cpu", "device_name": "X", "cpu": "Test CPU", "cpus_usable": 2, "torch": "2.x",
           "torch_threads": 2, "transformers": "5.x", "python": "3.11", "git": {"commit": "abcdef0123", "dirty": True}}


def _write(folder, name, payload):
    (folder / f"{name}.json").write_text(json.dumps({"benchmark": name, "machine": MACHINE, **payload}))


def _rows(text):
    """{(benchmark, what): [cells]} of the summary's table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and len(cells) == 7 and not set(cells[0]) <= set("-: "):
            rows[cells[0], cells[1]] = cells[2:]
    return rows


def test_summary_reads_results_and_marks_missing(tmp_path):
    _write(tmp_path, "metric_speed", {
        "settings": {"images": 5, "classes": 150}, "target": 20, "speedup_median": 25.0, "identical_1e-9": True,
        "sides": [{"side": "seed (numpy histogram loop)", "spread": {"median": 5.0}},
                  {"side": "segtune (ConfusionMatrix)", "spread": {"median": 0.2}}]})
    speeds = {"seed": 2.0, "pipeline": 4.0, "segtune-cli": 3.0}
    _write(tmp_path, "predict_speed", {"images": 10, "device": "cpu",
                                       "rows": [{"method": m, "img/s": v, "images identical": "9/10"}
                                                for m, v in speeds.items()]})
    _write(tmp_path, "train_speed", {"summary": [{"what": "training images/s", "segtune": 1.5, "baseline": 1.2,
                                                  "ratio": 1.25, "target": ">= 1x", "met": True}]})
    (tmp_path / "flops.json").write_text("{}")  # present but unreadable: no summary, no figures

    text = build_summary(tmp_path, failed=["data_path"])
    rows = _rows(text)
    assert "Machine: Test CPU, 2 CPU cores" in text
    metric = next(v for k, v in rows.items() if k[0] == "metric_speed")
    assert metric[:5] == ["0.2", "5", "25.00x", ">= 20x faster", "yes"]
    predict = {k[1]: v for k, v in rows.items() if k[0] == "predict_speed"}
    assert next(v for k, v in predict.items() if "vs seeds loop" in k)[2:4] == ["1.50x", ""]  # 3 / 2
    assert next(v for k, v in predict.items() if "vs pipeline" in k)[2:] == ["0.75x", ">= 1.5x", "NO"]  # 3 / 4
    assert all("9/10 maps identical" in k for k in predict)
    assert rows["train_speed", "training images/s"] == ["1.5", "1.2", "1.25x", ">= 1x", "yes"]
    assert next(v for k, v in rows.items() if k[0] == "eval_speed")[0] == "not run"
    assert next(v for k, v in rows.items() if k[0] == "data_path")[0] == "FAILED in this run"
    assert next(v for k, v in rows.items() if k[0] == "flops")[0].startswith("unreadable")


def test_flop_count_positive_and_linear_in_batch():
    import torch

    from benchmarks.flops import count_flops, fake_batch

    torch.manual_seed(0)
    model = tiny_segformer(3).train()
    one, two = (count_flops(model, fake_batch(b, 3, crop=64)) for b in (1, 2))
    assert one["forward"] > 0 and one["backward"] > 0
    assert two == {k: 2 * v for k, v in one.items()}


def test_grouped_convolution_backward_is_twice_its_forward():
    import torch

    from benchmarks.flops import flop_counter

    conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)  # depthwise, as in SegFormer's Mix-FFN
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with flop_counter() as forward:
        y = conv(x)
    with flop_counter() as backward:  # the input and the weight gradients (torch's own formula: 17x)
        y.sum().backward()
    assert backward.get_total_flops() == 2 * forward.get_total_flops() > 0
