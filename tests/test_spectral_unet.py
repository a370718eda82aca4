"""The (wavelet-gated) UNet (spectral/unet.py), its registry entries and validator, and the spectral configs.

Big models are only traced (`jax.eval_shape`: no parameters allocated); small ones run with parameters
filled from numpy (XLA's CPU compile of threefry init is slow).
"""
import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import spectral  # noqa: F401  (registers 'wg_unet' and 'unet')
from sid2 import config_lib, models
from spectral import unet as unet_lib

TABLE_CONFIGS = ('spectral_ffhq', 'spectral_lsun_church', 'spectral_imagenet_cond', 'spectral_text_laion')
SMALL_CONFIGS = ('spectral_fmnist_student', 'spectral_fmnist_lite', 'spectral_fmnist_teacher',
                 'spectral_fmnist_distill')
# Table 4-7 structure: (latent res, channels, stages, widths, heads, mid width).
TABLES = {
    'spectral_ffhq': (64, 3, (64, 128, 192, 256), (0, 4, 6, 8), 256),
    'spectral_lsun_church': (32, 4, (64, 128, 128, 256, 256), (2, 4, 4, 8, 0), 256),
    'spectral_imagenet_cond': (64, 3, (64, 128, 192, 256), (0, 4, 6, 8), 256),
    'spectral_text_laion': (32, 4, (128, 256, 512, 512), (4, 8, 16, 0), 512),
}


def get_config(name, arg=None):
  module = importlib.import_module(f'configs.{name}')
  return module.get_config() if arg is None else module.get_config(arg)


def labels_for(fields, batch):
  if fields['conditioning'] == 'class':
    return jax.ShapeDtypeStruct((batch,), jnp.int32)
  if fields['conditioning'] == 'text':
    return jax.ShapeDtypeStruct((batch, 77, fields['context_dim']), jnp.float32)
  return None


def abstract_forward(config, batch=2):
  """(params, output, features) as ShapeDtypeStructs for a config's model."""
  res, ch = config.image_res, config.num_channels
  model = models.get_model(config.model, image_res=res, num_channels=ch)
  z = jax.ShapeDtypeStruct((batch, res, res, ch), jnp.float32)
  logsnr = jax.ShapeDtypeStruct((batch,), jnp.float32)
  labels = labels_for(model.fields(), batch)
  (out, feats), variables = jax.eval_shape(
      lambda z, l, y: model.init_with_output(jax.random.PRNGKey(0), z, l, y, return_features=True), z,
      logsnr, labels)
  return variables['params'], out, feats


def count(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize('name', TABLE_CONFIGS)
def test_table_configs_build_with_the_right_shapes(name):
  res, ch, widths, heads, mid = TABLES[name]
  n = len(widths)
  sizes = {}
  for variant in ('student', 'lite', 'teacher', 'distill'):
    config = get_config(name, variant)
    config_lib.validate_config(config)
    assert config.schedule == 'linear_beta' and config.loss_type == 'eps_mse'
    assert config.parametrization == 'eps' and config.optimizer.decay == 'linear'
    assert config.optimizer.warmup_steps == 1000 and config.dataset.name.startswith('latents:')
    params, out, feats = abstract_forward(config)
    assert out.shape == (2, res, res, ch) and out.dtype == jnp.float32
    c1 = config.model.channels[0]
    proj = dict(zip(config.model.proj_taps, config.model.proj_channels))
    assert feats['feat-up1'].shape == (2, res, res, proj.get('feat-up1', c1))
    assert feats['feat-up2'].shape == (2, res // 2, res // 2, config.model.channels[1])
    assert feats['feat-down4'].shape == (2, res >> n, res >> n, config.model.channels[-1])
    sizes[variant] = count(params)
    if variant == 'student':
      assert tuple(config.model.channels) == widths and tuple(config.model.heads) == heads
      assert unet_lib.resolve_unet_config(config.model)['mid_channels'] == mid
      assert config.model.name == 'wg_unet' and config.model.downsample == 'wavelet'
      # head width 32 wherever there is attention (SPEC §13).
      assert all(c // h == 32 for c, h in zip(widths, heads) if h)
      assert {k for k in params if k.endswith('_sample')} == (
          {f'down{k}_sample' for k in range(1, n + 1)} | {f'up{k}_sample' for k in range(1, n + 1)})
      assert 'gate' in params['down1_sample'] and 'proj' in params['up1_sample']
  assert sizes['teacher'] > 5 * sizes['student']
  assert sizes['distill'] == sizes['student'] + (c1 + 1) * proj['feat-up1']


def test_table_fixes_and_conditioning():
  c = get_config('spectral_imagenet_cond')
  assert c.model.conditioning == 'class' and c.model.num_classes == 1000 and c.model.context_dim == 512
  assert c.sampler.guidance == 2.0  # Table 3's LDM scale 3.0 in sid2's convention (w = s - 1)
  t = get_config('spectral_text_laion')
  assert t.model.conditioning == 'text' and t.model.context_dim == 768 and t.batch_size == 2048
  assert t.optimizer.learning_rate == 4.096e-3 and t.model.mid_channels == 512
  assert get_config('spectral_lsun_church').batch_size == 512
  assert get_config('spectral_ffhq', 'lsun_bedroom,lite').dataset.name == 'latents:lsun_bedroom_256_vq_f4'
  with pytest.raises(ValueError, match='unknown config option'):
    get_config('spectral_ffhq', 'imagenet')


@pytest.mark.parametrize('name', SMALL_CONFIGS)
def test_small_configs_validate(name):
  config = get_config(name)
  config_lib.validate_config(config)
  assert config.image_res == 32 and config.num_channels == 1 and config.batch_size == 64


def random_params(model, z, logsnr, labels, seed=0):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), z, logsnr, labels)['params']
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    x = rng.standard_normal(leaf.shape).astype(np.float32)
    name = path[-1].key
    if name in ('kernel', 'embedding'):
      return jnp.asarray(x / np.sqrt(np.prod(leaf.shape[:-1])))
    return jnp.asarray(1 + 0.1 * x if name == 'scale' else 0.1 * x)
  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope='module')
