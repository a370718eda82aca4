"""Building and initialising the model of a config: the toolkit the loop, restore, export, the benchmarks
and plugins (e.g. spectral's distillation) share.

  model = build_model(config, num_channels)              # the registered flax module (sid2.models)
  params = init_params(model, config, num_channels, rng)
  x_hat = make_x_pred(model, config.parametrization)(params, z, logsnr, labels)

Examples are [H, W, C] images, or [T, H, W, C] videos for a video model (`frames_per_example`).
"""
from __future__ import annotations

import jax.numpy as jnp

from sid2 import models
from sid2 import parametrization as param_lib


def build_model(config, num_channels):
  return models.get_model(config.model, image_res=config.image_res, num_channels=num_channels)


def make_apply_fn(model):
  """apply_fn(params, z, logsnr, labels, train, rng) in the form the train step expects."""
  def apply_fn(params, z, logsnr, labels, train, rng):
    return model.apply({'params': params}, z, logsnr, labels, train=train, rngs={'dropout': rng})
  return apply_fn


def frames_per_example(model, config):
  """Frames per example T for a video model (one with a `num_frames` field, e.g. 'uvit_video'): the
  config's top-level `num_frames`, else the model's; 0 for image models."""
  model_frames = getattr(model, 'num_frames', 0) or 0
  frames = config.get('num_frames', 0) or model_frames
  if frames and not model_frames:
    raise ValueError(f'config field num_frames={frames} is set but model.name={config.model.name!r} is not a '
                     "video model (a model with a num_frames field, e.g. 'uvit_video')")
  return frames


def example_shape(model, config, num_channels):
  """Shape of one example: [H, W, C] for image models, [T, H, W, C] for video models."""
  frames = frames_per_example(model, config)
  return ((frames,) if frames else ()) + (config.image_res, config.image_res, num_channels)


def check_data_frames(model, config, ds):
  """ValueError unless the dataset yields what the model takes: videos of T frames or images."""
  frames, data_frames = frames_per_example(model, config), getattr(ds, 'num_frames', 0) or 0
  if frames != data_frames:
    what = lambda t: f'videos of {t} frames' if t else 'images'
    raise ValueError(f'dataset.name={config.dataset.name!r} yields {what(data_frames)} but model.name='
                     f'{config.model.name!r} takes {what(frames)} (config fields num_frames, '
                     'dataset.num_frames, model.num_frames)')


def check_data_classes(config, ds):
  """ValueError when a class-conditional model has fewer classes than the dataset's labels use."""
  model_classes, data_classes = config.model.get('num_classes', 0), getattr(ds, 'num_classes', 0) or 0
  if model_classes and data_classes > model_classes:
    raise ValueError(f'dataset.name={config.dataset.name!r} has {data_classes} classes but model.num_classes='
                     f'{model_classes}; set config field model.num_classes={data_classes} (or 0: unconditional)')


def init_params(model, config, num_channels, rng):
  z = jnp.zeros((1,) + example_shape(model, config, num_channels), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32) if config.model.get('num_classes', 0) else None
  return model.init({'params': rng, 'dropout': rng}, z, jnp.zeros((1,)), labels, train=False)['params']


def make_x_pred(model, parametrization):
  """x_pred(params, z, logsnr, labels) -> x_hat for samplers (SPEC §2, §12)."""
  def x_pred(params, z, logsnr, labels):
    out = model.apply({'params': params}, z, logsnr, labels, train=False).astype(jnp.float32)
    return param_lib.to_x_eps(out, z, logsnr, parametrization)[0]
  return x_pred
