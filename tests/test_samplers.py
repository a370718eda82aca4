"""Samplers (SPEC §6, §11, §12) checked against closed forms for Gaussian and mixture-of-Gaussian data.

For Gaussian data x ~ N(mu, diag s^2) the exact denoiser is affine in z, so DDPM and DDIM steps are affine
maps plus independent Gaussian noise: the exact mean and variance of their output follow from a scalar
recursion per dimension (`_exact_moments`, float64, written from the SPEC formulas independently of the
sampler code). Monte-Carlo moments are compared with standard-error bounds.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sid2 import oracles, samplers
from sid2.schedules import get_schedule

SCHED = get_schedule('cosine')
MU = np.array([0.5, -0.3, 0.1, -0.6])
VAR = np.array([0.04, 0.1, 0.25, 0.5])
N_SAMPLES = 8192
SHAPE = (N_SAMPLES, 4)
X_PRED = oracles.gaussian_x_pred_fn(MU, VAR)
Z_SE = 4.5  # standard errors allowed (a few dozen comparisons per run)


def _lam(t):
  """Cosine logSNR in float64 (SPEC §1), for the reference computations."""
  b = math.atan(math.exp(-5.0))
  a = math.atan(math.exp(5.0)) - b
  return -2.0 * np.log(np.tan(a * np.asarray(t, np.float64) + b))


def _sig(x):
  return 1.0 / (1.0 + np.exp(-x))


def _exact_moments(num_steps, kind, logvar_frac=0.0, eta=0.0, t_end=0.0, mu=MU, var=VAR):
  """Exact output mean and variance per dim of DDPM / DDIM(eta) with the exact Gaussian denoiser."""
  lam = _lam(np.linspace(1.0, t_end, num_steps + 1))
  m, v = np.zeros_like(mu), np.ones_like(mu)  # z_1 ~ N(0, I)
  for i in range(num_steps):
    a_t, s_t = np.sqrt(_sig(lam[i])), np.sqrt(_sig(-lam[i]))
    a_s, s_s = np.sqrt(_sig(lam[i + 1])), np.sqrt(_sig(-lam[i + 1]))
    gain = a_t * var / (a_t ** 2 * var + s_t ** 2)  # x_hat = mu + gain (z - a_t mu)
    off = mu - gain * a_t * mu
    if i == num_steps - 1:  # last step returns x_hat
      return off + gain * m, gain ** 2 * v
    var_ts = s_t ** 2 - (a_t / a_s) ** 2 * s_s ** 2
    var_post = var_ts * s_s ** 2 / s_t ** 2
    if kind == 'ddpm':
      coef_z, coef_x = (a_t / a_s) * s_s ** 2 / s_t ** 2, a_s * var_ts / s_t ** 2
      noise = np.exp(logvar_frac * np.log(var_ts) + (1 - logvar_frac) * np.log(var_post))
    else:  # z_s = a_s x + c (z - a_t x) / s_t + sqrt(var_eta) n
      var_eta = eta ** 2 * var_post
      c = np.sqrt(s_s ** 2 - var_eta)
      coef_z, coef_x, noise = c / s_t, a_s - c * a_t / s_t, var_eta
    lin = coef_z + coef_x * gain
    m, v = lin * m + coef_x * off, lin ** 2 * v + noise


def _assert_moments(x, mean, var, z=Z_SE):
  """Sample mean and variance within z standard errors of (mean, var) in every dimension."""
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  se_mean = np.sqrt(var / n)
  se_var = var * np.sqrt(2.0 / (n - 1))
  np.testing.assert_array_less(np.abs(x.mean(0) - mean), z * se_mean)
  np.testing.assert_array_less(np.abs(x.var(0, ddof=1) - var), z * se_var)


# ---------------------------------------------------------------------------------------------------------
# Validation.

def _boom(z, logsnr):
  raise AssertionError('x_pred_fn must not run when the arguments are invalid')


@pytest.mark.parametrize('kwargs, field', [
    (dict(sampler='euler'), 'sampler'),
    (dict(num_steps=0), 'num_steps'),
    (dict(num_steps=2.5), 'num_steps'),
    (dict(clip_x='dynamic'), 'clip_x'),
    (dict(logvar_type='medium'), 'logvar_type'),
    (dict(logvar_type='1.5'), 'logvar_type'),
    (dict(eta=-0.1), 'eta'),
    (dict(eta=1.5), 'eta'),
    (dict(t_start=0.2, t_end=0.5), 't_end'),
    (dict(t_start=1.5), 't_start'),
    (dict(sampler='addim', addim_variance=-1.0), 'addim_variance'),
    (dict(shape=(0, 4)), 'shape'),
    (dict(z_init=np.zeros((3, 4))), 'z_init'),
])
def test_invalid_arguments_raise_before_compute(kwargs, field):
  args = dict(sampler='ddpm', num_steps=4, shape=(2, 4))
  args.update(kwargs)
  shape = args.pop('shape')
  with pytest.raises(ValueError, match=field):
    samplers.sample(_boom, jax.random.PRNGKey(0), shape, SCHED, **args)


def test_invalid_callables_raise():
  with pytest.raises(ValueError, match='x_pred_fn'):
    samplers.sample(None, jax.random.PRNGKey(0), (2, 4), SCHED, sampler='ddim', num_steps=2)
  with pytest.raises(ValueError, match='schedule'):
    samplers.sample(_boom, jax.random.PRNGKey(0), (2, 4), 'cosine', sampler='ddim', num_steps=2)
  with pytest.raises(ValueError, match='logvar_type'):
    samplers.sample_loop_fn((2, 4), SCHED, sampler='ddpm', num_steps=2, logvar_type=None)


def test_logvar_type_aliases():
  assert samplers.parse_logvar_type('small') == 0.0
  assert samplers.parse_logvar_type('large') == 1.0
  assert samplers.parse_logvar_type('0.3') == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------------------------
# Single steps against the SPEC formulas.

def test_ddpm_step_mean_and_logvar():
  """DDPM mean and f-interpolated log variance (SPEC §6, §11), against float64 formulas."""
  lt, ls = np.array([-1.0, 2.0]), np.array([0.5, 2.2])
  z = np.array([[0.3, -1.2], [0.7, 0.1]])
  x = np.array([[0.2, 0.4], [-0.5, 0.9]])
  n = np.array([[1.0, -2.0], [0.5, 1.5]])
  a_t, s_t, a_s, s_s = np.sqrt(_sig(lt)), np.sqrt(_sig(-lt)), np.sqrt(_sig(ls)), np.sqrt(_sig(-ls))
  var_ts = s_t ** 2 - (a_t / a_s) ** 2 * s_s ** 2
  var_post = var_ts * s_s ** 2 / s_t ** 2
  mu = ((a_t / a_s) * s_s ** 2 / s_t ** 2)[:, None] * z + (a_s * var_ts / s_t ** 2)[:, None] * x
  for lv, f in (('small', 0.0), ('large', 1.0), ('0.3', 0.3)):
    frac = samplers.parse_logvar_type(lv)
    got = jax.jit(samplers.ddpm_step)(jnp.asarray(z, jnp.float32), jnp.asarray(x, jnp.float32), jnp.asarray(lt),
                             jnp.asarray(ls), jnp.asarray(n, jnp.float32), frac)
    std = np.sqrt(var_ts ** f * var_post ** (1 - f))
    np.testing.assert_allclose(got, mu + std[:, None] * n, rtol=2e-5, atol=2e-6)


def test_ddim_step_with_eta():
  """z_s = alpha_s x + sqrt(sigma_s^2 - eta^2 sigma~^2) eps_hat + eta sigma~ n (SPEC §11), float64 reference."""
  z, x, n = np.random.RandomState(2).randn(3, 2, 5)
  lt, ls = np.array([-2.0, 1.0]), np.array([0.0, 1.5])
  a_t, s_t, a_s, s_s = np.sqrt(_sig(lt)), np.sqrt(_sig(-lt)), np.sqrt(_sig(ls)), np.sqrt(_sig(-ls))
  var_post = (s_t ** 2 - (a_t / a_s) ** 2 * s_s ** 2) * s_s ** 2 / s_t ** 2
  eps = (z - a_t[:, None] * x) / s_t[:, None]
  want = (a_s[:, None] * x + np.sqrt(s_s ** 2 - 0.25 * var_post)[:, None] * eps
          + np.sqrt(0.25 * var_post)[:, None] * n)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got = jax.jit(samplers.ddim_step)(f32(z), f32(x), f32(lt), f32(ls), f32(n), 0.5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ddim_eta_one_is_ancestral_small():
  """DDIM with eta = 1 equals the ancestral step with the small variance (SPEC §11)."""
  z, x, n = jnp.asarray(np.random.RandomState(3).randn(3, 2, 5), jnp.float32)
  lt, ls = jnp.array([-2.0, 1.0]), jnp.array([0.0, 1.5])
  np.testing.assert_allclose(jax.jit(samplers.ddim_step)(z, x, lt, ls, n, 1.0),
                             jax.jit(samplers.ddpm_step)(z, x, lt, ls, n, 0.0), rtol=1e-5, atol=1e-5)


def test_addim_step_formula_and_ddim_limit():
  """aDDIM (arXiv 2403.06807 Algorithm 3): the eps coefficient grows by tr(Var[z_s|z_t]) / ||eps_hat||^2."""
  z, x = jnp.asarray(np.random.RandomState(4).randn(2, 3, 6), jnp.float32)
  lt, ls = jnp.full((3,), -0.5), jnp.full((3,), 0.5)
  addim_step = jax.jit(samplers.addim_step)
  a_t, s_t = np.sqrt(_sig(-0.5)), np.sqrt(_sig(0.5))
  a_s, s_s = np.sqrt(_sig(0.5)), np.sqrt(_sig(-0.5))
  eps = (np.asarray(z) - a_t * np.asarray(x)) / s_t
  x_var = 0.07
  coef = np.sqrt(s_s ** 2 + 6 * (a_s - a_t * s_s / s_t) ** 2 * x_var / np.sum(eps ** 2, axis=1))
  want = a_s * np.asarray(x) + coef[:, None] * eps
  np.testing.assert_allclose(addim_step(z, x, lt, ls, jnp.full((3,), x_var)), want, rtol=1e-5)
  # Per-dimension variances enter through their sum (the trace).
  np.testing.assert_allclose(addim_step(z, x, lt, ls, jnp.full((3, 6), x_var)), want, rtol=1e-5)
  np.testing.assert_allclose(addim_step(z, x, lt, ls, jnp.zeros((3,))),
                             jax.jit(samplers.ddim_step)(z, x, lt, ls), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(samplers.addim_default_variance(jnp.array([0.0])), [0.1 / 3.0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Whole sampler runs on Gaussian data.

@pytest.mark.parametrize('sampler, logvar_type, eta, t_end', [
    ('ddpm', 'small', 0.0, 0.0), ('ddpm', '0.3', 0.0, 0.0), ('ddpm', 'large', 0.0, 0.0),
    ('ddpm', 'small', 0.0, 0.4), ('ddim', '0.3', 0.0, 0.0), ('ddim', '0.3', 0.5, 0.0)])
def test_few_steps_match_exact_output_moments(sampler, logvar_type, eta, t_end):
  """At 8 steps (far from converged) the sample moments equal the exact propagated moments.

  With t_end = 0.4 the output is x_hat at t = 0.4 + 0.6 / 8 with no noise added (SPEC §6): its variance
  gain^2 Var[z_t] is far below the data's and far below Var[z_t], so this also checks the last step.
  """
  x = samplers.sample(X_PRED, jax.random.PRNGKey(7), SHAPE, SCHED, sampler=sampler, num_steps=8,
                      logvar_type=logvar_type, eta=eta, t_end=t_end)
  mean, var = _exact_moments(8, sampler, samplers.parse_logvar_type(logvar_type), eta, t_end)
  _assert_moments(x, mean, var)


def test_few_step_moments_distinguish_the_logvar_variants():
  """The exact 8-step DDPM variances for logvar 'small', '0.3', 'large' differ by many standard errors."""
  se = VAR * np.sqrt(2.0 / N_SAMPLES)
  ddpm = [_exact_moments(8, 'ddpm', f)[1] for f in (0.0, 0.3, 1.0)]
  for a, b in ((ddpm[0], ddpm[1]), (ddpm[1], ddpm[2]), (ddpm[0], ddpm[2])):
    assert np.max(np.abs(a - b) / se) > Z_SE + 3


def test_ddim_eta_one_sampler_equals_ddpm_small():
  """Whole runs: DDIM with eta = 1 and DDPM 'small' coincide for the same rng (SPEC §11)."""
  kw = dict(num_steps=8)
  np.testing.assert_allclose(
      samplers.sample(X_PRED, jax.random.PRNGKey(20), SHAPE, SCHED, sampler='ddim', eta=1.0, **kw),
      samplers.sample(X_PRED, jax.random.PRNGKey(20), SHAPE, SCHED, sampler='ddpm', logvar_type='small', **kw),
      rtol=1e-4, atol=1e-5)
  half = samplers.sample(X_PRED, jax.random.PRNGKey(20), SHAPE, SCHED, sampler='ddim', eta=0.5, **kw)
  other = samplers.sample(X_PRED, jax.random.PRNGKey(21), SHAPE, SCHED, sampler='ddim', eta=0.5, **kw)
  assert not np.allclose(half, other)  # eta > 0 adds noise


@pytest.mark.parametrize('sampler, logvar_type, num_steps', [
    ('ddpm', 'large', 256), ('ddim', '0.3', 1024), ('addim', '0.3', 1024)])
def test_enough_steps_recover_data_moments(sampler, logvar_type, num_steps):
  """With enough steps every sampler's samples have mean mu and variance s^2 within sampling error."""
  if sampler != 'addim':  # the remaining discretisation bias is about one standard error or less
    mean, var = _exact_moments(num_steps, sampler, samplers.parse_logvar_type(logvar_type))
    assert np.all(np.abs(var / VAR - 1) < 0.02) and np.all(np.abs(mean - MU) < 0.004)
  x = samplers.sample(X_PRED, jax.random.PRNGKey(8), SHAPE, SCHED, sampler=sampler,
                      num_steps=num_steps, logvar_type=logvar_type)
  _assert_moments(x, MU, VAR)


