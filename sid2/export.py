"""Exported models: EMA parameters as safetensors, the config as JSON, and a serialized sampler (SPEC §12).

An export directory (written by `python -m experiments.export`, i.e. `export_workdir`) holds
  params.safetensors        the EMA parameters, flattened with '/'-joined keys ('conv_in/kernel', ...);
                            metadata: format, step, sha256 (see `params_sha256`), model name
  config.json               the training config
  sampler.jaxexport         optional: a `jax.export` serialized sampler (StableHLO) for one batch shape and
                            step count, lowered for several platforms (default cpu, cuda, tpu)
  sampler.jaxexport.json    its signature and settings
  guide_params.safetensors  autoguided exports only (`--guide_workdir`): the guide's EMA parameters, same format
  guide_config.json         and its training config

Loading needs no training code and no optimizer state: `load`, `load_params` and `load_sampler` use only
numpy, safetensors, ml_collections, jax (+ jaxlib) and flatbuffers, which jax's deserializer imports but
jax does not install (`RUNTIME_REQUIREMENTS`; `pip install -e .[export]` or those packages). This module
imports no other project module at load time (the writing side imports sid2's model code inside
`export_workdir`), so a consumer without this project can copy this one file beside the export directory.
Nothing is pickled.

The exported sampler takes the parameters as an argument (not baked in), so one sampler file serves every
checkpoint of the same architecture and the file stays small:
  sample = load_sampler('export/')           # or the .jaxexport path
  params, config = load('export/')
  images = sample(params, rng=0, labels=None, guidance=1.0, interval=(-3.0, 5.0))  # [N, H, W, C]
It computes `sid2.sample_fns.make_sample_fn(...)(params, rng, labels, guidance, lo, hi)` (SPEC §6, §7): bitwise
the same samples for the same key when lowered for one platform (e.g. `platforms=('cpu',)` on CPU); lowered
for several (the default) the module dispatches on the platform, which changes XLA's fusion, and the samples
agree to float rounding (max abs difference 1.8e-7 in tests/test_sample_export.py).

An autoguided export (SiD2 B.5; `export_workdir(..., guide_workdir=...)`) computes
`sid2.sample_fns.make_autoguided_sample_fn(...)((params, guide_params), rng, labels, guidance, lo, hi)`: its first
argument is the pair, and the guide's parameters ship beside the model's:
  guide_params, guide_config = load_guide('export/')
  images = sample(params, rng=0, guidance=1.0, guide_params=guide_params)   # w is required: no default
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from safetensors import numpy as st_numpy
from safetensors import safe_open

PARAMS_FILE = 'params.safetensors'
CONFIG_FILE = 'config.json'
GUIDE_PARAMS_FILE = 'guide_params.safetensors'
GUIDE_CONFIG_FILE = 'guide_config.json'
SAMPLER_FILE = 'sampler.jaxexport'
SAMPLER_INFO_SUFFIX = '.json'
PARAMS_FORMAT = 'sid2.ema_params.v1'
SAMPLER_FORMAT = 'sid2.sampler.jaxexport.v1'
DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')
# What loading and running an export needs (pip names; also in setup.py's `export` extra and the sampler JSON).
RUNTIME_REQUIREMENTS = ('jax', 'jaxlib', 'numpy', 'safetensors', 'ml-collections', 'flatbuffers')
SEP = '/'


# ---------------------------------------------------------------------------------------------------------
# Parameters <-> flat dict <-> safetensors.

def flatten_params(params) -> dict:
  """Nested dict of arrays -> {'a/b/c': np.ndarray}; keys must be strings without '/'."""
  flat = {}

  def visit(node, prefix):
    if isinstance(node, dict) or hasattr(node, 'items') and not hasattr(node, 'shape'):
      if not node:
        raise ValueError(f'params: empty sub-tree at {prefix or "<root>"!r} cannot be stored')
      for k, v in node.items():
        if not isinstance(k, str) or not k or SEP in k:
          raise ValueError(f'params keys must be non-empty strings without {SEP!r}; got {k!r} under '
                           f'{prefix or "<root>"!r}')
        visit(v, f'{prefix}{SEP}{k}' if prefix else k)
    else:
      flat[prefix] = np.asarray(jax.device_get(node))

  visit(params, '')
  return flat


def unflatten_params(flat: dict) -> dict:
  """{'a/b/c': array} -> nested dict (the inverse of `flatten_params`)."""
  tree = {}
  for key in sorted(flat):
    node = tree
    *path, last = key.split(SEP)
    for p in path:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ValueError(f'params key {key!r} collides with a leaf at {p!r}')
    node[last] = flat[key]
  return tree


def params_sha256(params) -> str:
  """SHA-256 over the sorted keys of the flat params: key, dtype, shape and C-order little-endian bytes."""
  flat = params if not any(hasattr(v, 'items') for v in params.values()) else flatten_params(params)
  h = hashlib.sha256()
  for key in sorted(flat):
    a = np.ascontiguousarray(flat[key])
    a = a.astype(a.dtype.newbyteorder('<'), copy=False)
    h.update(key.encode('utf-8') + b'\0' + a.dtype.str.encode() + b'\0' + repr(a.shape).encode() + b'\0')
    h.update(a.tobytes())
  return h.hexdigest()


def save_params(path: str, params, *, step: int, extra_metadata: Optional[dict] = None) -> str:
  """Writes params as safetensors with metadata {format, step, sha256, ...}; returns the sha256."""
  flat = flatten_params(params)
  digest = params_sha256(flat)
  metadata = {'format': PARAMS_FORMAT, 'step': str(int(step)), 'sha256': digest}
  metadata.update({k: str(v) for k, v in (extra_metadata or {}).items()})
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  st_numpy.save_file(flat, path, metadata=metadata)
  return digest


def _params_path(path: str) -> str:
  return os.path.join(path, PARAMS_FILE) if os.path.isdir(path) else path


def load_params(path: str, *, flat: bool = False, verify: bool = True):
  """(params, metadata) from a safetensors file (or an export dir); nested dicts unless flat=True.

  verify: recompute the sha256 and compare it with the stored one (ValueError if they differ).
  """
  path = _params_path(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found (expected {PARAMS_FILE} written by experiments.export)')
  with safe_open(path, framework='numpy') as f:
    metadata = dict(f.metadata() or {})
  arrays = st_numpy.load_file(path)
  if verify and 'sha256' in metadata:
    digest = params_sha256(arrays)
    if digest != metadata['sha256']:
      raise ValueError(f'{path}: sha256 of the parameters is {digest}, the metadata says {metadata["sha256"]}')
  if 'step' in metadata:
    metadata['step'] = int(metadata['step'])
  return (arrays if flat else unflatten_params(arrays)), metadata


def load_config(path: str) -> ml_collections.ConfigDict:
  """The config.json of an export dir (or a path to a JSON config)."""
  path = os.path.join(path, CONFIG_FILE) if os.path.isdir(path) else path
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load(path: str):
  """(params pytree of numpy arrays, ConfigDict) from an export directory. Needs no training code."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path} is not an export directory (written by experiments.export)')
  params, _ = load_params(path)
  return params, load_config(path)


