"""Wavelet-gated down/up-sampling, plain down/up-sampling and attention (spectral/layers.py; SPEC §5, §13)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sid2 import wavelets
from spectral import layers


def rand(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_wg_up_inverts_the_haar_bands_with_identity_gates():
  """SPEC §13: with gates = 1 and no projection, WG-Up(concat(DWT(x))) == x."""
  x = rand(2, 8, 6, 3)
  bands = layers.haar_bands(x)
  assert bands.shape == (2, 4, 3, 12)
  ones = jnp.ones((2, 4))
  np.testing.assert_allclose(layers.gated_inverse_haar(bands, ones), x, atol=1e-6)
  np.testing.assert_allclose(layers.gated_inverse_haar(bands, jnp.ones((2, 4, 3))), x, atol=1e-6)
  module = layers.WGUp(channels=3, gate='none', project=False)
  variables = module.init(jax.random.PRNGKey(0), bands)
  assert not variables  # no projection, no gate FFN: nothing to learn
  np.testing.assert_allclose(module.apply(variables, bands), x, atol=1e-6)


def test_wg_down_then_wg_up_band_by_band_with_identity_gates():
  """WG-Down's analysis (the bands it gates) followed by WG-Up's synthesis reconstructs x; gating a band by g
  and its inverse 1/g also does (the gates act band-wise)."""
  x = rand(3, 4, 4, 2, seed=1)
  g = jnp.asarray([[0.2, 0.5, 0.7, 0.9]] * 3)
  ll, lh, hl, hh = wavelets.haar_dwt_level(x)
  scaled = jnp.concatenate([ll * 0.2, lh * 0.5, hl * 0.7, hh * 0.9], axis=-1)
  np.testing.assert_allclose(layers.gated_inverse_haar(scaled, 1.0 / g), x, atol=1e-5)


def test_wg_down_is_the_gated_band_sum():
  """WG-Down = sum_b g_b X_b (SPEC §13); closed forms on a 2x2 block [[a, b], [c, d]]."""
  x = rand(2, 6, 4, 3, seed=2)
  a, b, c, d = x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]
  only_ll = jnp.tile(jnp.asarray([[1., 0., 0., 0.]]), (2, 1))
  np.testing.assert_allclose(layers.gated_band_sum(x, only_ll), (a + b + c + d) / 2, atol=1e-6)  # 2 avgpool
  np.testing.assert_allclose(layers.gated_band_sum(x, jnp.ones((2, 4))), 2 * a, atol=1e-6)
  g = jnp.asarray([[0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.7, 0.6]])
  want = sum(g[:, i, None, None, None] * band for i, band in enumerate(wavelets.haar_dwt_level(x)))
  np.testing.assert_allclose(layers.gated_band_sum(x, g), want, atol=1e-6)
  # Per-channel gates [B, 4, C] gate each channel separately.
  gc = jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 3))
  out = layers.gated_band_sum(x, gc)
  for ch in range(3):
    np.testing.assert_allclose(out[..., ch:ch + 1], layers.gated_band_sum(x[..., ch:ch + 1], gc[:, :, ch]),
                               atol=1e-6)
  with pytest.raises(ValueError, match='gates must have shape'):
    layers.gated_band_sum(x, jnp.ones((2, 3)))


@pytest.mark.parametrize('mode,shape', [('band', (5, 4)), ('channel', (5, 4, 6))])
def test_gates_in_unit_interval_with_documented_shape(mode, shape):
  x = 3.0 * rand(5, 8, 8, 16, seed=3)
  gate = layers.WaveletGate(channels=6, mode=mode, reduction=4)
  params = gate.init(jax.random.PRNGKey(0), x)
  assert params['params']['fc1']['kernel'].shape == (16, 4)  # Dense(C / r)
  g, state = gate.apply(params, x, mutable=['intermediates'])
  assert g.shape == shape
  assert bool(jnp.all((g > 0) & (g < 1)))
  np.testing.assert_array_equal(state['intermediates']['gates'][0], g)
  assert float(jnp.std(g, axis=0).max()) > 0  # input dependent: examples get different gates
  ones = layers.WaveletGate(channels=6, mode='none').apply({}, x)
  np.testing.assert_array_equal(ones, 1.0)


def test_module_shapes_and_width():
  x = rand(2, 8, 8, 12, seed=4)
  for module, shape in [(layers.WGDown(), (2, 4, 4, 12)), (layers.WGDown(gate='channel'), (2, 4, 4, 12)),
                        (layers.WGUp(channels=12), (2, 16, 16, 12)), (layers.WGUp(channels=5), (2, 16, 16, 5)),
                        (layers.PlainDown(12), (2, 4, 4, 12)), (layers.PlainUp(7), (2, 16, 16, 7))]:
    out, _ = module.init_with_output(jax.random.PRNGKey(0), x)
    assert out.shape == shape, module
  # WG-Up's projection is a 1x1 conv C -> 4C (SPEC §13, ours).
  params = layers.WGUp(channels=12).init(jax.random.PRNGKey(0), x)['params']
  assert params['proj']['kernel'].shape == (12, 48)
  with pytest.raises(ValueError, match='divisible'):
    layers.gated_inverse_haar(jnp.ones((1, 2, 2, 6)), jnp.ones((1, 4)))


def test_nearest_upsample_and_plain_down_geometry():
  x = jnp.arange(4.0).reshape(1, 2, 2, 1)
  np.testing.assert_array_equal(layers.nearest_upsample(x)[0, :, :, 0],
                                [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
  # A 3x3 stride-2 conv with padding 1 whose kernel picks the centre tap subsamples the even pixels.
  kernel = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
  y = rand(1, 6, 6, 1, seed=5)
  out = layers.PlainDown(1).apply({'params': {'conv': {'kernel': kernel, 'bias': jnp.zeros(1)}}}, y)
  np.testing.assert_allclose(out, y[:, 0::2, 0::2], atol=1e-6)


def test_cross_attention_to_one_token_is_position_independent():
  """With a 1-token context the softmax weight is 1: every position receives the same value out(v(c))."""
  x = rand(2, 10, 8, seed=6)
  context = rand(2, 1, 5, seed=7)
  module = layers.CrossAttention(num_heads=2)
  params = module.init(jax.random.PRNGKey(0), x, context)
  params = jax.tree.map(lambda p: p + 0.1, params)  # the output projection starts at zero
  out = module.apply(params, x, context)
  np.testing.assert_allclose(out, jnp.broadcast_to(out[:, :1], out.shape), atol=1e-5)
  assert float(jnp.abs(out[0, 0] - out[1, 0]).max()) > 1e-3  # ... which depends on the context


def test_attention_block_with_and_without_context():
  x = rand(2, 4, 4, 8, seed=8)
  block = layers.AttentionBlock(num_heads=2)
  params = block.init(jax.random.PRNGKey(0), x, rand(2, 3, 5))
  assert set(params['params']) == {'norm', 'self_attn', 'cross_norm', 'cross_attn'}
  np.testing.assert_allclose(block.apply(params, x, rand(2, 3, 5)), x, atol=1e-6)  # zero-init outputs
  assert set(block.init(jax.random.PRNGKey(0), x)['params']) == {'norm', 'self_attn'}
