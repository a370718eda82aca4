"""SiD2 residual U-ViT (sid2/models/uvit.py) and the model registry (sid2/models/__init__.py).

XLA's CPU compile of threefry random numbers is slow (~0.2 s per parameter or dropout site), so most tests
build the parameter tree with `jax.eval_shape(model.init, ...)` and fill it from numpy, one tiny model is
initialised for real, and dropout keys use the 'rbg' PRNG (same Flax code path, cheaper to compile).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sid2 import models
from sid2.models import layers
from sid2.models import uvit

RES = 16
KEY0, KEY1 = jax.random.key(0, impl='rbg'), jax.random.key(1, impl='rbg')
TINY = dict(name='uvit', channels=(8, 16), enc_blocks=(1, 1), dec_blocks=(1, 1), transformer_channels=16,
            transformer_blocks=1, num_heads=2, dropout=0.5, dropout_from_level=0)
# Patching, class conditioning, a dropped top level and asymmetric enc/dec blocks in one model (one compile).
MIXED = dict(TINY, patching_size=2, num_classes=5, channels=(8, 16, 16), enc_blocks=(1, 1, 0),
             dec_blocks=(1, 2, 3), drop_top_level=True)


def make(res=RES, num_channels=3, **fields):
  return models.get_model(ml_collections.ConfigDict(fields), image_res=res, num_channels=num_channels)


def inputs(batch=2, res=RES, channels=3, seed=0):
  z = jax.random.normal(jax.random.PRNGKey(seed), (batch, res, res, channels))
  return z, jnp.linspace(-5., 5., batch)


def random_params(model, *args, seed=0):
  """A parameter tree of the model's shapes with random values (kernels ~ N(0, 1/fan_in))."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)['params']
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    x = rng.standard_normal(leaf.shape).astype(np.float32)
    if name == 'kernel':
      return jnp.asarray(x / np.sqrt(np.prod(leaf.shape[:-1])))
    if name == 'scale':
      return jnp.asarray(1 + 0.1 * x)
    if name == 'bias':
      return jnp.asarray(0.1 * x)
    return jnp.asarray(x)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.lru_cache(maxsize=None)
def setup(key, res=RES, channels=3):
  """(model, params, jitted apply) for a named config, built once per test session."""
  fields = dict(base=TINY, mixed=MIXED, bf16=dict(TINY, dtype='bfloat16'))[key]
  model = make(res, channels, **fields)
  z, logsnr = inputs(2, res, channels)
  labels = jnp.array([0, 4]) if fields.get('num_classes') else None
  params = random_params(model, z, logsnr, labels)
  apply = jax.jit(lambda p, z, l, y=None, train=False, rng=None: model.apply(
      {'params': p}, z, l, y, train=train, rngs=None if rng is None else {'dropout': rng}),
                  static_argnames='train')
  return model, params, apply


def test_real_init_is_zero_output():
  # Zero-initialised output conv: the untrained network outputs exactly 0; params are float32.
  model = make(**dict(TINY, channels=(8,), enc_blocks=(0,), dec_blocks=(1,), transformer_blocks=0))
  z, logsnr = inputs()
  variables = jax.jit(model.init)(jax.random.key(0, impl='rbg'), z, logsnr)
  out = model.apply(variables, z, logsnr)
  assert out.shape == z.shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.)
  assert variables['params']['conv_out']['kernel'].shape == (3, 3, 8, 3)


@pytest.mark.parametrize('key,res,channels', [('base', 16, 3), ('mixed', 16, 1)])
def test_shapes(key, res, channels):
  model, params, apply = setup(key, res, channels)
  z, logsnr = inputs(2, res, channels)
  labels = jnp.array([0, 4]) if model.num_classes else None
  out = apply(params, z, logsnr, labels)
  assert out.shape == z.shape and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 1e-2


def test_patching_and_level_layout():
  _, mixed, _ = setup('mixed', 16, 1)
  names = set(mixed)
  # drop_top_level: no level-0 layers at all; the first remaining level (16 wide) takes the patched input:
  # patching 2 on a 1-channel image gives 2*2*1 channels in, and the output conv makes them back.
  assert not any(n.startswith(('enc_0', 'dec_0', 'down_0', 'up_0')) for n in names)
  assert mixed['conv_in']['kernel'].shape == (3, 3, 4, 16)
  assert mixed['conv_out']['kernel'].shape == (3, 3, 16, 4)
  # Asymmetric blocks: enc (-, 1, 0), dec (-, 2, 3).
  assert {'enc_1_block_0', 'dec_1_block_0', 'dec_1_block_1', 'dec_2_block_2'} <= names
  assert 'enc_2_block_0' not in names and 'enc_1_block_1' not in names and 'dec_1_block_2' not in names
  assert mixed['class_embed']['embedding'].shape == (6, 64)  # 5 classes + the null class; E = 4 x 16.