def small_forward():
  """Outputs of the three Fashion-MNIST models on the same inputs (one jitted forward each)."""
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 1))
  logsnr, labels = jnp.array([-4., 6.]), jnp.array([3, 10])
  out = {}
  for name in SMALL_CONFIGS[:3]:
    config = get_config(name)
    model = models.get_model(config.model, image_res=32, num_channels=1)
    params = random_params(model, z, logsnr, labels)

    def run(p, labels, model=model):
      return model.apply({'params': p}, z, logsnr, labels, return_features=True)

    out[name] = jax.jit(run)(params, labels), jax.jit(run)(params, None), jax.jit(run)(params,
                                                                                    jnp.array([10, 10]))
  return out


def test_small_configs_run_forward(small_forward):
  for name, ((out, feats), (out_null, _), (out_10, _)) in small_forward.items():
    assert out.shape == (2, 32, 32, 1) and bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.std(out)) > 1e-3, name
    assert feats['feat-up1'].shape[:3] == (2, 32, 32) and feats['feat-down4'].shape[:3] == (2, 4, 4)
    # labels=None is the null class (index num_classes = 10) for every example.
    np.testing.assert_allclose(out_null, out_10, atol=1e-5)
    np.testing.assert_allclose(out_null[1], out[1], atol=1e-5)  # example 1 has label 10 already
    assert float(jnp.abs(out_null[0] - out[0]).max()) > 1e-4  # the class changes example 0


def test_registry_and_plain_alias():
  fields = dict(channels=(8, 16), blocks=(1, 1), heads=(0, 2), mid_heads=2)
  wg = models.get_model(ml_collections.ConfigDict(dict(name='wg_unet', **fields)), image_res=16,
                        num_channels=3)
  plain = models.get_model(ml_collections.ConfigDict(dict(name='unet', **fields)), image_res=16,
                           num_channels=3)
  assert isinstance(wg, unet_lib.UNet) and wg.downsample == 'wavelet'
  assert isinstance(plain, unet_lib.UNet) and plain.downsample == 'plain'
  cfg = ml_collections.ConfigDict(dict(name='wg_unet', downsample='plain', **fields))
  assert models.get_model(cfg, image_res=16, num_channels=3).downsample == 'plain'


