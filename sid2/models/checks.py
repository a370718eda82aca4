"""Checks every model builder shares (`sid2.models.uvit`, `sid2.models.uvit_video`, `spectral.unet`): a
sub-config's field names, its dropout and dtype fields, the data's channel count, and the input a model's
`__call__` is given. Each raises ValueError naming the field and what is allowed, before any compute."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

DTYPES = ('float32', 'bfloat16', 'float16')


def field_defaults(module, exclude=('num_channels',)):
  """{field: default} of a Flax module's dataclass fields (the sub-config fields it accepts): the defaults
  live once, on the module; `parent`, `name` and `exclude` are left out."""
  skip = {'parent', 'name', *exclude}
  return {f.name: f.default for f in dataclasses.fields(module) if f.init and f.name not in skip}


def as_dict(model_config):
  """A ConfigDict / dict / mapping as a plain dict."""
  if hasattr(model_config, 'to_dict'):
    return model_config.to_dict()
  return dict(model_config)


def check_known_fields(cfg, allowed, model_name):
  """ValueError unless every key of `cfg` is in `allowed` (the fields of model.name=`model_name`)."""
  unknown = sorted(set(cfg) - set(allowed))
  if unknown:
    raise ValueError(f'unknown model field(s) {unknown} for model.name={model_name}; allowed: '
                     f'{sorted(allowed)}')


def check_per_level(f, names, what='level'):
  """ValueError unless f[names[0]] is non-empty and every f[name] has its length (one entry per `what`)."""
  n = len(f[names[0]])
  if n == 0:
    raise ValueError(f'model.{names[0]} must have at least one {what}')
  if any(len(f[name]) != n for name in names[1:]):
    listed = ', '.join(f'model.{name}' for name in names[:-1]) + f' and model.{names[-1]}'
    lengths = ', '.join(str(len(f[name])) for name in names)
    raise ValueError(f'{listed} must have the same length (one entry per {what}), got {lengths}')
  return n


def check_dropout(f):
  """f['dropout'] as a float in [0, 1), else ValueError."""
  if isinstance(f['dropout'], bool) or not isinstance(f['dropout'], (int, float)) or not 0 <= f['dropout'] < 1:
    raise ValueError(f'model.dropout must be in [0, 1), got {f["dropout"]!r}')
  f['dropout'] = float(f['dropout'])


def check_dtypes(f, names=('dtype', 'param_dtype')):
  """f[name] for each name as a dtype name from DTYPES (a jnp dtype is accepted), else ValueError."""
  for name in names:
    try:
      f[name] = jnp.dtype(f[name]).name
    except TypeError:
      f[name] = repr(f[name])
    if f[name] not in DTYPES:
      raise ValueError(f'model.{name} must be one of {DTYPES}, got {f[name]!r}')


def check_num_channels(num_channels):
  """ValueError unless num_channels (the data's channels a model is built for) is an int >= 1."""
  if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
    raise ValueError(f'num_channels must be an int >= 1, got {num_channels!r}')


def check_input(z, num_channels, factor, factor_text, *, layout='[B, H, W, C]', what='image'):
  """z.shape, after checking z: its rank is that of `layout` ([B, H, W, C], or [B, T, H, W, C] for video),
  it has `num_channels` channels (0: any) and its height and width (axes -3, -2) are divisible by `factor`
  (named `factor_text` in the error)."""
  ndim = len(layout[1:layout.index(']')].split(','))
  if z.ndim != ndim:
    raise ValueError(f'z must be {layout}, got shape {z.shape}')
  height, width, c_in = z.shape[-3:]
  if num_channels and c_in != num_channels:
    raise ValueError(f'z has {c_in} channels, the model was built for num_channels={num_channels}')
  if height % factor or width % factor:
    raise ValueError(f'{what} size {height}x{width} must be divisible by {factor_text} = {factor}')
  return z.shape


def builders(module, resolve, check_resolution):
  """The (build, validate) pair a model registers (`sid2.models.register_model`): `resolve(model_config)`
  checks a sub-config into the module's fields, `check_resolution(fields, image_res)` refuses resolutions the
  model cannot process; `build(model_config, image_res=, num_channels=)` returns the module."""

  def build(model_config, *, image_res, num_channels):
    f = resolve(model_config)
    check_resolution(f, image_res)
    check_num_channels(num_channels)
    return module(**f, num_channels=num_channels)

  def validate(model_config, image_res):
    check_resolution(resolve(model_config), image_res)

  build.__doc__ = f'Builds a `{module.__name__}` from its model sub-config (ValueError on bad fields or size).'
  validate.__doc__ = f'ValueError for a bad `{module.__name__}` sub-config or a size it cannot process.'
  return build, validate
