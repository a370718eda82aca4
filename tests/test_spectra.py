"""Reduced spectra and Gaussian blur (spectral/spectra.py; Spectral Diffusion supplement §3.1, §3.4; SPEC §13)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral import spectra


def test_number_of_rings():
  assert spectra.num_radii(32, 32) == math.floor(32 / math.sqrt(2)) + 1 == 23
  assert spectra.num_radii(16, 16) == 12
  idx = spectra.radial_index(8, 8)
  assert idx[4, 4] == 0 and idx[4, 7] == 3 and idx[0, 0] == 5  # DC at (H//2, W//2); corner √32 → 5


def test_parseval_ring_sums_add_up_to_the_energy():
  x = np.random.default_rng(0).standard_normal((3, 16, 12, 2)).astype(np.float32)
  sums = np.asarray(spectra.reduced_spectrum(x, 'sum'))
  energy = np.mean(np.sum(x.astype(np.float64) ** 2, axis=(1, 2)))  # per image-channel, averaged
  assert sums.sum() == pytest.approx(energy, rel=1e-5)
  # The ring mean is the ring sum divided by the ring's bin count.
  counts = np.bincount(spectra.radial_index(16, 12).reshape(-1))
  np.testing.assert_allclose(np.asarray(spectra.reduced_spectrum(x, 'mean')), sums / counts, rtol=1e-5)


@pytest.mark.parametrize('freq,radius', [((0, 5), 5), ((3, 0), 3), ((3, 4), 5)])
def test_cosine_puts_its_power_at_its_radius(freq, radius):
  n = 32
  i, j = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
  img = np.cos(2 * np.pi * (freq[0] * i + freq[1] * j) / n)[None, :, :, None].astype(np.float32)
  sums = np.asarray(spectra.reduced_spectrum(img, 'sum'))
  assert sums[radius] == pytest.approx(n * n / 2, rel=1e-5)  # all of Σ x² = N²/2 in one ring
  assert np.delete(sums, radius).max() < 1e-6 * sums[radius]
  counts = np.bincount(spectra.radial_index(n, n).reshape(-1))
  assert float(spectra.reduced_spectrum(img)[radius]) == pytest.approx(n * n / 2 / counts[radius], rel=1e-5)


def test_kernel_is_normalised_symmetric_gaussian():
  g = np.asarray(spectra.gaussian_kernel(1.5, 9))
  assert g.shape == (9,) and g.sum() == pytest.approx(1.0, abs=1e-6)
  np.testing.assert_allclose(g, g[::-1])
  assert g[5] / g[4] == pytest.approx(math.exp(-1 / (2 * 1.5)), rel=1e-5)
  assert g[6] / g[4] == pytest.approx(math.exp(-4 / (2 * 1.5)), rel=1e-5)


def test_blur_tiny_variance_is_identity_and_constants_stay():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 12, 3))
  np.testing.assert_allclose(np.asarray(spectra.gaussian_blur(x, 1e-3)), np.asarray(x), atol=1e-6)
  c = jnp.full((1, 10, 10, 1), 0.37)
  np.testing.assert_allclose(np.asarray(spectra.gaussian_blur(c, 5.0)), 0.37, atol=1e-6)


def test_blur_of_impulse_is_outer_product_and_cosine_gain():
  g = np.asarray(spectra.gaussian_kernel(2.0, 9))
  x = np.zeros((1, 21, 21, 1), np.float32)
  x[0, 10, 10, 0] = 1.0
  np.testing.assert_allclose(np.asarray(spectra.gaussian_blur(x, 2.0))[0, 6:15, 6:15, 0], np.outer(g, g),
                             atol=1e-7)
  # Away from the border a cosine of frequency f is scaled by the kernel's response Σ_m g_m cos(2π f m).
  n, f = 40, 3 / 40
  row = np.cos(2 * np.pi * f * np.arange(n))
  img = np.broadcast_to(row[None, None, :, None], (1, 8, n, 1)).astype(np.float32)
  gain = float(np.sum(g * np.cos(2 * np.pi * f * (np.arange(9) - 4))))
  out = np.asarray(spectra.gaussian_blur(img, 2.0))[0, 4, 4:-4, 0]
  np.testing.assert_allclose(out, gain * row[4:-4], atol=1e-5)


@pytest.mark.parametrize('kwargs,field', [(dict(sigma2=0.0), 'sigma2'), (dict(sigma2=-1.0), 'sigma2'),
                                          (dict(sigma2=1.0, size=8), 'size'), (dict(sigma2=1.0, size=0), 'size')])
def test_bad_blur_arguments(kwargs, field):
  with pytest.raises(ValueError, match=field):
    spectra.gaussian_blur(np.zeros((1, 16, 16, 1)), **kwargs)


def test_bad_images_and_reduction():
  with pytest.raises(ValueError, match='images'):
    spectra.reduced_spectrum(np.zeros((16, 16)))
  with pytest.raises(ValueError, match='reduce'):
    spectra.reduced_spectrum(np.zeros((1, 16, 16, 1)), 'median')


def test_fd_grows_with_blur_on_fashion_mnist():
  from experiments import evaluate
  from sid2.eval import fd
  from sid2.eval import features
  try:
    real = evaluate.real_images({}, 300)
  except FileNotFoundError as e:
    pytest.skip(f'Fashion-MNIST not installed: {e}')
  fn = features.load_feature_fn()
  ref = features.batched_features(fn, real, batch_size=300)
  values = [fd.frechet_distance_features(
      ref, features.batched_features(fn, np.asarray(spectra.gaussian_blur(real, s2)), batch_size=300))
            for s2 in (0.1, 0.5, 1.0, 5.0)]
  assert values[0] < 0.1 * values[1]
  assert all(a < b for a, b in zip(values, values[1:])), values
