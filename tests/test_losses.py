"""Weighted losses: equivalences, closed-form expectations, power loss (SPEC §3, §3a, §4, §11)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sid2 import losses, parametrization, schedules, wavelets, weightings

SCHED = schedules.get_schedule('cosine_interpolated', image_res=64)


def _random_problem(key, shape=(16, 8, 8, 3)):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  x = jax.random.uniform(k1, shape, minval=-1, maxval=1)
  eps = jax.random.normal(k2, shape)
  t = jax.random.uniform(k3, shape[:1], minval=0.02, maxval=0.98)
  z = parametrization.diffuse(x, eps, SCHED(t))
  v_hat = jax.random.normal(k4, shape)  # an arbitrary (bad) model output
  x_hat, eps_hat = parametrization.to_x_eps(v_hat, z, SCHED(t), 'v')
  return x, eps, x_hat, eps_hat, t


@pytest.mark.parametrize('bias', [-3.0, 0.0, 2.0])
def test_sigmoid_x_space_equals_eps_space(bias):
  x, eps, x_hat, eps_hat, t = _random_problem(jax.random.PRNGKey(1))
  x_form = losses.get_loss(f'sigmoid:{bias}', SCHED)(x, eps, x_hat, eps_hat, t)
  lam = SCHED(t)
  eps_form = 0.5 * jax.nn.sigmoid(bias - lam) * (-SCHED.dlogsnr_dt(t)) * jnp.mean(
      (eps - eps_hat) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(x_form, eps_form, rtol=2e-4)


def test_neg_dlogsnr_matches_finite_difference():
  t = jnp.array([0.2, 0.5, 0.8])
  h = 1e-3
  fd = -(SCHED(t + h) - SCHED(t - h)) / (2 * h)
  np.testing.assert_allclose(losses.neg_dlogsnr_dt(SCHED, t), fd, rtol=1e-3)


def test_edm_values_from_spec():
  lam = jnp.array([-10.0, 0.0, 2.4, 5.0])
  np.testing.assert_allclose(weightings.edm_monotonic_weight(lam), [1.0841, 0.5041, 0.2265, 0.09493],
                             rtol=2e-4)
  assert weightings.EDM_LOGSNR_ARGMAX == pytest.approx(-3.3078, abs=1e-4)
  np.testing.assert_allclose(weightings.edm_weight(weightings.EDM_LOGSNR_ARGMAX), 1.0841, rtol=1e-4)
  # w_EDM has its maximum at lambda*, and edm_monotonic is non-increasing.
  grid = jnp.linspace(-12, 12, 2001)
  assert float(jnp.max(weightings.edm_weight(grid))) <= 1.0841 * (1 + 1e-5)
  assert bool(jnp.all(jnp.diff(weightings.edm_monotonic_weight(grid)) <= 1e-7))


def test_time_shifted_bias():
  w = weightings.get_weighting('sigmoid:-6:-3:100000')
  assert float(w.bias(0)) == -6.0
  assert float(w.bias(50000)) == pytest.approx(-4.5)
  assert float(w.bias(100000)) == -3.0
  assert float(w.bias(300000)) == -3.0
  lam = jnp.array([0.0, 1.0])
  np.testing.assert_allclose(w(lam, step=50000), jax.nn.sigmoid(-4.5 - lam), rtol=1e-6)
  # The loss picks the step up (traced under jit).
  x, eps, x_hat, eps_hat, t = _random_problem(jax.random.PRNGKey(2))
  shifted = jax.jit(losses.get_loss('sigmoid:-6:-3:100000', SCHED))
  fixed = losses.get_loss('sigmoid:-4.5', SCHED)
  np.testing.assert_allclose(shifted(x, eps, x_hat, eps_hat, t, 50000), fixed(x, eps, x_hat, eps_hat, t),
                             rtol=1e-5)


def test_bias_resolution_shift():
  # B.6: -3 at 512^2, about -1.5 at 256^2 and 0 at 128^2 (2 log 2 per 2x).
  assert weightings.bias_for_resolution(-3.0, 512, 256) == pytest.approx(-3 + 2 * math.log(2))
  assert abs(weightings.bias_for_resolution(-3.0, 512, 256) - (-1.5)) < 0.15
  assert abs(weightings.bias_for_resolution(-3.0, 512, 128) - 0.0) < 0.3


@pytest.mark.parametrize('loss_type', ['sigmoid:-1', 'edm_monotonic', 'elbo', 'eps_mse', 'power:-2:1'])
def test_exact_gaussian_denoiser_expected_loss(loss_type):
  """x ~ N(mu, diag(s^2)): x_hat = posterior mean, E(x - x_hat)^2 = s^2 sigma^2 / (alpha^2 s^2 + sigma^2)."""
  dim = (1, 4, 4, 2)
  key = jax.random.PRNGKey(3)
  mu = jax.random.uniform(key, dim, minval=-0.5, maxval=0.5)
  s = jax.random.uniform(jax.random.fold_in(key, 1), dim, minval=0.1, maxval=0.8)
  n = 4000
  loss_fn = losses.get_loss(loss_type, SCHED)
  for i, t0 in enumerate([0.2, 0.5, 0.8]):
    kx, ke = jax.random.split(jax.random.fold_in(key, 10 + i))
    x = mu + s * jax.random.normal(kx, (n,) + dim[1:])
    eps = jax.random.normal(ke, x.shape)
    t = jnp.full((n,), t0)
    lam = SCHED(t)
    alpha, sigma = schedules.alpha_sigma(lam[0])
    z = parametrization.diffuse(x, eps, lam)
    x_hat = mu + alpha * s ** 2 / (alpha ** 2 * s ** 2 + sigma ** 2) * (z - alpha * mu)
    eps_hat = parametrization.eps_from_x(z, x_hat, alpha, sigma)
    per_ex = loss_fn(x, eps, x_hat, eps_hat, t)
    post_var = s ** 2 * sigma ** 2 / (alpha ** 2 * s ** 2 + sigma ** 2)
    ndl = -SCHED.dlogsnr_dt(t0)
    x_mse = float(jnp.mean(post_var))
    eps_mse = float(jnp.exp(lam[0])) * x_mse
    expected = {
        'sigmoid:-1': 0.5 * ndl * math.exp(-1) * jax.nn.sigmoid(lam[0] + 1) * x_mse,
        'edm_monotonic': 0.5 * ndl * weightings.edm_monotonic_weight(lam[0]) * eps_mse,
        'elbo': 0.5 * ndl * eps_mse,
        'eps_mse': eps_mse,
        # power:-2 with 1 level: LL has 2 low passes, LH/HL 1, HH 0; the error is independent across
        # pixels with per-pixel variance post_var, so each band's expected energy is computable exactly.
        'power:-2:1': None,
    }[loss_type]
    if loss_type.startswith('power'):
      # Orthonormal Haar of independent errors: band energies are sums of the 4 pixel variances / 4 * ...
      # each band coefficient is a +-1/2 combination of 4 pixels, so its variance is the mean of the 4.
      pooled = post_var.reshape(1, 2, 2, 2, 2, 2).mean(axis=(2, 4))  # block means [1,2,2,2]
      per_band = float(jnp.sum(pooled))  # expected ||band||^2, the same for all 4 bands
      w = lambda l: float(jax.nn.sigmoid(lam[0] + math.log(2) * l + 2))
      expected = ndl * per_band * (w(2) + w(1) + w(1) + w(0)) / post_var.size
    mean = float(jnp.mean(per_ex))
    se = float(jnp.std(per_ex)) / math.sqrt(n)
    assert abs(mean - float(expected)) < 3 * se + 1e-7, (loss_type, t0, mean, float(expected), se)


def test_power_loss_parseval_and_limit():
  x, eps, x_hat, eps_hat, t = _random_problem(jax.random.PRNGKey(4))
  for levels in (1, 2, 3):
    energies, _ = losses.haar_band_energies(x_hat - x, levels)
    np.testing.assert_allclose(sum(energies) / x[0].size, jnp.mean((x_hat - x) ** 2, axis=(1, 2, 3)),
                               rtol=1e-5)
  # Bias -> -inf makes every band weight sigmoid(...) -> 1: PL -> (-dlambda/dt) mean (x_hat - x)^2.
  pl = losses.get_loss('power:-60:2', SCHED)(x, eps, x_hat, eps_hat, t)
  ref = -SCHED.dlogsnr_dt(t) * jnp.mean((x_hat - x) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(pl, ref, rtol=1e-5)


def test_power_band_layout_512():
  err = jax.ShapeDtypeStruct((1, 512, 512, 1), jnp.float32)
  bands = jax.eval_shape(lambda e: wavelets.haar_dwt(e, 2), err)
  level1, level2, low = bands
  assert [b.shape[1] for b in level1] == [256] * 3
  assert [b.shape[1] for b in level2] + [low.shape[1]] == [128] * 4
  _, lows = jax.eval_shape(lambda e: losses.haar_band_energies(e, 2)[0], err), wavelets.band_low_passes(2)
  assert sorted([l for lvl in lows[:-1] for l in lvl] + [lows[-1]]) == [0, 1, 1, 2, 3, 3, 4]


def test_unknown_names_list_allowed():
  with pytest.raises(ValueError, match='edm_monotonic'):
    losses.get_loss('sigmoidal:1', SCHED)
  with pytest.raises(ValueError, match='allowed'):
    weightings.get_weighting('foo')
  with pytest.raises(ValueError, match='t_b'):
    weightings.get_weighting('sigmoid:-6:-3:0')
  with pytest.raises(ValueError, match='divisible'):
    losses.validate_loss_type('power:0:3', image_res=36)


@pytest.mark.parametrize('gamma', [1.0, 5.0])
def test_min_snr_is_the_uniform_t_min_snr_loss_under_the_cosine_schedule(gamma):
  """1/2 w (-dlambda/dt) = pi min(1, gamma / SNR) for the cosine schedule (Kingma & Gao Table 1): with a v
  (or x) prediction error this is min(SNR, gamma)/(SNR + 1) ||v - v_hat||^2 up to the constant pi."""
  cosine = schedules.get_schedule('cosine')
  x, eps, _, eps_hat, t = _random_problem(jax.random.PRNGKey(7))
  alpha, sigma = (a[:, None, None, None] for a in schedules.alpha_sigma(cosine(t)))
  x_hat = (parametrization.diffuse(x, eps, cosine(t)) - sigma * eps_hat) / alpha  # x_hat of the same model
  ours = losses.get_loss(f'min_snr:{gamma}', cosine)(x, eps, x_hat, eps_hat, t)
  snr = jnp.exp(cosine(t))
  # Our cosine schedule is truncated to a logSNR range, which scales -dlambda/dt by a constant c ~ 0.99.
  eps_mse = jnp.mean((eps - eps_hat) ** 2, axis=(1, 2, 3))
  ratio = ours / (jnp.minimum(1.0, gamma / snr) * eps_mse)
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
  assert abs(float(ratio[0]) / math.pi - 1) < 0.01
  # The same through the x error: ||x - x_hat||^2 = ||eps - eps_hat||^2 / SNR, min-SNR weight min(SNR, gamma).
  x_mse = jnp.mean((x - x_hat) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(ours, ratio[0] * jnp.minimum(snr, gamma) * x_mse, rtol=2e-3)


def test_min_snr_bad_gamma_is_refused():
  for bad in ('min_snr:0', 'min_snr:-1', 'min_snr:x', 'min_snr:1:2'):
    with pytest.raises(ValueError, match='min_snr'):
      losses.parse_loss(bad)
  assert 'min_snr:<gamma>' in losses.loss_type_names()
