"""The readings of SPEC §13 marked "ours", as config fields (spectral/layers.py, unet.py, distill.py): the
per-tap normalised frequency weights, the low-pass gate initialisation, the GroupNorm group rule, the
optional full-resolution decoder ResBlock, and the old readings still reachable (same outputs as before)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import spectral  # noqa: F401
from sid2 import models, wavelets
from spectral import distill, layers


def rand(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def smooth(batch=2, res=16, channels=3):
  y, x = np.meshgrid(np.arange(res) / res, np.arange(res) / res, indexing='ij')
  img = np.sin(2 * np.pi * x) * np.cos(np.pi * y) + 0.5 * x
  return jnp.asarray(np.broadcast_to(img[None, :, :, None], (batch, res, res, channels)), jnp.float32)


def avgpool(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def test_normalised_weights_have_mean_one_per_tap_and_keep_the_shape():
  x0 = rand(3, 32, 32, 2) * 0.1 + smooth(3, 32, 2)
  for res in (32, 16, 8):
    raw = np.asarray(distill.frequency_weights(x0, res, res))
    w = np.asarray(distill.frequency_weights(x0, res, res, norm='mean'))
    np.testing.assert_allclose(w.mean(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    # Same shape of w(u, v): a per-example rescaling of the raw weights.
    np.testing.assert_allclose(w, raw / raw.mean(axis=(1, 2), keepdims=True), rtol=1e-5)
  assert float(np.asarray(distill.frequency_weights(x0, 32, 32)).mean()) > 5  # raw: far from 1 on pixels
  with pytest.raises(ValueError, match='norm'):
    distill.frequency_weights(x0, 8, 8, norm='max')
  with pytest.raises(ValueError, match='distill.weight_norm'):
    distill.resolve_distill_config(dict(name='spectral', weight_norm='sum'))
  assert distill.resolve_distill_config(dict(name='spectral'))['weight_norm'] == 'mean'


def test_normalised_freq_loss_of_white_difference_matches_spatial():
  """With mean-1 weights and a white difference, E[L_freq] = E[L_spatial] (Parseval): λf means what λs means."""
  x0 = smooth(4, 32, 1) + 0.05 * rand(4, 32, 32, 1, seed=3)
  t, s = rand(4, 32, 32, 8, seed=1), rand(4, 32, 32, 8, seed=2)
  out = distill.distill_losses({'o': t}, {'o': s}, x0, ('o',), norm='mean')['o']
  np.testing.assert_allclose(np.mean(out[1]) / np.mean(out[0]), 1.0, atol=0.1)
  raw = distill.distill_losses({'o': t}, {'o': s}, x0, ('o',))['o']
  assert np.mean(raw[1]) / np.mean(raw[0]) > 3


def init_gate_params(module, x):
  return module.init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize('mode', ['band', 'channel'])
def test_lowpass_gate_init_makes_wg_down_the_2x2_average(mode):
  """gate_init='lowpass': WG-Down at init = 0.5 LL + 0.05 details ~ avgpool (anti-aliased); 'default' gives
  ~0.5 on every band, i.e. 2 g x[::2, ::2] (decimation), far from the average on a non-smooth image."""
  for x in (smooth(), rand(2, 16, 16, 3, seed=4)):
    lowpass = layers.WGDown(gate=mode, gate_init='lowpass')
    y = lowpass.apply(init_gate_params(lowpass, x), x)
    _, lh, hl, hh = [np.asarray(b) for b in wavelets.haar_dwt_level(x)]
    np.testing.assert_allclose(y, avgpool(x) + 0.05 * (lh + hl + hh), atol=1e-5)
    detail = np.sqrt(np.mean(lh ** 2 + hl ** 2 + hh ** 2))
    err_low = np.sqrt(np.mean((np.asarray(y) - np.asarray(avgpool(x))) ** 2))
    assert err_low <= 0.05 * np.sqrt(3) * detail + 1e-6
    old = layers.WGDown(gate=mode, gate_init='default')
    y_old = np.asarray(old.apply(init_gate_params(old, x), x))
    g = np.asarray(jax.tree.leaves(old.apply(init_gate_params(old, x), x, mutable=['intermediates'])[1])[0])
    assert np.all(np.abs(g - 0.5) < 0.25)  # every band ~1/2 at the old init
  # On the white image the old init is far from the average, the new one close to it.
  err_old = np.sqrt(np.mean((y_old - np.asarray(avgpool(x))) ** 2))
  assert err_old > 3 * err_low


def test_lowpass_gate_init_makes_wg_up_nearest_upsampling_of_ll():
  x = rand(2, 4, 4, 8, seed=5)
  up = layers.WGUp(channels=2, gate='band', gate_init='lowpass', project=False)
  y = np.asarray(up.apply(up.init(jax.random.PRNGKey(0), x), x))
  chunks = np.split(np.asarray(x), 4, axis=-1)
  ll_up = np.repeat(np.repeat(chunks[0], 2, axis=1), 2, axis=2) / 2  # IDWT of LL alone
  detail = np.asarray(layers.gated_inverse_haar(
      jnp.concatenate([0 * chunks[0]] + chunks[1:], axis=-1), jnp.ones((2, 4))))
  np.testing.assert_allclose(y, 0.5 * ll_up + 0.05 * detail, atol=1e-5)


def test_norm_groups_never_instance_norm():
  assert [layers.norm_groups(c, 1) for c in (16, 20, 32, 48, 64)] == [16, 4, 32, 16, 32]  # gcd(C, 32)
  assert [layers.norm_groups(c, 4) for c in (4, 16, 20, 32, 48, 64, 256)] == [1, 4, 5, 8, 12, 16, 32]
  for c in range(1, 300):
    g = layers.norm_groups(c, 4)
    assert c % g == 0 and g <= 32 and (c // g >= 4 or g == 1)
  with pytest.raises(ValueError, match='model.norm_group_channels'):
    models.get_model(ml_collections.ConfigDict(dict(name='wg_unet', channels=(8,), blocks=(1,), heads=(0,),
                                                    norm_group_channels=0)), image_res=8, num_channels=1)


def random_params(model, res, channels, seed=0):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, res, res, channels)),
                          jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))['params']
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    x = rng.standard_normal(leaf.shape).astype(np.float32)
    name = path[-1].key
    if name == 'kernel':
      return jnp.asarray(x / np.sqrt(np.prod(leaf.shape[:-1])))
    return jnp.asarray(1 + 0.1 * x if name == 'scale' else 0.1 * x)
  return jax.tree_util.tree_map_with_path(fill, shapes)


# Outputs of the code before these readings became fields (main at 7bae623, same model, params and inputs):
# (sum, sum of |.|, out[0, 3, 5, 0]).
OLD_OUTPUTS = {'wg_unet': (-70.32872817339376, 255.97839516261593, -0.915505051612854),
               'unet': (-60.877672753762454, 227.39526359317824, -0.5673515200614929)}


def small_model(name, **fields):
  f = dict(name=name, channels=(8, 16), blocks=(1, 1), heads=(0, 2), mid_heads=2, conditioning='class',
           num_classes=3, context_dim=8, **fields)
  return models.get_model(ml_collections.ConfigDict(f), image_res=16, num_channels=1)


def apply_small(model):
  z = jnp.asarray(np.random.default_rng(1).standard_normal((2, 16, 16, 1)), jnp.float32)
  return np.asarray(model.apply({'params': random_params(model, 16, 1)}, z, jnp.array([-1., 2.]),
                                jnp.array([0, 2])), np.float64)


@pytest.mark.parametrize('name', ['wg_unet', 'unet'])
def test_old_readings_give_old_outputs(name):
  out = apply_small(small_model(name, gate_init='default', norm_group_channels=1))
  np.testing.assert_allclose((out.sum(), np.abs(out).sum(), out[0, 3, 5, 0]), OLD_OUTPUTS[name], rtol=1e-5)
  new = apply_small(small_model(name))  # new group rule: a different network function
  assert abs(new.sum() - OLD_OUTPUTS[name][0]) > 1e-2


def test_final_blocks_add_a_full_resolution_resblock():
  m = small_model('wg_unet', final_blocks=1)
  params = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)), jnp.zeros((1,)),
                          jnp.zeros((1,), jnp.int32))['params']
  assert 'final_res0' in params and 'final_res0_in' in params  # 1x1 conv 2 c_1 -> c_1, then a ResBlock
  assert params['final_res0']['Conv_0']['kernel'].shape == (3, 3, 8, 8)
  assert 'final_res0' not in jax.eval_shape(small_model('wg_unet').init, jax.random.PRNGKey(0),
                                            jnp.zeros((1, 16, 16, 1)), jnp.zeros((1,)),
                                            jnp.zeros((1,), jnp.int32))['params']
