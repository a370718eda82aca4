"""Spectrum-aware distillation of Spectral Diffusion (arXiv 2211.17106; SPEC §13; supplement §3.2-3.3).

L = L_diffusion + λ_s L_spatial + λ_f L_freq over taps P ⊆ {output, feat-up1, feat-up2, feat-down4}:
  L_spatial = Σ_i mean |F_T^(i) - Π_i F_S^(i)|²   (optionally / mean |F_T^(i)|², `feature_norm='teacher'`),
  L_freq    = Σ_i mean_{u,v,c} w_i(u,v) |𝓕F_T^(i) - 𝓕Π_iF_S^(i)|²,   𝓕 = 2-D DFT over space, norm='ortho',
  w_i       = (mean_c |𝓕 resize(x₀ -> H_i x W_i)| + δ)^α, α = -1, δ = 1e-3, stop-gradient,
              then (SPEC §13 amendment, `weight_norm='mean'`) divided by its mean over (u, v) per example, so
              λ_f means the same at every tap, resolution and in pixel or latent space ('none': unnormalised).
The teacher is frozen (its EMA parameters come in as the train step's `frozen` pytree and its forward runs
under stop_gradient inside the same jitted step). The student's Π_i are its own parameters (`proj_taps`).

`build_spectral_distillation` is registered with sid2's aux-loss registry (`sid2.aux_losses`) as
`config.distill.name = 'spectral'`.
"""
from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections

from sid2 import aux_losses
from sid2 import checkpoint as ckpt_lib
from sid2 import models
from sid2 import train_step as ts
from sid2.models import build as model_build
from spectral import unet as unet_lib

DISTILL_DEFAULTS = dict(
    name='spectral',
    taps=('output', 'feat-up1'),  # supplement §3.2: the best pair (10.5 FID on FFHQ).
    lambda_spatial=0.1,           # supplement §3.3, Table 1.
    lambda_freq=0.1,
    alpha=-1.0,                   # SPEC §13.
    delta=1e-3,                   # SPEC §13 (ours).
    weight_norm='mean',           # SPEC §13 amendment: w_i / mean_{u,v} w_i per example ('none': the raw w_i).
    teacher_step=0,               # the teacher checkpoint to restore (0: the newest that restores).
    teacher_sha256='',            # sha256 of the teacher's EMA params (sid2.export.params_sha256); '' = unchecked.
)
WEIGHT_NORMS = ('mean', 'none')
# Optional fields: absent from configs that do not set them (their runs' configs, and fingerprints, unchanged).
OPTIONAL_DEFAULTS = dict(
    # 'teacher' (ours, issue 12): each tap's L_spatial and L_freq divided by the teacher feature's mean square
    # per example (stop-gradient), i.e. a relative error, so λ_s, λ_f weigh an intermediate feature (whose
    # scale is whatever the teacher learnt, e.g. ~30x the output's) like the output tap; 'none': raw.
    feature_norm='none',
)
FEATURE_NORMS = ('none', 'teacher')


# ---------------------------------------------------------------------------------------------------------
# The losses: small pure functions of [B, H, W, C] arrays.

def resize_to(x, height, width):
  """x [B,h,w,C] -> [B,height,width,C]: identity at the same size, else antialiased linear resizing."""
  if x.shape[1:3] == (height, width):
    return x
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), method='linear', antialias=True)


def dft2(x):
  """2-D DFT over the spatial axes of [B,H,W,C], norm='ortho' (SPEC §13): Σ|𝓕x|² = Σ|x|² per channel."""
  return jnp.fft.fft2(x.astype(jnp.float32), axes=(1, 2), norm='ortho')


def frequency_weights(x0, height, width, alpha=-1.0, delta=1e-3, norm='none'):
  """w(u,v) = (mean_c |𝓕 resize(x₀)|(u,v) + δ)^α, [B,height,width,1], stop-gradient (SPEC §13); with
  norm='mean' divided by its mean over (u, v) per example (SPEC §13 amendment: mean 1 at every tap)."""
  if norm not in WEIGHT_NORMS:
    raise ValueError(f'frequency weight norm must be one of {WEIGHT_NORMS}; got {norm!r}')
  mag = jnp.mean(jnp.abs(dft2(resize_to(x0, height, width))), axis=-1, keepdims=True)
  w = (mag + delta) ** alpha
  if norm == 'mean':
    w = w / jnp.mean(w, axis=(1, 2), keepdims=True)
  return jax.lax.stop_gradient(w)


