"""Stride-1 convolutions computed through 2-D discrete Fourier transforms, for large maps at evaluation time.

A 'valid' correlation y[p,q] = sum_{a,b} x[p+a, q+b] w[a,b] of an H x W map equals the circular correlation of
size H x W on every output position (p + a <= H - 1, so nothing wraps), and the DFT turns that into one
[B, Cin] x [Cin, Cout] complex matmul per frequency: Y(u,v) = X(u,v) conj(W(u,v)), W the kernel zero-padded
to H x W. Per output channel pair that is 4 * H * (W//2 + 1) real multiply-adds instead of
(H-kh+1)(W-kw+1) * kh * kw: the Exemplar-CNN fc (8x8 kernel) on the 24x24 map of a 96 px image needs 15x
fewer, a 5x5 'same' conv on a 48x48 map 10x fewer.

The transforms themselves are small matmuls with DFT matrices built for the run-time map size (tf.signal's
batched FFT over the Cin * Cout kernel planes was slower than the conv it replaces). The results equal
`tf.nn.conv2d` up to float32 round-off (relative error ~1e-6 of the largest output; tests/test_dft_conv.py).
"""
from __future__ import annotations

import math

import tensorflow as tf


def dft_cheaper(height, width, kernel_height: int, kernel_width: int) -> tf.Tensor:
    """bool scalar: the DFT route needs fewer multiply-adds than the direct 'valid' conv of an H x W map."""
    height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    direct = (height - kernel_height + 1) * (width - kernel_width + 1) * kernel_height * kernel_width
    return 4 * height * (width // 2 + 1) < direct


def _phases(rows, cols, size, sign: float) -> tuple[tf.Tensor, tf.Tensor]:
    """(cos, sin) float32 [rows, cols] of the angle sign * 2 pi * r * c / size (r*c taken mod size first, for
    accuracy): the real and imaginary parts of exp(sign * 2 pi i r c / size)."""
    r = tf.range(rows, dtype=tf.int64)[:, None]
    c = tf.range(cols, dtype=tf.int64)[None, :]
    size = tf.cast(size, tf.int64)
    angle = (sign * 2.0 * math.pi) * tf.cast((r * c) % size, tf.float32) / tf.cast(size, tf.float32)
    return tf.cos(angle), tf.sin(angle)


def _complex_rows(real: tf.Tensor, imag: tf.Tensor, stacked: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(real + i imag) [m, k] times the complex matrix whose real and imaginary parts are stacked [2k, n]
    (real rows first) -> (real, imag) [m, n], as one real matmul."""
    product = tf.matmul(tf.concat([tf.concat([real, -imag], 1), tf.concat([imag, real], 1)], 0), stacked)
    m = tf.shape(real)[0]
    return product[:m], product[m:]


def _spectrum(planes: tf.Tensor, height, width, sign: float) -> tuple[tf.Tensor, tf.Tensor]:
    """planes float32 [h, w, N] (h <= height, w <= width, zero-padded implicitly) -> (real, imag) float32
    [height, width//2 + 1, N] of sum_{a,b} planes[a,b] exp(sign 2 pi i (u a / height + v b / width))."""
    h, n = tf.shape(planes)[0], tf.shape(planes)[2]
    half = width // 2 + 1
    cos_w, sin_w = _phases(half, tf.shape(planes)[1], width, sign)
    along_w = tf.concat([tf.matmul(cos_w[None], planes), tf.matmul(sin_w[None], planes)], 0)  # [2h, half, N]
    cos_h, sin_h = _phases(height, h, height, sign)
    real, imag = _complex_rows(cos_h, sin_h, tf.reshape(along_w, [2 * h, half * n]))
    return tf.reshape(real, [height, half, n]), tf.reshape(imag, [height, half, n])


def _inverse(real: tf.Tensor, imag: tf.Tensor, height, width, out_height, out_width) -> tf.Tensor:
    """(real, imag) float32 [height, width//2 + 1, N], the half spectrum of a real height x width map ->
    float32 [out_height, out_width, N]: the map's first rows and columns (inverse DFT, Hermitian symmetry)."""
    half, n = tf.shape(real)[1], tf.shape(real)[2]
    cos_h, sin_h = _phases(out_height, height, height, 1.0)
    stacked = tf.concat([tf.reshape(real, [height, half * n]), tf.reshape(imag, [height, half * n])], 0)
    rows_real, rows_imag = _complex_rows(cos_h, sin_h, stacked)
    # Column v stands for itself and its mirror width - v, except v = 0 and (even width) v = width / 2.
    v = tf.range(half)
    weights = tf.where(tf.logical_and(v > 0, 2 * v != width), 2.0, 1.0) / tf.cast(height * width, tf.float32)
    cos_w, sin_w = _phases(out_width, half, width, 1.0)
    # Re(e^{i t} z) = cos t Re z - sin t Im z
    return (tf.matmul((cos_w * weights)[None], tf.reshape(rows_real, [out_height, half, n]))
            - tf.matmul((sin_w * weights)[None], tf.reshape(rows_imag, [out_height, half, n])))


def conv2d_valid_dft(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """x float32 [B,H,W,Cin] (B, H, W may be dynamic; H >= kh, W >= kw), kernel [kh,kw,Cin,Cout] (static) ->
    float32 [B, H-kh+1, W-kw+1, Cout]: tf.nn.conv2d(x, kernel, 1, "VALID") through size-H x W DFTs."""
    kh, kw, cin, cout = (int(d) for d in kernel.shape)
    batch, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    out_height, out_width = height - kh + 1, width - kw + 1
    frequencies = height * (width // 2 + 1)
    planes = tf.reshape(tf.transpose(tf.cast(x, tf.float32), [1, 2, 0, 3]), [height, width, batch * cin])
    image_real, image_imag = _spectrum(planes, height, width, -1.0)
    # Real and imaginary parts stacked along the batch: [F, 2B, Cin].
    image = tf.concat([tf.reshape(image_real, [frequencies, batch, cin]),
                       tf.reshape(image_imag, [frequencies, batch, cin])], 1)
    # The conjugate kernel spectrum directly: the opposite sign of the exponent.
    kernel_real, kernel_imag = _spectrum(tf.reshape(tf.cast(kernel, tf.float32), [kh, kw, cin * cout]),
                                         height, width, 1.0)
    by_real = tf.matmul(image, tf.reshape(kernel_real, [frequencies, cin, cout]))  # [F, 2B, Cout]
    by_imag = tf.matmul(image, tf.reshape(kernel_imag, [frequencies, cin, cout]))
    product_real = by_real[:, :batch] - by_imag[:, batch:]
    product_imag = by_imag[:, :batch] + by_real[:, batch:]
    shape = [height, width // 2 + 1, batch * cout]
    y = _inverse(tf.reshape(product_real, shape), tf.reshape(product_imag, shape), height, width,
                 out_height, out_width)  # [out_height, out_width, B*Cout]
    return tf.transpose(tf.reshape(y, [out_height, out_width, batch, cout]), [2, 0, 1, 3])


def conv2d_same_dft(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """x float32 [B,H,W,Cin], kernel [kh,kw,Cin,Cout] with odd kh, kw -> [B,H,W,Cout]:
    tf.nn.conv2d(x, kernel, 1, "SAME") (zero padding (k-1)/2 each side, then `conv2d_valid_dft`)."""
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv2d_same_dft needs an odd kernel, got {kh}x{kw}")
    padded = tf.pad(x, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]])
    return conv2d_valid_dft(padded, kernel)
