"""Spectrum-aware distillation (spectral/distill.py, SPEC §13): closed forms of the two losses, the frequency
weights, and the trainer hook end to end (teacher written by sid2's trainer, restored, one distillation step).

Parameters are filled from numpy over `jax.eval_shape` shapes (XLA's CPU compile of threefry init is slow).
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import spectral  # noqa: F401  (registers the models and the 'spectral' aux loss)
from sid2 import aux_losses, losses, models, schedules, trainer, train_step as ts
from sid2.models import build as model_build
from spectral import distill, unet as unet_lib

RES = 16
# One-stage teacher and student for the trainer round trip (small programs compile fast on CPU).
TEACHER = dict(name='unet', channels=(8,), blocks=(1,), heads=(0,), mid_heads=0)
STUDENT = dict(name='wg_unet', channels=(4,), blocks=(1,), heads=(0,), mid_heads=0,
               proj_taps=('feat-up1',), proj_channels=(8,))


def build(fields, res=RES, channels=1):
  return models.get_model(ml_collections.ConfigDict(fields), image_res=res, num_channels=channels)


def random_params(model, res=RES, channels=1, seed=0):
  """Params of the model's shapes with random values (kernels ~ N(0, 1/fan_in), biases small)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, res, res, channels)),
                          jnp.zeros((1,)), None)['params']
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    x = rng.standard_normal(leaf.shape).astype(np.float32)
    name = path[-1].key
    if name == 'kernel':
      return jnp.asarray(x / np.sqrt(np.prod(leaf.shape[:-1])))
    return jnp.asarray(1 + 0.1 * x if name == 'scale' else 0.1 * x)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def smooth_image(batch=2, res=RES, channels=1):
  """A natural-image-like x0: a smooth blob plus a gentle ramp (energy concentrated at low frequency)."""
  y, x = np.meshgrid(np.arange(res) - res / 2, np.arange(res) - res / 2, indexing='ij')
  img = 1.6 * np.exp(-(x ** 2 + y ** 2) / (2 * (res / 6) ** 2)) - 0.8 + 0.2 * x / res
  return jnp.asarray(np.broadcast_to(img[None, :, :, None], (batch, res, res, channels)), jnp.float32)


def test_parseval_alpha_zero_freq_equals_spatial():
  rng = np.random.default_rng(0)
  t, s = (jnp.asarray(rng.standard_normal((3, 8, 6, 5)), jnp.float32) for _ in range(2))
  x0 = jnp.asarray(rng.standard_normal((3, 16, 16, 2)), jnp.float32)
  w = distill.frequency_weights(x0, 8, 6, alpha=0.0)
  np.testing.assert_allclose(w, 1.0)
  np.testing.assert_allclose(distill.frequency_loss(t, s, w), distill.spatial_loss(t, s), rtol=1e-5)
  per_tap = distill.distill_losses({'a': t, 'b': 2 * t}, {'a': s, 'b': s}, x0, ('a', 'b'), alpha=0.0)
  for sp, fr in per_tap.values():
    np.testing.assert_allclose(fr, sp, rtol=1e-5)
  # Closed form of L_spatial: the per-example mean of the squared difference.
  np.testing.assert_allclose(per_tap['a'][0], np.mean((np.asarray(t) - np.asarray(s)) ** 2, axis=(1, 2, 3)),
                             rtol=1e-6)


