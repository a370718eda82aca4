"""Draw samples from a trained workdir's EMA parameters (SPEC §6, §7, §12).

  python -m experiments.sample --workdir runs/fmnist --num_samples 64 --sampler ddpm --num_steps 256 \
      --guidance 1.0 --guidance_interval=-3,5 --out samples.png

Every sampler setting defaults to the config's `sampler` sub-config. --out ends in .png (an image grid) or
.npz (`images` float32 [N, H, W, C] in [-1, 1], `labels` int32 [N] (empty for unconditional models) and
`settings`, the JSON below as a string; no pickle). Next to the output, `<out>.json` records the checkpoint
step, a sha256 of the parameters, the seed and every setting (labels listed in full), so

  python -m experiments.sample --settings samples.png.json --out again.png

regenerates the same samples (the parameters are checked against the recorded sha256).

Randomness: chunk k of `--batch_size` samples uses `jax.random.fold_in(PRNGKey(seed), k)`; the last chunk
is padded to the full batch (the extra samples are dropped), so sample i depends only on (seed, batch_size,
i, its label, the settings), not on --num_samples.
Labels (class-conditional models): `--labels 0,1,2` (repeated to --num_samples), `--class_label 3` (all),
default round-robin 0, 1, ..., C-1, 0, ... --guidance_interval: 'lo,hi' in logSNR or 'none' (constant
guidance); guidance w uses SiD2's convention (0 = none; SPEC §11).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import numpy as np
from absl import flags
from absl import logging

from experiments import cli
from sid2 import plugins
from sid2 import restore
from sid2 import sampling

OUT_EXTENSIONS = ('.png', '.npz')
SETTINGS_VERSION = 1
# Flags that may be combined with --settings (everything else comes from the settings file).
SETTINGS_OVERRIDABLE = ('settings', 'out', 'workdir')


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).', **d)
  flags.DEFINE_string('out', None, 'Output file: .png (image grid) or .npz (arrays).', **d)
  flags.DEFINE_string('settings', None, 'A <out>.json of an earlier run: regenerate exactly those samples.', **d)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest readable one).', **d)
  flags.DEFINE_integer('num_samples', None, 'Number of samples (default: config.sampler.num_samples).', **d)
  flags.DEFINE_integer('batch_size', None, 'Samples per jitted call (default: all at once).', **d)
  cli.define_sampler_flags(fv)  # --sampler, --num_steps, --clip_x, ... (sid2.sampling)
  flags.DEFINE_string('labels', None, 'Comma-separated class labels, repeated (or cut) to num_samples.', **d)
  flags.DEFINE_integer('class_label', None, 'One class label for all samples.', **d)
  flags.DEFINE_integer('seed', 0, 'Random seed.', **d)


# ---------------------------------------------------------------------------------------------------------
# Parsing and validation (all before any compute).

def ensure_model_registered(config):
  """Imports the config's plugins (`sid2.plugins.load_plugins`), then ValueError if its model is unknown."""
  plugins.load_plugins(config)
  restore.check_model_registered(config)


parse_interval = sampling.parse_interval  # 'lo,hi' -> (lo, hi); 'none' -> None


def parse_labels(text: str) -> list:
  """'0,1,2' -> [0, 1, 2]; ValueError for anything but comma-separated integers."""
  try:
    labels = [int(p) for p in text.split(',')]
  except (AttributeError, ValueError):
    raise ValueError(f"labels must be comma-separated integers, e.g. '0,1,2'; got {text!r}") from None
  return labels


def _positive_int(value, field):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'{field} must be a positive integer; got {value!r}')
  return value


def _config_interval(settings):
  interval = settings.guidance_interval
  if not interval or (math.isinf(interval[0]) and math.isinf(interval[1])):
    return None
  return parse_interval(interval)


