"""Guidance, guidance intervals and autoguidance (SPEC §7, §11) checked with closed-form Gaussian denoisers.

For x ~ N(mu_c, s^2) (conditional) and N(mu_u, s^2) (unconditional) with equal variances, constant guidance
x_c + w (x_c - x_u) is exactly the optimal denoiser of N(mu_c + w (mu_c - mu_u), s^2): the difference
x_c - x_u = (1 - alpha gain) (mu_c - mu_u) is what that mean shift produces.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sid2 import guidance, oracles, samplers
from sid2.schedules import get_schedule

SCHED = get_schedule('cosine')
VAR = np.array([0.04, 0.1, 0.25, 0.5])
MU_C = np.array([0.5, -0.3, 0.1, -0.6])
MU_U = np.array([0.2, 0.0, 0.3, -0.2])
COND = oracles.gaussian_x_pred_fn(MU_C, VAR)
UNCOND = oracles.gaussian_x_pred_fn(MU_U, VAR)
N = 8192
SHAPE = (N, 4)


@jax.jit
def _apply(fn, z, logsnr):
  """Calls a pytree x_pred_fn under jit (one compile per pytree structure)."""
  return fn(z, logsnr)


def _z(batch, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randn(batch, 4), jnp.float32)


def test_guide_formula_and_per_example_interval():
  """x_hat = x_c + w (x_c - x_u) where lo < lambda < hi (open), x_c elsewhere, per example (SPEC §7, §11)."""
  z = _z(6)
  logsnr = jnp.array([-5.0, -3.0, -2.0, 0.0, 4.9, 5.0])
  x_c, x_u = np.asarray(COND(z, logsnr)), np.asarray(UNCOND(z, logsnr))
  inside = np.array([False, False, True, True, True, False])
  want = np.where(inside[:, None], 2.5 * x_c - 1.5 * x_u, x_c)
  got = _apply(guidance.guided_x_pred_fn(COND, UNCOND, 1.5, (-3.0, 5.0)), z, logsnr)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(guidance.guide(2.0, 1.0, 0.5), 2.5)


@pytest.mark.parametrize('w', [0.5, 2.0])
def test_constant_guidance_is_the_shifted_gaussian_denoiser(w):
  """Closed form: guided Gaussian denoisers equal the exact denoiser of N(mu_c + w (mu_c - mu_u), s^2)."""
  z = _z(64, 1)
  logsnr = jnp.linspace(-8.0, 8.0, 64)
  shifted = oracles.gaussian_posterior_mean(z, logsnr, MU_C + w * (MU_C - MU_U), VAR)
  for fn in (guidance.guided_x_pred_fn(COND, UNCOND, w), guidance.autoguided_x_pred_fn(COND, UNCOND, w)):
    np.testing.assert_allclose(_apply(fn, z, logsnr), shifted, rtol=1e-5, atol=1e-5)


def test_guided_sampling_no_retrace_and_bitwise_identities():
  """One compiled sampler serves every strength and interval; w = 0 / empty interval change nothing;
  an all-covering interval equals constant guidance; samples have the guided closed-form mean."""
  traces = []

  def cond(z, logsnr):
    traces.append('cond')  # runs only while tracing
    return COND(z, logsnr)

  def uncond(z, logsnr):
    traces.append('uncond')
    return UNCOND(z, logsnr)

  z1 = jnp.asarray(np.random.RandomState(2).randn(*SHAPE), jnp.float32)
  run = lambda fn: samplers.sample(fn, jax.random.PRNGKey(0), SHAPE, SCHED, sampler='ddim', num_steps=32,
                                   z_init=z1)
  plain = run(cond)
  guided = lambda w, interval: run(guidance.guided_x_pred_fn(cond, uncond, w, interval))
  constant = guided(1.0, None)
  n_traces = len(traces)
  np.testing.assert_array_equal(guided(0.0, None), plain)
  np.testing.assert_array_equal(guided(1.0, (20.0, 30.0)), plain)  # outside the schedule's lambda range
  np.testing.assert_array_equal(guided(1.0, (5.0, -5.0)), plain)  # lo >= hi: empty
  np.testing.assert_array_equal(guided(1.0, (-100.0, 100.0)), constant)
  partial_interval = guided(1.0, (-3.0, 5.0))
  stronger = guided(2.0, None)
  assert len(traces) == n_traces  # no retrace for new w or interval
  assert not np.allclose(partial_interval, constant) and not np.allclose(partial_interval, plain)
  # Constant guidance samples the shifted Gaussian: check the mean (DDIM's mean bias here is ~1e-3).
  for w, x in ((1.0, constant), (2.0, stronger)):
    target = MU_C + w * (MU_C - MU_U)
    np.testing.assert_array_less(np.abs(np.asarray(x).mean(0) - target), 4.5 * np.sqrt(VAR / N) + 3e-3)


def _table():
  """Class means for 3 classes and a null class (index 3, the unconditional mean)."""
  return jnp.asarray(np.stack([MU_C, -MU_C, 0.5 * MU_U, MU_U]), jnp.float32)


def test_class_guided_one_batched_call():
  """cond and uncond come from one call on the doubled batch inside the interval, B examples outside."""
  batches = []

  def apply_x(z, logsnr, labels):
    batches.append(z.shape[0])  # runs only while tracing
    return oracles.gaussian_posterior_mean(z, logsnr, _table()[labels], VAR)

  z = _z(6, 3)
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  logsnr = jnp.array([-5.0, -2.0, 0.0, 3.0, 6.0, 1.0])
  fn = guidance.class_guided_x_pred_fn(apply_x, labels, 3, 1.5, (-3.0, 5.0))
  got = _apply(fn, z, logsnr)
  assert sorted(batches) == [6, 12]
  x_c = oracles.gaussian_posterior_mean(z, logsnr, _table()[labels], VAR)
  x_u = UNCOND(z, logsnr)
  inside = np.array([False, True, True, True, False, True])
  np.testing.assert_allclose(got, np.where(inside[:, None], 2.5 * x_c - 1.5 * x_u, x_c), rtol=1e-5, atol=1e-5)
  # New labels, strength and interval: same compiled function, no retrace; empty interval -> x_c exactly.
  labels2 = jnp.array([2, 2, 1, 1, 0, 0])
  empty = _apply(guidance.class_guided_x_pred_fn(apply_x, labels2, 3, 3.0, (9.0, 10.0)), z, logsnr)
  assert sorted(batches) == [6, 12]
  np.testing.assert_allclose(empty, oracles.gaussian_posterior_mean(z, logsnr, _table()[labels2], VAR),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('kwargs, field', [
    (dict(guidance=float('nan')), 'guidance'),
    (dict(guidance='strong'), 'guidance'),
    (dict(interval=(1.0,)), 'interval'),
    (dict(interval=('a', 1.0)), 'interval'),
])
def test_invalid_guidance_arguments(kwargs, field):
  args = dict(guidance=1.0, interval=None)
  args.update(kwargs)
  with pytest.raises(ValueError, match=field):
    guidance.guided_x_pred_fn(COND, UNCOND, **args)


def test_invalid_class_guidance_arguments():
  apply_x = lambda z, logsnr, labels: z
  with pytest.raises(ValueError, match='labels'):
    guidance.class_guided_x_pred_fn(apply_x, 3, 0, 1.0)
  with pytest.raises(ValueError, match='null_label'):
    guidance.class_guided_x_pred_fn(apply_x, jnp.zeros((4, 8)), jnp.zeros((3,)), 1.0)
  with pytest.raises(ValueError, match='callable'):
    guidance.guided_x_pred_fn('not a function', UNCOND, 1.0)