def test_feature_norm_teacher_makes_each_tap_a_relative_error():
  """feature_norm='teacher': features scaled by c give the same losses (relative error), 'none' gives c^2 x;
  the normalised L_spatial is |F_T - F_S|^2 / |F_T|^2 in closed form."""
  rng = np.random.default_rng(1)
  t, s = (jnp.asarray(rng.standard_normal((3, 8, 8, 4)), jnp.float32) for _ in range(2))
  x0 = jnp.asarray(rng.standard_normal((3, 16, 16, 1)), jnp.float32)
  loss = lambda c, fn: distill.distill_losses({'a': c * t}, {'a': c * s}, x0, ('a',), norm='mean',
                                              feature_norm=fn)['a']
  for got, want in zip(loss(30.0, 'teacher'), loss(1.0, 'teacher')):
    np.testing.assert_allclose(got, want, rtol=1e-4)
  for got, want in zip(loss(30.0, 'none'), loss(1.0, 'none')):
    np.testing.assert_allclose(got, 900.0 * want, rtol=1e-4)
  tn, sn = np.asarray(t), np.asarray(s)
  np.testing.assert_allclose(loss(1.0, 'teacher')[0], np.mean((tn - sn) ** 2, axis=(1, 2, 3)) /
                             np.mean(tn ** 2, axis=(1, 2, 3)), rtol=1e-5)
  with pytest.raises(ValueError, match='distill.feature_norm'):
    distill.resolve_distill_config(dict(name='spectral', feature_norm='layer'))
  assert distill.resolve_distill_config(dict(name='spectral'))['feature_norm'] == 'none'


def test_frequency_weights_up_weight_high_frequencies():
  x0 = smooth_image()
  w = np.asarray(distill.frequency_weights(x0, RES, RES))[0, :, :, 0]  # alpha=-1, delta=1e-3
  mag = np.abs(np.fft.fft2(np.asarray(x0)[0, :, :, 0], norm='ortho'))
  np.testing.assert_allclose(1.0 / w - 1e-3, mag, atol=1e-5)
  freq = np.abs(np.fft.fftfreq(RES))
  radius = np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
  assert w[radius >= 0.25].mean() > 100 * w[radius < 0.1].mean()
  assert w[0, 0] == w.min()  # DC carries the most energy of a smooth image.
  # Resizing: the weights of a half-size tap come from the 2x2-averaged image and have its shape.
  assert distill.frequency_weights(x0, RES // 2, RES // 2).shape == (2, RES // 2, RES // 2, 1)
  # Stop-gradient: no gradient flows back into x0.
  g = jax.grad(lambda x: jnp.sum(distill.frequency_weights(x, RES, RES)))(x0)
  np.testing.assert_array_equal(g, 0.0)


def test_loss_is_zero_when_student_equals_teacher():
  fields = dict(name='wg_unet', channels=(8, 8), blocks=(1, 0), heads=(0, 0), mid_heads=0,
                proj_taps=('feat-up1', 'feat-up2', 'feat-down4'), proj_channels=(8, 8, 8))
  teacher, student = build(dict(fields, proj_taps=(), proj_channels=())), build(fields)
  params = random_params(teacher)
  s_params = dict(params)
  for tap in fields['proj_taps']:  # Π_i = identity.
    s_params['proj_' + tap.replace('-', '_')] = dict(kernel=jnp.eye(8), bias=jnp.zeros(8))
  z = jax.random.normal(jax.random.PRNGKey(1), (2, RES, RES, 1))
  logsnr = jnp.array([-2., 3.])

  @jax.jit
  def losses_and_feature(t_params, s_params):
    _, tf = teacher.apply({'params': t_params}, z, logsnr, None, return_features=True)
    _, sf = student.apply({'params': s_params}, z, logsnr, None, return_features=True)
    return distill.distill_losses(tf, sf, smooth_image(), unet_lib.TAPS), tf['feat-up1']

  per_tap, feature = losses_and_feature(params, s_params)
  assert float(jnp.abs(feature).mean()) > 1e-3  # non-trivial features
  for sp, fr in per_tap.values():
    np.testing.assert_allclose(sp, 0.0, atol=1e-10)
    np.testing.assert_allclose(fr, 0.0, atol=1e-10)
  # A perturbed projection gives positive losses at its tap only.
  s_params['proj_feat_up1'] = dict(kernel=1.1 * jnp.eye(8), bias=jnp.zeros(8))
  per_tap, _ = losses_and_feature(params, s_params)
  sp, fr = per_tap['feat-up1']
  assert np.all(np.asarray(sp) > 0) and np.all(np.asarray(fr) > 0)
  np.testing.assert_allclose(per_tap['feat-up2'][0], 0.0, atol=1e-10)


def test_distill_config_errors():
  with pytest.raises(ValueError, match='distill.taps'):
    distill.resolve_distill_config(dict(name='spectral', taps=('feat-up3',)))
  with pytest.raises(ValueError, match='distill.bogus'):
    distill.resolve_distill_config(dict(name='spectral', bogus=1))
  with pytest.raises(ValueError, match='distill.lambda_freq'):
    distill.resolve_distill_config(dict(name='spectral', lambda_freq=-1.0))
  with pytest.raises(ValueError, match='distill.delta'):
    distill.resolve_distill_config(dict(name='spectral', delta=0.0))
  f = distill.resolve_distill_config(dict(name='spectral'))
  assert f['taps'] == ('output', 'feat-up1') and f['lambda_spatial'] == f['lambda_freq'] == 0.1
  assert f['alpha'] == -1.0 and f['delta'] == 1e-3


def tiny_config(model, **top):
  from configs import spectral_fmnist_student as base
  c = base.fmnist_config('tiny', ml_collections.ConfigDict(model))
  c.image_res = RES
  c.batch_size = 4
  c.total_steps = 2
  c.log_every = 1
  c.eval_every = 2
  c.checkpoint_every = 2
  c.dataset.num_classes = 0
  c.cond_drop_prob = 0.0
  c.optimizer.warmup_steps = 1
  c.sampler.num_steps = 2
  c.sampler.num_samples = 2
  c.sampler.guidance = 0.0
  for k, v in top.items():
    c[k] = v
  return c


@pytest.fixture(scope='module')
def teacher_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('teacher'))
  state = trainer.train_and_evaluate(tiny_config(TEACHER), workdir)
  return workdir, state


