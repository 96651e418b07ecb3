"""What every benchmark line names: the CPU model (`lscpu`) and the instruction-set flags that matter."""
from __future__ import annotations

import platform
import subprocess

from exemplar_tf.training.machine import cpu_flags as present_cpu_flags

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")


def cpu_name() -> str:
    """lscpu's "Model name" (the platform's processor string where lscpu is missing)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except FileNotFoundError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")),
                platform.processor() or "unknown")


def cpu_flags() -> list[str]:
    """Those of CPU_FLAGS that /proc/cpuinfo lists."""
    present = present_cpu_flags()
    return [name for name in CPU_FLAGS if name in present]
