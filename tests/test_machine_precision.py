"""--precision=auto: mixed_bfloat16 for a ResNet on a CPU-only machine with native bfloat16 arithmetic, float32
elsewhere."""
import pytest

from exemplar_tf.training import machine
from exemplar_tf.training.config import TrainConfig, validate

EPYC_FLAGS = "fpu sse2 avx2 avx512f avx512_vnni avx512_bf16"  # the 2-core AMD EPYC of BUILD_NOTES' figures
XEON_AMX_FLAGS = "fpu sse2 avx2 avx512f amx_tile amx_bf16 amx_int8"
AVX2_FLAGS = "fpu sse2 avx avx2 fma"


def _cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    return str(path)


@pytest.mark.parametrize("flags, gpu, arch, expected", [
    (EPYC_FLAGS, False, "resnet18", "mixed_bfloat16"),
    (XEON_AMX_FLAGS, False, "resnet50", "mixed_bfloat16"),
    (AVX2_FLAGS, False, "resnet18", "float32"),
    (EPYC_FLAGS, True, "resnet18", "float32"),  # GPUs not measured: they keep float32
    (EPYC_FLAGS, False, "small", "float32"),  # the Exemplar-CNNs: no same-recipe match in bf16 yet
])
def test_default_precision_follows_the_cpu_flags_and_the_encoder(tmp_path, flags, gpu, arch, expected):
    assert machine.default_precision(machine.cpu_flags(_cpuinfo(tmp_path, flags)), gpu, arch) == expected


def test_cpu_flags_reads_the_first_processor_and_survives_a_missing_file(tmp_path):
    assert machine.cpu_flags(_cpuinfo(tmp_path, EPYC_FLAGS)) == frozenset(EPYC_FLAGS.split())
    assert machine.cpu_flags(str(tmp_path / "absent")) == frozenset()


def test_has_nvidia_gpu_needs_a_listed_gpu(tmp_path):
    gpus = tmp_path / "gpus"
    assert not machine.has_nvidia_gpu(str(gpus))
    gpus.mkdir()
    assert not machine.has_nvidia_gpu(str(gpus))
    (gpus / "0000:17:00.0").mkdir()
    assert machine.has_nvidia_gpu(str(gpus))


@pytest.mark.parametrize("picked", ["mixed_bfloat16", "float32"])
def test_auto_is_resolved_when_the_config_is_made(monkeypatch, picked):
    asked = []
    monkeypatch.setattr(machine, "this_machines_precision", lambda arch: asked.append(arch) or picked)
    config = validate(TrainConfig(run_dir="/tmp/unused", method="npid"))
    assert config.precision == picked  # flags.cfg records the resolved policy, never "auto"
    assert asked == ["resnet18"]  # asked for the method's encoder, after the method's defaults are filled in


def test_an_explicit_precision_is_kept(monkeypatch):
    monkeypatch.setattr(machine, "this_machines_precision", lambda arch: "mixed_bfloat16")
    assert TrainConfig(run_dir="/tmp/unused", precision="float32").precision == "float32"