def test_builder_restores_teacher_and_one_distillation_step(teacher_run):
  workdir, teacher_state = teacher_run
  config = tiny_config(STUDENT)
  config.distill = ml_collections.ConfigDict(distill.DISTILL_DEFAULTS)
  config.teacher_workdir = workdir
  model = model_build.build_model(config, 1)
  apply_fn, aux_loss_fn, frozen = aux_losses.build_aux_loss(config, model, 1)
  # The frozen pytree is the teacher's EMA parameters of its latest checkpoint (step 2 = the final state).
  flat = lambda t: jax.tree_util.tree_leaves_with_path(jax.device_get(t))
  assert [k for k, _ in flat(frozen)] == [k for k, _ in flat(teacher_state.ema_params)]
  for (_, a), (_, b) in zip(flat(frozen), flat(teacher_state.ema_params)):
    np.testing.assert_array_equal(a, b)

  schedule = schedules.get_schedule(config.schedule, RES)
  optimizer, _ = ts.make_optimizer(config.optimizer, config.total_steps)
  step = jax.jit(ts.make_train_step(apply_fn, schedule, losses.get_loss(config.loss_type, schedule),
                                    config.parametrization, optimizer, ts.StepConfig(), aux_loss_fn))
  params = random_params(model)
  state = ts.create_train_state(params, optimizer, jax.random.PRNGKey(3))
  batch = dict(image=smooth_image(4), label=jnp.zeros((4,), jnp.int32))
  new_state, metrics = step(state, batch, frozen)
  for k in ('loss', 'diffusion_loss', 'aux/spatial', 'aux/freq', 'aux/spatial/output', 'aux/freq/feat-up1'):
    assert np.isfinite(float(metrics[k])), k
  assert float(metrics['aux/freq']) > 0 and float(metrics['update_ok']) == 1.0
  # loss = diffusion + 0.1 (spatial + freq), averaged over the batch.
  np.testing.assert_allclose(float(metrics['loss']), float(metrics['diffusion_loss']) + 0.1 * (
      float(metrics['aux/spatial']) + float(metrics['aux/freq'])), rtol=1e-5)
  # A second step (the warmup gives the first a learning rate of 0) moves every student parameter, the
  # projection Π included: all of them get a gradient.
  newer_state, _ = step(new_state, batch, frozen)
  assert int(newer_state.step) == 2
  for a, b in zip(jax.tree.leaves(newer_state.params), jax.tree.leaves(params)):
    assert not np.array_equal(a, b)

  # No gradient reaches the teacher: d(aux loss)/d(frozen) is exactly zero, d/d(student features) is not.
  z = jax.random.normal(jax.random.PRNGKey(1), batch['image'].shape)
  logsnr = jnp.array([-3., 0., 2., 5.])
  inputs = dict(x=batch['image'], z=z, logsnr=logsnr, labels=None)

  @jax.jit
  def grads(frozen, params):
    features = apply_fn(params, z, logsnr, None, False, jax.random.PRNGKey(0))[1]
    return jax.grad(lambda f, feats: jnp.sum(aux_loss_fn(f, feats, inputs)[0]), argnums=(0, 1))(frozen,
                                                                                                 features)

  g_teacher, g_features = grads(frozen, params)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(g_teacher))
  assert float(jnp.max(jnp.abs(g_features['feat-up1']))) > 0
  assert float(jnp.max(jnp.abs(g_features['output']))) > 0


