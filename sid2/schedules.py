"""logSNR schedules t in [0, 1] -> lambda(t) (SPEC §0, §1; SiD2 B.1).

Conventions (SPEC §0): variance preserving, alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda);
t = 0 is (nearly) clean data, t = 1 (nearly) pure noise, lambda decreases in t.

Every schedule is a `Schedule`: a frozen dataclass holding pure jnp functions. Call it as `schedule(t)`;
`schedule.inverse(logsnr)` gives t(lambda) where a closed form exists (else None). Schedules are chosen by
name through `get_schedule(name, image_res)`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sid2 import registry

LOGSNR_MIN = -10.0
LOGSNR_MAX = 10.0


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A logSNR schedule: `schedule(t) -> lambda`, optional closed-form `inverse(lambda) -> t`."""
  name: str
  logsnr_fn: Callable[[jax.Array], jax.Array]
  inverse_fn: Optional[Callable[[jax.Array], jax.Array]] = None

  def __call__(self, t):
    return self.logsnr_fn(jnp.asarray(t, jnp.float32))

  def inverse(self, logsnr):
    if self.inverse_fn is None:
      raise ValueError(f'schedule {self.name!r} has no closed-form inverse')
    return self.inverse_fn(jnp.asarray(logsnr, jnp.float32))

  @property
  def has_inverse(self) -> bool:
    return self.inverse_fn is not None

  def dlogsnr_dt(self, t):
    """d lambda / dt by forward-mode autodiff (SiD2 B.1 uses jax.jvp)."""
    t = jnp.asarray(t, jnp.float32)
    return jax.jvp(self.logsnr_fn, (t,), (jnp.ones_like(t),))[1]


# ---------------------------------------------------------------------------------------------------------
# Basic quantities of a logSNR (SPEC §0).

def alpha_sigma(logsnr):
  """(alpha, sigma) with alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda) (SPEC §0)."""
  logsnr = jnp.asarray(logsnr)
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def alpha2(logsnr):
  """alpha^2 = sigmoid(lambda) (SPEC §0)."""
  return jax.nn.sigmoid(logsnr)


def sigma2(logsnr):
  """sigma^2 = sigmoid(-lambda) (SPEC §0)."""
  return jax.nn.sigmoid(-logsnr)


# ---------------------------------------------------------------------------------------------------------
# Cosine family (SPEC §1, simple diffusion arXiv 2301.11093).

def _cosine_ab(logsnr_min, logsnr_max):
  b = math.atan(math.exp(-0.5 * logsnr_max))
  a = math.atan(math.exp(-0.5 * logsnr_min)) - b
  return a, b


def cosine_logsnr(t, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX):
  """lambda(t) = -2 log tan(a t + b) on [logsnr_min, logsnr_max] (SPEC §1)."""
  a, b = _cosine_ab(logsnr_min, logsnr_max)
  return -2.0 * jnp.log(jnp.tan(a * t + b))


def cosine_inverse(logsnr, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX):
  """t(lambda) = (atan(exp(-lambda/2)) - b) / a, the inverse of `cosine_logsnr` (SPEC §1)."""
  a, b = _cosine_ab(logsnr_min, logsnr_max)
  return (jnp.arctan(jnp.exp(-0.5 * logsnr)) - b) / a


def resolution_shift(image_res, noise_res):
  """Shift 2 log(noise_res / image_res) added to lambda (SPEC §1: B.1's text lost the 2 and the sign)."""
  return 2.0 * math.log(noise_res / image_res)


def shifted_cosine_logsnr(t, image_res, noise_res, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX):
  """lambda_shift(t) = lambda_cos(t) + 2 log(noise_res / image_res) (SPEC §1)."""
  return cosine_logsnr(t, logsnr_min, logsnr_max) + resolution_shift(image_res, noise_res)


def shifted_cosine_inverse(logsnr, image_res, noise_res, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX):
  """Inverse of `shifted_cosine_logsnr` (SPEC §1)."""
  return cosine_inverse(logsnr - resolution_shift(image_res, noise_res), logsnr_min, logsnr_max)


def cosine_interpolated_logsnr(t, image_res, noise_res_low=32, noise_res_high=None,
                               logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX):
  """lambda(t) = (1 - t) lambda_shift_high(t) + t lambda_shift_low(t) (SPEC §1, SiD2 B.1)."""
  noise_res_high = image_res if noise_res_high is None else noise_res_high
  high = shifted_cosine_logsnr(t, image_res, noise_res_high, logsnr_min, logsnr_max)
  low = shifted_cosine_logsnr(t, image_res, noise_res_low, logsnr_min, logsnr_max)
  return (1.0 - t) * high + t * low


# ---------------------------------------------------------------------------------------------------------
# DDPM linear-beta schedule as a continuous lambda(t) (SPEC §1; Spectral Diffusion Tables 2-3).

LINEAR_BETA_T_MIN = 1e-5


