"""Spectral Diffusion's toy experiment (spectral/toy.py; supplement §4.3, SPEC §13)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sid2 import parametrization as param_lib
from sid2 import schedules
from spectral import toy

P = toy.NUM_POINTS


def test_signals_shapes_values_and_spectrum():
  x = np.asarray(toy.cosine_signals(jax.random.PRNGKey(0), 3, 256))
  assert x.shape == (256, P) and np.all(np.abs(x) <= 1.0)
  # Every random-phase signal is a unit cosine in DFT bins ±3 only, on the data manifold.
  m = toy.signal_metrics(x, 3)
  assert m['bin_amplitude'] == pytest.approx(1.0, abs=1e-5)
  assert m['bin_amplitude_error'] < 1e-5 and m['leakage'] < 1e-9 and m['manifold_mse'] < 1e-10
  assert m['phase_concentration'] < 0.2  # uniform phases
  fixed = np.asarray(toy.cosine_signals(jax.random.PRNGKey(0), 3, 4, phase='fixed'))
  np.testing.assert_allclose(fixed, np.cos(2 * np.pi * 3 * np.arange(P) / P)[None].repeat(4, 0), atol=1e-5)
  assert toy.signal_metrics(fixed, 3, 'fixed')['phase_concentration'] == pytest.approx(1.0)


def test_metrics_detect_wrong_frequency_and_amplitude():
  u = np.arange(P) / P
  wrong = np.cos(2 * np.pi * 5 * u)[None]
  m = toy.signal_metrics(wrong, 3)
  assert m['leakage'] == pytest.approx(1.0) and m['bin_amplitude'] == pytest.approx(0.0, abs=1e-9)
  # Distance² to the nearest unit cosine of frequency 3: ‖w‖² + P/2 (orthogonal), per coordinate 1.
  assert m['manifold_mse'] == pytest.approx(1.0)
  half = 0.5 * np.cos(2 * np.pi * 3 * (u + 0.1))[None]
  m = toy.signal_metrics(half, 3)
  assert m['bin_amplitude'] == pytest.approx(0.5) and m['manifold_mse'] == pytest.approx(0.125)


@pytest.mark.parametrize('bad', [0, 20, 2.5, True, -1])
def test_alpha_validation(bad):
  with pytest.raises(ValueError, match='alpha'):
    toy.check_alpha(bad)


def test_num_params_matches_model():
  for hidden, want in ((64, 5288), (1024, 84008)):
    params = jax.eval_shape(lambda k: toy.init_params(k, hidden), jax.random.PRNGKey(0))
    assert toy.num_params(hidden) == want == sum(a.size for a in jax.tree.leaves(params))


def _quadrature_posterior(z, logsnr, alpha, num=8192):
  """E[x | z] and E[‖x − x̂‖² | z] by brute-force quadrature over the phase ψ (numpy, float64)."""
  a, s = math.sqrt(1 / (1 + math.exp(-logsnr))), math.sqrt(1 / (1 + math.exp(logsnr)))
  psi = 2 * np.pi * (np.arange(num) + 0.5) / num
  u = np.arange(P) / P
  cands = np.cos(2 * np.pi * alpha * u[None, :] + psi[:, None])  # [K, P]
  logw = -((z[:, None, :] - a * cands[None]) ** 2).sum(-1) / (2 * s * s)
  w = np.exp(logw - logw.max(1, keepdims=True))
  w /= w.sum(1, keepdims=True)
  mean = w @ cands
  err = (w[:, :, None] * (cands[None] - mean[:, None]) ** 2).sum((1, 2))
  return mean, err


@pytest.mark.parametrize('logsnr', [-2.0, 0.0, 3.0])
def test_bayes_denoiser_matches_quadrature(logsnr):
  rng = np.random.default_rng(0)
  x = np.asarray(toy.cosine_signals(jax.random.PRNGKey(1), 7, 16), np.float64)
  a, s = math.sqrt(1 / (1 + math.exp(-logsnr))), math.sqrt(1 / (1 + math.exp(logsnr)))
  z = a * x + s * rng.standard_normal(x.shape)
  x_hat, err = toy.bayes_denoiser(jnp.asarray(z, jnp.float32), logsnr, 7)
  want_mean, want_err = _quadrature_posterior(z, logsnr, 7)
  np.testing.assert_allclose(np.asarray(x_hat), want_mean, atol=2e-4)
  np.testing.assert_allclose(np.asarray(err), want_err, rtol=2e-3, atol=1e-4)


def test_bayes_and_wiener_errors():
  x = toy.cosine_signals(jax.random.PRNGKey(2), 4, 4000)
  eps = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  c, s = toy.basis(4)
  proj = (jnp.outer(c, c) + jnp.outer(s, s)) / (P / 2)  # projection onto span{c, s}
  v = P / 4

  @jax.jit
  def errors(logsnr):
    z = param_lib.diffuse(x, eps, jnp.full((x.shape[0],), logsnr))
    a2, s2 = schedules.alpha2(logsnr), schedules.sigma2(logsnr)
    x_lin = jnp.sqrt(a2) * v / (a2 * v + s2) * z @ proj  # the linear MMSE filter
    x_hat, cond = toy.bayes_denoiser(z, logsnr, 4)
    return (jnp.mean((x_lin - x) ** 2), toy.wiener_x_error(logsnr), jnp.mean((x_hat - x) ** 2),
            jnp.mean(cond) / P)

  for logsnr in np.linspace(-12.0, 12.0, 25):
    lin_mc, wiener, bayes_mc, bayes = (float(e) for e in errors(jnp.float32(logsnr)))
    # Monte Carlo of the linear MMSE filter agrees with the closed form.
    assert lin_mc == pytest.approx(wiener, rel=0.05, abs=1e-6)
    # The Bayes denoiser's conditional error is its actual error on average, and never above the linear one.
    assert bayes_mc == pytest.approx(bayes, rel=0.05, abs=1e-6)
    assert bayes <= wiener * (1 + 1e-3) + 1e-7
  # Limits: the prior variance 1/2 at high noise, 0 at low noise; strictly better than linear in between.
  assert float(toy.wiener_x_error(-30.0)) == pytest.approx(0.5, rel=1e-6)
  assert float(toy.wiener_x_error(30.0)) < 1e-12
  _, wiener, _, bayes = (float(e) for e in errors(jnp.float32(0.0)))
  assert bayes < 0.7 * wiener
  assert float(toy.x_to_eps_error(0.25, 2.0)) == pytest.approx(0.25 * math.exp(2.0))


def test_training_reduces_loss_and_respects_bayes_bound():
  params, losses = toy.train(jax.random.PRNGKey(0), [2], 64, iterations=300, batch=500, chunk=300)
  assert losses.shape == (300, 1)
  assert losses[-30:].mean() < 0.5 * losses[:10].mean()
  t = jnp.asarray([0.05, 0.2, 0.5, 0.9])
  errs = toy.denoising_errors(toy.unstack(params, 0), jax.random.PRNGKey(5), 2, t, hidden=64, num=1000)
  eps_mse, bayes, wiener = (np.asarray(errs[k]) for k in ('eps_mse', 'bayes_eps_mse', 'wiener_eps_mse'))
  # No network beats the Bayes-optimal denoiser; this one is better than predicting eps_hat = 0 (MSE 1).
  assert np.all(eps_mse > bayes) and np.all(eps_mse < 1.0)
  assert np.all(bayes <= wiener + 1e-6)
  signals = toy.generate(toy.unstack(params, 0), 64, jax.random.PRNGKey(6), 8, num_steps=5)
  assert signals.shape == (8, P) and np.all(np.isfinite(np.asarray(signals)))


def test_frequency_is_a_relabelling_of_coordinates():
  """For α coprime with 40, i ↦ α i mod 40 maps the α = 1 problem onto the α problem exactly: training on
  the permuted data from the permuted initialisation gives the same losses (Adam is coordinate-wise)."""
  alpha, hidden, batch, steps = 3, 16, 64, 15
  perm = (alpha * np.arange(P)) % P
  model = toy.ToyMLP(hidden)
  schedule = toy.get_schedule()
  opt = optax.adam(1e-3)
  params1 = toy.init_params(jax.random.PRNGKey(0), hidden)
  k0 = params1['Dense_0']['kernel']
  params3 = {'Dense_0': dict(params1['Dense_0'], kernel=jnp.concatenate([k0[:P][perm], k0[P:]])),
             'Dense_1': dict(kernel=params1['Dense_1']['kernel'][:, perm], bias=params1['Dense_1']['bias'][perm])}

  @jax.jit
  def step(p, o, x, t, eps):
    loss, g = jax.value_and_grad(toy.eps_mse)(p, model, x, t, eps, schedule)
    u, o = opt.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  o1, o3 = opt.init(params1), opt.init(params3)
  u = np.arange(P) / P
  for k in range(steps):
    rng = np.random.default_rng(k)
    phi = rng.uniform(size=(batch, 1))
    t = jnp.asarray(rng.uniform(size=batch), jnp.float32)
    eps = rng.standard_normal((batch, P)).astype(np.float32)
    x1 = np.cos(2 * np.pi * (u + phi)).astype(np.float32)
    x3 = np.cos(2 * np.pi * alpha * (u + phi / alpha)).astype(np.float32)
    np.testing.assert_allclose(x3, x1[:, perm], atol=1e-5)
    params1, o1, l1 = step(params1, o1, x1, t, eps)
    params3, o3, l3 = step(params3, o3, x3, t, eps[:, perm])
    assert float(l3) == pytest.approx(float(l1), rel=1e-4)
  np.testing.assert_allclose(params3['Dense_1']['kernel'], params1['Dense_1']['kernel'][:, perm], atol=1e-5)