def resolve_settings(raw: dict, config) -> dict:
  """Complete, validated settings from user values (None = the config's default). ValueError naming the
  field for anything invalid; nothing is computed. Keys: see `define_flags`."""
  s_cfg = config.sampler
  out = raw.get('out')
  if not out or os.path.splitext(out)[1].lower() not in OUT_EXTENSIONS:
    raise ValueError(f'out must be a file name ending in one of {OUT_EXTENSIONS}; got {out!r}')
  num_samples = raw.get('num_samples')
  num_samples = _positive_int(s_cfg.get('num_samples', 64) if num_samples is None else num_samples,
                              'num_samples')
  batch_size = raw.get('batch_size')
  batch_size = _positive_int(num_samples if batch_size is None else batch_size, 'batch_size')
  batch_size = min(batch_size, num_samples)
  seed = raw.get('seed', 0)
  if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
    raise ValueError(f'seed must be an integer in [0, 2^63); got {seed!r}')
  sampled = sampling.SamplerSettings.from_config(s_cfg).override(  # validates every sampler field
      **sampling.overrides_from_record(raw, sampling.VALUE_FIELDS))
  interval = raw.get('guidance_interval', 'default')
  interval = _config_interval(sampled) if interval in (None, 'default') else parse_interval(interval)
  guidance = sampled.guidance

  labels, class_label = raw.get('labels'), raw.get('class_label')
  num_classes = int(config.model.get('num_classes', 0) or 0)
  if labels is not None and class_label is not None:
    raise ValueError('give at most one of labels and class_label')
  if isinstance(labels, str):
    labels = parse_labels(labels)
  if class_label is not None:
    labels = [class_label]
  if labels is not None:
    if not labels:
      raise ValueError('labels must not be empty')
    restore.check_labels(config, labels)
    labels = [labels[i % len(labels)] for i in range(num_samples)]
  else:
    labels = restore.default_labels(config, num_samples)
  if not num_classes and guidance != 0:
    logging.warning('the model is unconditional: guidance=%s is ignored', guidance)
    guidance = 0.0

  step = raw.get('step')
  steps = restore.checkpoint_steps(raw['workdir'])
  if not steps:
    raise FileNotFoundError(f'no checkpoints in {restore.checkpoint_dir(raw["workdir"])}')
  if step is not None and step not in steps:
    raise ValueError(f'step={step!r} is not a checkpoint of {raw["workdir"]}; available steps: {steps}')
  return dict(version=SETTINGS_VERSION, workdir=os.path.abspath(raw['workdir']), step=step,
              num_samples=num_samples, batch_size=batch_size,
              **sampled.override(guidance=float(guidance), guidance_interval=interval or ()).to_record(),
              labels=labels, seed=seed,
              out=os.path.abspath(out), params_sha256=raw.get('params_sha256'))


def raw_from_flags(fv) -> dict:
  """User values from the flags, or from --settings (only --out / --workdir may be given beside it)."""
  names = ('workdir', 'out', 'step', 'num_samples', 'batch_size') + sampling.FLAG_NAMES + (
      'labels', 'class_label', 'seed')
  if fv.settings:
    extra = sorted(n for n in names if fv[n].present and n not in SETTINGS_OVERRIDABLE)
    if extra:
      raise ValueError(f'--settings fixes every setting; only --out and --workdir may be given with it '
                       f'(got {", ".join("--" + n for n in extra)})')
    with open(fv.settings) as f:
      raw = json.load(f)
    if raw.get('version') != SETTINGS_VERSION:
      raise ValueError(f'{fv.settings}: settings version {raw.get("version")!r}, expected {SETTINGS_VERSION}')
    if raw.get('guidance_interval') is None:
      raw['guidance_interval'] = 'none'
    for n in ('out', 'workdir'):
      if fv[n].value:
        raw[n] = fv[n].value
    if not fv.out:
      raise ValueError('out is required with --settings (a new file, so the original is kept)')
    return raw
  if not fv.workdir:
    raise ValueError('workdir is required (or --settings)')
  return {n: fv[n].value for n in names}


# ---------------------------------------------------------------------------------------------------------
# Sampling and writing.

