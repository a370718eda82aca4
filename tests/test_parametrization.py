"""eps / x / v conversions round-trip (SPEC §2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sid2 import parametrization as P


@pytest.mark.parametrize('param', P.PARAMETRIZATIONS)
def test_round_trip(param):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.uniform(k1, (4, 8, 8, 3), minval=-1, maxval=1)
  eps = jax.random.normal(k2, x.shape)
  logsnr = jax.random.uniform(k3, (4,), minval=-6, maxval=6)
  z = P.diffuse(x, eps, logsnr)
  out = P.from_x(x, z, logsnr, param)
  x_hat, eps_hat = P.to_x_eps(out, z, logsnr, param)
  np.testing.assert_allclose(x_hat, x, atol=2e-4)
  np.testing.assert_allclose(eps_hat, eps, atol=2e-4)


def test_v_definition():
  x = jnp.full((1, 2, 2, 1), 0.3)
  eps = jnp.full((1, 2, 2, 1), -1.2)
  logsnr = jnp.array([0.7])
  a, s = jax.nn.sigmoid(0.7) ** 0.5, jax.nn.sigmoid(-0.7) ** 0.5
  z = P.diffuse(x, eps, logsnr)
  np.testing.assert_allclose(P.from_x(x, z, logsnr, 'v'), a * eps - s * x, atol=1e-6)


def test_bad_parametrization():
  with pytest.raises(ValueError, match="'eps', 'x', 'v'"):
    P.to_x_eps(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)), jnp.zeros((1,)), 'score')
