"""Held-out denoising error of a trained model at fixed noise levels, split by radial frequency (the paper's
claim, arXiv 2211.17106 §3-4, is that slim models lose the high frequencies; SPEC §13).

For clean x, noise ε and logSNR λ, z = α x + σ ε (SPEC §1). The ε-error e = ε̂(z, λ) - ε is split with the
orthonormal 2-D DFT (Parseval: Σ|𝓕e|² = Σ|e|²) into the part at radial frequency r = sqrt(f_u² + f_v²) (in
cycles per pixel, 0..0.707) below `cutoff` and the rest, so low + high = the plain ε-MSE exactly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sid2 import parametrization as param_lib

# Default noise levels and the low/high split (cycles per pixel; 0.25 = a quarter of the sampling rate).
LOGSNRS = (-4.0, -1.0, 2.0, 5.0)
CUTOFF = 0.25


def radial_frequency(height, width):
  """r(u, v) = sqrt(f_u² + f_v²) of the DFT bins [height, width], in cycles per pixel."""
  fu, fv = np.fft.fftfreq(height), np.fft.fftfreq(width)
  return np.sqrt(fu[:, None] ** 2 + fv[None, :] ** 2)


def split_error(err, cutoff=CUTOFF):
  """(low, high) per example [B]: mean over (H, W, C) of |𝓕e|² over bins with r < cutoff / r >= cutoff;
  low + high = mean |e|² (Parseval, norm='ortho')."""
  _, h, w, _ = err.shape
  power = jnp.abs(jnp.fft.fft2(err.astype(jnp.float32), axes=(1, 2), norm='ortho')) ** 2
  low_mask = jnp.asarray(radial_frequency(h, w) < cutoff, jnp.float32)[None, :, :, None]
  n = h * w * err.shape[-1]
  low = jnp.sum(power * low_mask, axis=(1, 2, 3)) / n
  high = jnp.sum(power * (1 - low_mask), axis=(1, 2, 3)) / n
  return low, high


def make_eps_fn(apply_fn, parametrization):
  """eps_fn(params, z, logsnr, labels) -> ε̂ from a model whose output is `parametrization` (SPEC §2)."""
  def eps_fn(params, z, logsnr, labels):
    out = apply_fn(params, z, logsnr, labels).astype(jnp.float32)
    return param_lib.to_x_eps(out, z, logsnr, parametrization)[1]
  return eps_fn


def eps_mse_by_frequency(eps_fn, params, images, labels=None, *, logsnrs=LOGSNRS, cutoff=CUTOFF, seed=0,
                         batch_size=250):
  """{f'{λ:+g}': {'eps_mse', 'low', 'high'}} on held-out `images` [N, H, W, C] at each fixed logSNR λ.

  The same noise (from `seed`) is used for every model, so differences between arms are not noise draws.
  """
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  jitted = jax.jit(lambda p, x, eps, lam, lab: _batch_errors(eps_fn, p, x, eps, lam, lab, cutoff))
  out = {}
  for lam in logsnrs:
    sums = np.zeros(3)
    for start in range(0, n, batch_size):
      x = images[start:start + batch_size]
      key = jax.random.fold_in(jax.random.PRNGKey(seed), start)
      eps = jax.random.normal(key, x.shape, jnp.float32)
      lab = None if labels is None else jnp.asarray(np.asarray(labels)[start:start + batch_size], jnp.int32)
      lams = jnp.full((x.shape[0],), lam, jnp.float32)
      sums += np.asarray(jitted(params, jnp.asarray(x), eps, lams, lab), np.float64)
    out[f'{lam:+g}'] = dict(zip(('eps_mse', 'low', 'high'), (float(v) for v in sums / n)))
  return out


def _batch_errors(eps_fn, params, x, eps, logsnr, labels, cutoff):
  """[3] sums over the batch of (ε-MSE, low-frequency part, high-frequency part)."""
  z = param_lib.diffuse(x, eps, logsnr)
  err = eps_fn(params, z, logsnr, labels) - eps
  low, high = split_error(err, cutoff)
  return jnp.stack([jnp.sum(jnp.mean(err ** 2, axis=(1, 2, 3))), jnp.sum(low), jnp.sum(high)])