def load_guide(path: str):
  """(guide params pytree, guide ConfigDict) of an autoguided export directory (FileNotFoundError if the
  export has no guide)."""
  params_path = os.path.join(path, GUIDE_PARAMS_FILE)
  if not os.path.isfile(params_path):
    raise FileNotFoundError(f'{params_path} not found: {path} is not an autoguided export (experiments.export '
                            '--guide_workdir writes it)')
  params, _ = load_params(params_path)
  return params, load_config(os.path.join(path, GUIDE_CONFIG_FILE))


# ---------------------------------------------------------------------------------------------------------
# The serialized sampler.

def sampler_signature(params_abstract, num_samples: int):
  """Abstract arguments of the exported sampler: (params, rng uint32[2], labels int32[N], w, lo, hi)."""
  f32 = jax.ShapeDtypeStruct((), jnp.float32)
  params_abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params_abstract)
  return (params_abstract, jax.ShapeDtypeStruct((2,), jnp.uint32),
          jax.ShapeDtypeStruct((num_samples,), jnp.int32), f32, f32, f32)


def export_sampler(sample_fn, params_abstract, num_samples: int, platforms: Sequence[str] = DEFAULT_PLATFORMS):
  """`jax.export` of a jitted `sample_fn(params, rng, labels, guidance, lo, hi)`; returns the Exported."""
  if not hasattr(sample_fn, 'trace'):
    sample_fn = jax.jit(sample_fn)
  return jax.export.export(sample_fn, platforms=tuple(platforms))(
      *sampler_signature(params_abstract, num_samples))


