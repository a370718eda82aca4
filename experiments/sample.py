"""Draw samples from a trained workdir's EMA parameters (SPEC §6, §7, §12).

  python -m experiments.sample --workdir runs/fmnist --num_samples 64 --sampler ddpm --num_steps 256 \
      --guidance 1.0 --guidance_interval=-3,5 --out samples.png

Every sampler setting defaults to the config's `sampler` sub-config. --out ends in .png (an image grid) or
.npz (`images` float32 [N, H, W, C] in [-1, 1], `labels` int32 [N] (empty for unconditional models) and
`settings`, the JSON below as a string; no pickle). Next to the output, `<out>.json` records the checkpoint
step, a sha256 of the parameters, the seed and every setting (labels listed in full), so

  python -m experiments.sample --settings samples.png.json --out again.png

regenerates the same samples (the parameters are checked against the recorded sha256).

Randomness: sample i uses its own key `jax.random.fold_in(PRNGKey(seed), i)` (`sid2.generation`), so it
depends only on (seed, i, its label, the settings), not on --num_samples, --batch_size or the device count.
Chunks of --batch_size samples (rounded up to a multiple of the device count) are sharded over all devices.
Labels (class-conditional models): `--labels 0,1,2` (repeated to --num_samples), `--class_label 3` (all),
default round-robin 0, 1, ..., C-1, 0, ... --guidance_interval: 'lo,hi' in logSNR or 'none' (constant
guidance); guidance w uses SiD2's convention (0 = none; SPEC §11).

Autoguidance (SiD2 B.5; Karras et al. 2024): `--guide_workdir G [--guide_step S]` names a worse model of the
same task (an earlier checkpoint of this run, or a run of a smaller config) and replaces classifier-free
guidance by x = x_good + w (x_good - x_bad) on --guidance_interval, both models given the same labels;
--guidance w is then required. The guide must have the same image shape, schedule, parametrisation and
classes (checked before sampling); `<out>.json` records it (`guide`: workdir, step, params sha256) and
--settings checks its parameters as it does the model's.
"""
from __future__ import annotations
from sid2 import runtime  # first, before jax: one CPU device per core, persistent compile cache
runtime.configure(__name__)  # (only when run as a program)

import json
from typing import Optional

from absl import flags
from absl import logging

from experiments import cli
from sid2 import generation
from sid2 import restore
from sid2 import sampling

OUT_EXTENSIONS = generation.OUT_EXTENSIONS
SETTINGS_VERSION = generation.SETTINGS_VERSION
# Flags that may be combined with --settings (everything else comes from the settings file).
SETTINGS_OVERRIDABLE = ('settings', 'out', 'workdir')


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  cli.define_checkpoint_flags(fv)  # --workdir, --step
  flags.DEFINE_string('out', None, 'Output file: .png (image grid) or .npz (arrays).', **d)
  flags.DEFINE_string('settings', None, 'A <out>.json of an earlier run: regenerate exactly those samples.', **d)
  flags.DEFINE_integer('num_samples', None, 'Number of samples (default: config.sampler.num_samples).', **d)
  flags.DEFINE_integer('batch_size', None, 'Samples per jitted call (default: all at once).', **d)
  cli.define_sampler_flags(fv)  # --sampler, --num_steps, --clip_x, ... (sid2.sampling)
  cli.define_guide_flags(fv)  # --guide_workdir, --guide_step: autoguidance (sid2.sampling.GuideSettings)
  flags.DEFINE_string('labels', None, 'Comma-separated class labels, repeated (or cut) to num_samples.', **d)
  flags.DEFINE_integer('class_label', None, 'One class label for all samples.', **d)
  flags.DEFINE_integer('seed', 0, 'Random seed.', **d)


# Kept as names of this module for callers (the implementations live in sid2.generation).
ensure_model_registered = cli.ensure_model_registered
parse_interval = generation.parse_interval
parse_labels = generation.parse_labels
resolve_settings = generation.resolve_settings
write_outputs = generation.write_outputs


def raw_from_flags(fv) -> dict:
  """User values from the flags, or from --settings (only --out / --workdir may be given beside it)."""
  names = ('workdir', 'out', 'step', 'num_samples', 'batch_size') + sampling.FLAG_NAMES + (
      sampling.GUIDE_FLAG_NAMES) + ('labels', 'class_label', 'seed')
  if fv.settings:
    extra = sorted(n for n in names if fv[n].present and n not in SETTINGS_OVERRIDABLE)
    if extra:
      raise ValueError(f'--settings fixes every setting; only --out and --workdir may be given with it '
                       f'(got {", ".join("--" + n for n in extra)})')
    with open(fv.settings) as f:
      raw = json.load(f)
    if raw.get('version') != SETTINGS_VERSION:
      raise ValueError(f'{fv.settings}: settings version {raw.get("version")!r}, expected {SETTINGS_VERSION}')
    raw = sampling.record_as_flags(raw)  # a recorded interval of None is 'none', not the config's
    for n in ('out', 'workdir'):
      if fv[n].value:
        raw[n] = fv[n].value
    if not fv.out:
      raise ValueError('out is required with --settings (a new file, so the original is kept)')
    return raw
  if not fv.workdir:
    raise ValueError('workdir is required (or --settings)')
  return {n: fv[n].value for n in names}


def generate(settings: dict, config, *, log=print):
  """(images float32 [N, H, W, C] in [-1, 1], labels int32 [N] or None, record) for resolved settings, on all
  devices (`sid2.generation.generate`; one process)."""
  images, labels, record, _ = generation.generate(settings, config, log=log)
  return images, labels, record


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