def test_ddim_is_deterministic_and_matches_its_linear_map():
  """DDIM (eta = 0) depends on z_1 only, and at 8 steps equals the composition of its exact affine steps."""
  z1 = jnp.asarray(np.random.RandomState(9).randn(*SHAPE), jnp.float32)
  run = lambda key, n: samplers.sample(X_PRED, key, SHAPE, SCHED, sampler='ddim', num_steps=n, z_init=z1)
  x = run(jax.random.PRNGKey(0), 8)
  np.testing.assert_array_equal(x, run(jax.random.PRNGKey(1), 8))
  lam = _lam(np.linspace(1.0, 0.0, 9))
  z = np.asarray(z1, np.float64)
  for i in range(8):
    a_t, s_t = np.sqrt(_sig(lam[i])), np.sqrt(_sig(-lam[i]))
    x_hat = MU + a_t * VAR / (a_t ** 2 * VAR + s_t ** 2) * (z - a_t * MU)
    if i == 7:
      break
    a_s, s_s = np.sqrt(_sig(lam[i + 1])), np.sqrt(_sig(-lam[i + 1]))
    z = a_s * x_hat + s_s * (z - a_t * x_hat) / s_t
  np.testing.assert_allclose(x, x_hat, rtol=1e-5, atol=1e-5)