@pytest.mark.parametrize('bad,match', [
    (dict(bogus=1), 'bogus'),
    (dict(channels=(8, 16), blocks=(1,), heads=(0, 0)), 'model.blocks'),
    (dict(heads=(0, 3)), r'model.heads\[1\]'),
    (dict(mid_heads=5), 'model.mid_heads'),
    (dict(downsample='haar'), 'model.downsample'),
    (dict(gate='per_pixel'), 'model.gate'),
    (dict(conditioning='class'), 'model.num_classes'),
    (dict(num_classes=10), 'model.num_classes'),
    (dict(conditioning='text', heads=(0, 0), mid_heads=0), 'model.heads or model.mid_heads'),
    (dict(time_embedding='t'), 'model.time_embedding'),
    (dict(proj_taps=('output',), proj_channels=(4,)), 'model.proj_taps'),
    (dict(proj_taps=('feat-up1',)), 'model.proj_channels'),
    (dict(dropout=1.5), 'model.dropout'),
    (dict(dtype='int8'), 'model.dtype'),
    (dict(name='unet', downsample='wavelet'), 'model.downsample'),
])
def test_validator_names_the_field(bad, match):
  fields = dict(name='wg_unet', channels=(8, 16), blocks=(1, 1), heads=(0, 2), mid_heads=2)
  fields.update(bad)
  with pytest.raises(ValueError, match=match):
    models.validate_model_config(ml_collections.ConfigDict(fields), 16)


def test_resolution_must_be_divisible():
  cfg = ml_collections.ConfigDict(dict(name='wg_unet', channels=(8, 8, 8), blocks=(1, 1, 1), heads=(0, 0, 0),
                                       mid_heads=0))
  models.validate_model_config(cfg, 24)
  with pytest.raises(ValueError, match='image_res=20'):
    models.validate_model_config(cfg, 20)
  model = models.get_model(cfg, image_res=16, num_channels=1)
  with pytest.raises(ValueError, match='divisible'):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 1)), jnp.zeros((1,)))


def test_text_conditioning_takes_embeddings():
  cfg = ml_collections.ConfigDict(dict(name='wg_unet', channels=(8, 16), blocks=(1, 1), heads=(0, 2),
                                       mid_heads=2, conditioning='text', context_dim=12))
  model = models.get_model(cfg, image_res=8, num_channels=4)
  z, logsnr = jnp.zeros((2, 8, 8, 4)), jnp.zeros((2,))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), z, logsnr, None)['params']
  assert params['null_context'].shape == (1, 1, 12)
  out = jax.eval_shape(lambda p: model.apply({'params': p}, z, logsnr, jnp.zeros((2, 77, 12))), params)
  assert out.shape == (2, 8, 8, 4)
  with pytest.raises(ValueError, match='context_dim=12'):
    jax.eval_shape(lambda p: model.apply({'params': p}, z, logsnr, jnp.zeros((2, 77, 13))), params)


def test_cost_script_counts_macs_from_xla():
  from experiments import spectral_cost
  from spectral import cost
  rows = spectral_cost.main(['spectral_cost', '--configs', 'spectral_fmnist_student', '--skip_throughput'])
  w, p = rows[0]['wavelet'], rows[0]['plain']
  # WG-Down/WG-Up replace 3x3 convolutions by Haar sums and 1x1 convs: fewer MACs and parameters.
  assert 0.005 < w['gmacs'] < p['gmacs'] < 0.05 and w['params_m'] < p['params_m']
  assert 'steps_per_s_b1' not in w
  # A single 1x1 conv: XLA's flops / 2 is exactly H W C_in C_out multiply-adds.
  f = jax.jit(lambda x, k: jnp.einsum('bhwc,cd->bhwd', x, k)).lower(
      jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32), jax.ShapeDtypeStruct((3, 5), jnp.float32)).compile()
  assert cost.flops_of(f) / 2 == 8 * 8 * 3 * 5


def test_text_keep_mask_is_the_null_context():
  """keep=False rows attend to the null token repeated S times, which equals the 1-token null context."""
  cfg = ml_collections.ConfigDict(dict(name='wg_unet', channels=(8, 16), blocks=(1, 1), heads=(0, 2),
                                       mid_heads=2, conditioning='text', context_dim=12))
  model = models.get_model(cfg, image_res=8, num_channels=4)
  z = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 4))
  logsnr = jnp.array([-2., 3.])
  text = jax.random.normal(jax.random.PRNGKey(2), (2, 7, 12))
  params = random_params(model, z, logsnr, None, seed=3)
  run = jax.jit(lambda labels: model.apply({'params': params}, z, logsnr, labels))
  out_text, out_null = run(text), run(None)
  out_mixed = run(dict(text=text, keep=jnp.array([True, False])))
  np.testing.assert_allclose(out_mixed[0], out_text[0], atol=1e-5)
  np.testing.assert_allclose(out_mixed[1], out_null[1], atol=1e-5)
  assert float(jnp.abs(out_text[1] - out_null[1]).max()) > 1e-4  # the text does change the output
  with pytest.raises(ValueError, match="'keep'"):
    run(dict(txt=text))
