"""Reduced (azimuthally integrated) power spectra and Gaussian blur (Spectral Diffusion supplement §3.1 and
§3.4, Figures 1 and 3; SPEC §13 "Reduced spectrum").

Reduced spectrum (SPEC §13): per image and channel the 2-D DFT power |F x|² (orthonormal DFT, so the power
sums to the pixel energy Σ x², Parseval), DC moved to the centre, grouped into rings of integer radius
r = floor(√(Δu² + Δv²)) around the DC bin (floor(N/√2) + 1 rings for an N×N image), averaged over each ring
('mean', the curve to plot) or summed over it ('sum', the azimuthal integral, whose bins add up to the
energy), then averaged over channels and images.

Blur (supplement §3.1): a normalised Gaussian kernel of size 9 and variance σ², g_k ∝ exp(−k²/(2σ²)),
k = −4..4, applied separably along rows and columns. The image border is extended by reflection (ours; as
torchvision's `gaussian_blur` does), so a constant image stays constant.
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ('mean', 'sum')


def _check_images(images):
  if jnp.ndim(images) != 4:
    raise ValueError(f'images must be a 4-d array [N, H, W, C] (NHWC); got shape {jnp.shape(images)}')


def radial_index(height: int, width: int) -> np.ndarray:
  """floor(distance to the DC bin) of every bin of the centred (fftshifted) H×W spectrum, int [H, W]."""
  for name, v in (('height', height), ('width', width)):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
      raise ValueError(f'{name} must be a positive integer; got {v!r}')
  du = np.arange(height) - height // 2
  dv = np.arange(width) - width // 2
  return np.floor(np.sqrt(du[:, None] ** 2 + dv[None, :] ** 2)).astype(np.int32)


def num_radii(height: int, width: int) -> int:
  """Number of rings: floor(max radius) + 1 (floor(N/√2) + 1 for even N×N; SPEC §13)."""
  return int(radial_index(height, width).max()) + 1


def power_spectrum(images):
  """|DFT_ortho(x)|² per image and channel with DC at (H//2, W//2): [N, H, W, C] (SPEC §13)."""
  _check_images(images)
  f = jnp.fft.fft2(jnp.asarray(images, jnp.float32), axes=(1, 2), norm='ortho')
  return jnp.fft.fftshift(jnp.abs(f) ** 2, axes=(1, 2))


def reduced_spectrum(images, reduce: str = 'mean'):
  """Ring-mean ('mean') or ring-sum ('sum') of the power spectrum, averaged over images and channels:
  [num_radii] (SPEC §13). With 'sum' the bins add up to the mean pixel energy Σ x² per image-channel."""
  if reduce not in REDUCTIONS:
    raise ValueError(f'reduce must be one of {REDUCTIONS}; got {reduce!r}')
  _check_images(images)
  h, w = jnp.shape(images)[1:3]
  index = radial_index(h, w).reshape(-1)
  n = int(index.max()) + 1
  power = jnp.mean(power_spectrum(images), axis=(0, 3)).reshape(-1)  # mean over images and channels
  sums = jnp.zeros((n,), power.dtype).at[index].add(power)
  if reduce == 'sum':
    return sums
  return sums / jnp.asarray(np.bincount(index, minlength=n), power.dtype)


def gaussian_kernel(sigma2, size: int = 9):
  """Normalised 1-D Gaussian g_k ∝ exp(−k²/(2σ²)), k = −(size−1)/2..(size−1)/2 (supplement §3.1)."""
  if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1 or size % 2 == 0:
    raise ValueError(f'size must be a positive odd integer; got {size!r}')
  if isinstance(sigma2, bool) or not isinstance(sigma2, numbers.Real) or not (sigma2 > 0 and math.isfinite(sigma2)):
    raise ValueError(f'sigma2 (the Gaussian variance) must be a finite number > 0; got {sigma2!r}')
  k = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  g = jnp.exp(-k ** 2 / (2.0 * float(sigma2)))
  return g / jnp.sum(g)


def _blur_axis(x, kernel, axis: int):
  """Correlation with `kernel` along `axis` of x [N, H, W, C], border extended by reflection."""
  r = (kernel.shape[0] - 1) // 2
  if x.shape[axis] <= r:
    raise ValueError(f'images must be larger than the kernel radius {r} along height and width; got shape '
                     f'{x.shape}')
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  xp = jnp.pad(x, pad, mode='reflect')
  n = x.shape[axis]
  return sum(kernel[k] * jax.lax.slice_in_dim(xp, k, k + n, axis=axis) for k in range(kernel.shape[0]))


def gaussian_blur(images, sigma2, size: int = 9):
  """Blurs NHWC images with the separable size×size Gaussian of variance σ² (supplement §3.1)."""
  _check_images(images)
  kernel = gaussian_kernel(sigma2, size)
  x = jnp.asarray(images, jnp.float32)
  return _blur_axis(_blur_axis(x, kernel, 1), kernel, 2)
