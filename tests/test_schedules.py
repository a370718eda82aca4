"""Schedules against SPEC §1 values, monotonicity, derivatives and inverses."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sid2 import schedules

ALL = [('cosine', None), ('cosine_shifted_64', 256), ('cosine_interpolated', 512),
       ('cosine_interpolated_low_32_high_128', 128), ('linear_beta', None)]


def test_cosine_interpolated_spec_values():
  s = schedules.get_schedule('cosine_interpolated', image_res=512)
  np.testing.assert_allclose(s(jnp.array([0.0, 0.5, 1.0])),
                             [10.0, -2 * math.log(16) / 2, -10 - 2 * math.log(16)], atol=1e-4)
  s = schedules.get_schedule('cosine_interpolated_low_32_high_128', image_res=128)
  np.testing.assert_allclose(s(1.0), -12.7726, atol=1e-3)


def test_cosine_endpoints_and_shift():
  s = schedules.get_schedule('cosine')
  np.testing.assert_allclose(s(jnp.array([0.0, 1.0])), [10.0, -10.0], atol=1e-4)
  np.testing.assert_allclose(s(0.5), 0.0, atol=1e-5)
  shifted = schedules.get_schedule('cosine_shifted_64', image_res=256)
  t = jnp.linspace(0.01, 0.99, 7)
  # Higher resolution than noise_res => more noise: lambda lowered by 2 log(256/64).
  np.testing.assert_allclose(shifted(t) - s(t), -2 * math.log(4), atol=1e-4)


def test_linear_beta_matches_discrete_ddpm():
  betas = np.linspace(1e-4, 0.02, 1000)
  abar = np.cumprod(1 - betas)
  lam = np.log(abar / (1 - abar))
  s = schedules.get_schedule('linear_beta')
  idx = np.array([1, 10, 100, 500, 999, 1000])
  np.testing.assert_allclose(s(idx / 1000.0), lam[idx - 1], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(s(jnp.array([0.5, 1.0])), [-2.46, -10.12], atol=0.01)
  t = jnp.linspace(0.001, 1.0, 500)
  cont = schedules.linear_beta_continuous_logsnr(t)
  assert float(jnp.max(jnp.abs(cont - s(t)))) < 0.1


@pytest.mark.parametrize('name,res', ALL)
def test_monotone_decreasing_and_finite(name, res):
  s = schedules.get_schedule(name, image_res=res)
  lam = s(jnp.linspace(0.0, 1.0, 2001))
  assert bool(jnp.all(jnp.isfinite(lam)))
  assert bool(jnp.all(jnp.diff(lam) < 0))


@pytest.mark.parametrize('name,res', ALL)
def test_derivative_matches_finite_difference(name, res):
  s = schedules.get_schedule(name, image_res=res)
  # For linear_beta stay away from the knots where the piecewise-linear interpolation has kinks.
  t = jnp.array([0.1234, 0.3217, 0.5555, 0.7771, 0.9013], jnp.float32)
  if name == 'linear_beta':
    t = (jnp.floor(t * 1000) + 0.5) / 1000
  h = 1e-4
  fd = (s.logsnr_fn(t.astype(jnp.float64) + h) - s.logsnr_fn(t.astype(jnp.float64) - h)) / (2 * h) \
      if jax.config.jax_enable_x64 else (s(t + h) - s(t - h)) / (2 * h)
  np.testing.assert_allclose(s.dlogsnr_dt(t), fd, rtol=2e-2)
  assert bool(jnp.all(s.dlogsnr_dt(t) < 0))


@pytest.mark.parametrize('name,res', [('cosine', None), ('cosine_shifted_64', 256), ('linear_beta', None)])
def test_inverse_round_trips(name, res):
  s = schedules.get_schedule(name, image_res=res)
  t = jnp.linspace(0.02, 0.98, 25)
  np.testing.assert_allclose(s.inverse(s(t)), t, atol=2e-4)


def test_alpha_sigma_variance_preserving():
  lam = jnp.linspace(-15, 15, 31)
  a, sg = schedules.alpha_sigma(lam)
  np.testing.assert_allclose(a ** 2 + sg ** 2, 1.0, atol=1e-6)
  np.testing.assert_allclose(jnp.log(a ** 2 / sg ** 2), lam, atol=1e-3)


def test_jit_and_vmap_safe():
  s = schedules.get_schedule('cosine_interpolated', image_res=64)
  t = jnp.linspace(0, 1, 8)
  np.testing.assert_allclose(jax.jit(s)(t), jax.vmap(s)(t), rtol=1e-6)


def test_bad_names_raise_with_allowed_values():
  with pytest.raises(ValueError, match='allowed'):
    schedules.get_schedule('cosin')
  with pytest.raises(ValueError, match='image_res'):
    schedules.get_schedule('cosine_interpolated')
  s = schedules.get_schedule('cosine_interpolated', image_res=64)
  with pytest.raises(ValueError, match='inverse'):
    s.inverse(0.0)
