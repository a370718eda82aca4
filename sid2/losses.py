"""Per-example diffusion losses (SPEC §3, §4; SiD2 B.1, B.2).

`get_loss(loss_type, schedule)` returns `loss_fn(x, eps, x_hat, eps_hat, t, step=0) -> [B]`, the per-example
loss (mean over pixels, SPEC §0). x_hat and eps_hat must come from the same z_t (`sid2.parametrization`),
so ||eps - eps_hat||^2 = e^lambda ||x - x_hat||^2 and the x- and eps-space forms agree.

loss_type strings: the weightings of `sid2.weightings` (sigmoid, time-shifted sigmoid, edm, edm_monotonic,
elbo) plus `eps_mse` (DDPM's simple loss) and `power:<b>[:<levels>]` (SiD2 B.2, default 2 levels).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sid2 import wavelets
from sid2 import weightings

LOSS_TYPES = weightings.WEIGHTING_NAMES + ('eps_mse', 'power:<b>[:<levels>]')
POWER_DEFAULT_LEVELS = 2


def mean_except_batch(a):
  """Mean over all axes but the first (SiD2 B.1 `mean_except_batch`)."""
  return jnp.mean(a, axis=tuple(range(1, a.ndim)))


def neg_dlogsnr_dt(schedule, t):
  """-d lambda / dt of the schedule at t, by jax.jvp (SiD2 B.1)."""
  return -schedule.dlogsnr_dt(t)


def sigmoid_x_loss(x, x_hat, t, schedule, bias):
  """-1/2 dlambda/dt e^b sigmoid(lambda - b) mean (x - x_hat)^2 (SiD2 B.1, SPEC §3)."""
  logsnr = schedule(t)
  weight = 0.5 * neg_dlogsnr_dt(schedule, t) * jnp.exp(bias) * jax.nn.sigmoid(logsnr - bias)
  return weight * mean_except_batch((x - x_hat) ** 2)


def weighted_eps_loss(eps, eps_hat, t, schedule, weight_fn, step=None):
  """1/2 w(lambda) (-dlambda/dt) mean (eps - eps_hat)^2 (SPEC §3)."""
  logsnr = schedule(t)
  weight = 0.5 * weight_fn(logsnr, step) * neg_dlogsnr_dt(schedule, t)
  return weight * mean_except_batch((eps - eps_hat) ** 2)


def eps_mse_loss(eps, eps_hat):
  """Plain mean (eps - eps_hat)^2, DDPM's simple loss (SPEC §3)."""
  return mean_except_batch((eps - eps_hat) ** 2)


def power_band_shift(low_passes, bias):
  """b_s = log(2) l(s) - b for a band with l(s) low passes (SPEC §4, SiD2 B.2)."""
  return jnp.log(2.0) * low_passes - bias


def haar_band_energies(err, levels):
  """Per-example ||s||^2 of every Haar band of err, flat, with each band's low-pass count l(s) (SPEC §4)."""
  bands = wavelets.haar_dwt(err, levels)
  lows = wavelets.band_low_passes(levels)
  flat_bands = [b for lvl in bands[:-1] for b in lvl] + [bands[-1]]
  flat_lows = [l for lvl in lows[:-1] for l in lvl] + [lows[-1]]
  sum_sq = lambda s: jnp.sum(s ** 2, axis=tuple(range(1, s.ndim)))
  return [sum_sq(b) for b in flat_bands], flat_lows


def power_loss(x, x_hat, t, schedule, bias, levels=POWER_DEFAULT_LEVELS):
  """PL = sum_s sigmoid(lambda + b_s) (-dlambda/dt) ||s||^2 / #pixels, s the Haar bands of x_hat - x (SPEC §4)."""
  logsnr = schedule(t)
  energies, lows = haar_band_energies(x_hat - x, levels)
  weighted = sum(jax.nn.sigmoid(logsnr + power_band_shift(l, bias)) * e for e, l in zip(energies, lows))
  return neg_dlogsnr_dt(schedule, t) * weighted / x[0].size


def parse_power(loss_type):
  """'power:<b>[:<levels>]' -> (b, levels) (SPEC §4)."""
  parts = loss_type.split(':')[1:]
  try:
    bias = float(parts[0])
    levels = int(parts[1]) if len(parts) == 2 else POWER_DEFAULT_LEVELS
  except (ValueError, IndexError):
    raise ValueError(f'loss_type {loss_type!r}: expected power:<b> or power:<b>:<levels>') from None
  if len(parts) > 2 or levels < 1:
    raise ValueError(f'loss_type {loss_type!r}: expected power:<b> or power:<b>:<levels> with levels >= 1')
  return bias, levels


def validate_loss_type(loss_type, image_res=None):
  """Raises ValueError for a bad loss_type (naming the allowed ones) before any compute."""
  if not isinstance(loss_type, str):
    raise ValueError(f'loss_type must be a string, one of {LOSS_TYPES}; got {loss_type!r}')
  if loss_type == 'eps_mse':
    return
  if loss_type.startswith('power:'):
    _, levels = parse_power(loss_type)
    if image_res is not None and image_res % (2 ** levels):
      raise ValueError(f'loss_type {loss_type!r}: image_res={image_res} is not divisible by 2^{levels}')
    return
  try:
    weightings.get_weighting(loss_type)
  except ValueError as e:
    raise ValueError(f'{e}; allowed loss_type values: {", ".join(LOSS_TYPES)}') from None


def _sigmoid_loss(x, eps, x_hat, eps_hat, t, step, *, schedule, weighting):
  del eps, eps_hat
  return sigmoid_x_loss(x, x_hat, t, schedule, weighting.bias(step))


def _eps_weighted_loss(x, eps, x_hat, eps_hat, t, step, *, schedule, weighting):
  del x, x_hat
  return weighted_eps_loss(eps, eps_hat, t, schedule, weighting, step)


def _eps_mse_loss(x, eps, x_hat, eps_hat, t, step):
  del x, x_hat, t, step
  return eps_mse_loss(eps, eps_hat)


def _power_loss(x, eps, x_hat, eps_hat, t, step, *, schedule, bias, levels):
  del eps, eps_hat, step
  return power_loss(x, x_hat, t, schedule, bias, levels)


def get_loss(loss_type, schedule):
  """loss_fn(x, eps, x_hat, eps_hat, t, step=0) -> per-example loss [B] for a loss_type (SPEC §3, §4)."""
  validate_loss_type(loss_type)
  if loss_type == 'eps_mse':
    fn = _eps_mse_loss
  elif loss_type.startswith('power:'):
    bias, levels = parse_power(loss_type)
    fn = functools.partial(_power_loss, schedule=schedule, bias=bias, levels=levels)
  elif loss_type.startswith('sigmoid:'):
    fn = functools.partial(_sigmoid_loss, schedule=schedule, weighting=weightings.get_weighting(loss_type))
  else:
    fn = functools.partial(_eps_weighted_loss, schedule=schedule,
                           weighting=weightings.get_weighting(loss_type))

  def loss_fn(x, eps, x_hat, eps_hat, t, step=0):
    return fn(x, eps, x_hat, eps_hat, t, step)
  return loss_fn
