"""sid2.sampling.SamplerSettings: the one home of the sampler fields (validation, overrides, flags, records)."""
import math

import ml_collections
import pytest
from absl import flags

from experiments import cli
from sid2 import config_lib
from sid2 import sampling
from tests.train_utils import tiny_config

BASE = dict(name='ddpm', num_steps=8, clip_x='static', logvar_type='0.3')


def test_from_config_defaults_and_round_trip():
  s = sampling.SamplerSettings.from_config(ml_collections.ConfigDict(BASE))
  assert (s.eta, s.guidance, s.guidance_interval, s.num_samples) == (0.0, 0.0, (), 64)
  assert sampling.SamplerSettings.from_dict(s.to_dict()) == s
  assert s.interval_bounds() == (-math.inf, math.inf)
  g = s.override(guidance=1.5, guidance_interval=[-3, 5], num_steps=None)
  assert g.num_steps == 8 and g.guidance_interval == (-3, 5) and g.interval_bounds() == (-3, 5)
  assert g.to_record() == dict(sampler='ddpm', num_steps=8, clip_x='static', logvar_type='0.3', eta=0.0,
                               guidance=1.5, guidance_interval=[-3.0, 5.0])
  assert [float(v) for v in g.guidance_args()] == [1.5, -3.0, 5.0]
  assert s.loop_kwargs() == dict(sampler='ddpm', num_steps=8, clip_x='static', logvar_type='0.3', eta=0.0)
  # The schema config_lib validates with is the dataclass's.
  assert config_lib.SAMPLER == sampling.CONFIG_SCHEMA and set(sampling.FIELDS) == set(tiny_config().sampler)


@pytest.mark.parametrize('fields, match', [
    (dict(name='euler'), r"sampler must be one of \('ddpm', 'ddim', 'addim'\)"),
    (dict(num_steps=0), 'num_steps must be a positive integer'),
    (dict(clip_x='dynamic'), 'clip_x must be one of'),
    (dict(logvar_type='huge'), 'logvar_type must be one of'),
    (dict(eta=2.0), 'eta must be'),
    (dict(guidance=math.nan), 'guidance must be a finite number'),
    (dict(guidance_interval=(5, -3)), 'guidance_interval must be'),
    (dict(num_samples=-1), 'num_samples must be a non-negative integer'),
    (dict(bogus=1), r"unknown sampler field\(s\) \['bogus'\]"),
])
def test_bad_fields_are_named(fields, match):
  with pytest.raises(ValueError, match=match):
    sampling.SamplerSettings.from_config(dict(BASE, **fields))


def test_missing_and_unknown_override_fields():
  with pytest.raises(ValueError, match=r"missing sampler field\(s\) \['clip_x'\]"):
    sampling.SamplerSettings.from_config({k: v for k, v in BASE.items() if k != 'clip_x'})
  with pytest.raises(ValueError, match="unknown sampler field 'steps'"):
    sampling.SamplerSettings(**BASE).override(steps=3)
  cfg = tiny_config(**{'sampler.eta': 1.5})
  with pytest.raises(ValueError, match='config field sampler: eta must be'):
    config_lib.validate_config(cfg)


def test_flags_are_defined_once_from_the_fields():
  fv = flags.FlagValues()
  cli.define_sampler_flags(fv)
  fv(['prog', '--sampler=ddim', '--eta=0.5', '--guidance_interval=-3,5'])
  values = cli.sampler_flag_values(fv)
  assert tuple(values) == sampling.FLAG_NAMES
  assert values['sampler'] == 'ddim' and values['num_steps'] is None
  assert "'ddpm', 'ddim' or 'addim'" in fv['sampler'].help
  overrides = sampling.overrides_from_record(values, sampling.VALUE_FIELDS)
  assert overrides == dict(name='ddim', num_steps=None, clip_x=None, logvar_type=None, eta=0.5, guidance=None)
  s = sampling.SamplerSettings(**BASE).override(**overrides)
  assert (s.name, s.eta, s.num_steps) == ('ddim', 0.5, 8)
  assert sampling.parse_interval(values['guidance_interval']) == (-3.0, 5.0)
  assert sampling.parse_interval('none') is None


def test_from_flags_from_record_and_guidance_flags():
  cfg = ml_collections.ConfigDict(dict(BASE, guidance=1.0, guidance_interval=(-3.0, 5.0)))
  flags_of = lambda **kw: dict(dict.fromkeys(sampling.FLAG_NAMES), **kw)
  # None / 'default' keep the config's interval; 'none' guides every logSNR; 'lo,hi' replaces it.
  assert sampling.SamplerSettings.from_flags(cfg, flags_of()).guidance_interval == (-3.0, 5.0)
  assert sampling.SamplerSettings.from_flags(cfg, flags_of(guidance_interval='default')).guidance_interval == (
      -3.0, 5.0)
  assert sampling.SamplerSettings.from_flags(cfg, flags_of(guidance_interval='none')).guidance_interval == ()
  s = sampling.SamplerSettings.from_flags(cfg, flags_of(sampler='ddim', num_steps=4, guidance_interval='-1,2'))
  assert (s.name, s.num_steps, s.guidance, s.guidance_interval) == ('ddim', 4, 1.0, (-1.0, 2.0))
  # A config interval of (-inf, inf) is no interval.
  inf = ml_collections.ConfigDict(dict(BASE, guidance_interval=(-math.inf, math.inf)))
  assert sampling.SamplerSettings.from_flags(inf, flags_of()).guidance_interval == ()
  with pytest.raises(ValueError, match='guidance_interval must'):
    sampling.SamplerSettings.from_flags(cfg, flags_of(guidance_interval='5'))
  with pytest.raises(ValueError, match='num_steps must be a positive integer'):
    sampling.SamplerSettings.from_flags(cfg, flags_of(num_steps=0))
  # to_record / from_record round trip (num_samples is not recorded: the default comes back).
  assert sampling.SamplerSettings.from_record(s.to_record()) == s.override(num_samples=64)
  assert sampling.SamplerSettings.from_record(dict(s.to_record(), guidance_interval=None)).guidance_interval == ()
  assert s.describe() == 'ddim, 4 steps, guidance 1.0 on (-1.0, 2.0)'
  assert s.override(guidance_interval=()).describe('autoguidance') == (
      'ddim, 4 steps, autoguidance 1.0 on all logSNRs')
  # Guidance in flag form, read back through from_flags.
  assert sampling.guidance_flags(0.0) == dict(guidance=0.0, guidance_interval='none')
  assert sampling.guidance_flags(2, (-3, 5)) == dict(guidance=2, guidance_interval=[-3.0, 5.0])
  back = sampling.SamplerSettings.from_flags(cfg, flags_of(**sampling.guidance_flags(2.0, (-1, 1))))
  assert (back.guidance, back.guidance_interval) == (2.0, (-1.0, 1.0))
  assert sampling.guidance_given(flags_of()) is False and sampling.guidance_given(flags_of(guidance=0.0))
  assert sampling.record_as_flags(dict(guidance_interval=None, seed=3)) == dict(guidance_interval='none', seed=3)
  assert sampling.record_as_flags(dict(guidance_interval=[-3.0, 5.0]))['guidance_interval'] == [-3.0, 5.0]
