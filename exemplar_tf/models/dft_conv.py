"""Stride-1 convolutions computed through 2-D discrete Fourier transforms, for large maps at evaluation time.

A 'valid' correlation y[p,q] = sum_{a,b} x[p+a, q+b] w[a,b] of an H x W map equals the circular correlation of
size H x W on every output position (p + a <= H - 1, so nothing wraps), and the DFT turns that into one
[B, Cin] x [Cin, Cout] complex matmul per frequency: Y(u,v) = X(u,v) conj(W(u,v)), W the kernel zero-padded
to H x W. Per output channel pair that is 3 * H * (W//2 + 1) real multiply-adds (three real matmuls per
complex one) instead of (H-kh+1)(W-kw+1) * kh * kw: the Exemplar-CNN fc (8x8 kernel) on the 24x24 map of a
96 px image needs 20x fewer, a 5x5 'same' conv on a 48x48 map 14x fewer (before the transforms, which
`dft_multiply_adds` counts too).

The transforms themselves are small matmuls with DFT matrices built for the run-time map size (tf.signal's
batched FFT over the Cin * Cout kernel planes was slower than the conv it replaces). The results equal
`tf.nn.conv2d` up to float32 round-off (errors of at most a few 1e-6 of the largest output;
tests/test_dft_conv.py).
"""
from __future__ import annotations

import math

import tensorflow as tf


# The DFT route's many small matmuls and transposes reach only a fraction of the direct conv's multiply-add rate
# (2-core AMD EPYC, medium net at 96 px, batch 64: the 8x8 fc on 24x24 maps ran 4-5x faster for ~16x fewer
# multiply-adds, the 5x5 'same' convs on 48x48 / 24x24 maps ~1.5x for ~4x / ~7x fewer), so it is taken only
# where `dft_multiply_adds` is this many times below the direct count, and never on transforms smaller than
# MIN_DFT_SIDE: there the fixed cost of many tiny matmuls wins (at 32 px the medium net's conv2 and conv3, 20x20
# and 12x12 transforms at 5.5x / 5.3x fewer multiply-adds, made the features 0.78x as fast).
DFT_MARGIN = 3
MIN_DFT_SIDE = 24


def dft_multiply_adds(height, width, kernel_height: int, kernel_width: int, cin: int, cout: int, padding: str):
    """(dft, direct) int64 scalars: real multiply-adds per image of `conv2d_dft` and of the direct stride-1 conv
    of an H x W x cin map ('same' or 'valid'). The kernel's spectrum, computed once per batch, is left out."""
    height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
    if padding == "same":
        out_height, out_width = height, width
        height, width = height + kernel_height - 1, width + kernel_width - 1
    else:
        out_height, out_width = height - kernel_height + 1, width - kernel_width + 1
    half = width // 2 + 1
    forward = (2 * half * width * height + 4 * height * height * half) * cin
    products = 3 * height * half * cin * cout
    inverse = (4 * out_height * height * half + 2 * out_width * half * out_height) * cout
    direct = out_height * out_width * kernel_height * kernel_width * cin * cout
    return forward + products + inverse, direct


def dft_pays_off(height, width, kernel_height: int, kernel_width: int, cin: int, cout: int,
                 padding: str) -> tf.Tensor:
    """bool scalar: `dft_multiply_adds` of that conv is at least DFT_MARGIN times below the direct count and both
    sides of its transform are at least MIN_DFT_SIDE."""
    dft, direct = dft_multiply_adds(height, width, kernel_height, kernel_width, cin, cout, padding)
    extra = (kernel_height - 1, kernel_width - 1) if padding == "same" else (0, 0)
    large = tf.logical_and(tf.cast(height, tf.int64) + extra[0] >= MIN_DFT_SIDE,
                           tf.cast(width, tf.int64) + extra[1] >= MIN_DFT_SIDE)
    return tf.logical_and(large, DFT_MARGIN * dft <= direct)


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
    image_real = tf.reshape(image_real, [frequencies, batch, cin])
    image_imag = tf.reshape(image_imag, [frequencies, batch, cin])
    # The conjugate kernel spectrum directly: the opposite sign of the exponent.
    kernel_real, kernel_imag = _spectrum(tf.reshape(tf.cast(kernel, tf.float32), [kh, kw, cin * cout]),
                                         height, width, 1.0)
    kernel_real = tf.reshape(kernel_real, [frequencies, cin, cout])
    kernel_imag = tf.reshape(kernel_imag, [frequencies, cin, cout])
    # (a + ib)(c + id) with three real matmuls per frequency: ac - bd, (a + b)(c + d) - ac - bd.
    real_real = tf.matmul(image_real, kernel_real)  # [F, B, Cout]
    imag_imag = tf.matmul(image_imag, kernel_imag)
    summed = tf.matmul(image_real + image_imag, kernel_real + kernel_imag)
    product_real = real_real - imag_imag
    product_imag = summed - real_real - imag_imag
    shape = [height, width // 2 + 1, batch * cout]
    y = _inverse(tf.reshape(product_real, shape), tf.reshape(product_imag, shape), height, width,
                 out_height, out_width)  # [out_height, out_width, B*Cout]
    return tf.transpose(tf.reshape(y, [out_height, out_width, batch, cout]), [2, 0, 1, 3])


def conv2d_dft(x: tf.Tensor, kernel: tf.Tensor, padding: str) -> tf.Tensor:
    """x float32 [B,H,W,Cin], kernel [kh,kw,Cin,Cout] -> tf.nn.conv2d(x, kernel, 1, padding.upper()):
    'valid' is `conv2d_valid_dft`; 'same' (odd kernels only) pads (k-1)/2 zeros on each side first."""
    if padding == "valid":
        return conv2d_valid_dft(x, kernel)
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    if padding != "same" or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv2d_dft supports 'valid', and 'same' with odd kernels; got {padding!r}, {kh}x{kw}")
    padded = tf.pad(x, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]])
    return conv2d_valid_dft(padded, kernel)