def spatial_loss(teacher, student):
  """mean over space and channels of |F_T - Π F_S|², per example [B] (SPEC §13 L_spatial, one tap)."""
  return jnp.mean(jnp.square(teacher - student), axis=(1, 2, 3))


def frequency_loss(teacher, student, weights):
  """mean_{u,v,c} w(u,v) |𝓕F_T - 𝓕ΠF_S|², per example [B] (SPEC §13 L_freq, one tap)."""
  diff = dft2(teacher) - dft2(student)
  return jnp.mean(weights * (jnp.square(diff.real) + jnp.square(diff.imag)), axis=(1, 2, 3))


def distill_losses(teacher_features, student_features, x0, taps, alpha=-1.0, delta=1e-3, norm='none',
                   feature_norm='none'):
  """{tap: (L_spatial [B], L_freq [B])} for each tap; the teacher's features are stop-gradient (SPEC §13).
  feature_norm='teacher': both divided by mean |F_T|² per example (a relative error; OPTIONAL_DEFAULTS)."""
  if feature_norm not in FEATURE_NORMS:
    raise ValueError(f'feature_norm must be one of {FEATURE_NORMS}; got {feature_norm!r}')
  out = {}
  for tap in taps:
    t = jax.lax.stop_gradient(teacher_features[tap].astype(jnp.float32))
    s = student_features[tap].astype(jnp.float32)
    if t.shape != s.shape:
      raise ValueError(f'distillation tap {tap!r}: teacher feature {t.shape} and projected student feature '
                       f'{s.shape} differ')
    w = frequency_weights(x0, t.shape[1], t.shape[2], alpha, delta, norm)
    ls, lf = spatial_loss(t, s), frequency_loss(t, s, w)
    if feature_norm == 'teacher':
      scale = jnp.mean(jnp.square(t), axis=(1, 2, 3)) + 1e-8
      ls, lf = ls / scale, lf / scale
    out[tap] = (ls, lf)
  return out


def combine(losses, lambda_spatial, lambda_freq):
  """(per-example λ_s Σ_i L_spatial + λ_f Σ_i L_freq [B], {name: scalar metric}) (SPEC §13)."""
  spatial = sum(s for s, _ in losses.values())
  freq = sum(f for _, f in losses.values())
  metrics = dict(spatial=jnp.mean(spatial), freq=jnp.mean(freq))
  for tap, (s, f) in losses.items():
    metrics[f'spatial/{tap}'] = jnp.mean(s)
    metrics[f'freq/{tap}'] = jnp.mean(f)
  return lambda_spatial * spatial + lambda_freq * freq, metrics


# ---------------------------------------------------------------------------------------------------------
# Config.

def resolve_distill_config(distill):
  """The `distill` sub-config's fields with defaults; ValueError naming a bad field."""
  cfg = distill.to_dict() if hasattr(distill, 'to_dict') else dict(distill)
  allowed = dict(DISTILL_DEFAULTS, **OPTIONAL_DEFAULTS)
  unknown = sorted(set(cfg) - set(allowed))
  if unknown:
    raise ValueError(f'unknown config field(s) {["distill." + k for k in unknown]}; allowed: '
                     f'{sorted(allowed)}')
  f = dict(allowed, **cfg)
  if f['name'] != 'spectral':
    raise ValueError(f"config field distill.name must be 'spectral' here, got {f['name']!r}")
  taps = f['taps']
  if isinstance(taps, str) or not hasattr(taps, '__len__') or not taps:
    raise ValueError(f'config field distill.taps must be a non-empty list of {unet_lib.TAPS}, got {taps!r}')
  f['taps'] = tuple(taps)
  for tap in f['taps']:
    if tap not in unet_lib.TAPS:
      raise ValueError(f'config field distill.taps entries must be in {unet_lib.TAPS}, got {tap!r}')
  if len(set(f['taps'])) != len(f['taps']):
    raise ValueError(f'config field distill.taps has repeated entries: {f["taps"]}')
  for k in ('lambda_spatial', 'lambda_freq', 'alpha', 'delta'):
    if isinstance(f[k], bool) or not isinstance(f[k], (int, float)):
      raise ValueError(f'config field distill.{k} must be a number, got {f[k]!r}')
    f[k] = float(f[k])
  for k in ('lambda_spatial', 'lambda_freq'):
    if f[k] < 0:
      raise ValueError(f'config field distill.{k} must be >= 0, got {f[k]}')
  if f['delta'] <= 0:
    raise ValueError(f'config field distill.delta must be > 0, got {f["delta"]}')
  if f['weight_norm'] not in WEIGHT_NORMS:
    raise ValueError(f'config field distill.weight_norm must be one of {WEIGHT_NORMS}, got {f["weight_norm"]!r}')
  if f['feature_norm'] not in FEATURE_NORMS:
    raise ValueError(f'config field distill.feature_norm must be one of {FEATURE_NORMS}, got '
                     f'{f["feature_norm"]!r}')
  if isinstance(f['teacher_step'], bool) or not isinstance(f['teacher_step'], int) or f['teacher_step'] < 0:
    raise ValueError(f'config field distill.teacher_step must be an int >= 0 (0: newest), got '
                     f'{f["teacher_step"]!r}')
  sha = f['teacher_sha256']
  if not isinstance(sha, str) or (sha and (len(sha) != 64 or any(ch not in '0123456789abcdef' for ch in sha))):
    raise ValueError(f"config field distill.teacher_sha256 must be '' or 64 lowercase hex digits, got {sha!r}")
  return f


