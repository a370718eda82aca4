"""Sampler settings: the one place that names the fields of `config.sampler`, their types, defaults, allowed
values, command-line flags and the keys under which output files record them (SPEC §6, §7, §11, §12).

  settings = SamplerSettings.from_config(config.sampler)     # validated, frozen
  settings = settings.override(name='ddim', eta=None)        # None keeps the current value
  loop = samplers.sample_loop_fn(shape, schedule, **settings.loop_kwargs())
  w, lo, hi = settings.guidance_args()
  guide = GuideSettings.from_raw(raw)                         # autoguidance: the "bad" model, or None

Flags (`experiments.cli.define_sampler_flags`) and records (the `<out>.json` of `experiments.sample`, the
`sampler.jaxexport.json` of an export) use the field names, except `name`, which is spelled `sampler` there
(`RECORD_KEYS`). The allowed sampler names come from `sid2.samplers.SAMPLERS`, so a new sampler registered
there is accepted here, in config validation and on every command line without further edits.

The guide of autoguidance (`GuideSettings`: workdir, step, params sha256) lives here too, beside the sampler
fields it modifies: its flags (`GUIDE_FLAGS`, `experiments.cli.define_guide_flags`) and its record (the
`guide` key of `<out>.json`, of an evaluation's `sampling` and of `sampler.jaxexport.json`). It is not a
config field: a training config never names a guide.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional, Sequence

from sid2 import samplers


def _one_of(names: Sequence[str]) -> str:
  """"'a', 'b' or 'c'" for help texts."""
  quoted = [f"'{n}'" for n in names]
  return quoted[0] if len(quoted) == 1 else ', '.join(quoted[:-1]) + ' or ' + quoted[-1]


def _help(field: str) -> str:
  """The command-line help of a field (computed when the flags are defined, so registered samplers show)."""
  return {
      'name': f'{_one_of(samplers.SAMPLERS.names())} (default: config.sampler.name).',
      'num_steps': 'Sampler steps = network evaluations per sample (default: config.sampler.num_steps).',
      'clip_x': f'{_one_of(samplers.CLIP_X)}.',
      'logvar_type': "DDPM variance: 'small', 'large' or a fraction in [0, 1].",
      'eta': 'DDIM noise in [0, 1].',
      'guidance': 'Guidance w (0 = none; SiD2 convention).',
      'guidance_interval': "'lo,hi' logSNR interval (e.g. -3,5) or 'none'.",
      'num_samples': 'Number of samples (default: config.sampler.num_samples).',
  }[field]


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """Validated `config.sampler` (SPEC §6, §7, §11). Construction checks every field (ValueError naming it)."""
  name: str
  num_steps: int
  clip_x: str
  logvar_type: str
  eta: float = 0.0
  guidance: float = 0.0
  guidance_interval: tuple = ()
  num_samples: int = 64

  def __post_init__(self):
    samplers.validate_sampler_args(sampler=self.name, num_steps=self.num_steps, clip_x=self.clip_x,
                                   logvar_type=str(self.logvar_type), eta=self.eta)
    object.__setattr__(self, 'logvar_type', str(self.logvar_type))
    object.__setattr__(self, 'eta', float(self.eta))
    g = self.guidance
    if isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(g):
      raise ValueError(f'guidance must be a finite number (0 = no guidance); got {g!r}')
    object.__setattr__(self, 'guidance', float(g))
    interval = tuple(self.guidance_interval or ())
    if interval and (len(interval) != 2 or not interval[0] < interval[1]):
      raise ValueError(f'guidance_interval must be () or (lo, hi) with lo < hi; got {self.guidance_interval!r}')
    object.__setattr__(self, 'guidance_interval', interval)
    n = self.num_samples
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
      raise ValueError(f'num_samples must be a non-negative integer (0: no samples); got {n!r}')

  # Construction.
  @classmethod
  def from_config(cls, sampler_config) -> 'SamplerSettings':
    """From `config.sampler` (a ConfigDict or dict); unknown or missing fields are ValueErrors."""
    values = dict(sampler_config.items())
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
      raise ValueError(f'unknown sampler field(s) {unknown}; allowed: {", ".join(FIELDS)}')
    missing = [f for f in REQUIRED if f not in values]
    if missing:
      raise ValueError(f'missing sampler field(s) {missing} (required: {", ".join(REQUIRED)})')
    return cls(**values)

  from_dict = from_config

  @classmethod
  def from_record(cls, record: dict) -> 'SamplerSettings':
    """From a record (`to_record`'s keys, e.g. an `<out>.json` or an evaluation's `sampling`); a recorded
    guidance of None (an autoguided export records none) reads as 0."""
    values = {f: record.get(RECORD_KEYS[f]) for f in FIELDS if record.get(RECORD_KEYS[f]) is not None}
    return cls(**values)

  @classmethod
  def from_flags(cls, sampler_config, raw: dict) -> 'SamplerSettings':
    """`config.sampler` overridden by the flag / record values in `raw` (None keeps the config's value; the
    interval flag also takes 'default' = the config's, or 'none' = guidance on every logSNR)."""
    settings = cls.from_config(sampler_config).override(**overrides_from_record(raw, VALUE_FIELDS))
    interval = raw.get(RECORD_KEYS['guidance_interval'], 'default')
    if interval in (None, 'default'):
      interval = settings.guidance_interval
      bounds = None if not interval or all(math.isinf(v) for v in interval) else parse_interval(interval)
    else:
      bounds = parse_interval(interval)
    return settings.override(guidance_interval=bounds or ())

  def override(self, **overrides) -> 'SamplerSettings':
    """A copy with the given non-None fields replaced (and validated); unknown names are ValueErrors."""
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
      raise ValueError(f'unknown sampler field {unknown[0]!r}; allowed: {", ".join(FIELDS)}')
    return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

  # Views.
  def to_dict(self) -> dict:
    """The `config.sampler` form (JSON-serialisable; the interval as a list)."""
    d = dataclasses.asdict(self)
    d['guidance_interval'] = list(self.guidance_interval)
    return d

  def to_record(self) -> dict:
    """The settings as output files record them (`RECORD_KEYS`; no interval is None); num_samples aside."""
    d = self.to_dict()
    d['guidance_interval'] = [float(v) for v in self.guidance_interval] if self.guidance_interval else None
    return {RECORD_KEYS[f]: d[f] for f in FIELDS if f != 'num_samples'}

  def loop_kwargs(self) -> dict:
    """Keyword arguments of `samplers.sample` / `samplers.sample_loop_fn`."""
    return dict(sampler=self.name, num_steps=self.num_steps, clip_x=self.clip_x, logvar_type=self.logvar_type,
                eta=self.eta)

  def interval_bounds(self) -> tuple:
    """(lo, hi) of the guidance interval in logSNR; (-inf, inf) without one (SPEC §7)."""
    return self.guidance_interval or (-math.inf, math.inf)

  def describe(self, how: str = 'guidance') -> str:
    """One line for logs and plot titles, e.g. "ddpm, 32 steps, guidance 1.0 on (-3.0, 5.0)"."""
    return f"{self.name}, {self.num_steps} steps, {how} {self.guidance} on {self.guidance_interval or 'all logSNRs'}"

  def guidance_args(self) -> tuple:
    """(w, lo, hi) as float32 scalars, the traced guidance arguments of `sample_fns.make_sample_fn` (SPEC §7)."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    lo, hi = self.interval_bounds()
    return jnp.float32(self.guidance), jnp.float32(lo), jnp.float32(hi)


FIELDS = tuple(f.name for f in dataclasses.fields(SamplerSettings))
REQUIRED = tuple(f.name for f in dataclasses.fields(SamplerSettings) if f.default is dataclasses.MISSING)
DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplerSettings) if f.name not in REQUIRED}
# Field -> type for config validation (`sid2.config_lib.SAMPLER`).
CONFIG_SCHEMA = {f.name: {'str': str, 'int': int, 'float': float, 'tuple': tuple}[f.type]
                 for f in dataclasses.fields(SamplerSettings)}
# The fields that shape the compiled sampler loop (the rest are traced or not part of it).
LOOP_FIELDS = ('name', 'num_steps', 'clip_x', 'logvar_type', 'eta')
GUIDANCE_FIELDS = ('guidance', 'guidance_interval')
# The fields whose flag / record value is the field's value (the interval's flag is a string: parse_interval).
VALUE_FIELDS = LOOP_FIELDS + GUIDANCE_FIELDS[:1]
# Field -> flag name and key in output records.
RECORD_KEYS = {f: ('sampler' if f == 'name' else f) for f in FIELDS}
# The sampler flags of the commands, in order (experiments.cli.define_sampler_flags).
FLAG_FIELDS = LOOP_FIELDS + GUIDANCE_FIELDS
FLAG_NAMES = tuple(RECORD_KEYS[f] for f in FLAG_FIELDS)  # flag names: the record keys
_FLAG_KIND = {str: 'string', int: 'integer', float: 'float', tuple: 'string'}


def flag_specs(fields: Sequence[str] = FLAG_FIELDS) -> list:
  """[(flag name, absl kind 'string' | 'integer' | 'float', help)] for the given fields; no default (None =
  the config's value). The interval is a string flag ('lo,hi' or 'none')."""
  return [(RECORD_KEYS[f], _FLAG_KIND[CONFIG_SCHEMA[f]], _help(f)) for f in fields]


def record_keys(fields: Sequence[str]) -> tuple:
  """The flag / record names of `fields`."""
  return tuple(RECORD_KEYS[f] for f in fields)


def overrides_from_record(record: dict, fields: Sequence[str] = LOOP_FIELDS) -> dict:
  """{field: value} from a dict keyed by flag / record names (e.g. a flag dict or an `<out>.json`)."""
  return {f: record.get(RECORD_KEYS[f]) for f in fields}


def guidance_given(raw: dict) -> bool:
  """Whether the flag / record values `raw` set the guidance strength w."""
  return raw.get(RECORD_KEYS['guidance']) is not None


def guidance_flags(w: float, interval=None) -> dict:
  """The flag values that choose guidance w on `interval` ((lo, hi), or None: every logSNR)."""
  return {RECORD_KEYS['guidance']: w,
          RECORD_KEYS['guidance_interval']: [float(v) for v in interval] if interval else 'none'}


def record_as_flags(record: dict) -> dict:
  """A recorded `<out>.json` as flag values: its interval None (no interval recorded) becomes 'none', so
  the regenerated samples do not fall back to the config's interval."""
  key = RECORD_KEYS['guidance_interval']
  return {**record, key: 'none' if record.get(key) is None else record[key]}


# ---------------------------------------------------------------------------------------------------------
# The guiding ("bad") model of autoguidance (SiD2 B.5; Karras et al. 2024).

GUIDE_RECORD_KEY = 'guide'  # the key of the guide in output records: {'workdir', 'step', 'params_sha256'}
GUIDE_FLAGS = (  # (flag name, absl kind, help); the raw values of the commands under these names
    ('guide_workdir', 'string', 'Autoguidance: the workdir of the guiding ("bad") model, e.g. this run (with '
                                '--guide_step of an earlier checkpoint) or a run of a smaller config. With it, '
                                '--guidance w (required) and --guidance_interval give x = x_good + w (x_good - '
                                'x_bad), both models conditioned on the same labels; no CFG is applied.'),
    ('guide_step', 'integer', 'Checkpoint step of the guide (default: its latest readable one).'),
)
GUIDE_FLAG_NAMES = tuple(name for name, _, _ in GUIDE_FLAGS)


@dataclasses.dataclass(frozen=True)
class GuideSettings:
  """The guide of autoguidance: a workdir, its checkpoint step (None = the latest readable one) and, once
  restored (or read from a record), the sha256 of its EMA parameters (`sid2.export.params_sha256`).

  The guide replaces the unconditional branch of classifier-free guidance: with a guide the sampler computes
  x = x_good + w (x_good - x_bad) on the guidance interval, where x_bad is the guide's prediction at the same
  z_t, logSNR and labels (w and the interval are the SamplerSettings' `guidance` / `guidance_interval`).
  """
  workdir: str
  step: Optional[int] = None
  params_sha256: Optional[str] = None

  def __post_init__(self):
    if not isinstance(self.workdir, str) or not self.workdir:
      raise ValueError(f'guide_workdir must be a non-empty path; got {self.workdir!r}')
    s = self.step
    if s is not None and (isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0):
      raise ValueError(f'guide_step must be a non-negative integer (or unset: the latest); got {s!r}')
    h = self.params_sha256
    if h is not None and not (isinstance(h, str) and len(h) == 64 and all(c in '0123456789abcdef' for c in h)):
      raise ValueError(f'guide params_sha256 must be 64 lowercase hex digits; got {h!r}')

  @classmethod
  def from_raw(cls, raw: dict) -> Optional['GuideSettings']:
    """The guide of a command's raw values: the flags `guide_workdir` / `guide_step`, or the `guide` record of
    a settings file ({'workdir', 'step', 'params_sha256'}). None without a guide; ValueError for a step
    without a workdir, both forms at once or unknown record keys."""
    flag_workdir, flag_step = (raw.get(n) for n in GUIDE_FLAG_NAMES)
    record = raw.get(GUIDE_RECORD_KEY)
    if record is not None:
      if flag_workdir is not None or flag_step is not None:
        raise ValueError('give the guide either as guide_workdir / guide_step or as a guide record, not both')
      if not isinstance(record, dict):
        raise ValueError(f'guide must be a dict with workdir, step, params_sha256; got {record!r}')
      unknown = sorted(set(record) - set(GUIDE_KEYS))
      if unknown:
        raise ValueError(f'unknown guide field(s) {unknown}; allowed: {", ".join(GUIDE_KEYS)}')
      return cls(**record)
    if flag_workdir is None:
      if flag_step is not None:
        raise ValueError('guide_step needs guide_workdir (for an earlier checkpoint of this run give the '
                         'same workdir as guide_workdir)')
      return None
    return cls(workdir=flag_workdir, step=flag_step)

  def to_record(self) -> dict:
    return dataclasses.asdict(self)


GUIDE_KEYS = tuple(f.name for f in dataclasses.fields(GuideSettings))


def parse_interval(text) -> Optional[tuple]:
  """'lo,hi' (or a pair) -> (lo, hi) with lo < hi; 'none' -> None (constant guidance). ValueError otherwise."""
  if isinstance(text, (list, tuple)):
    parts = list(text)
  elif isinstance(text, str) and text.strip().lower() in ('none', 'off', ''):
    return None
  elif isinstance(text, str):
    parts = text.split(',')
  else:
    parts = None
  try:
    lo, hi = (float(p) for p in parts)
  except (TypeError, ValueError):
    raise ValueError(f"guidance_interval must be 'lo,hi' (two logSNRs with lo < hi, e.g. -3,5) or 'none' "
                     f'(constant guidance); got {text!r}') from None
  if not lo < hi or math.isnan(lo) or math.isnan(hi):
    raise ValueError(f'guidance_interval must have lo < hi; got {text!r}')
  return lo, hi