def save_sampler(path: str, exported, info: dict) -> str:
  """Writes the serialized sampler and `<path>.json` with its signature and settings (an autoguided one has
  info['guide'] with the guide's `num_param_arrays`)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(exported.serialize())
  guide_arrays = int((info.get('guide') or {}).get('num_param_arrays', 0))
  first = ('(params, guide_params): the pair of nested dicts of params.safetensors and guide_params.safetensors'
           if info.get('guide') else 'params (nested dict, as in params.safetensors)')
  info = dict(info, format=SAMPLER_FORMAT, platforms=list(exported.platforms), jax_version=jax.__version__,
              runtime_requirements=list(RUNTIME_REQUIREMENTS),
              num_param_arrays=len(exported.in_avals) - 5 - guide_arrays,
              other_in_avals=[str(a) for a in exported.in_avals[-5:]],
              out_avals=[str(a) for a in exported.out_avals],
              arguments=[first, 'rng (uint32[2] PRNG key)',
                         'labels (int32[N], ignored for unconditional models)',
                         'guidance w (float32, SiD2 convention: 0 = none)',
                         'interval lo (float32 logSNR)', 'interval hi (float32 logSNR)'])
  with open(path + SAMPLER_INFO_SUFFIX, 'w') as f:
    json.dump(info, f, indent=2)  # an infinite interval end is written as Infinity (Python's json reads it)
  return path


class ExportedSampler:
  """A deserialized sampler: `sampler(params, rng, labels=None, guidance=None, interval='default',
  guide_params=None)`.

  params: nested dict or the flat '/'-keyed dict of `load_params(..., flat=True)`. rng: an int seed or a
  uint32[2] key (`jax.random.PRNGKey(seed)`). labels: [N] ints (default round-robin over the classes).
  guidance: w (default: the config's; an autoguided sampler has no default). interval: (lo, hi), None for
  constant guidance, or 'default' (the config's). guide_params: the guide's parameters (nested or flat), required
  by an autoguided sampler (`self.guided`) and refused by any other. Returns float32 images [N, H, W, C] (the
  sampler's final x_hat; in [-1, 1] with clip_x='static').
  """

  def __init__(self, exported, info: dict):
    self.exported = exported
    self.info = info
    self.num_samples = int(info['num_samples'])
    self.guided = bool(info.get('guide'))

  def __call__(self, params, rng, labels=None, guidance=None, interval='default', guide_params=None):
    if self.guided and guide_params is None:
      raise ValueError('this sampler is autoguided: pass guide_params (e.g. load_guide(export_dir)[0])')
    if not self.guided and guide_params is not None:
      raise ValueError('guide_params given, but this sampler is not autoguided (export with --guide_workdir)')
    if isinstance(params, dict) and any(SEP in k for k in params):
      params = unflatten_params(params)
    if isinstance(guide_params, dict) and any(SEP in k for k in guide_params):
      guide_params = unflatten_params(guide_params)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
      rng = jax.random.PRNGKey(int(rng))
    rng = jnp.asarray(rng)
    if rng.shape != (2,) or rng.dtype != jnp.uint32:
      raise ValueError(f'rng must be an int seed or a uint32[2] key; got {rng.dtype}{list(rng.shape)}')
    n, num_classes = self.num_samples, int(self.info.get('num_classes', 0))
    if labels is None:
      labels = [i % max(num_classes, 1) for i in range(n)]
    labels = np.asarray(labels, np.int32).reshape(-1)
    if labels.shape != (n,):
      raise ValueError(f'labels must have shape [{n}] (the exported batch); got {list(labels.shape)}')
    if num_classes and not ((labels >= 0) & (labels < num_classes)).all():
      raise ValueError(f'labels must be in [0, {num_classes}); got {labels.tolist()}')
    w = self.info['guidance'] if guidance is None else guidance
    if w is None:
      raise ValueError('give guidance=w (the autoguidance strength; an autoguided export records no default)')
    if isinstance(interval, str) and interval == 'default':
      interval = self.info.get('guidance_interval')
    lo, hi = (-math.inf, math.inf) if interval is None else interval
    if not lo < hi:
      raise ValueError(f'interval must be (lo, hi) with lo < hi, or None; got {interval!r}')
    return self.exported.call(params if not self.guided else (params, guide_params), rng, jnp.asarray(labels),
                              jnp.float32(w), jnp.float32(lo), jnp.float32(hi))


def load_sampler(path: str) -> ExportedSampler:
  """The sampler of an export dir (or its .jaxexport file) as a callable; needs jax and flatbuffers."""
  path = os.path.join(path, SAMPLER_FILE) if os.path.isdir(path) else path
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found (export with experiments.export to write {SAMPLER_FILE})')
  try:
    import flatbuffers  # noqa: F401  pylint: disable=unused-import,g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'loading {path} needs the flatbuffers package (jax.export deserialization imports it; '
                      f'jax does not install it): pip install flatbuffers. An export needs '
                      f'{", ".join(RUNTIME_REQUIREMENTS)}.') from e
  with open(path, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with open(path + SAMPLER_INFO_SUFFIX) as f:
    info = json.load(f)
  if info.get('format') != SAMPLER_FORMAT:
    raise ValueError(f'{path}{SAMPLER_INFO_SUFFIX}: format {info.get("format")!r}, expected {SAMPLER_FORMAT!r}')
  return ExportedSampler(exported, info)


# ---------------------------------------------------------------------------------------------------------
# Writing an export directory from a training workdir.

def export_workdir(workdir: str, out_dir: str, *, step: Optional[int] = None, with_sampler: bool = True,
                   num_samples: Optional[int] = None, num_steps: Optional[int] = None,
                   sampler: Optional[str] = None, clip_x: Optional[str] = None, logvar_type=None,
                   eta: Optional[float] = None, platforms: Sequence[str] = DEFAULT_PLATFORMS,
                   guide_workdir: Optional[str] = None, guide_step: Optional[int] = None) -> dict:
  """Writes params.safetensors, config.json and (with_sampler) sampler.jaxexport(+.json) to out_dir.

  Sampler settings default to the config's `sampler` sub-config; num_samples and num_steps fix the
  exported batch and step count. The model must be registered (import e.g. spectral first). Every
  setting is validated before the checkpoint is read. Returns a summary dict (paths, step, sha256).
  guide_workdir (guide_step: default its latest checkpoint): autoguidance; also writes the guide's
  guide_params.safetensors and guide_config.json, and the sampler takes (params, guide_params).
  """
  from sid2 import generation  # training-side code, only for writing
  from sid2 import restore
  from sid2 import sampling

  config = restore.load_config(workdir)
  restore.check_model_registered(config)
  overrides = dict(name=sampler, num_steps=num_steps, clip_x=clip_x, eta=eta,
                   logvar_type=None if logvar_type is None else str(logvar_type))
  s_cfg = restore.override_sampler(config, **overrides)  # validated
  settings = sampling.SamplerSettings.from_config(s_cfg.sampler)
  n = settings.num_samples if num_samples is None else num_samples
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f'num_samples must be a positive integer; got {n!r}')
  platforms = tuple(platforms)
  if not platforms or any(p not in ('cpu', 'cuda', 'rocm', 'tpu') for p in platforms):
    raise ValueError(f"platforms must be a non-empty subset of ('cpu', 'cuda', 'rocm', 'tpu'); got {platforms}")
  guide = sampling.GuideSettings.from_raw(dict(guide_workdir=guide_workdir, guide_step=guide_step))
  if guide is not None:  # registered, step exists, same task (config files only)
    guide = generation.resolve_guide(guide, config, workdir)
    guide_config = restore.load_registered_config(guide.workdir)

  r = restore.load(workdir, step, config=config)
  r_guide = None
  if guide is not None:
    r_guide = restore.load(guide.workdir, guide.step, config=guide_config)
    restore.check_guide(config, guide_config, r.num_channels, r_guide.num_channels,
                        workdir=os.path.abspath(workdir), guide_workdir=guide.workdir)
  os.makedirs(out_dir, exist_ok=True)
  params_path = os.path.join(out_dir, PARAMS_FILE)
  digest = save_params(params_path, r.params, step=r.step, extra_metadata={'model': config.model.name})
  with open(os.path.join(out_dir, CONFIG_FILE), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  summary = dict(params=params_path, config=os.path.join(out_dir, CONFIG_FILE), step=r.step, sha256=digest)
  guide_info = None
  if r_guide is not None:
    guide_path = os.path.join(out_dir, GUIDE_PARAMS_FILE)
    guide_digest = save_params(guide_path, r_guide.params, step=r_guide.step,
                               extra_metadata={'model': guide_config.model.name, 'role': 'autoguidance guide'})
    with open(os.path.join(out_dir, GUIDE_CONFIG_FILE), 'w') as f:
      f.write(guide_config.to_json_best_effort(indent=2))
    guide_info = sampling.GuideSettings(guide.workdir, r_guide.step, guide_digest).to_record()
    summary['guide'] = dict(guide_info, params=guide_path, config=os.path.join(out_dir, GUIDE_CONFIG_FILE))
  if with_sampler:
    if r_guide is None:
      fn, abstract = restore.sample_fn(s_cfg, n, r.num_channels), r.params
    else:
      fn = restore.autoguided_sample_fn(s_cfg, guide_config, n, r.num_channels)
      abstract = (r.params, r_guide.params)
    exported = export_sampler(fn, abstract, n, platforms)
    frames = [int(config.num_frames)] if 'num_frames' in config else []  # video: [T, H, W, C]
    info = dict(num_samples=n, image_shape=frames + [config.image_res, config.image_res, r.num_channels],
                num_classes=int(config.model.get('num_classes', 0) or 0),
                null_label=int(config.model.get('num_classes', 0) or 0), **settings.to_record(),
                schedule=config.schedule, parametrization=config.parametrization, model=config.model.name,
                step=r.step, params_sha256=digest, workdir=os.path.abspath(workdir))
    if guide_info is not None:  # no CFG and no default w: the config's guidance is a CFG strength
      info.update(guidance=None, guide=dict(guide_info, params_file=GUIDE_PARAMS_FILE,
                                            config_file=GUIDE_CONFIG_FILE, model=guide_config.model.name,
                                            num_param_arrays=len(jax.tree.leaves(r_guide.params))))
    summary['sampler'] = save_sampler(os.path.join(out_dir, SAMPLER_FILE), exported, info)
  return summary