# ---------------------------------------------------------------------------------------------------------
# The teacher.

def read_workdir_config(workdir):
  """The resolved config a training run wrote to `<workdir>/config.json`, as a ConfigDict."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ValueError(f'config field teacher_workdir={workdir!r}: no config.json there (not a training '
                     f'workdir?)')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_ema_params(workdir, config, model, num_channels, step=0):
  """(step, EMA params) of checkpoint `step` (0: the newest good one) in `<workdir>/checkpoints`.

  The whole TrainState is restored onto an abstract target built from `config` (jax.eval_shape, nothing
  allocated but what is read), replicated over all devices; only its EMA parameters are kept.
  """
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise ValueError(f'config field teacher_workdir={workdir!r}: no checkpoints/ folder there')
  optimizer, _ = ts.make_optimizer(config.optimizer, config.total_steps)

  def fresh_state(rng):
    params = model_build.init_params(model, config, num_channels, rng)
    return ts.create_train_state(params, optimizer, rng)

  rep = ts.replicated(ts.make_mesh())
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
                          jax.eval_shape(fresh_state, jax.random.PRNGKey(0)))
  ckpt = ckpt_lib.Checkpointer(directory)
  try:
    if step:
      steps = list(ckpt.all_steps())
      if step not in steps:
        raise ValueError(f'config field distill.teacher_step={step} is not a checkpoint of teacher_workdir='
                         f'{workdir!r}; available steps: {sorted(steps)}')
      state, data = ckpt.restore(step, abstract)
      restored = (step, state, data)
    else:
      restored = ckpt.restore_latest(abstract)
  finally:
    ckpt.close()
  if restored is None:
    raise ValueError(f'config field teacher_workdir={workdir!r}: no checkpoint in {directory} could be '
                     f'restored')
  step, state, _ = restored
  return step, state.ema_params


def check_compatible(config, teacher_config):
  """ValueError unless teacher and student share what the distillation compares (SPEC §13)."""
  for field in ('parametrization', 'schedule', 'image_res'):
    if teacher_config.get(field) != config.get(field):
      raise ValueError(f'config field {field}={config.get(field)!r} differs from the teacher\'s '
                       f'{teacher_config.get(field)!r}: teacher and student must use the same '
                       f'parametrisation, schedule and resolution')
  t_channels = teacher_config.get('num_channels', None)
  if t_channels is not None and config.get('num_channels', t_channels) != t_channels:
    raise ValueError(f'config field num_channels={config.get("num_channels")} differs from the teacher\'s '
                     f'{t_channels}')
  if teacher_config.model.get('name') not in unet_lib.MODEL_NAMES:
    raise ValueError(f'the teacher in teacher_workdir is model.name={teacher_config.model.get("name")!r}; '
                     f'distillation needs a spectral UNet, one of {unet_lib.MODEL_NAMES}')
  s = unet_lib.resolve_unet_config(config.model)
  t = unet_lib.resolve_unet_config(teacher_config.model)
  for field in ('conditioning', 'num_classes'):
    if s[field] != t[field]:
      raise ValueError(f'config field model.{field}={s[field]!r} differs from the teacher\'s {t[field]!r}')
  if s['conditioning'] == 'text' and s['context_dim'] != t['context_dim']:
    raise ValueError(f'config field model.context_dim={s["context_dim"]} differs from the teacher\'s '
                     f'{t["context_dim"]} (both read the same text embeddings)')


def check_taps(taps, model, teacher, image_res, num_channels):
  """ValueError unless each feature tap has a student projection Π_i to the teacher's shape there."""
  projected = dict(zip(model.proj_taps, model.proj_channels))
  s_shapes = unet_lib.tap_shapes(model, image_res, num_channels)
  t_shapes = unet_lib.tap_shapes(teacher, image_res, num_channels)
  for tap in taps:
    if tap == 'output':
      continue
    if tap not in projected:
      raise ValueError(f'config field distill.taps has {tap!r} but model.proj_taps={tuple(model.proj_taps)} '
                       f'has no projection Π for it; add it with the teacher\'s width '
                       f'{t_shapes[tap].shape[-1]} in model.proj_channels')
    if s_shapes[tap].shape != t_shapes[tap].shape:
      raise ValueError(f'distillation tap {tap!r}: the projected student feature has shape '
                       f'{s_shapes[tap].shape} but the teacher\'s is {t_shapes[tap].shape} (set '
                       f'model.proj_channels to the teacher\'s width; both need the same number of stages)')