def test_ddim_converges_to_probability_flow_ode_first_order():
  """DDIM -> the analytic Gaussian ODE map z_1 -> z_t (then x_hat), with error O(1 / num_steps).

  DDIM is not exact at few steps even for Gaussian data: per step it contracts z - alpha mu by
  (alpha_s alpha_t s^2 + sigma_s sigma_t) / V_t < sqrt(V_s / V_t) (Cauchy-Schwarz).
  """
  z1 = jnp.asarray(np.random.RandomState(10).randn(*SHAPE), jnp.float32)
  errors = []
  for n in (256, 1024):
    x = samplers.sample(X_PRED, jax.random.PRNGKey(0), SHAPE, SCHED, sampler='ddim', num_steps=n, z_init=z1)
    lam_1, lam_t = jnp.full((N_SAMPLES,), SCHED(1.0)), jnp.full((N_SAMPLES,), SCHED(1.0 / n))
    z_t = oracles.gaussian_ode_flow(z1, lam_1, lam_t, MU, VAR)
    errors.append(float(jnp.max(jnp.abs(x - X_PRED(z_t, lam_t)))))
  assert errors[1] < 4e-3, errors
  assert 3.0 < errors[0] / errors[1] < 5.0, errors


def test_addim_few_steps_closer_to_data_variance_than_ddim():
  """aDDIM with v_t = the exact posterior variance undoes part of DDIM's variance loss at 8 steps."""
  v_fn = oracles.gaussian_posterior_variance_fn(VAR)
  for n in (8,):
    ddim = np.asarray(samplers.sample(X_PRED, jax.random.PRNGKey(11), SHAPE, SCHED, sampler='ddim',
                                      num_steps=n)).var(0)
    addim = np.asarray(samplers.sample(X_PRED, jax.random.PRNGKey(11), SHAPE, SCHED, sampler='addim',
                                       num_steps=n, addim_variance=v_fn)).var(0)
    assert np.all(ddim < addim) and np.all(addim < VAR), (n, ddim / VAR, addim / VAR)
    assert abs(addim.sum() / VAR.sum() - 1) < abs(ddim.sum() / VAR.sum() - 1) - 0.05


