"""Config validation: every field checked before any compute, errors name the field and allowed values.

Fields every config has (SPEC §12): seed, batch_size (global), total_steps, log_every, eval_every,
checkpoint_every, image_res, schedule, loss_type, model (sub-config with `name`), optimizer (sub-config).
"""
from __future__ import annotations

import ml_collections

from sid2 import losses
from sid2 import models
from sid2 import parametrization
from sid2 import plugins
from sid2 import runtime
from sid2 import sampling
from sid2 import schedules
from sid2 import sharding
from sid2 import train_clock

TOP_LEVEL = {
    'seed': int, 'batch_size': int, 'total_steps': int, 'log_every': int, 'eval_every': int,
    'checkpoint_every': int, 'keep_checkpoints': int, 'image_res': int, 'schedule': str, 'loss_type': str,
    'parametrization': str, 'ema_decay': float, 'cond_drop_prob': float, 'low_discrepancy': bool,
    'max_nonfinite_streak': int, 'model': ml_collections.ConfigDict,
    'optimizer': ml_collections.ConfigDict, 'dataset': ml_collections.ConfigDict,
    'sampler': ml_collections.ConfigDict,
}
OPTIONAL_TOP_LEVEL = {'distill': ml_collections.ConfigDict, 'teacher_workdir': str, 'description': str,
                      'num_channels': int, 'mesh': ml_collections.ConfigDict,
                      'num_frames': int,  # num_frames: frames per example, video models only
                      'prefetch_batches': int,  # batches read ahead on a thread (sid2.host_input), 0: none
                      'plugins': tuple,  # modules that register more names (sid2.plugins), e.g. ('spectral',)
                      # Scale-up knobs (all off by default; checked in `_check_scale_fields`).
                      'keep_every': int, 'grad_accum_steps': int, 'posthoc_ema': ml_collections.ConfigDict,
                      'profile_steps': tuple, 'logging': ml_collections.ConfigDict,
                      # A training-time budget (sid2.train_clock): stop, checkpoint and sample when reached.
                      'max_train_seconds': float, 'train_clock': str}
POSTHOC_EMA = {'sigma_rels': tuple}  # power-function EMA profiles tracked in the state (EDM2 §3)
LOGGING = {'wandb': bool, 'wandb_project': str, 'wandb_entity': str, 'wandb_name': str, 'wandb_mode': str}
OPTIMIZER = {'name': str, 'learning_rate': float, 'beta1': float, 'beta2': float, 'eps': float,
             'weight_decay': float, 'warmup_steps': int, 'grad_clip': float, 'decay': str,
             'end_factor': float}
DATASET = {'name': str, 'split': str, 'data_dir': str, 'shuffle_buffer': int, 'num_classes': int,
           'num_frames': int, 'num_channels': int,  # these two: video datasets (sid2.data.video)
           'autoencoder_sha256': str,  # latents datasets: the autoencoder that must have made them
           'random_flip': bool, 'labels_file': str}  # image folders / zips (sid2.data.folder)
SAMPLER = sampling.CONFIG_SCHEMA  # name, num_steps, clip_x, ... (sid2.sampling.SamplerSettings)


def _check_fields(cfg, schema, prefix, required=True, optional=None):
  optional = optional or {}
  allowed = dict(schema, **optional)
  unknown = sorted(set(cfg.keys()) - set(allowed))
  if unknown:
    raise ValueError(f'unknown config field(s) {", ".join(prefix + k for k in unknown)}; '
                     f'allowed fields of {prefix or "the config"}: {", ".join(sorted(allowed))}')
  if required:
    missing = sorted(set(schema) - set(cfg.keys()))
    if missing:
      raise ValueError(f'missing config field(s): {", ".join(prefix + k for k in missing)}')
  for k, v in cfg.items():
    want = allowed[k]
    ok = isinstance(v, want) or (want is float and isinstance(v, int) and not isinstance(v, bool))
    if want is int and isinstance(v, bool):
      ok = False
    if want is tuple and isinstance(v, list):
      ok = True
    if not ok:
      raise ValueError(f'config field {prefix}{k} must be {want.__name__}; got {v!r} ({type(v).__name__})')


def _positive(cfg, names, prefix=''):
  for n in names:
    if cfg[n] <= 0:
      raise ValueError(f'config field {prefix}{n} must be > 0; got {cfg[n]}')


