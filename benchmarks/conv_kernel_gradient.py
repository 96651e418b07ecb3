"""The kernel gradient of each ResNet-18 convolution on 32x32 inputs, two ways: TensorFlow's Conv2DBackpropFilter
(what Keras' Conv2D gets) and `models.layers.kernel_gradient_by_matmul` (the k*k input taps side by side times the
output gradient: one matmul), beside the layer's forward pass, in bfloat16 (or --dtype=float32).

    python benchmarks/conv_kernel_gradient.py [--width=32] [--batch_size=128] [--dtype=bfloat16] [--rounds=15]

The two are timed interleaved, one call each per round, and the fastest call of each is kept. One JSON line per
layer shape (ms per call, the ratio, whether SmallMapConv2D takes the matmul there), then a
total per ResNet-18 step (each shape times how many times the network has it); every line names the CPU.
"""
from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from exemplar_tf.models.layers import MATMUL_GRADIENT_DTYPES, SMALL_MAP_OUTPUTS, kernel_gradient_by_matmul  # noqa: E402
from machine import cpu_flags, cpu_name  # noqa: E402  (benchmarks/ is on the path when run)

FLAGS = flags.FLAGS
flags.DEFINE_integer("width", 32, "ResNet-18 base width (64: the full network)")
flags.DEFINE_integer("batch_size", 128, "images per batch")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "compute type")
flags.DEFINE_integer("rounds", 15, "interleaved timed calls of each")


def resnet18_convolutions(width: int, size: int = 32) -> list[tuple[int, int, int, int, int, int]]:
    """(input side, in channels, out channels, kernel, stride, count) of ResNet-18's CIFAR-stem convolutions."""
    shapes = [(size, 3, width, 3, 1, 1), (size, width, width, 3, 1, 4)]
    side, channels = size, width
    for stage in range(1, 4):
        out = width * 2 ** stage
        shapes += [(side, channels, out, 3, 2, 1), (side, channels, out, 1, 2, 1), (side // 2, out, out, 3, 1, 3)]
        side, channels = side // 2, out
    return shapes


def fastest_ms(functions, rounds: int) -> list[float]:
    """Fastest of `rounds` calls of each function, the functions called in turn within a round."""
    for function in functions:
        function()
    best = [float("inf")] * len(functions)
    for _ in range(rounds):
        for i, function in enumerate(functions):
            start = time.perf_counter()
            function().numpy()
            best[i] = min(best[i], (time.perf_counter() - start) * 1000)
    return best


def main(argv):
    del argv
    dtype = tf.as_dtype(FLAGS.dtype)
    machine = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "dtype": FLAGS.dtype,
               "batch_size": FLAGS.batch_size, "width": FLAGS.width}
    totals = {"backprop_filter_ms": 0.0, "chosen_ms": 0.0, "forward_ms": 0.0}
    for side, cin, cout, kernel, stride, count in resnet18_convolutions(FLAGS.width):
        out = -(-side // stride)
        images = tf.cast(tf.random.normal([FLAGS.batch_size, side, side, cin]), dtype)
        output_gradient = tf.cast(tf.random.normal([FLAGS.batch_size, out, out, cout]), dtype)
        weights = tf.cast(tf.random.normal([kernel, kernel, cin, cout]), dtype)
        backprop_filter = tf.function(lambda: tf.raw_ops.Conv2DBackpropFilter(
            input=images, filter_sizes=[kernel, kernel, cin, cout], out_backprop=output_gradient,
            strides=[1, stride, stride, 1], padding="SAME"))
        by_matmul = tf.function(lambda: kernel_gradient_by_matmul(images, output_gradient, kernel, stride))
        forward = tf.function(lambda: tf.nn.conv2d(images, weights, stride, "SAME"))
        filter_ms, matmul_ms, forward_ms = fastest_ms([backprop_filter, by_matmul, forward], FLAGS.rounds)
        small = stride == 1 and out * out <= SMALL_MAP_OUTPUTS and FLAGS.dtype in MATMUL_GRADIENT_DTYPES  # its rule
        totals["backprop_filter_ms"] += count * filter_ms
        totals["chosen_ms"] += count * (matmul_ms if small else filter_ms)
        totals["forward_ms"] += count * forward_ms
        print(json.dumps({**machine, "layer": f"{cin}->{cout} k{kernel} s{stride} on {side}x{side}", "count": count,
                          "output_positions": out * out, "matmul_path": small,
                          "backprop_filter_ms": round(filter_ms, 2), "matmul_ms": round(matmul_ms, 2),
                          "forward_ms": round(forward_ms, 2),
                          "backprop_filter_over_matmul": round(filter_ms / matmul_ms, 2)}), flush=True)
    print(json.dumps({**machine, "figure": "resnet18_kernel_gradients_per_step",
                      **{k: round(v, 1) for k, v in totals.items()}, "small_map_outputs": SMALL_MAP_OUTPUTS,
                      "saved_ms": round(totals["backprop_filter_ms"] - totals["chosen_ms"], 1)}))


if __name__ == "__main__":
    app.run(main)
