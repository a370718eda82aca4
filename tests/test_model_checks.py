"""sid2.models.checks: defaults read off a module's fields and the (build, validate) pair."""
import flax.linen as nn
import pytest

from sid2.models import checks
from sid2.models import uvit
from spectral import unet


class _Toy(nn.Module):
  width: int = 3
  levels: tuple = (1, 2)
  num_channels: int = 0

  def __call__(self, x):
    return x


def _resolve(cfg):
  cfg = checks.as_dict(cfg)
  checks.check_known_fields(cfg, checks.field_defaults(_Toy), 'toy')
  return dict(checks.field_defaults(_Toy), **cfg)


def _check_res(f, image_res):
  if image_res % 2 ** len(f['levels']):
    raise ValueError(f'image_res={image_res} must be divisible by {2 ** len(f["levels"])}')


def test_field_defaults_are_the_module_fields_without_flax_and_data_fields():
  assert checks.field_defaults(_Toy) == dict(width=3, levels=(1, 2))
  assert uvit.UVIT_DEFAULTS == {k: getattr(uvit.UViT(), k) for k in uvit.UVIT_DEFAULTS}
  assert 'num_channels' not in unet.UNET_DEFAULTS and unet.UNET_DEFAULTS['gate_init'] == unet.UNet().gate_init


def test_builders_check_fields_resolution_and_channels():
  build, validate = checks.builders(_Toy, _resolve, _check_res)
  model = build(dict(width=5), image_res=8, num_channels=2)
  assert (model.width, model.levels, model.num_channels) == (5, (1, 2), 2)
  validate(dict(width=5), 8)
  with pytest.raises(ValueError, match='divisible by 4'):
    validate({}, 6)
  with pytest.raises(ValueError, match=r"unknown model field\(s\) \['depth'\]"):
    build(dict(depth=1), image_res=8, num_channels=1)
  with pytest.raises(ValueError, match='num_channels must be an int >= 1'):
    build({}, image_res=8, num_channels=True)