def test_output_depends_on_logsnr_and_labels_and_null_class():
  _, params, apply = setup('mixed', 16, 1)
  z, _ = inputs(2, 16, 1)
  z = jnp.broadcast_to(z[:1], z.shape)
  same = jnp.array([1, 1])
  out = apply(params, z, jnp.array([2., 2.]), same)
  np.testing.assert_allclose(out[0], out[1], rtol=1e-4, atol=1e-5)  # Same inputs, same outputs.
  out_l = apply(params, z, jnp.array([2., -3.]), same)
  assert float(jnp.abs(out_l[0] - out_l[1]).max()) > 1e-2  # logSNR matters.
  out_y = apply(params, z, jnp.array([2., 2.]), jnp.array([0, 2]))
  assert float(jnp.abs(out_y[0] - out_y[1]).max()) > 1e-2  # The label matters.
  # labels=None is the learned null class at index num_classes = 5.
  logsnr = jnp.array([1., -1.])
  np.testing.assert_allclose(apply(params, z, logsnr), apply(params, z, logsnr, jnp.array([5, 5])),
                             rtol=1e-5, atol=1e-5)


def test_bf16_compute_float32_params_close_output():
  model16, _, apply16 = setup('bf16')
  _, params, apply32 = setup('base')
  z, logsnr = inputs()
  shapes16 = jax.eval_shape(model16.init, jax.random.PRNGKey(0), z, logsnr)['params']
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes16))
  out32, out16 = apply32(params, z, logsnr), apply16(params, z, logsnr)
  assert out16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert 0 < rel < 0.05


def test_naive_attention_matches_xla():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 16))
  xla = layers.MultiHeadAttention(num_heads=4, implementation='xla')
  naive = layers.MultiHeadAttention(num_heads=4, implementation='naive')
  params = random_params(xla, x)
  out = xla.apply({'params': params}, x)
  assert float(jnp.std(out)) > 1e-2
  np.testing.assert_allclose(out, naive.apply({'params': params}, x), rtol=1e-4, atol=1e-5)


def test_dropout_only_when_training():
  model, params, apply = setup('base')
  z, logsnr = inputs()
  eval_out = apply(params, z, logsnr)
  np.testing.assert_array_equal(eval_out, apply(params, z, logsnr, train=False, rng=KEY0))
  t1 = apply(params, z, logsnr, train=True, rng=KEY0)
  t2 = apply(params, z, logsnr, train=True, rng=KEY1)
  np.testing.assert_array_equal(t1, apply(params, z, logsnr, train=True, rng=KEY0))
  assert float(jnp.abs(t1 - eval_out).max()) > 1e-2 and float(jnp.abs(t1 - t2).max()) > 1e-2
  # Per-level rates: dropout_from_level counts in `channels` indices; the transformer is level 2 here.
  assert [model._drop(i) for i in range(3)] == [0.5, 0.5, 0.5]
  later = make(**dict(TINY, dropout_from_level=1))
  assert [later._drop(i) for i in range(3)] == [0.0, 0.5, 0.5]


def test_no_dropout_on_the_highest_resolution_present():
  # With the top level dropped, channels[1] holds the highest-resolution maps: dropout_from_level=1 leaves
  # them without dropout (simple diffusion's rule); the next level down gets it. Checked on the block outputs.
  fields = dict(TINY, channels=(8, 8, 16), enc_blocks=(1, 1, 1), dec_blocks=(0, 0, 0), drop_top_level=True,
                dropout_from_level=1)
  model = make(**fields)
  assert [model._drop(i) for i in range(4)] == [0.0, 0.0, 0.5, 0.5]
  z, logsnr = inputs()
  params = random_params(model, z, logsnr)
  run = jax.jit(lambda rng: model.apply({'params': params}, z, logsnr, train=True, rngs={'dropout': rng},
                                        capture_intermediates=True)[1]['intermediates'])
  a, b = run(KEY0), run(KEY1)
  top = lambda m: m['enc_1_block_0']['__call__'][0]
  low = lambda m: m['enc_2_block_0']['__call__'][0]
  np.testing.assert_array_equal(top(a), top(b))
  assert float(jnp.abs(low(a) - low(b)).max()) > 1e-3


