"""A new sampler, weighting or model is a one-file change: each is registered here, from this test file only,
and then accepted by config validation, the flags, the trainer and the sampler (ARCHITECTURE.md)."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags

from experiments import cli
from sid2 import config_lib
from sid2 import oracles
from sid2 import losses
from sid2 import models
from sid2 import sampling
from sid2 import samplers
from sid2 import schedules
from sid2 import trainer
from sid2 import weightings
from tests.train_utils import tiny_config

SCHED = schedules.get_schedule('cosine')


def _toy_ddim(z_t, x_hat, logsnr_t, logsnr_s, noise, *, eta, logvar_frac, addim_variance):
  """Deterministic DDIM written out again: z_s = alpha_s x_hat + sigma_s (z_t - alpha_t x_hat) / sigma_t."""
  del noise, eta, logvar_frac, addim_variance
  a_t, s_t = schedules.alpha_sigma(logsnr_t)
  a_s, s_s = schedules.alpha_sigma(logsnr_s)
  b = lambda v: v.reshape(v.shape + (1,) * (z_t.ndim - 1))
  return b(a_s) * x_hat + b(s_s) * (z_t - b(a_t) * x_hat) / b(s_t)


def _toy_flat(logsnr):
  """w(lambda) = 2: twice the ELBO weighting."""
  return 2.0 * jnp.ones_like(logsnr)


class ToyLinear(nn.Module):
  """out = a z + b: two parameters, any image shape."""

  @nn.compact
  def __call__(self, z, logsnr, labels=None, train=False):
    del logsnr, labels, train
    a = self.param('a', nn.initializers.zeros, ())
    b = self.param('b', nn.initializers.zeros, ())
    return a * z + b


def _build_toy_linear(model_config, *, image_res, num_channels):
  del model_config, image_res, num_channels
  return ToyLinear()


@pytest.fixture(scope='module')
def toys():
  """Registers the three toys (the one-file change) and removes them afterwards, so that no other test sees
  them in its lists of allowed names."""
  samplers.register_sampler('toy_ddim', stochastic=False)(_toy_ddim)
  weightings.register_weighting('toy_flat')(_toy_flat)
  models.register_model('toy_linear')(_build_toy_linear)
  yield
  samplers.SAMPLERS.entries.pop('toy_ddim')
  weightings.WEIGHTINGS.entries.pop('toy_flat')
  models.MODELS.pop('toy_linear')


def test_toy_sampler_matches_ddim_and_is_accepted_everywhere(toys):
  x_pred = oracles.gaussian_x_pred_fn(0.3, 0.5)  # the exact denoiser of N(0.3, 0.5) data
  kw = dict(num_steps=8)
  got = samplers.sample(x_pred, jax.random.PRNGKey(0), (4, 3), SCHED, sampler='toy_ddim', **kw)
  want = samplers.sample(x_pred, jax.random.PRNGKey(0), (4, 3), SCHED, sampler='ddim', **kw)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  settings = sampling.SamplerSettings(name='toy_ddim', num_steps=4, clip_x='none', logvar_type='0.3')
  assert settings.loop_kwargs()['sampler'] == 'toy_ddim'
  fv = flags.FlagValues()
  cli.define_sampler_flags(fv)
  assert 'toy_ddim' in fv['sampler'].help
  with pytest.raises(ValueError, match=r"sampler must be one of \('ddpm', 'ddim', 'addim', 'toy_ddim'\)"):
    sampling.SamplerSettings(name='nope', num_steps=4, clip_x='none', logvar_type='0.3')


def test_toy_weighting_is_a_loss_type(toys):
  rng = np.random.default_rng(0)
  x, eps, x_hat, eps_hat = (jnp.asarray(rng.normal(size=(3, 4, 4, 1)), jnp.float32) for _ in range(4))
  t = jnp.asarray([0.2, 0.5, 0.8])
  flat = losses.get_loss('toy_flat', SCHED)(x, eps, x_hat, eps_hat, t)
  elbo = losses.get_loss('elbo', SCHED)(x, eps, x_hat, eps_hat, t)
  np.testing.assert_allclose(np.asarray(flat), 2 * np.asarray(elbo), rtol=1e-6)
  assert losses.parse_loss('toy_flat').weighting is weightings.get_weighting('toy_flat')
  assert 'toy_flat' in losses.loss_type_names()


def test_train_and_sample_with_the_three_toys(toys, tmp_path):
  cfg = tiny_config(total_steps=2, eval_every=2, checkpoint_every=2, log_every=1, loss_type='toy_flat',
                    **{'sampler.name': 'toy_ddim', 'sampler.num_steps': 2, 'sampler.num_samples': 2,
                       'sampler.guidance': 0.0, 'optimizer.warmup_steps': 1})
  cfg.model = ml_collections.ConfigDict(dict(name='toy_linear'))
  config_lib.validate_config(cfg)
  state = trainer.train_and_evaluate(cfg, str(tmp_path))
  params = jax.device_get(state.params)
  assert set(params) == {'a', 'b'} and (params['a'] != 0 or params['b'] != 0)  # Adam moved them
  assert os.path.getsize(tmp_path / 'samples' / 'step_2.png') > 0
  with open(tmp_path / 'loss_vs_logsnr.jsonl') as f:
    assert np.isfinite(np.nansum(json.loads(f.readline())['loss']))


def test_plugins_are_named_by_the_config():
  from sid2 import plugins
  cfg = tiny_config()
  assert 'plugins' not in cfg and plugins.load_plugins(cfg) == plugins.LEGACY_PLUGINS  # old configs: spectral
  cfg.plugins = ('json',)  # any module that registers things on import
  config_lib.validate_config(cfg)
  assert plugins.load_plugins(cfg) == ('json',)
  cfg.plugins = ('no_such_plugin_module',)
  with pytest.raises(ValueError, match="config field plugins: could not import 'no_such_plugin_module'"):
    plugins.load_plugins(cfg)
  for bad in ('spectral', ('spectral', 3)):
    cfg = tiny_config()
    cfg.plugins = bad
    with pytest.raises(ValueError, match='config field plugins must be'):
      config_lib.validate_config(cfg)
