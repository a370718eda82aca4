"""Tests for the low-bit analysis (SPEC §9, SiD2 Appendix A)."""
import math
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax
import numpy as np
import pytest
from scipy import integrate, special

from sid2 import lowbit

GRID = np.linspace(-20.0, 20.0, 81)
BITS = (1, 2, 3, 4, 5, 6, 7, 8)


@pytest.fixture(scope='module')
def curves():
  """log-loss curves on GRID for 1..8 bits (computed once for the module)."""
  return {b: np.asarray(lowbit.log_expected_eps_loss(GRID, b), np.float64) for b in BITS}


def _reference_loss_float64(logsnr, bits):
  """Independent float64 reference: per data point, scipy quad over eps of (x - x_hat)^2, times e^lambda."""
  xs = np.linspace(-1.0, 1.0, 2 ** bits)
  alpha, sigma = math.sqrt(special.expit(logsnr)), math.sqrt(special.expit(-logsnr))
  mids = 0.5 * (xs[1:] + xs[:-1])

  def x_hat(z):
    return float(np.dot(special.softmax(-(z - alpha * xs) ** 2 / (2 * sigma ** 2)), xs))

  total = 0.0
  for xj in xs[: len(xs) // 2]:  # symmetric under x -> -x: twice the lower half
    pts = [e for e in alpha * (mids - xj) / sigma if -38 < e < 38]
    f = lambda e: math.exp(-0.5 * e * e) / math.sqrt(2 * math.pi) * (xj - x_hat(alpha * xj + sigma * e)) ** 2
    total += 2 * integrate.quad(f, -40, 40, points=pts or None, limit=400, epsabs=0, epsrel=1e-11)[0]
  return math.exp(logsnr) * total / len(xs)


def test_data_variance_closed_form():
  for b in BITS:
    xs = lowbit.data_values(b)
    assert len(xs) == 2 ** b and xs[0] == -1.0 and xs[-1] == 1.0
    np.testing.assert_allclose(lowbit.data_variance(b), np.var(xs), rtol=1e-12)
  assert lowbit.data_variance(1) == 1.0


def test_figure12_bias_constant():
  assert lowbit.FIGURE12_BIAS == pytest.approx(1.0 + 2.0 * math.log(128.0))
  assert round(lowbit.FIGURE12_BIAS, 1) == 10.7


def test_curves_finite_positive_and_bounded(curves):
  for b, log_loss in curves.items():
    assert np.all(np.isfinite(log_loss)), b
    loss = np.exp(log_loss)
    var = lowbit.data_variance(b)
    snr_var = np.exp(GRID) * var
    # eps_hat = E[eps|z] beats eps_hat = 0 and the best linear estimator: loss <= e^l V / (1 + e^l V) < 1.
    assert np.all(loss <= snr_var / (1.0 + snr_var) * (1 + 1e-5)), b
    # The float values are positive wherever float32 can hold them.
    direct = np.asarray(lowbit.expected_eps_loss(GRID[::4][log_loss[::4] > -80], b))
    assert np.all(direct > 0), b


def test_low_snr_limit(curves):
  for b, log_loss in curves.items():
    ratio = math.exp(log_loss[0] - GRID[0]) / lowbit.data_variance(b)  # lambda = -20
    assert ratio == pytest.approx(1.0, abs=1e-5), b


def test_high_snr_limit(curves):
  for b, log_loss in curves.items():
    assert log_loss[-1] < -100, b                       # lambda = 20: the loss is ~0
    peak = int(np.argmax(log_loss))
    assert np.all(np.diff(log_loss[peak:]) < 0), b      # and falls monotonically past its peak


def test_mmse_non_increasing_in_snr(curves):
  """mmse = E(x - x_hat)^2 = loss e^-lambda cannot grow with SNR (z at lower SNR = z plus more noise)."""
  for b, log_loss in curves.items():
    assert np.all(np.diff(log_loss - GRID) <= 1e-5), b


def test_area_equals_twice_entropy(curves):
  """I-MMSE: integral of the eps-loss over lambda = 2 H(x) = 2 n log 2 (closed form). The curves are smooth
  and flat at both ends, so the trapezoid rule on GRID is accurate; below -20 the loss is e^l V exactly."""
  for b, log_loss in curves.items():
    area = np.trapezoid(np.exp(log_loss), GRID) + math.exp(GRID[0]) * lowbit.data_variance(b)
    assert area == pytest.approx(lowbit.elbo_area(b), rel=2e-5), b


def test_high_snr_translation_between_bits(curves):
  """Above the peak the loss depends on lambda through r = Delta e^{lambda/2}: one more bit shifts the fall-off
  right by 2 log(Delta_n / Delta_{n+1})."""
  lam = np.linspace(2.0, 16.0, 281)
  prev = None
  for b in (4, 5, 6):
    log_loss = np.asarray(lowbit.log_expected_eps_loss(lam, b), np.float64)
    cross = np.interp(math.log(1e-6), log_loss[::-1], lam[::-1])
    if prev is not None:
      shift = 2 * math.log((2 ** b - 1) / (2 ** (b - 1) - 1))
      assert cross - prev == pytest.approx(shift, abs=0.02), b
    prev = cross


def test_one_bit_tanh_denoiser_against_scipy_quad():
  """x in {-1, 1}: x_hat = tanh(alpha z / sigma^2); loss = e^l int N(e) (1 - tanh(e^l + e^{l/2} e))^2 de."""
  lam = np.array([-12.0, -3.0, -0.5, 0.0, 1.0, 2.5, 4.0, 5.0])
  ours = np.asarray(lowbit.log_expected_eps_loss(lam, 1), np.float64)
  for l, o in zip(lam, ours):
    a = math.exp(l / 2)
    f = lambda e: (math.exp(-0.5 * e * e) / math.sqrt(2 * math.pi)
                   * (2 * special.expit(-2 * (math.exp(l) + a * e))) ** 2)
    ref = math.exp(l) * integrate.quad(f, -40, 40, points=[-a], limit=400, epsabs=0, epsrel=1e-12)[0]
    assert o == pytest.approx(math.log(ref), abs=1e-5), l
  # The posterior mean itself is the tanh.
  z = np.linspace(-3, 3, 13)
  al, si = math.sqrt(special.expit(0.7)), math.sqrt(special.expit(-0.7))
  np.testing.assert_allclose(lowbit.posterior_mean(z, 0.7, 1), np.tanh(al * z / si ** 2), atol=1e-6)


def test_three_bit_against_float64_reference():
  lam = np.array([-4.0, 3.0, 6.5, 9.5])
  ours = np.asarray(lowbit.log_expected_eps_loss(lam, 3), np.float64)
  for l, o in zip(lam, ours):
    assert o == pytest.approx(math.log(_reference_loss_float64(l, 3)), rel=1e-6, abs=1e-5), l


def test_quadrature_converged_against_fine_rule(curves):
  """The default rule (32 Gauss-Legendre nodes per cell) agrees with a 4x finer rule to float32 rounding."""
  for b, step in ((2, 4), (8, 8)):
    idx = np.arange(0, len(GRID), step)
    base = curves[b][idx]
    fine = np.asarray(lowbit.log_expected_eps_loss(GRID[idx], b, nodes_per_cell=128), np.float64)
    ok = fine > -80  # beyond, both are ~1e-35 or below and differ only by float32 rounding of the exponent
    np.testing.assert_allclose(base[ok], fine[ok], atol=2e-5)
    np.testing.assert_allclose(base[~ok], fine[~ok], rtol=1e-5)
  # The comparison can detect an under-resolved rule.
  idx = np.arange(0, len(GRID), 4)
  coarse = np.asarray(lowbit.log_expected_eps_loss(GRID[idx], 2, nodes_per_cell=6), np.float64)
  assert np.max(np.abs(coarse - curves[2][idx])[curves[2][idx] > -80]) > 1e-3


def test_eight_bit_against_monte_carlo():
  rng = np.random.default_rng(0)
  xs = lowbit.data_values(8)
  for lam in (0.0, 12.0):
    alpha, sigma = math.sqrt(special.expit(lam)), math.sqrt(special.expit(-lam))
    samples = []
    for _ in range(6):
      x = rng.choice(xs, size=10000)
      z = alpha * x + sigma * rng.standard_normal(x.shape)
      post = special.softmax(-(z[:, None] - alpha * xs) ** 2 / (2 * sigma ** 2), axis=1)
      samples.append(math.exp(lam) * (x - post @ xs) ** 2)
    samples = np.concatenate(samples)
    mc, se = samples.mean(), samples.std() / math.sqrt(samples.size)
    ours = float(lowbit.expected_eps_loss(lam, 8))
    assert abs(ours - mc) < 4 * se, (lam, ours, mc, se)
    assert se < 0.02 * mc


def test_mixture_between_components_and_normalised(curves):
  props = [1, 4, 4, 6]
  mix = np.asarray(lowbit.expected_eps_loss_mixture(GRID[::2], [8, 7, 6, 5], props), np.float64)
  comps = np.stack([np.exp(curves[b][::2]) for b in (8, 7, 6, 5)])
  assert np.all(mix >= comps.min(0) * (1 - 1e-5) - 1e-40) and np.all(mix <= comps.max(0) * (1 + 1e-5))
  np.testing.assert_allclose(mix, np.asarray(props) @ comps / 15.0, rtol=1e-5, atol=1e-40)
  # proportions are normalised: scaling them changes nothing; the defaults are the paper's.
  lam = GRID[::10]
  np.testing.assert_allclose(
      np.asarray(lowbit.expected_eps_loss_mixture(lam, [8, 7, 6, 5], [10, 40, 40, 60])), mix[::5], rtol=1e-6)
  assert tuple(lowbit.MIXTURE_BITS) == (8, 7, 6, 5) and tuple(lowbit.MIXTURE_PROPORTIONS) == (1, 4, 4, 6)


def test_sigmoid_weighted():
  lam = np.array([-5.0, 10.7, 30.0])
  out = np.asarray(lowbit.sigmoid_weighted(lam, np.array([2.0, 2.0, 2.0]), bias=10.7))
  np.testing.assert_allclose(out, 2.0 * special.expit(10.7 - lam), rtol=1e-6)
  assert out[1] == pytest.approx(1.0)


def test_shapes_and_jit():
  assert lowbit.expected_eps_loss(0.5, 2).shape == ()
  grid = np.linspace(-3, 3, 6).reshape(2, 3)
  out = lowbit.expected_eps_loss(grid, 2)
  assert out.shape == (2, 3)
  jitted = jax.jit(lambda l: lowbit.expected_eps_loss(l, 2))(grid)
  np.testing.assert_allclose(jitted, out, rtol=1e-6)
  np.testing.assert_allclose(out.reshape(-1), lowbit.expected_eps_loss(grid.reshape(-1), 2), rtol=1e-6)


@pytest.mark.parametrize('call, field', [
    (lambda: lowbit.expected_eps_loss(0.0, 0), 'bits'),
    (lambda: lowbit.expected_eps_loss(0.0, 2.5), 'bits'),
    (lambda: lowbit.expected_eps_loss(0.0, 11), 'bits'),
    (lambda: lowbit.expected_eps_loss(0.0, 2, nodes_per_cell=2), 'nodes_per_cell'),
    (lambda: lowbit.expected_eps_loss(0.0, 2, batch_size=0), 'batch_size'),
    (lambda: lowbit.expected_eps_loss_mixture(0.0, [8, 7], [1.0]), 'proportions'),
    (lambda: lowbit.expected_eps_loss_mixture(0.0, [8, 7], [-1.0, 2.0]), 'proportions'),
    (lambda: lowbit.expected_eps_loss_mixture(0.0, [8, 0], [1.0, 1.0]), 'bits_list'),
    (lambda: lowbit.expected_eps_loss_mixture(0.0, [], []), 'bits_list'),
    (lambda: lowbit.data_variance(True), 'bits'),
])
def test_bad_input_raises(call, field):
  with pytest.raises(ValueError, match=field):
    call()
