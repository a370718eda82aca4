"""Cost of one denoising step of the Spectral Diffusion UNets: parameters, MACs and throughput.

  python -m experiments.spectral_cost [--configs spectral_ffhq,spectral_ffhq:teacher,...] [--batch 16]
      [--skip_throughput] [--max_throughput_gmacs 6] [--min_time 2] [--out costs.json]

For every config (a module in configs/, optionally ':<arg>' for its get_config) the model is built twice,
with downsample='wavelet' (WG-Down / WG-Up) and 'plain' (strided conv / nearest + conv), everything else
equal, and measured by `spectral.cost.measure` (MACs of one denoising step of one example from XLA's cost
analysis, parameters, and throughput at batch 1 and `--batch`; the conventions are in spectral/cost.py).
"""
from __future__ import annotations

import json
from typing import Optional

from absl import flags

from experiments import cli

DEFAULT_CONFIGS = (
    'spectral_ffhq', 'spectral_ffhq:teacher',
    'spectral_lsun_church', 'spectral_lsun_church:teacher',
    'spectral_imagenet_cond', 'spectral_imagenet_cond:teacher',
    'spectral_text_laion', 'spectral_text_laion:teacher',
    'spectral_fmnist_teacher', 'spectral_fmnist_student', 'spectral_fmnist_lite',
)


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  flags.DEFINE_list('configs', list(DEFAULT_CONFIGS), 'Comma-separated config modules in configs/, optionally '
                    'with ":<arg>" (e.g. spectral_ffhq:teacher).', **d)
  flags.DEFINE_integer('batch', 16, 'The larger batch for throughput.', **d)
  flags.DEFINE_bool('skip_throughput', False, 'MACs and parameters only.', **d)
  flags.DEFINE_float('max_throughput_gmacs', 6.0, 'Measure throughput only for models below this many GMACs '
                     'per example-step.', **d)
  flags.DEFINE_float('min_time', 2.0, 'Seconds of timed calls per measurement.', **d)
  flags.DEFINE_string('out', '', 'Also write the rows as JSON here.', **d)


def main(argv, flag_values: Optional[flags.FlagValues] = None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  if fv.batch < 1:
    raise ValueError(f'--batch must be >= 1, got {fv.batch}')
  import jax  # pylint: disable=g-import-not-at-top
  from spectral import cost  # pylint: disable=g-import-not-at-top
  rows = []
  for spec in fv.configs:
    rows.append(cost.measure(spec, batch=fv.batch, skip_throughput=fv.skip_throughput,
                             max_throughput_gmacs=fv.max_throughput_gmacs, min_time=fv.min_time))
    print(f'measured {spec}', flush=True)
  print(f'\nbackend: {jax.default_backend()} ({jax.device_count()} device(s)); throughput after warm-up')
  print(cost.format_table(rows, fv.batch))
  if fv.out:
    with open(fv.out, 'w') as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
