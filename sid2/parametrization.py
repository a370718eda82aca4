"""Model output parametrisations eps / x / v and their conversions, in one place (SPEC §2).

z = alpha x + sigma eps, v = alpha eps - sigma x, with alpha^2 + sigma^2 = 1.
"""
from __future__ import annotations

import jax.numpy as jnp

from sid2 import schedules

PARAMETRIZATIONS = ('eps', 'x', 'v')


def _bcast(a, like):
  """Broadcasts a per-example scalar (shape [B]) against an image batch [B, ...]."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (jnp.ndim(like) - a.ndim))


def x_from_eps(z, eps, alpha, sigma):
  """x = (z - sigma eps) / alpha (SPEC §2)."""
  return (z - _bcast(sigma, z) * eps) / _bcast(alpha, z)


def eps_from_x(z, x, alpha, sigma):
  """eps = (z - alpha x) / sigma (SPEC §2)."""
  return (z - _bcast(alpha, z) * x) / _bcast(sigma, z)


def x_from_v(z, v, alpha, sigma):
  """x = alpha z - sigma v (SPEC §2)."""
  return _bcast(alpha, z) * z - _bcast(sigma, z) * v


def eps_from_v(z, v, alpha, sigma):
  """eps = sigma z + alpha v (SPEC §2)."""
  return _bcast(sigma, z) * z + _bcast(alpha, z) * v


def v_from_x_eps(x, eps, alpha, sigma):
  """v = alpha eps - sigma x (SPEC §2)."""
  return _bcast(alpha, x) * eps - _bcast(sigma, x) * x


def check(parametrization):
  if parametrization not in PARAMETRIZATIONS:
    raise ValueError(f'parametrization must be one of {PARAMETRIZATIONS}; got {parametrization!r}')


def to_x_eps(output, z, logsnr, parametrization):
  """(x_hat, eps_hat) from a model output of the given parametrisation (SPEC §2)."""
  check(parametrization)
  alpha, sigma = schedules.alpha_sigma(logsnr)
  if parametrization == 'eps':
    return x_from_eps(z, output, alpha, sigma), output
  if parametrization == 'x':
    return output, eps_from_x(z, output, alpha, sigma)
  return x_from_v(z, output, alpha, sigma), eps_from_v(z, output, alpha, sigma)


def from_x(x_hat, z, logsnr, parametrization):
  """The model output of the given parametrisation that corresponds to x_hat at z (SPEC §2)."""
  check(parametrization)
  alpha, sigma = schedules.alpha_sigma(logsnr)
  if parametrization == 'x':
    return x_hat
  eps_hat = eps_from_x(z, x_hat, alpha, sigma)
  if parametrization == 'eps':
    return eps_hat
  return v_from_x_eps(x_hat, eps_hat, alpha, sigma)


def diffuse(x, eps, logsnr):
  """z = alpha x + sigma eps (SPEC §0)."""
  alpha, sigma = schedules.alpha_sigma(logsnr)
  return _bcast(alpha, x) * x + _bcast(sigma, x) * eps