def test_builder_rejects_incompatible_teacher(teacher_run):
  workdir, _ = teacher_run
  base = dict(distill=ml_collections.ConfigDict(distill.DISTILL_DEFAULTS), teacher_workdir=workdir)
  model = lambda cfg: model_build.build_model(cfg, 1)
  cfg = tiny_config(STUDENT, parametrization='v', **base)
  with pytest.raises(ValueError, match='parametrization'):
    aux_losses.build_aux_loss(cfg, model(cfg), 1)
  cfg = tiny_config(STUDENT, schedule='cosine', **base)
  with pytest.raises(ValueError, match='schedule'):
    aux_losses.build_aux_loss(cfg, model(cfg), 1)
  cfg = tiny_config(dict(STUDENT, proj_taps=(), proj_channels=()), **base)
  with pytest.raises(ValueError, match='proj_taps'):
    aux_losses.build_aux_loss(cfg, model(cfg), 1)
  cfg = tiny_config(dict(STUDENT, proj_channels=(6,)), **base)
  with pytest.raises(ValueError, match='proj_channels'):
    aux_losses.build_aux_loss(cfg, model(cfg), 1)
  cfg = tiny_config(STUDENT, distill=base['distill'], teacher_workdir='')
  with pytest.raises(ValueError, match='teacher_workdir'):
    aux_losses.build_aux_loss(cfg, model(cfg), 1)
  cfg = tiny_config(STUDENT, distill=base['distill'], teacher_workdir=workdir + '/nowhere')
  with pytest.raises(ValueError, match='teacher_workdir'):
    aux_losses.build_aux_loss(cfg, model(cfg), 1)


def test_teacher_is_pinned_by_step_and_sha256(teacher_run):
  from sid2 import export
  workdir, teacher_state = teacher_run
  digest = export.params_sha256(jax.device_get(teacher_state.ema_params))
  model = lambda cfg: model_build.build_model(cfg, 1)

  def cfg(**fields):
    return tiny_config(STUDENT, distill=ml_collections.ConfigDict(dict(distill.DISTILL_DEFAULTS, **fields)),
                       teacher_workdir=workdir)
  c = cfg(teacher_step=2, teacher_sha256=digest)
  _, _, frozen = aux_losses.build_aux_loss(c, model(c), 1)
  assert export.params_sha256(jax.device_get(frozen)) == digest
  c = cfg(teacher_step=2, teacher_sha256='0' * 64)
  with pytest.raises(ValueError, match='distill.teacher_sha256'):
    aux_losses.build_aux_loss(c, model(c), 1)
  c = cfg(teacher_step=7)
  with pytest.raises(ValueError, match=r'distill.teacher_step=7.*\[2\]'):
    aux_losses.build_aux_loss(c, model(c), 1)
  with pytest.raises(ValueError, match='distill.teacher_sha256'):
    distill.resolve_distill_config(dict(name='spectral', teacher_sha256='abc'))