def validate_config(config: ml_collections.ConfigDict, num_devices: int = 1):
  """Checks names, types and values of a training config; raises ValueError naming the field."""
  _check_fields(config, TOP_LEVEL, '', optional=OPTIONAL_TOP_LEVEL)
  plugins.plugin_names(config)  # a tuple of module names (imported by the entry points)
  _positive(config, ['batch_size', 'total_steps', 'log_every', 'eval_every', 'checkpoint_every',
                     'keep_checkpoints', 'image_res', 'max_nonfinite_streak'])
  if config.batch_size % num_devices:
    raise ValueError(f'config field batch_size={config.batch_size} must be divisible by the number of '
                     f'devices ({num_devices}){runtime.device_count_hint(num_devices)}')
  if config.get('prefetch_batches', 0) < 0:
    raise ValueError(f'config field prefetch_batches must be >= 0 (0: no prefetch thread); '
                     f'got {config.prefetch_batches}')
  if 'mesh' in config:  # sizes (data * fsdp = devices), rules and min_shard_size (sid2.sharding)
    sharding.resolve_mesh_config(config.mesh, num_devices)
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f'config field ema_decay must be in [0, 1); got {config.ema_decay}')
  if not 0.0 <= config.cond_drop_prob <= 1.0:
    raise ValueError(f'config field cond_drop_prob must be in [0, 1]; got {config.cond_drop_prob}')
  try:
    schedules.get_schedule(config.schedule, image_res=config.image_res)
  except ValueError as e:
    raise ValueError(f'config field schedule: {e}') from None
  try:
    loss = losses.parse_loss(config.loss_type, image_res=config.image_res)
  except ValueError as e:
    raise ValueError(f'config field loss_type: {e}') from None
  if config.parametrization not in parametrization.PARAMETRIZATIONS:
    raise ValueError(f'config field parametrization must be one of {parametrization.PARAMETRIZATIONS}; '
                     f'got {config.parametrization!r}')
  _check_fields(config.optimizer, OPTIMIZER, 'optimizer.', required=False)
  for k in ('name', 'learning_rate', 'beta1', 'beta2', 'eps', 'weight_decay', 'warmup_steps'):
    if k not in config.optimizer:
      raise ValueError(f'missing config field optimizer.{k}')
  if config.optimizer.name not in ('adam', 'adamw'):
    raise ValueError(f"config field optimizer.name must be one of ('adam', 'adamw'); "
                     f'got {config.optimizer.name!r}')
  if config.optimizer.get('decay', 'constant') not in ('constant', 'linear', 'cosine'):
    raise ValueError(f"config field optimizer.decay must be one of ('constant', 'linear', 'cosine'); "
                     f'got {config.optimizer.decay!r}')
  _check_fields(config.dataset, DATASET, 'dataset.', required=False)
  if 'name' not in config.dataset:
    raise ValueError('missing config field dataset.name')
  _check_fields(config.sampler, SAMPLER, 'sampler.', required=False)
  try:
    sampling.SamplerSettings.from_config(config.sampler)
  except ValueError as e:
    raise ValueError(f'config field sampler: {e}') from None
  try:
    models.validate_model_config(config.model, config.image_res)
  except ValueError as e:
    raise ValueError(f'config field model: {e}') from None
  _check_num_frames(config, loss)
  _check_scale_fields(config, num_devices)
  train_clock.check_config(config)


def _check_num_frames(config, loss):
  """Video configs: num_frames >= 1, and model.num_frames / dataset.num_frames (when set) equal to it."""
  if 'num_frames' not in config:
    return
  if config.num_frames < 1:
    raise ValueError(f'config field num_frames must be >= 1; got {config.num_frames}')
  if not loss.supports_video:
    raise ValueError(f'config field loss_type={config.loss_type!r}: {loss.video_note}')
  for sub in ('model', 'dataset'):
    frames = config[sub].get('num_frames', None)
    if frames is not None and frames != config.num_frames:
      raise ValueError(f'config field {sub}.num_frames={frames} must equal num_frames={config.num_frames}')


def _check_scale_fields(config, num_devices):
  """keep_every >= 0, grad_accum_steps dividing the per-device batch, posthoc_ema, profile_steps, logging."""
  if config.get('keep_every', 0) < 0:
    raise ValueError(f'config field keep_every must be >= 0 (0: no permanent snapshots); got {config.keep_every}')
  k = config.get('grad_accum_steps', 1)
  per_device = config.batch_size // num_devices
  if k < 1 or per_device % k:
    raise ValueError(f'config field grad_accum_steps={k} must be >= 1 and divide the per-device batch '
                     f'batch_size / devices = {config.batch_size} / {num_devices} = {per_device}')
  if 'posthoc_ema' in config:
    _check_fields(config.posthoc_ema, POSTHOC_EMA, 'posthoc_ema.', required=True)
    rels = tuple(config.posthoc_ema.sigma_rels)
    if not rels or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 12 ** -0.5
                       for r in rels):
      raise ValueError('config field posthoc_ema.sigma_rels must be a non-empty tuple of floats in (0, 0.2887) '
                       f'(relative EMA lengths, EDM2 §3; 12^-1/2 is sigma_rel of gamma = 0); got {rels!r}')
  steps = tuple(config.get('profile_steps', ()))
  if steps and (len(steps) != 2 or any(isinstance(s, bool) or not isinstance(s, int) for s in steps)
                or not 0 <= steps[0] < steps[1]):
    raise ValueError(f'config field profile_steps must be () or (start, stop) ints with 0 <= start < stop; '
                     f'got {steps!r}')
  if 'logging' in config:
    _check_fields(config.logging, LOGGING, 'logging.', required=False)
    mode = config.logging.get('wandb_mode', 'online')
    if mode not in ('online', 'offline', 'disabled'):
      raise ValueError(f"config field logging.wandb_mode must be one of ('online', 'offline', 'disabled'); "
                       f'got {mode!r}')
