"""Which precision training runs in by default: bf16 autocast where the hardware runs it faster
than float32 (docs/train.md#precision), float32 elsewhere, the user's choice first."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

BF16_MIN_SPEEDUP = 1.2  # a bf16 matrix product this much faster than float32 makes bf16 the CPU default


def gpu_training(values: dict) -> bool:
    """Whether the Trainer will train on a CUDA GPU (it does when one is there, unless use_cpu)."""
    return torch.cuda.is_available() and not values.get("use_cpu")


def cpu_native_bf16() -> str | None:
    """The CPU's native bf16 instructions as torch sees them ("AMX", "AVX512-BF16"), or None.
    Without them torch emulates bf16, which is slower than float32, so it is no default there. A
    capability forced lower (ATEN_CPU_CAPABILITY=avx2) counts as not having them."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return None
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported() else None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _probe_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segtune" / "cpu_bf16.json"


def measure_bf16_speedup(reps: int = 6) -> float:
    """bf16 over float32 throughput of the matrix product that dominates a SegFormer step ((4096 x 256)
    by (256 x 1024)), best of `reps` each, interleaved so both see the same load (under a second)."""
    a, b = torch.randn(4096, 256), torch.randn(256, 1024)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    pairs = {dtype: (a.to(dtype), b.to(dtype)) for dtype in best}
    for _ in range(reps + 1):  # the first round warms oneDNN's kernels up
        for dtype, (x, y) in pairs.items():
            start = time.perf_counter()
            x @ y
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def cpu_bf16_speedup() -> float | None:
    """How much faster this CPU runs bf16 matrix products than float32, or None where it has no native
    bf16. Native bf16 is not always faster: on 2 cores of an Intel Xeon (family 6, model 207, AMX
    not exposed) bf16 ran at 0.56x float32, on an AMD EPYC's AVX512-BF16 at about 2x. Measured once
    per CPU and torch version, then read from ~/.cache/segtune/cpu_bf16.json, so a machine always
    gets the same default. Under torchrun the ranks could time it differently and disagree, so there
    native bf16 alone decides (inf: not measured)."""
    native = cpu_native_bf16()
    if native is None:
        return None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return float("inf")
    key = f"{cpu_name()} | {native} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    cache = _probe_cache()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), (int, float)):
        return float(known[key])
    speedup = round(measure_bf16_speedup(), 2)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({**known, key: speedup}, indent=1))
    except OSError:  # a read-only home: measure again next time
        pass
    return speedup


def cpu_bf16_default() -> bool:
    """Whether a CPU run trains in bf16 by default: native bf16 that is measurably faster."""
    speedup = cpu_bf16_speedup()
    return speedup is not None and speedup >= BF16_MIN_SPEEDUP


def precision_default(values: dict, overrides: dict) -> dict:
    """bf16 autocast where the hardware runs it natively and faster: a CUDA GPU that has it (Ampere on),
    or a CPU with AVX512-BF16 or AMX whose bf16 matrix products beat float32 (1.4-1.8x float32 training
    there, docs/train.md#precision). A precision the user chose wins (`--bf16 false` keeps float32). bf16
    on the CPU needs the Trainer's `use_cpu`, set for the user, since the Trainer refuses CPU bf16
    without it."""
    if "bf16" in overrides or "fp16" in overrides:
        cpu_bf16 = values.get("bf16") and not gpu_training(values)
        return {"use_cpu": True} if cpu_bf16 else {}
    if gpu_training(values):
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {}
    return {"bf16": True, "use_cpu": True} if cpu_bf16_default() else {}


def bf16_default_line() -> str:
    """The one line a run prints when it chose bf16 itself."""
    speedup = cpu_bf16_speedup()
    measured = "" if speedup in (None, float("inf")) else f", bf16 matrix products {speedup:.1f}x float32"
    return (f"segtune: training in bf16 autocast: this CPU has native bf16 ({cpu_native_bf16()}{measured}), "
            "1.4-1.8x float32 at equal accuracy where it is fast (docs/train.md#precision); --bf16 false keeps float32")
