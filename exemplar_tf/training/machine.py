"""What the machine offers that a training default depends on, read without TensorFlow (train.py resolves and
validates its flags before TensorFlow loads).

`--precision=auto` (the default) picks `default_precision(cpu_flags(), has_nvidia_gpu(), arch)`: mixed_bfloat16
for a ResNet on a CPU-only machine whose CPU computes in bfloat16 natively (AVX-512-BF16 or AMX-BF16), float32
everywhere else. On such a CPU the ResNet-18 bf16 step is ~1.4-1.6x the float32 one (BUILD_NOTES.md "The step
against PyTorch's") and trained the CIFAR-10 CPU recipe to the same accuracy (RESULTS.md, same-recipe
comparison). The Exemplar-CNNs (no batch norm by default) step ~2x faster in bf16 too, but the demo recipe lost
units and kNN in bf16 (BUILD_NOTES.md), so they keep float32 until a same-recipe check says otherwise. Without
those instructions bfloat16 is emulated and slower, and GPUs are left at float32 because nobody has measured
them here.
"""
from __future__ import annotations

import os

from exemplar_tf.choices import RESNET_ARCHS

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of native bfloat16 arithmetic
BF16_CHECKED_ARCHS = RESNET_ARCHS  # the encoders whose bf16 training matched float32 on the same recipe
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


def default_precision(flags: frozenset[str], gpu: bool, arch: str) -> str:
    """The Keras dtype policy `--precision=auto` means for encoder `arch`: mixed_bfloat16 for `BF16_CHECKED_ARCHS`
    without a GPU on a CPU with native bfloat16 (`BF16_CPU_FLAGS`), else float32."""
    native = not gpu and flags & BF16_CPU_FLAGS
    return "mixed_bfloat16" if native and arch in BF16_CHECKED_ARCHS else "float32"


def this_machines_precision(arch: str) -> str:
    """`default_precision` of encoder `arch` on the machine this process runs on."""
    return default_precision(cpu_flags(), has_nvidia_gpu(), arch)