def test_static_clipping():
  """clip_x='static' keeps x_hat in [-1, 1]; eps_hat is recomputed from the clipped x_hat (SPEC §6)."""
  far = oracles.gaussian_x_pred_fn(np.array([3.0, -3.0, 0.0, 2.0]), VAR)  # same pytree structure as X_PRED
  x = samplers.sample(far, jax.random.PRNGKey(13), SHAPE, SCHED, sampler='addim', num_steps=8, clip_x='static')
  assert float(jnp.max(jnp.abs(x))) <= 1.0
  unclipped = samplers.sample(far, jax.random.PRNGKey(13), SHAPE, SCHED, sampler='ddim', num_steps=8)
  assert float(jnp.max(jnp.abs(unclipped))) > 1.5
  # DDIM by hand in float64: each step uses the clipped x_hat and eps_hat = (z - alpha x_clip) / sigma.
  z1 = jnp.asarray(np.random.RandomState(14).randn(*SHAPE), jnp.float32)
  got = samplers.sample(far, jax.random.PRNGKey(0), SHAPE, SCHED, sampler='ddim', num_steps=8,
                        clip_x='static', z_init=z1)
  assert float(jnp.max(jnp.abs(got))) <= 1.0
  mu, var = np.array([3.0, -3.0, 0.0, 2.0]), VAR
  lam = _lam(np.linspace(1.0, 0.0, 9))
  z = np.asarray(z1, np.float64)
  for i in range(8):
    a_t, s_t = np.sqrt(_sig(lam[i])), np.sqrt(_sig(-lam[i]))
    x_clip = np.clip(mu + a_t * var / (a_t ** 2 * var + s_t ** 2) * (z - a_t * mu), -1, 1)
    if i == 7:
      break
    a_s, s_s = np.sqrt(_sig(lam[i + 1])), np.sqrt(_sig(-lam[i + 1]))
    z = a_s * x_clip + s_s * (z - a_t * x_clip) / s_t
  np.testing.assert_allclose(got, x_clip, atol=2e-5)


