"""Model registry: `model.name` in a config -> a Flax linen module.

Other packages add their models with `register_model` (sid2 never imports them; e.g. spectral registers its
UNet when it is imported). Every model is called as
`module.apply(variables, z, logsnr, labels=None, train=False, rngs={'dropout': key})`.
"""
from __future__ import annotations

from typing import Callable, Optional

from sid2 import registry
from sid2.models import uvit
from sid2.models import uvit_video
from sid2.models.uvit import UViT

# name -> builder(model_config, *, image_res, num_channels) -> linen module.
MODEL_REGISTRY = registry.Registry('model', field='model.name')
MODELS: dict[str, Callable] = MODEL_REGISTRY.entries
# name -> validator(model_config, image_res), raising ValueError; optional per model.
VALIDATORS: dict[str, Callable] = {}


def register_model(name, builder: Optional[Callable] = None, validator: Optional[Callable] = None):
  """Registers `builder(model_config, *, image_res, num_channels)` under `name` (without `builder`: a decorator,
  `@register_model('my_model')`).

  `validator(model_config, image_res)` (optional) raises ValueError for a bad sub-config before any compute;
  `validate_model_config` and `get_model` call it. Registering the same builder twice is a no-op; a different
  builder under a taken name is a ValueError.
  """
  if builder is None:
    return lambda fn: register_model(name, fn, validator)
  MODEL_REGISTRY.register(name, builder)
  if validator is not None:
    VALIDATORS[name] = validator
  return builder


def _model_name(model_config):
  """`model_config.name`, or ValueError listing the registered names."""
  name = model_config.get('name', None) if hasattr(model_config, 'get') else None
  if name not in MODELS:
    raise ValueError(f'model.name={name!r} is not a registered model; allowed: {sorted(MODELS)}')
  return name


def validate_model_config(model_config, image_res):
  """Raises ValueError (naming the field and allowed values) for a sub-config that cannot build a model for
  image_res x image_res images: unknown name or fields, bad values, indivisible resolution."""
  name = _model_name(model_config)
  if name in VALIDATORS:
    VALIDATORS[name](model_config, image_res)


def get_model(model_config, *, image_res, num_channels):
  """The linen module for `model_config` (validated first) on image_res^2 x num_channels images."""
  validate_model_config(model_config, image_res)
  return MODELS[_model_name(model_config)](model_config, image_res=image_res, num_channels=num_channels)


register_model('uvit', uvit.build_uvit, uvit.validate_uvit)
register_model('uvit_video', uvit_video.build_uvit_video, uvit_video.validate_uvit_video)

__all__ = ['MODELS', 'MODEL_REGISTRY', 'VALIDATORS', 'UViT', 'get_model', 'register_model', 'validate_model_config']
