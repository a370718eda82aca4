"""Controls of the Spectral Diffusion study (issue 12): the identity control (student == teacher gives zero
distillation loss and exactly the teacher's diffusion loss), the positive-control config, and the held-out
ε-MSE split into low / high radial frequencies (spectral/metrics.py)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import spectral  # noqa: F401
from sid2 import losses, models, schedules, train_step as ts
from spectral import distill, metrics

RES = 16
FIELDS = dict(name='wg_unet', channels=(8, 8), blocks=(1, 0), heads=(0, 0), mid_heads=0)


def random_params(model, seed=0):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, RES, RES, 1)), jnp.zeros((1,)),
                          None)['params']
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    x = rng.standard_normal(leaf.shape).astype(np.float32)
    if path[-1].key == 'kernel':
      return jnp.asarray(x / np.sqrt(np.prod(leaf.shape[:-1])))
    return jnp.asarray(1 + 0.1 * x if path[-1].key == 'scale' else 0.1 * x)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_identity_control_student_equals_teacher():
  """Student = teacher (same weights, Π = identity at every tap): L_spatial = L_freq = 0 and the total loss is
  exactly the teacher's own diffusion loss on the same batch, noise and t."""
  taps = ('feat-up1', 'feat-up2', 'feat-down4')
  build = lambda f: models.get_model(ml_collections.ConfigDict(f), image_res=RES, num_channels=1)
  teacher, student = build(FIELDS), build(dict(FIELDS, proj_taps=taps, proj_channels=(8, 8, 8)))
  t_params = random_params(teacher)
  s_params = dict(t_params, **{'proj_' + t.replace('-', '_'): dict(kernel=jnp.eye(8), bias=jnp.zeros(8))
                               for t in taps})
  fields = distill.resolve_distill_config(dict(name='spectral', taps=('output',) + taps, lambda_spatial=1.0,
                                               lambda_freq=1.0))
  schedule = schedules.get_schedule('linear_beta')
  loss = losses.get_loss('eps_mse', schedule)
  cfg = ts.StepConfig()
  with_aux = ts.make_loss_fn(distill.make_student_apply_fn(student), schedule, loss, 'eps', cfg,
                             distill.make_aux_loss_fn(teacher, fields))
  plain_apply = lambda p, z, lam, lab, train, rng: teacher.apply({'params': p}, z, lam, lab, train=train)
  plain = ts.make_loss_fn(plain_apply, schedule, loss, 'eps', cfg)
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (4, RES, RES, 1)), jnp.float32)
  batch = dict(image=x, label=jnp.zeros((4,), jnp.int32))
  rng = jax.random.PRNGKey(5)
  total, aux = jax.jit(with_aux)(s_params, batch, rng, 0, t_params)
  teacher_loss, _ = jax.jit(plain)(t_params, batch, rng, 0)
  for k, v in aux['extra'].items():
    np.testing.assert_allclose(float(v), 0.0, atol=1e-9, err_msg=k)
  np.testing.assert_allclose(float(total), float(teacher_loss), rtol=1e-6)
  np.testing.assert_allclose(float(aux['diffusion_loss']), float(teacher_loss), rtol=1e-6)
  assert float(teacher_loss) > 0.01


def test_positive_control_config():
  from configs import spectral_fmnist_distill as cfg_file
  c = cfg_file.get_config('positive')
  f = distill.resolve_distill_config(c.distill)
  assert f['taps'] == ('output',) and f['lambda_spatial'] == 1.0 and f['lambda_freq'] == 0.0
  assert cfg_file.get_config('raw').distill.weight_norm == 'none'
  assert cfg_file.get_config().distill.weight_norm == 'mean'
  with pytest.raises(ValueError, match='positve'):
    cfg_file.get_config('positve')


def test_frequency_split_is_parseval_and_localised():
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (6, RES, RES, 2)), jnp.float32)
  const = 0.3

  def eps_fn(params, z, logsnr, labels):  # the true ε plus a constant (DC-only) error
    alpha, sigma = schedules.alpha_sigma(logsnr)
    return (z - alpha[:, None, None, None] * x) / sigma[:, None, None, None] + params

  out = metrics.eps_mse_by_frequency(eps_fn, jnp.float32(const), x, logsnrs=(-2.0, 3.0), batch_size=6)
  for v in out.values():
    np.testing.assert_allclose(v['eps_mse'], const ** 2, rtol=1e-4)
    np.testing.assert_allclose(v['low'], const ** 2, rtol=1e-4)
    np.testing.assert_allclose(v['high'], 0.0, atol=1e-6)
  # A checkerboard error (r = 0.707) is all high frequency; low + high = ε-MSE for any error.
  checker = jnp.asarray((-1.0) ** np.add.outer(np.arange(RES), np.arange(RES)), jnp.float32)[None, :, :, None]
  err = 0.5 * checker + jnp.asarray(np.random.default_rng(1).standard_normal((3, RES, RES, 1)), jnp.float32)
  low, high = metrics.split_error(0.5 * checker * jnp.ones((3, RES, RES, 1)))
  np.testing.assert_allclose(high, 0.25, rtol=1e-5)
  np.testing.assert_allclose(low, 0.0, atol=1e-7)
  low, high = metrics.split_error(err)
  np.testing.assert_allclose(low + high, jnp.mean(err ** 2, axis=(1, 2, 3)), rtol=1e-5)
  # The noise is a pure function of the seed: two calls agree exactly.
  assert metrics.eps_mse_by_frequency(eps_fn, jnp.float32(0.0), x, logsnrs=(0.0,)) == \
      metrics.eps_mse_by_frequency(eps_fn, jnp.float32(0.0), x, logsnrs=(0.0,))
