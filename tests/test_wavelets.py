"""Haar transform: exact inverse, energy, known 2x2 values (SPEC §5, §13)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sid2 import wavelets


@pytest.mark.parametrize('levels', [1, 2, 3])
def test_inverse_and_energy(levels):
  x = jax.random.normal(jax.random.PRNGKey(levels), (2, 16, 8, 3))
  bands = wavelets.haar_dwt(x, levels)
  np.testing.assert_allclose(wavelets.haar_idwt(bands), x, atol=1e-5)
  energy = sum(float(jnp.sum(b ** 2)) for lvl in bands[:-1] for b in lvl) + float(jnp.sum(bands[-1] ** 2))
  np.testing.assert_allclose(energy, float(jnp.sum(x ** 2)), rtol=1e-5)
  assert bands[-1].shape == (2, 16 // 2 ** levels, 8 // 2 ** levels, 3)
  for k, lvl in enumerate(bands[:-1], start=1):
    assert all(b.shape == (2, 16 // 2 ** k, 8 // 2 ** k, 3) for b in lvl)


def test_block_values():
  a, b, c, d = 1.0, 2.0, 4.0, 8.0
  x = jnp.array([[a, b], [c, d]]).reshape(1, 2, 2, 1)
  ll, lh, hl, hh = (float(v.squeeze()) for v in wavelets.haar_dwt_level(x))
  assert ll == pytest.approx((a + b + c + d) / 2)
  assert lh == pytest.approx((a + b - c - d) / 2)
  assert hl == pytest.approx((a - b + c - d) / 2)
  assert hh == pytest.approx((a - b - c + d) / 2)


def test_ll_is_twice_avgpool():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 2))
  ll = wavelets.haar_dwt_level(x)[0]
  np.testing.assert_allclose(ll, 2 * x.reshape(1, 4, 2, 4, 2, 2).mean(axis=(2, 4)), atol=1e-6)


def test_low_pass_counts():
  assert wavelets.band_low_passes(2) == [(1, 1, 0), (3, 3, 2), 4]


def test_rejects_odd_sizes():
  with pytest.raises(ValueError, match='even'):
    wavelets.haar_dwt(jnp.zeros((1, 5, 4, 1)))
