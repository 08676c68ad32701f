"""Which precision training runs in by default: bf16 autocast where the hardware has it natively
(docs/train.md#precision), float32 elsewhere, the user's choice first."""

from __future__ import annotations

import torch


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


def precision_default(values: dict, overrides: dict) -> dict:
    """bf16 autocast where the hardware runs it natively: a CUDA GPU that has it (Ampere on), or a CPU
    with AVX512-BF16 or AMX (1.4-1.8x float32 there, docs/train.md#precision). A precision the user
    chose wins (`--bf16 false` keeps float32). bf16 on the CPU needs the Trainer's `use_cpu`, set
    for the user, since the Trainer refuses CPU bf16 without it."""
    if "bf16" in overrides or "fp16" in overrides:
        cpu_bf16 = values.get("bf16") and not gpu_training(values)
        return {"use_cpu": True} if cpu_bf16 else {}
    if gpu_training(values):
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {}
    return {"bf16": True, "use_cpu": True} if cpu_native_bf16() else {}
