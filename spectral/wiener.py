"""Linear diffusion as Wiener filtering: Spectral Diffusion supplement §1 (SPEC §10).

Additive model x' = x + e with per-frequency signal power P_x(f) and white noise power P_e. A linear,
shift-invariant noise predictor is a per-frequency gain H(f) on the DFT of x'. Its expected error at f is

  E|H X' − E|² = H² (P_x + P_e) − 2 H P_e + P_e                                   (supplement eq. 5–7)

minimised by the Wiener gain H*(f) = P_e / (P_x + P_e) (eq. 2/9), with error P_x P_e / (P_x + P_e) (eq. 13).
DPM scaling (eq. 10 context): x_t = √ᾱ x_0 + √(1 − ᾱ) ε, so P_x = ᾱ |X_0(f)|², P_e = 1 − ᾱ; for the scaled
noise √(1 − ᾱ) ε the gain is (1 − ᾱ)/(ᾱ|X_0|² + 1 − ᾱ), for unit ε it is √(1 − ᾱ)/(…) (the supplement's
eq. 10 drops the numerator; SPEC §10). With SNR = P_x / P_e, eq. 13 is P_e SNR/(1 + SNR); relative to the
input power P_x + P_e it is SNR/(1 + SNR)², which peaks at SNR = 1. The supplement's eq. 14,
1/(1/SNR + SNR), is a different function with the same peak; it is kept here only for the figure, labelled.

Signals: real, wide-sense stationary Gaussian signals on a periodic 1-D or 2-D grid, generated in the
orthonormal DFT basis (numpy `norm='ortho'`), so E|X(f)|² = P_x(f) and the mean of P_x over the bins is the
per-sample variance ("total power"). Natural-image-like spectrum: P_x(f) ∝ 1/|f|².
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sid2 import schedules


# ---------------------------------------------------------------------------------------------------------
# Closed forms (supplement §1, SPEC §10).

def filter_error(gain, p_x, p_e):
  """E|H (X + E) − E|² = H²(P_x + P_e) − 2 H P_e + P_e for a real gain H (supplement eq. 5–7)."""
  return gain ** 2 * (p_x + p_e) - 2.0 * gain * p_e + p_e


def wiener_gain(p_x, p_e):
  """Optimal noise-predicting gain H*(f) = P_e / (P_x + P_e) (supplement eq. 2/9, SPEC §10)."""
  return p_e / (p_x + p_e)


def wiener_error(p_x, p_e):
  """Error of the Wiener gain, P_x P_e / (P_x + P_e) (supplement eq. 13, exact; SPEC §10)."""
  return p_x * p_e / (p_x + p_e)


def relative_wiener_error(snr):
  """Eq. 13 divided by the input power P_x + P_e: SNR / (1 + SNR)² (unit total power; SPEC §10)."""
  return snr / (1.0 + snr) ** 2


def supplement_error(snr):
  """The supplement's eq. 14 as printed, 1 / (1/SNR + SNR): not equal to eq. 13, same argmax SNR = 1."""
  return 1.0 / (1.0 / snr + snr)


def dpm_powers(alpha_bar, x0_power):
  """(P_x, P_e) = (ᾱ |X_0(f)|², 1 − ᾱ) under DPM scaling x_t = √ᾱ x_0 + √(1 − ᾱ) ε (SPEC §10)."""
  return alpha_bar * x0_power, 1.0 - alpha_bar


def dpm_wiener_gain(alpha_bar, x0_power, unit_noise: bool = False):
  """H_t*(f): (1 − ᾱ)/(ᾱ|X_0|² + 1 − ᾱ) for the scaled noise, √(1 − ᾱ)/(…) for unit ε (SPEC §10)."""
  p_x, p_e = dpm_powers(alpha_bar, x0_power)
  numerator = np.sqrt(p_e) if unit_noise else p_e
  return numerator / (p_x + p_e)


def linear_beta_alpha_bar(t):
  """ᾱ(t) = sigmoid(λ(t)) on the DDPM linear-β schedule (`get_schedule('linear_beta')`, SPEC §1)."""
  logsnr = np.asarray(schedules.get_schedule('linear_beta')(jnp.asarray(t, jnp.float32)), np.float64)
  return 1.0 / (1.0 + np.exp(-logsnr))


# ---------------------------------------------------------------------------------------------------------
# Power-law spectra and Gaussian signals.

def frequency_radius(n: int, ndim: int = 1) -> np.ndarray:
  """|f| (cycles per sample) of the DFT bins of an n (ndim=1) or n×n (ndim=2) grid, numpy FFT order."""
  if not isinstance(n, int) or isinstance(n, bool) or n < 2:
    raise ValueError(f'n must be an integer >= 2; got {n!r}')
  if ndim not in (1, 2):
    raise ValueError(f'ndim must be 1 or 2; got {ndim!r}')
  f = np.fft.fftfreq(n)
  if ndim == 1:
    return np.abs(f)
  return np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)


def power_law_spectrum(n: int, ndim: int = 1, exponent: float = 2.0) -> np.ndarray:
  """P_x(f) ∝ 1/|f|^exponent on the DFT bins, normalised to mean 1 over the bins (unit total power).

  The DC bin (|f| = 0) gets the power of the lowest non-zero frequency, 1/n.
  """
  if not exponent >= 0:
    raise ValueError(f'exponent must be >= 0; got {exponent!r}')
  r = frequency_radius(n, ndim)
  r = np.where(r == 0, 1.0 / n, r)
  p = r ** (-float(exponent))
  return p / p.mean()