def test_mixture_of_gaussians_modes():
  """DDPM on two well-separated modes: mode proportions and per-mode means match within error."""
  weights, means, var = np.array([0.3, 0.7]), np.array([[-0.6, 0.4], [0.5, -0.3]]), np.array([0.02, 0.01])
  x = np.asarray(samplers.sample(oracles.mixture_x_pred_fn(weights, means, var), jax.random.PRNGKey(15),
                                 (N_SAMPLES, 2), SCHED, sampler='ddpm', num_steps=256, logvar_type='0.3'))
  mode = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
  p = weights[1]
  assert abs(mode.mean() - p) < Z_SE * math.sqrt(p * (1 - p) / N_SAMPLES)
  for k in range(2):
    xk = x[mode == k]
    np.testing.assert_array_less(np.abs(xk.mean(0) - means[k]), Z_SE * np.sqrt(var[k] / len(xk)))


# ---------------------------------------------------------------------------------------------------------
# Compilation behaviour and the pure loop.

def _linear_apply(params, z, logsnr):
  """A stand-in model: x_hat = w * z + b * sigmoid(logsnr)."""
  return params['w'] * z + params['b'] * jax.nn.sigmoid(logsnr)[:, None]


def test_no_retrace_when_only_numbers_change():
  traces = []

  def apply(params, z, logsnr):
    traces.append(z.shape)  # runs only while tracing
    return _linear_apply(params, z, logsnr)

  kw = dict(sampler='ddim', num_steps=5)
  p1 = {'w': jnp.float32(0.5), 'b': jnp.float32(0.1)}
  p2 = {'w': jnp.float32(0.3), 'b': jnp.float32(-0.2)}
  x1 = samplers.sample_with_params(apply, p1, jax.random.PRNGKey(0), (4, 3), SCHED, **kw)
  x2 = samplers.sample_with_params(apply, p2, jax.random.PRNGKey(0), (4, 3), SCHED, **kw)
  x3 = samplers.sample_with_params(apply, p1, jax.random.PRNGKey(0), (4, 3),
                                   get_schedule('cosine_shifted_64', 128), t_start=0.9, t_end=0.1, **kw)
  samplers.sample_with_params(apply, p1, jax.random.PRNGKey(1), (4, 3), get_schedule('cosine_shifted_64', 128),
                              z_init=jnp.ones((4, 3)), **kw)
  assert len(traces) == 1
  assert not np.allclose(x1, x2) and not np.allclose(x1, x3)
  samplers.sample_with_params(apply, p1, jax.random.PRNGKey(0), (4, 3), SCHED, sampler='ddim', num_steps=6)
  assert len(traces) == 2  # num_steps is a static shape


