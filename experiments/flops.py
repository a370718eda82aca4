"""Parameters and FLOPs per example of training configs (multiply-add = 1 flop; train = 3 x forward, SiD2 B.3,
SPEC §8).

  python -m experiments.flops configs/imagenet512_small.py configs/kinetics600.py [...]
  python -m experiments.flops --configs=configs/a.py,configs/b.py

One line per config file: model, resolution, parameters, forward and train GFLOPs, and "run ZFLOPs" = train
GFLOPs x batch_size x total_steps. U-ViTs are counted by the B.3 formulas, any other registered model by XLA's
cost analysis (`sid2.flops.config_cost`); each config's plugins are loaded first (`sid2.plugins`). A config
that fails is reported on stderr and the others are still counted; the exit status is then non-zero.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from absl import app
from absl import flags

from experiments import cli


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  flags.DEFINE_list('configs', [], 'Config files with get_config(), comma-separated (also accepted as '
                    'positional arguments).', flag_values=fv)


def main(argv, flag_values: Optional[flags.FlagValues] = None):
  """Prints the table; returns its rows. ValueError after the table when a config could not be counted."""
  fv, positional = cli.parse_with_args(argv, define_flags, flag_values)
  paths = list(fv.configs) + positional
  if not paths:
    raise app.UsageError('name at least one config file (positional or --configs)')
  from sid2 import flops  # pylint: disable=g-import-not-at-top
  from sid2 import plugins  # pylint: disable=g-import-not-at-top
  rows, failed = [], []
  for path in paths:
    try:
      config = flops.load_config(path)
      plugins.load_plugins(config)  # e.g. spectral's models ('wg_unet', 'unet'), named by config.plugins
      row = flops.config_cost(config)
    except Exception as e:  # pylint: disable=broad-except  (report it, go on with the other configs)
      print(f'{path}: {type(e).__name__}: {e}', file=sys.stderr)
      failed.append(path)
      continue
    row.update(config=os.path.relpath(path), train_gflops=flops.train_gflops(row['forward_gflops']),
               batch_size=config.batch_size, total_steps=config.total_steps)
    rows.append(row)
  if rows:
    print(flops.format_table(rows))
  if failed:
    raise ValueError(f'{len(failed)} of {len(paths)} config(s) could not be counted: {failed}')
  return rows


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
