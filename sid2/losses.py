"""Per-example diffusion losses (SPEC §3, §4; SiD2 B.1, B.2).

`parse_loss(loss_type, image_res=None)` parses and validates a loss_type once into a `Loss` that carries what
later code needs: its eps-space weighting (or None), its power-loss bands (or None), whether it applies to
video, and `loss.loss_fn(schedule)`. `get_loss(loss_type, schedule)` returns `loss_fn(x, eps, x_hat, eps_hat, t, step=0) -> [B]`, the per-example
loss (mean over pixels, SPEC §0). x_hat and eps_hat must come from the same z_t (`sid2.parametrization`),
so ||eps - eps_hat||^2 = e^lambda ||x - x_hat||^2 and the x- and eps-space forms agree.

loss_type strings: the weightings of `sid2.weightings` (sigmoid, time-shifted sigmoid, edm, edm_monotonic,
elbo) plus `eps_mse` (DDPM's simple loss) and `power:<b>[:<levels>]` (SiD2 B.2, default 2 levels).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from sid2 import registry
from sid2 import wavelets
from sid2 import weightings

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


def _sigmoid_loss(x, eps, x_hat, eps_hat, t, step, *, schedule, weighting):
  del eps, eps_hat
  return sigmoid_x_loss(x, x_hat, t, schedule, weighting.bias(step))


def _eps_weighted_loss(x, eps, x_hat, eps_hat, t, step, *, schedule, weighting):
  del x, x_hat
  return weighted_eps_loss(eps, eps_hat, t, schedule, weighting, step)


def _eps_mse_loss(x, eps, x_hat, eps_hat, t, step, *, schedule):
  del x, x_hat, t, step, schedule
  return eps_mse_loss(eps, eps_hat)


def _power_loss(x, eps, x_hat, eps_hat, t, step, *, schedule, bias, levels):
  del eps, eps_hat, step
  return power_loss(x, x_hat, t, schedule, bias, levels)


@dataclasses.dataclass(frozen=True)
class Loss:
  """A parsed, validated loss_type (SPEC §3, §4).

  fn(x, eps, x_hat, eps_hat, t, step, *, schedule) -> [B]; weighting: the eps-space w(lambda[, step]) or
  None (eps_mse, power); power_bands: (bias b, Haar levels) of the power loss or None; video_note: why the
  loss does not apply to video ('' when it does).
  """
  name: str
  fn: Callable[..., Any]
  weighting: Optional[Any] = None
  power_bands: Optional[tuple] = None
  video_note: str = ''

  @property
  def supports_video(self) -> bool:
    return not self.video_note

  def check_image_res(self, image_res):
    """ValueError when image_res cannot be split into the power loss's Haar bands."""
    if self.power_bands is not None and image_res is not None and image_res % (2 ** self.power_bands[1]):
      raise ValueError(f'loss_type {self.name!r}: image_res={image_res} is not divisible by '
                       f'2^{self.power_bands[1]}')

  def loss_fn(self, schedule):
    """loss_fn(x, eps, x_hat, eps_hat, t, step=0) -> per-example loss [B] on `schedule` (SPEC §3, §4)."""
    fn = functools.partial(self.fn, schedule=schedule)

    def loss_fn(x, eps, x_hat, eps_hat, t, step=0):
      return fn(x, eps, x_hat, eps_hat, t, step)
    return loss_fn


def weighted_loss(name: str, weighting) -> Loss:
  """The loss of an eps-space weighting (SPEC §3); the sigmoid in its x-space form (SiD2 B.1)."""
  fn = _sigmoid_loss if isinstance(weighting, weightings.SigmoidWeighting) else _eps_weighted_loss
  return Loss(name, functools.partial(fn, weighting=weighting), weighting=weighting)


# Registry of the loss_types that are not a weighting: name -> Loss, or a pattern whose parser builds one.
# Every weighting registered in `sid2.weightings` is a loss_type too (`weighted_loss`).
LOSSES = registry.Registry('loss', field='loss_type')
LOSSES.register('eps_mse', Loss('eps_mse', _eps_mse_loss))


@LOSSES.register_pattern(r'power:.*', 'power:<b>[:<levels>]')
def _parse_power_loss(name, match):
  del match
  bias, levels = parse_power(name)
  return Loss(name, functools.partial(_power_loss, bias=bias, levels=levels), power_bands=(bias, levels),
              video_note='the power loss is defined on images (2-D Haar bands, SiD2 B.2); video configs '
                         '(num_frames set) take the other loss types')


def loss_type_names() -> tuple:
  """Every allowed loss_type (weightings, then the other losses)."""
  return weightings.WEIGHTINGS.names() + LOSSES.names()


LOSS_TYPES = loss_type_names()


def parse_loss(loss_type, image_res=None) -> Loss:
  """The `Loss` of a loss_type, validated (also against image_res when given) before any compute."""
  if not isinstance(loss_type, str):
    raise ValueError(f'loss_type must be a string, one of {loss_type_names()}; got {loss_type!r}')
  loss = LOSSES.find(loss_type)  # a matching pattern's parser raises for bad parameters
  if loss is None:
    try:
      weighting = weightings.WEIGHTINGS.find(loss_type)
    except ValueError as e:
      raise ValueError(f'{e}; allowed loss_type values: {", ".join(loss_type_names())}') from None
    if weighting is None:
      raise ValueError(f'unknown loss_type {loss_type!r}; allowed loss_type values: '
                       f'{", ".join(loss_type_names())}')
    loss = weighted_loss(loss_type, weighting)
  loss.check_image_res(image_res)
  return loss


def validate_loss_type(loss_type, image_res=None) -> Loss:
  """Raises ValueError for a bad loss_type (naming the allowed ones) before any compute; returns its Loss."""
  return parse_loss(loss_type, image_res)


def get_loss(loss_type, schedule):
  """loss_fn(x, eps, x_hat, eps_hat, t, step=0) -> per-example loss [B] for a loss_type (SPEC §3, §4)."""
  return parse_loss(loss_type).loss_fn(schedule)