# ---------------------------------------------------------------------------------------------------------
# The trainer hook.

def make_student_apply_fn(model):
  """apply_fn(params, z, logsnr, labels, train, rng) -> (output, {tap: feature}) for the train step."""
  def apply_fn(params, z, logsnr, labels, train, rng):
    return model.apply({'params': params}, z, logsnr, labels, train=train, rngs={'dropout': rng},
                       return_features=True)
  return apply_fn


def make_aux_loss_fn(teacher, fields):
  """aux_loss_fn(teacher_params, student_features, inputs) -> (per-example [B], metrics) (SPEC §13)."""
  def aux_loss_fn(frozen, features, inputs):
    _, teacher_features = teacher.apply({'params': jax.lax.stop_gradient(frozen)}, inputs['z'],
                                        inputs['logsnr'], inputs['labels'], train=False,
                                        return_features=True)
    teacher_features = jax.lax.stop_gradient(teacher_features)
    losses = distill_losses(teacher_features, features, inputs['x'], fields['taps'], fields['alpha'],
                            fields['delta'], fields['weight_norm'], fields['feature_norm'])
    return combine(losses, fields['lambda_spatial'], fields['lambda_freq'])
  return aux_loss_fn


def build_spectral_distillation(config, model, num_channels):
  """sid2 trainer hook (`config.distill.name='spectral'`): (student apply_fn returning (output, features),
  aux_loss_fn, frozen = the teacher's EMA params from `config.teacher_workdir`'s latest checkpoint)."""
  fields = resolve_distill_config(config.distill)
  workdir = config.get('teacher_workdir', '')
  if not workdir:
    raise ValueError('config field teacher_workdir must name the teacher\'s training workdir for '
                     'distill.name=spectral')
  if not isinstance(model, unet_lib.UNet):
    raise ValueError(f'distill.name=spectral needs a spectral UNet student (model.name in '
                     f'{unet_lib.MODEL_NAMES}), got model.name={config.model.get("name")!r}')
  teacher_config = read_workdir_config(workdir)
  check_compatible(config, teacher_config)
  teacher = models.get_model(teacher_config.model, image_res=teacher_config.image_res,
                             num_channels=num_channels)
  check_taps(fields['taps'], model, teacher, config.image_res, num_channels)
  step, teacher_params = restore_ema_params(workdir, teacher_config, teacher, num_channels,
                                           fields['teacher_step'])
  digest = check_teacher_pin(workdir, step, teacher_params, fields)
  logging.info('distillation teacher: %s step %d, EMA params sha256 %s', workdir, step, digest)
  return make_student_apply_fn(model), make_aux_loss_fn(teacher, fields), teacher_params


def check_teacher_pin(workdir, step, params, fields):
  """sha256 of the teacher's EMA params (sid2.export.params_sha256); ValueError if it differs from the pin."""
  from sid2 import export  # pylint: disable=g-import-not-at-top
  digest = export.params_sha256(jax.device_get(params))
  if fields['teacher_sha256'] and digest != fields['teacher_sha256']:
    raise ValueError(f'config field distill.teacher_sha256={fields["teacher_sha256"]} differs from the sha256 '
                     f'{digest} of the EMA params of teacher_workdir={workdir!r} at step {step}: not the pinned '
                     f'teacher')
  return digest


aux_losses.register_aux_loss('spectral', build_spectral_distillation)
