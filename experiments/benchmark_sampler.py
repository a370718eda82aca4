"""Sampler throughput and the share of its wall time spent in the network (SPEC §6, §7).

  python -m experiments.benchmark_sampler [--config configs/fashion_mnist.py] [--num_samples 16] \
      [--num_steps 32] [--repeats 3] [--json_out bench.json]

The model is the config's, with random parameters. The four measurements (the sampler, the same network
calls in a scan and dispatched one by one, the sampler around a near-free network) and network_fraction are
`sid2.bench.benchmark_sampler`'s; see its module docstring.
"""
from __future__ import annotations
from sid2 import runtime  # first, before jax: one CPU device per core, persistent compile cache
runtime.configure(__name__)  # (only when run as a program)

import json
from typing import Optional

from absl import flags
from ml_collections import config_flags

from experiments import cli
from sid2 import bench
from sid2 import restore


def define_flags(fv: flags.FlagValues):
  d = dict(flag_values=fv)
  config_flags.DEFINE_config_file('config', 'configs/fashion_mnist.py', 'Config file with get_config().',
                                  lock_config=False, **d)
  flags.DEFINE_integer('num_samples', 16, 'Images per sampler call (N).', **d)
  flags.DEFINE_integer('num_steps', 32, 'Sampler steps (S).', **d)
  flags.DEFINE_integer('num_channels', None, 'Image channels (default: 1 for fashion_mnist, else 3).', **d)
  flags.DEFINE_integer('repeats', 3, 'Timed runs per measurement (median reported).', **d)
  flags.DEFINE_string('json_out', None, 'Also write the results as JSON here.', **d)


def default_channels(config):
  if config.get('num_channels', None):
    return int(config.num_channels)
  return restore.KNOWN_CHANNELS.get(config.dataset.get('name', ''), 3)


def main(argv, flag_values: Optional[flags.FlagValues] = None):
  fv = cli.parse(argv, define_flags, flag_values)
  for name in ('num_samples', 'num_steps', 'repeats'):
    if fv[name].value < 1:
      raise ValueError(f'{name} must be a positive integer; got {fv[name].value}')
  config = fv.config
  num_channels = fv.num_channels or default_channels(config)
  result = bench.benchmark_sampler(config, fv.num_samples, fv.num_steps, num_channels, fv.repeats)
  text = json.dumps(result, indent=2)
  print(text)
  if fv.json_out:
    with open(fv.json_out, 'w') as f:
      f.write(text + '\n')
  return result


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
