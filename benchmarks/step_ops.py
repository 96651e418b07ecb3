"""Where the training step's time goes, op type by op type: the project's step (benchmarks/train_step.py's
settings, synthetic 32x32 batches) run under TensorFlow's profiler, its trace read back and summed per op type
and per kind of work (convolution forward / backward, batch norm, casts, matmuls, gathers and scatters, the
optimizer update, layout reorders, the rest).

    python benchmarks/step_ops.py --archs=resnet18 --objectives=nce --precisions=mixed_bfloat16 [--top=25]
    ONEDNN_DEFAULT_FPMATH_MODE=BF16 python benchmarks/step_ops.py ...    (a lever that is an environment variable)

After two untimed calls it traces one call of --steps steps per setting. Times are the op kernels' own durations
on the host threads (TensorFlow's executor runs independent ops in parallel on the 2 cores, so they can add up to
more than the wall time, which is given beside them). One JSON line per setting and kind, then the --top op
types; every line names the CPU.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import train_step  # noqa: E402  (benchmarks/ is on the path when run; its flags are this program's flags)
from machine import cpu_flags, cpu_name  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("top", 25, "op types listed per setting")

# Kind of work of an op type (TensorFlow's type names, oneDNN's _Mkl* rewrites included), first match wins.
KINDS = (
    ("conv_backward", ("Conv2DBackprop", "DepthwiseConv2dNativeBackprop")),
    ("conv_forward", ("Conv2D", "DepthwiseConv2dNative")),
    ("batch_norm", ("FusedBatchNorm",)),
    ("reorder", ("MklToTf", "TfToMkl", "_MklInputConversion", "Transpose")),
    ("cast", ("Cast",)),
    ("matmul", ("MatMul", "Einsum")),
    ("gather_scatter", ("Gather", "Scatter", "UnsortedSegment", "Unique", "SparseSegment")),
    ("optimizer", ("ResourceApply", "AssignAddVariableOp", "AssignSubVariableOp", "AssignVariableOp")),
)
WRAPPERS = ("PartitionedCall", "StatefulPartitionedCall", "While", "If", "Case", "__inference", "RunGraph")
EXECUTOR_EVENTS = ("Process", "Run", "DoCompute", "Root")  # the executor's own spans around the ops


def kind_of(op_type: str) -> str:
    return next((kind for kind, markers in KINDS if any(marker in op_type for marker in markers)), "other")


def op_times(xspace: xplane_pb2.XSpace) -> collections.Counter:
    """Seconds per op type over the host plane's TensorFlow op events ("<op name>:<op type>"), control-flow
    and function wrappers left out (their ops are counted themselves)."""
    seconds = collections.Counter()
    for plane in xspace.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                op_name, colon, op_type = name.rpartition(":")
                if (not colon or not op_name or " " in op_type or "::" in name or op_type in EXECUTOR_EVENTS
                        or any(w in op_type for w in WRAPPERS)):
                    continue
                seconds[op_type] += event.duration_ps * 1e-12
    return seconds


def traced_call(run) -> tuple[float, collections.Counter]:
    """(wall seconds, seconds per op type) of one call of `run` under the profiler."""
    logdir = tempfile.mkdtemp(prefix="step_ops_")
    tf.profiler.experimental.start(logdir)
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    tf.profiler.experimental.stop()
    paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    if not paths:
        raise RuntimeError(f"the profiler wrote no trace under {logdir}")
    xspace = xplane_pb2.XSpace()
    with open(paths[0], "rb") as file:
        xspace.ParseFromString(file.read())
    return wall, op_times(xspace)


def main(argv):
    del argv
    if FLAGS.grappler_bf16:
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    common = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
              "batch_size": FLAGS.batch_size, "steps": FLAGS.steps, "grappler_bf16": FLAGS.grappler_bf16,
              "fpmath_mode": os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE", "strict")}
    for arch in FLAGS.archs:
        for objective in FLAGS.objectives:
            for precision in FLAGS.precisions:
                run = train_step.make_runner(arch, objective, precision, False)
                run(), run()
                wall, seconds = traced_call(run)
                where = {**common, "arch": arch, "objective": objective, "precision": precision,
                         "wall_ms_per_step": round(1000 * wall / FLAGS.steps, 1)}
                per_kind = collections.Counter()
                for op_type, value in seconds.items():
                    per_kind[kind_of(op_type)] += value
                total = sum(per_kind.values())
                for kind, value in per_kind.most_common():
                    print(json.dumps({**where, "kind": kind, "ms_per_step": round(1000 * value / FLAGS.steps, 1),
                                      "share": round(value / total, 3)}), flush=True)
                for op_type, value in seconds.most_common(FLAGS.top):
                    print(json.dumps({**where, "op_type": op_type, "kind": kind_of(op_type),
                                      "ms_per_step": round(1000 * value / FLAGS.steps, 1)}), flush=True)


if __name__ == "__main__":
    app.run(main)
