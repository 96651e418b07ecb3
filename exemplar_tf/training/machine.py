"""What the machine offers that a training default depends on, read without TensorFlow (train.py resolves and
validates its flags before TensorFlow loads).

`--precision=auto` (the default) picks `default_precision(cpu_flags(), has_nvidia_gpu())`: mixed_bfloat16 on a
CPU-only machine whose CPU computes in bfloat16 natively (AVX-512-BF16 or AMX-BF16), float32 everywhere else. On
such a CPU the bf16 step is ~1.6x the float32 one (ResNet-18, BUILD_NOTES.md "The step against PyTorch's") and
trains to the same accuracy (RESULTS.md, same-recipe comparison); without those instructions bfloat16 is emulated
and slower, and GPUs are left at float32 because nobody has measured them here.
"""
from __future__ import annotations

import os

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of native bfloat16 arithmetic
CPUINFO = "/proc/cpuinfo"
NVIDIA_GPUS = "/proc/driver/nvidia/gpus"  # one entry per GPU while the NVIDIA driver is loaded


def cpu_flags(cpuinfo: str = CPUINFO) -> frozenset[str]:
    """The instruction-set flags of the first processor in `cpuinfo` (empty where the file is missing: not Linux)."""
    try:
        with open(cpuinfo) as file:
            line = next((line for line in file if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()


def has_nvidia_gpu(gpus: str = NVIDIA_GPUS) -> bool:
    """Whether the NVIDIA driver reports a GPU (its /proc directory lists one)."""
    return os.path.isdir(gpus) and bool(os.listdir(gpus))


def default_precision(flags: frozenset[str], gpu: bool) -> str:
    """The Keras dtype policy `--precision=auto` means: mixed_bfloat16 without a GPU on a CPU with native bfloat16
    (`BF16_CPU_FLAGS`), else float32."""
    return "mixed_bfloat16" if not gpu and flags & BF16_CPU_FLAGS else "float32"


def this_machines_precision() -> str:
    """`default_precision` for the machine this process runs on."""
    return default_precision(cpu_flags(), has_nvidia_gpu())