def _axes(ndim: int) -> Tuple[int, ...]:
  return tuple(range(-ndim, 0))


def sample_signals(rng: np.random.Generator, spectrum: np.ndarray, num: int) -> np.ndarray:
  """`num` real Gaussian signals with E|DFT_ortho(x)(f)|² = spectrum(f) (spectrum even in f): [num, *shape]."""
  axes = _axes(spectrum.ndim)
  white = rng.standard_normal((num,) + spectrum.shape)
  return np.fft.ifftn(np.sqrt(spectrum) * np.fft.fftn(white, axes=axes, norm='ortho'), axes=axes,
                      norm='ortho').real


def apply_gain(gain, x, ndim: int):
  """Linear shift-invariant filter with real frequency response `gain`: IDFT(gain · DFT(x)) (eq. 3)."""
  axes = _axes(ndim)
  return jnp.fft.ifftn(gain * jnp.fft.fftn(x, axes=axes, norm='ortho'), axes=axes, norm='ortho').real


def diffuse_dpm(rng: np.random.Generator, x0: np.ndarray, alpha_bar: float):
  """(x_t, scaled noise √(1 − ᾱ) ε) with x_t = √ᾱ x_0 + √(1 − ᾱ) ε (DDPM forward process)."""
  noise = np.sqrt(1.0 - alpha_bar) * rng.standard_normal(x0.shape)
  return np.sqrt(alpha_bar) * x0 + noise, noise


def monte_carlo_error(rng: np.random.Generator, spectrum: np.ndarray, alpha_bar: float, gain, num: int):
  """Per-frequency E|H X_t − F[√(1 − ᾱ) ε]|² estimated from `num` sampled signals (checks eq. 13)."""
  axes = _axes(spectrum.ndim)
  x_t, noise = diffuse_dpm(rng, sample_signals(rng, spectrum, num), alpha_bar)
  residual = gain * np.fft.fftn(x_t, axes=axes, norm='ortho') - np.fft.fftn(noise, axes=axes, norm='ortho')
  return np.mean(np.abs(residual) ** 2, axis=0)


# ---------------------------------------------------------------------------------------------------------
# A trained linear denoiser.

def train_linear_denoiser(spectrum: np.ndarray, alpha_bar: float, *, steps: int = 400, batch: int = 64,
                          learning_rate: float = 0.05, seed: int = 0) -> np.ndarray:
  """A per-frequency gain fitted with Adam on the DPM noise-prediction loss (supplement eq. 1).

  Loss: mean ‖IDFT(g · DFT(x_t)) − √(1 − ᾱ) ε‖² over fresh Gaussian signals each step; g starts at 1/2.
  Returns g as float64 (it should approach `dpm_wiener_gain(alpha_bar, spectrum)`).
  """
  if not 0.0 < alpha_bar < 1.0:
    raise ValueError(f'alpha_bar must lie in (0, 1); got {alpha_bar!r}')
  ndim = spectrum.ndim
  root = jnp.sqrt(jnp.asarray(spectrum, jnp.float32))
  axes = _axes(ndim)
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

  def loss_fn(g, key):
    k1, k2 = jax.random.split(key)
    white = jax.random.normal(k1, (batch,) + spectrum.shape)
    x0 = jnp.fft.ifftn(root * jnp.fft.fftn(white, axes=axes, norm='ortho'), axes=axes, norm='ortho').real
    noise = jnp.sqrt(1.0 - alpha_bar) * jax.random.normal(k2, x0.shape)
    x_t = jnp.sqrt(alpha_bar) * x0 + noise
    return jnp.mean((apply_gain(g, x_t, ndim) - noise) ** 2)

  @jax.jit
  def run(key):
    def step(carry, k):
      g, opt_state = carry
      grads = jax.grad(loss_fn)(g, k)
      updates, opt_state = tx.update(grads, opt_state, g)
      return (optax.apply_updates(g, updates), opt_state), None
    g0 = jnp.full(spectrum.shape, 0.5, jnp.float32)
    (g, _), _ = jax.lax.scan(step, (g0, tx.init(g0)), jax.random.split(key, steps))
    return g

  return np.asarray(run(jax.random.PRNGKey(seed)), np.float64)


def fit_gain_least_squares(rng: np.random.Generator, spectrum: np.ndarray, alpha_bar: float, num: int):
  """Per-frequency least-squares gain Re Σ Y* N / Σ |Y|² from `num` sampled (x_t, noise) pairs."""
  axes = _axes(spectrum.ndim)
  x_t, noise = diffuse_dpm(rng, sample_signals(rng, spectrum, num), alpha_bar)
  y = np.fft.fftn(x_t, axes=axes, norm='ortho')
  e = np.fft.fftn(noise, axes=axes, norm='ortho')
  return np.real(np.sum(np.conj(y) * e, axis=0)) / np.sum(np.abs(y) ** 2, axis=0)


def snr_crossing_frequency(radius: np.ndarray, snr: np.ndarray) -> float:
  """The |f| where SNR(f) = 1, log-log interpolated on a decreasing SNR profile (nan if none)."""
  order = np.argsort(radius)
  r, s = radius[order], snr[order]
  keep = r > 0
  r, s = r[keep], s[keep]
  above = s >= 1.0
  if above.all() or not above.any():
    return float('nan')
  i = int(np.argmin(above)) - 1  # last index with SNR >= 1 before the first one below
  if i < 0:
    return float('nan')
  w = np.log(s[i]) / (np.log(s[i]) - np.log(s[i + 1]))
  return float(np.exp(np.log(r[i]) + w * (np.log(r[i + 1]) - np.log(r[i]))))