def _linear_beta_log_alphabar_table(num_steps=1000, beta_start=1e-4, beta_end=0.02):
  """log alpha-bar at t = i / num_steps, i = 0..num_steps (i = 0: log 1 = 0), in float64 (SPEC §1)."""
  betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
  return np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])


def linear_beta_logsnr(t, num_steps=1000, beta_start=1e-4, beta_end=0.02):
  """lambda = log(abar / (1 - abar)), log abar interpolated linearly between DDPM steps (SPEC §1).

  Exact at t = i / num_steps. At t = 0 the interpolation gives abar = 1 (lambda = +inf), so t is clipped
  from below at LINEAR_BETA_T_MIN: lambda stays finite (about 13.8 there) and strictly decreasing above it.
  """
  table = jnp.asarray(_linear_beta_log_alphabar_table(num_steps, beta_start, beta_end), jnp.float32)
  grid = jnp.linspace(0.0, 1.0, num_steps + 1)
  t = jnp.clip(t, LINEAR_BETA_T_MIN, 1.0)
  log_abar = jnp.interp(t, grid, table)
  # lambda = log abar - log(1 - abar), with log(1 - abar) = log(-expm1(log abar)) for accuracy near abar=1.
  return log_abar - jnp.log(-jnp.expm1(log_abar))


def linear_beta_inverse(logsnr, num_steps=1000, beta_start=1e-4, beta_end=0.02):
  """Inverse of `linear_beta_logsnr`: log abar = -softplus(-lambda), then invert the piecewise-linear map."""
  table = jnp.asarray(_linear_beta_log_alphabar_table(num_steps, beta_start, beta_end), jnp.float32)
  grid = jnp.linspace(0.0, 1.0, num_steps + 1)
  log_abar = -jax.nn.softplus(-jnp.asarray(logsnr))
  # table decreases in t; jnp.interp needs increasing x-coordinates.
  return jnp.interp(log_abar, table[::-1], grid[::-1])


def linear_beta_continuous_logsnr(t, num_steps=1000, beta_start=1e-4, beta_end=0.02):
  """Continuous-beta form log abar(t) = -(beta0 T t + (beta1 - beta0) T t^2 / 2) (SPEC §1, reference)."""
  T = num_steps
  log_abar = -(beta_start * T * t + 0.5 * (beta_end - beta_start) * T * t ** 2)
  return log_abar - jnp.log(-jnp.expm1(log_abar))


# ---------------------------------------------------------------------------------------------------------
# Registry: `config.schedule` -> builder(name, image_res) -> Schedule. A new schedule is one decorated
# builder (`@SCHEDULES.register('my_schedule')`, or `register_pattern` for a family of names).

SCHEDULES = registry.Registry('schedule')


def _need_res(name, image_res) -> int:
  if image_res is None or int(image_res) <= 0:
    raise ValueError(f'schedule {name!r} needs a positive image_res; got {image_res!r}')
  return int(image_res)


@SCHEDULES.register('cosine')
def _cosine(name, image_res):
  del image_res
  return Schedule(name, cosine_logsnr, cosine_inverse)


@SCHEDULES.register('linear_beta')
def _linear_beta(name, image_res):
  del image_res
  return Schedule(name, linear_beta_logsnr, linear_beta_inverse)


@SCHEDULES.register('cosine_interpolated')
def _cosine_interpolated(name, image_res):
  return Schedule(name, functools.partial(cosine_interpolated_logsnr, image_res=_need_res(name, image_res)))


def _shifted(name, image_res, *, noise_res):
  res = _need_res(name, image_res)
  return Schedule(name, functools.partial(shifted_cosine_logsnr, image_res=res, noise_res=noise_res),
                  functools.partial(shifted_cosine_inverse, image_res=res, noise_res=noise_res))


def _interpolated(name, image_res, *, low, high):
  return Schedule(name, functools.partial(cosine_interpolated_logsnr, image_res=_need_res(name, image_res),
                                          noise_res_low=low, noise_res_high=high))


SCHEDULES.register_pattern(r'cosine_shifted_(\d+)', 'cosine_shifted_<noise_res>',
                           lambda name, m: functools.partial(_shifted, noise_res=int(m.group(1))))
SCHEDULES.register_pattern(r'cosine_interpolated_low_(\d+)_high_(\d+)', 'cosine_interpolated_low_<a>_high_<b>',
                           lambda name, m: functools.partial(_interpolated, low=int(m.group(1)),
                                                             high=int(m.group(2))))
SCHEDULE_NAMES = SCHEDULES.names()


def get_schedule(name: str, image_res: Optional[int] = None) -> Schedule:
  """Builds a schedule by name (SPEC §1, §12). `image_res` is needed by the shifted schedules."""
  if not isinstance(name, str):
    raise ValueError(f'schedule must be a string, one of {SCHEDULES.names()}; got {name!r}')
  return SCHEDULES.get(name)(name, image_res)
