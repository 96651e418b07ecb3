"""The kernel gradient of each convolution of a ResNet encoder, two ways: TensorFlow's Conv2DBackpropFilter (what
Keras' Conv2D gets) and `models.layers.kernel_gradient_by_matmul` (the k*k input taps side by side times the output
gradient: one matmul), beside the layer's forward pass, in bfloat16 (or --dtype=float32).

    python benchmarks/conv_kernel_gradient.py [--arch=resnet18] [--width=32] [--input_size=32] [--batch_size=128]
        [--dtype=bfloat16] [--rounds=15]

The shapes are read from the encoder the project builds (`models.build_encoder`), so they follow its stem, widths
and input size. The two are timed interleaved, one call each per round, and the fastest call of each is kept. One
JSON line per convolution shape (ms per call, the ratio, whether SmallMapConv2D takes the matmul there, by its own
rule), then a total per step (each shape times how often the network has it); every line names the CPU.
"""
from __future__ import annotations

import collections
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from exemplar_tf.models import build_encoder  # noqa: E402
from exemplar_tf.models.layers import SMALL_MAP_OUTPUTS, SmallMapConv2D, kernel_gradient_by_matmul  # noqa: E402
from machine import cpu_flags, cpu_name  # noqa: E402  (benchmarks/ is on the path when run)

FLAGS = flags.FLAGS
flags.DEFINE_enum("arch", "resnet18", ["resnet18", "resnet50"], "encoder whose convolutions are timed")
flags.DEFINE_integer("width", 32, "ResNet base width (64: the full network)")
flags.DEFINE_integer("input_size", 32, "image side the encoder sees")
flags.DEFINE_integer("batch_size", 128, "images per batch")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "compute type")
flags.DEFINE_integer("rounds", 15, "interleaved timed calls of each")

Convolution = collections.namedtuple("Convolution", "side cin cout kernel stride matmul_path")


def encoder_convolutions(arch: str, width: int, input_size: int, dtype: str) -> collections.Counter:
    """Convolution(input side, in channels, out channels, kernel, stride, whether SmallMapConv2D takes the
    matmul) -> how many of it the encoder `arch` has, read from one forward pass of the built encoder at
    `input_size` under the dtype's policy (each layer records the input shape its convolution sees)."""
    precision = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
    encoder = build_encoder(arch, input_size=input_size, mean_rgb=[0.5] * 3, resnet_width=width,
                            precision=precision)
    found = collections.Counter()

    def recording(layer):
        def convolution_op(inputs, kernel):
            found[Convolution(inputs.shape[1], inputs.shape[3], layer.filters, layer.kernel_size[0],
                              layer.strides[0], isinstance(layer, SmallMapConv2D)
                              and layer.takes_matmul_gradient(inputs.shape))] += 1
            return type(layer).convolution_op(layer, inputs, kernel)
        return convolution_op

    for layer in encoder._flatten_layers():
        if isinstance(layer, keras.layers.Conv2D):
            layer.convolution_op = recording(layer)
    encoder(tf.zeros([1, input_size, input_size, 3]))
    return found


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
               "batch_size": FLAGS.batch_size, "arch": FLAGS.arch, "width": FLAGS.width,
               "input_size": FLAGS.input_size}
    totals = {"backprop_filter_ms": 0.0, "chosen_ms": 0.0, "forward_ms": 0.0}
    convolutions = encoder_convolutions(FLAGS.arch, FLAGS.width, FLAGS.input_size, FLAGS.dtype)
    for (side, cin, cout, kernel, stride, matmul_path), count in sorted(convolutions.items(), key=lambda c: -c[0].side):
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
        totals["backprop_filter_ms"] += count * filter_ms
        totals["chosen_ms"] += count * (matmul_ms if matmul_path else filter_ms)
        totals["forward_ms"] += count * forward_ms
        print(json.dumps({**machine, "layer": f"{cin}->{cout} k{kernel} s{stride} on {side}x{side}", "count": count,
                          "output_positions": out * out, "matmul_path": matmul_path,
                          "backprop_filter_ms": round(filter_ms, 2), "matmul_ms": round(matmul_ms, 2),
                          "forward_ms": round(forward_ms, 2),
                          "backprop_filter_over_matmul": round(filter_ms / matmul_ms, 2)}), flush=True)
    print(json.dumps({**machine, "figure": "kernel_gradients_per_step",
                      **{k: round(v, 1) for k, v in totals.items()}, "small_map_outputs": SMALL_MAP_OUTPUTS,
                      "saved_ms": round(totals["backprop_filter_ms"] - totals["chosen_ms"], 1)}))


if __name__ == "__main__":
    app.run(main)