def test_gradient_matches_finite_difference():
  model = make(**dict(TINY, channels=(8,), enc_blocks=(0,), dec_blocks=(1,), dropout=0.0))
  z, logsnr = inputs()
  params = random_params(model, z, logsnr)
  target = jax.random.normal(jax.random.PRNGKey(8), z.shape)
  loss = jax.jit(lambda p: jnp.mean((model.apply({'params': p}, z, logsnr) - target) ** 2))
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0 for g in leaves)
  # Along the unit gradient direction d = g/|g|: d/ds L(p + s d) = |g| (central difference, s = ±eps).
  norm = float(np.sqrt(sum(np.vdot(g, g) for g in leaves)))
  eps = 1e-2
  shift = jax.jit(lambda s: jax.tree_util.tree_map(lambda x, g: x + s * g / norm, params, grads))
  up, down = float(loss(shift(eps))), float(loss(shift(-eps)))
  np.testing.assert_allclose((up - down) / (2 * eps), norm, rtol=2e-2)
  assert down < float(value) < up


def test_space_to_depth_roundtrip():
  x = np.random.default_rng(0).standard_normal((2, 8, 12, 3)).astype(np.float32)
  y = layers.space_to_depth(x, 2)
  assert y.shape == (2, 4, 6, 12)
  np.testing.assert_array_equal(np.asarray(y[0, 1, 2]).reshape(2, 2, 3), x[0, 2:4, 4:6])
  np.testing.assert_array_equal(layers.depth_to_space(y, 2), x)


def test_registry_errors():
  def check(overrides, res=RES):
    models.validate_model_config(ml_collections.ConfigDict(dict(TINY, **overrides)), res)

  with pytest.raises(ValueError, match='allowed.*uvit'):
    check(dict(name='nope'))
  with pytest.raises(ValueError, match='unknown model field.*widths'):
    check(dict(widths=3))
  with pytest.raises(ValueError, match=r'image_res=12 .* 2 \* 2\^2 = 8 \(model.patching_size=2, model.channels'):
    check(dict(patching_size=2), 12)
  with pytest.raises(ValueError, match='same length'):
    check(dict(enc_blocks=(1,)))
  with pytest.raises(ValueError, match='transformer_channels=16 must be divisible by model.num_heads=3'):
    check(dict(num_heads=3))
  with pytest.raises(ValueError, match='model.attention must be one of'):
    check(dict(attention='flash'))
  with pytest.raises(ValueError, match='model.dtype'):
    check(dict(dtype='int8'))
  with pytest.raises(ValueError, match='model.dropout'):
    check(dict(dropout=1.5))
  with pytest.raises(ValueError, match='drop_top_level'):
    check(dict(channels=(8,), enc_blocks=(1,), dec_blocks=(1,), drop_top_level=True))
  check(dict(drop_top_level=True), 6)  # One level left (one halving): any even resolution works.
  z, logsnr = inputs()
  with pytest.raises(ValueError, match='num_classes=0'):
    jax.eval_shape(make(**TINY).init, jax.random.PRNGKey(0), z, logsnr, jnp.array([0, 1]))
  with pytest.raises(ValueError, match='num_channels=1'):
    jax.eval_shape(make(num_channels=1, **TINY).init, jax.random.PRNGKey(0), z, logsnr)


def test_config_fields_are_the_module_fields():
  fields = {f.name for f in dataclasses.fields(models.UViT)} - {'parent', 'name'}
  assert fields == set(uvit.UVIT_DEFAULTS) | {'num_channels'}
  # A ConfigDict with lists (as from the command line) builds the same module as one with tuples.
  a = make(**dict(TINY, channels=[8, 16], enc_blocks=[1, 1], dec_blocks=[1, 1]))
  assert a == make(**TINY)


def test_register_model():
  def builder(model_config, *, image_res, num_channels):
    del image_res
    return models.UViT(**{k: v for k, v in model_config.items() if k != 'name'}, num_channels=num_channels)

  def validator(model_config, image_res):
    del model_config
    if image_res != 16:
      raise ValueError('only 16')

  models.register_model('test_custom', builder, validator)
  try:
    models.register_model('test_custom', builder)  # The same builder again: fine.
    with pytest.raises(ValueError, match='already registered'):
      models.register_model('test_custom', lambda *a, **k: None)
    cfg = ml_collections.ConfigDict(dict(TINY, name='test_custom'))
    assert isinstance(models.get_model(cfg, image_res=16, num_channels=3), models.UViT)
    with pytest.raises(ValueError, match='only 16'):
      models.get_model(cfg, image_res=32, num_channels=3)
  finally:
    models.MODELS.pop('test_custom')
    models.VALIDATORS.pop('test_custom')