def test_sample_loop_fn_is_pure_and_jittable_with_params():
  """The un-jitted loop jits and exports with params as an argument and equals `sample_with_params`."""
  loop = samplers.sample_loop_fn((4, 3), SCHED, sampler='ddim', num_steps=5)
  z1 = jnp.asarray(np.random.RandomState(19).randn(4, 3), jnp.float32)
  fn = jax.jit(lambda params, rng, z: loop(lambda z, l: _linear_apply(params, z, l), rng, z))
  p = {'w': jnp.float32(0.5), 'b': jnp.float32(0.1)}
  want = samplers.sample_with_params(_linear_apply, p, jax.random.PRNGKey(2), (4, 3), SCHED, sampler='ddim',
                                     num_steps=5, z_init=z1)
  np.testing.assert_allclose(fn(p, jax.random.PRNGKey(2), z1), want, rtol=1e-6, atol=1e-6)
  exported = jax.export.export(fn)(p, jax.random.PRNGKey(2), z1)
  np.testing.assert_allclose(exported.call(p, jax.random.PRNGKey(2), z1), want, rtol=1e-6, atol=1e-6)


def test_addim_variance_from_measurements():
  v = samplers.addim_variance_from_measurements([2.0, -2.0, 0.0], [0.1, 0.3, 0.2], eta=0.5)
  np.testing.assert_allclose(jax.jit(lambda l: v(l))(jnp.array([-2.0, -1.0, 2.0, 5.0])),
                             [0.15, 0.125, 0.05, 0.05], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# The closed-form denoisers themselves (sid2.oracles).

def test_gaussian_posterior_mean_is_conditional_expectation():
  """Orthogonality: E[(x - x_hat(z)) z] = 0 and E[(x - x_hat)^2] = posterior variance (1-D, MC)."""
  rs = np.random.RandomState(16)
  n, lam = 100_000, 0.7
  x = 0.3 + 0.4 * rs.randn(n, 1)
  z = np.sqrt(_sig(lam)) * x + np.sqrt(_sig(-lam)) * rs.randn(n, 1)
  x_hat = oracles.gaussian_posterior_mean(jnp.asarray(z, jnp.float32), jnp.full((n,), lam), 0.3, 0.16)
  err = (x - np.asarray(x_hat, np.float64))[:, 0]
  post_var = float(oracles.gaussian_posterior_variance(jnp.array([lam]), 0.16)[0])
  assert abs(np.mean(err * z[:, 0])) < 5 * np.std(err * z[:, 0]) / np.sqrt(n)
  assert abs(np.mean(err ** 2) / post_var - 1) < 5 * np.sqrt(2 / n)


def test_mixture_posterior_mean_and_variance():
  """Mixture posterior mean is E[x|z] (orthogonal to h(z)); its posterior variance is E[(x - x_hat)^2|z]."""
  weights, means, var = np.array([0.4, 0.6]), np.array([[-0.5], [0.5]]), np.array([0.05, 0.02])
  rs = np.random.RandomState(17)
  n, lam = 100_000, 1.0
  comp = (rs.rand(n) < weights[1]).astype(int)
  x = means[comp] + np.sqrt(var[comp])[:, None] * rs.randn(n, 1)
  z = np.sqrt(_sig(lam)) * x + np.sqrt(_sig(-lam)) * rs.randn(n, 1)
  zj, lams = jnp.asarray(z, jnp.float32), jnp.full((n,), lam)
  err = (x - np.asarray(oracles.mixture_posterior_mean(zj, lams, weights, means, var), np.float64))[:, 0]
  for h in (z[:, 0], z[:, 0] ** 2, np.tanh(3 * z[:, 0])):
    assert abs(np.mean(err * h)) < 5 * np.std(err * h) / np.sqrt(n)
  post_var = np.asarray(oracles.mixture_posterior_variance(zj, lams, weights, means, var), np.float64)[:, 0]
  assert abs(np.mean(err ** 2 - post_var)) < 5 * np.std(err ** 2 - post_var) / np.sqrt(n)
  # Equal components reduce to the Gaussian formula.
  np.testing.assert_allclose(
      oracles.mixture_posterior_mean(zj[:100], lams[:100], [0.5, 0.5], [[0.2], [0.2]], [0.1, 0.1]),
      oracles.gaussian_posterior_mean(zj[:100], lams[:100], 0.2, 0.1), rtol=1e-5, atol=1e-6)


def test_gaussian_ode_flow_transports_marginals_and_composes():
  rs = np.random.RandomState(18)
  n = 50_000
  l1, l2, l3 = (jnp.full((n,), v) for v in (-10.0, 0.5, 4.0))
  m1, v1 = oracles.gaussian_marginal(-10.0, MU, VAR)
  z1 = jnp.asarray(np.asarray(m1) + np.sqrt(np.asarray(v1)) * rs.randn(n, 4), jnp.float32)
  z3 = oracles.gaussian_ode_flow(z1, l1, l3, MU, VAR)
  m3, v3 = oracles.gaussian_marginal(4.0, MU, VAR)
  _assert_moments(z3, np.asarray(m3, np.float64), np.asarray(v3, np.float64))
  np.testing.assert_allclose(
      oracles.gaussian_ode_flow(oracles.gaussian_ode_flow(z1, l1, l2, MU, VAR), l2, l3, MU, VAR), z3,
      rtol=1e-4, atol=1e-5)