def generate(settings: dict, config, *, log=print):
  """(images float32 [N, H, W, C] in [-1, 1], labels int32 [N] or None, record) for resolved settings."""
  import jax
  import jax.numpy as jnp
  from sid2 import export as export_lib

  restored = restore.load(settings['workdir'], settings['step'], config=config)
  digest = export_lib.params_sha256(restored.params)
  if settings.get('params_sha256') and settings['params_sha256'] != digest:
    raise ValueError(f'the parameters of step {restored.step} (sha256 {digest}) are not those recorded in the '
                     f'settings (sha256 {settings["params_sha256"]}): the samples would differ')
  s_config = restore.override_sampler(config, **sampling.overrides_from_record(settings))
  n, b = settings['num_samples'], settings['batch_size']
  fn = restore.sample_fn(s_config, b, restored.num_channels)
  lo, hi = settings['guidance_interval'] or (-math.inf, math.inf)
  args = (jnp.float32(settings['guidance']), jnp.float32(lo), jnp.float32(hi))
  labels = np.asarray(settings['labels'] if settings['labels'] is not None else [0] * n, np.int32)
  key = jax.random.PRNGKey(settings['seed'])
  num_chunks = -(-n // b)
  guided = int(config.model.get('num_classes', 0) or 0) > 0 and settings['guidance'] != 0
  log(f'sampling {n} images from {settings["workdir"]} step {restored.step} (seed {settings["seed"]}): '
      f'{settings["sampler"]}, {settings["num_steps"]} steps, guidance {settings["guidance"]} on '
      f'{settings["guidance_interval"] or "all logSNRs"}, {num_chunks} chunk(s) of {b}')
  chunks, t_start = [], time.time()
  for k in range(num_chunks):
    t0 = time.time()
    idx = np.arange(k * b, k * b + b)
    chunk_labels = np.where(idx < n, labels[np.minimum(idx, n - 1)], 0).astype(np.int32)
    x = fn(restored.params, jax.random.fold_in(key, k), jnp.asarray(chunk_labels), *args)
    chunks.append(np.asarray(jax.device_get(x))[:max(0, min(b, n - k * b))])
    dt = time.time() - t0
    evals = b * settings['num_steps']
    log(f'  chunk {k + 1}/{num_chunks}: samples {k * b}..{min(n, k * b + b) - 1} in {dt:.2f} s '
        f'({evals / dt:.1f} sample-steps/s{", 2 passes per guided step" if guided else ""}'
        f'{", incl. compilation" if k == 0 else ""})')
  images = np.clip(np.concatenate(chunks).astype(np.float32), -1.0, 1.0)
  record = dict(settings, step=restored.step, params_sha256=digest,
                image_shape=list(images.shape[1:]), model=config.model.name,
                jax_version=jax.__version__, seconds=round(time.time() - t_start, 3))
  return images, (labels if settings['labels'] is not None else None), record


def write_outputs(out: str, images, labels, record: dict) -> str:
  """Writes the PNG grid or the npz, and `<out>.json`; returns the JSON path."""
  from sid2.images import save_image_grid
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  text = json.dumps(record, indent=2)
  if out.lower().endswith('.npz'):
    np.savez(out, images=images, labels=np.zeros((0,), np.int32) if labels is None else labels,
             settings=np.array(text))
  else:
    save_image_grid(images, out)
  path = out + '.json'
  with open(path, 'w') as f:
    f.write(text + '\n')
  return path


def run(raw: dict, *, log=print):
  """Resolves, samples and writes; returns (images, labels, record). `raw` as from `raw_from_flags`."""
  config = restore.load_config(raw['workdir'])
  ensure_model_registered(config)
  settings = resolve_settings(raw, config)
  logging.info('sample settings: %s', json.dumps(settings))
  images, labels, record = generate(settings, config, log=log)
  path = write_outputs(settings['out'], images, labels, record)
  log(f'wrote {settings["out"]} and {path}')
  return images, labels, record


def main(argv, flag_values: Optional[flags.FlagValues] = None):
  """CLI entry. argv: ['sample', '--workdir=...', ...]; flags parsed into a fresh FlagValues unless given."""
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  return run(raw_from_flags(fv))


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
