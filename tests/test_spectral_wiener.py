"""Wiener-filter analysis of linear diffusion (spectral.wiener; Spectral Diffusion supplement §1, SPEC §10)."""
import numpy as np
import pytest

from spectral import wiener


def test_wiener_gain_minimises_the_expected_error():
  p_x = np.array([0.01, 0.3, 1.0, 5.0, 40.0])
  p_e = 0.7
  h = wiener.wiener_gain(p_x, p_e)
  best = wiener.filter_error(h, p_x, p_e)
  np.testing.assert_allclose(best, wiener.wiener_error(p_x, p_e), rtol=1e-12)
  for delta in (-0.1, -1e-3, 1e-3, 0.1):
    assert np.all(wiener.filter_error(h + delta, p_x, p_e) > best)
  # The excess error is exactly quadratic: (H − H*)² (P_x + P_e).
  np.testing.assert_allclose(wiener.filter_error(h + 0.1, p_x, p_e) - best, 0.01 * (p_x + p_e), rtol=1e-9)


def test_power_law_spectrum_is_normalised_and_even():
  for ndim, n in ((1, 64), (2, 16)):
    p = wiener.power_law_spectrum(n, ndim)
    assert p.mean() == pytest.approx(1.0)
    r = wiener.frequency_radius(n, ndim)
    nonzero = r > 0
    np.testing.assert_allclose(p[nonzero] * r[nonzero] ** 2, (p[nonzero] * r[nonzero] ** 2)[0])
    np.testing.assert_allclose(p, np.roll(np.flip(p, axis=tuple(range(ndim))), 1, axis=tuple(range(ndim))))
  with pytest.raises(ValueError, match='ndim'):
    wiener.power_law_spectrum(8, 3)


@pytest.mark.parametrize('ndim,n', [(1, 32), (2, 8)])
def test_error_formula_matches_monte_carlo(ndim, n):
  rng = np.random.default_rng(0)
  spectrum = wiener.power_law_spectrum(n, ndim)
  alpha_bar = 0.3
  gain = wiener.dpm_wiener_gain(alpha_bar, spectrum)
  mc = wiener.monte_carlo_error(rng, spectrum, alpha_bar, gain, num=20_000)
  exact = wiener.wiener_error(*wiener.dpm_powers(alpha_bar, spectrum))
  # 20k samples: relative standard error about 1/sqrt(20k) = 0.7% per bin.
  np.testing.assert_allclose(mc, exact, rtol=0.05)
  # A worse gain (no filtering at all: predict the input) is measurably worse.
  assert np.mean(wiener.monte_carlo_error(rng, spectrum, alpha_bar, 1.0, num=2000)) > 1.5 * exact.mean()


def test_sampled_signals_have_the_spectrum():
  rng = np.random.default_rng(1)
  spectrum = wiener.power_law_spectrum(16, 1)
  x = wiener.sample_signals(rng, spectrum, 20_000)
  power = np.mean(np.abs(np.fft.fft(x, norm='ortho')) ** 2, axis=0)
  np.testing.assert_allclose(power, spectrum, rtol=0.05)
  assert np.var(x) == pytest.approx(1.0, rel=0.03)


def test_error_peaks_at_snr_one_for_unit_total_power():
  snr = np.exp(np.linspace(-6, 6, 24001))
  # Unit total power: P_x + P_e = 1 with P_x / P_e = SNR.
  p_x, p_e = snr / (1 + snr), 1 / (1 + snr)
  err = wiener.wiener_error(p_x, p_e)
  np.testing.assert_allclose(err, wiener.relative_wiener_error(snr), rtol=1e-12)
  assert snr[np.argmax(err)] == pytest.approx(1.0, rel=1e-3)
  assert np.max(err) == pytest.approx(0.25)
  # The supplement's eq. 14 peaks at the same SNR but is a different function (1/2 there, not 1/4).
  sup = wiener.supplement_error(snr)
  assert snr[np.argmax(sup)] == pytest.approx(1.0, rel=1e-3)
  assert np.max(sup) == pytest.approx(0.5)


def test_dpm_gain_forms():
  abar, p0 = 0.4, np.array([0.1, 1.0, 10.0])
  scaled = wiener.dpm_wiener_gain(abar, p0)
  np.testing.assert_allclose(scaled, 0.6 / (0.4 * p0 + 0.6))
  np.testing.assert_allclose(wiener.dpm_wiener_gain(abar, p0, unit_noise=True), np.sqrt(0.6) / (0.4 * p0 + 0.6))
  ab = wiener.linear_beta_alpha_bar(np.array([0.0, 0.5, 1.0]))
  assert ab[0] > 0.9999 and ab[2] < 1e-4
  assert np.log(ab[1] / (1 - ab[1])) == pytest.approx(-2.46, abs=0.02)  # SPEC §1: λ(0.5) ≈ −2.46


def test_trained_linear_denoiser_converges_to_wiener_gain():
  spectrum = wiener.power_law_spectrum(32, 1)
  alpha_bar = 0.5
  h_star = wiener.dpm_wiener_gain(alpha_bar, spectrum)
  g = wiener.train_linear_denoiser(spectrum, alpha_bar, steps=400, batch=64)
  assert np.max(np.abs(g - h_star)) < 0.05
  g_ls = wiener.fit_gain_least_squares(np.random.default_rng(2), spectrum, alpha_bar, num=20_000)
  assert np.max(np.abs(g_ls - h_star)) < 0.03
  # The starting point (g = 1/2) was far from H* somewhere.
  assert np.max(np.abs(0.5 - h_star)) > 0.3


def test_snr_crossing_frequency():
  r = np.array([0.0, 0.1, 0.2, 0.4])
  snr = np.array([100.0, 4.0, 1.0 / 4.0, 0.01])
  # log-linear between (0.1, 4) and (0.2, 1/4): SNR = 1 at the geometric midpoint.
  assert wiener.snr_crossing_frequency(r, snr) == pytest.approx(np.sqrt(0.1 * 0.2))
  assert np.isnan(wiener.snr_crossing_frequency(r, snr * 1e4))
