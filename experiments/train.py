"""Train a diffusion model from an ml-collections config.

  python -m experiments.train --config configs/fashion_mnist.py --workdir runs/fmnist \
      [--config.total_steps=2000 ...]

Several processes (a TPU pod slice, or one process per GPU host): pass --multiprocess (TPU pods need no
further flags; elsewhere set --coordinator_address=host:port --num_processes=N --process_id=i, or the
environment variables JAX reads) and every process runs the same command.
"""
from sid2 import runtime  # first, before jax: one CPU device per core, persistent compile cache
runtime.configure(__name__)  # (only when run as a program)
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli

def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  config_flags.DEFINE_config_file('config', None, 'Path to a config file with get_config().', lock_config=True, **d)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples.', **d)
  flags.DEFINE_bool('multiprocess', False, 'Call jax.distributed.initialize() (multi-host runs).', **d)
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host, non-TPU).', **d)
  flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host, non-TPU).', **d)
  flags.DEFINE_integer('process_id', None, 'This process id (multi-host, non-TPU).', **d)
  flags.DEFINE_integer('local_device_count', None, 'CPU only: devices per process (tests).', **d)
  flags.DEFINE_integer('stop_after', None, 'Stop (with a checkpoint) after this many steps in this run.', **d)
  flags.mark_flags_as_required(['config', 'workdir'], **d)


def main(argv, flag_values=None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  import jax
  if fv.local_device_count:
    jax.config.update('jax_num_cpu_devices', fv.local_device_count)
  if fv.multiprocess:
    kwargs = {}
    if fv.coordinator_address:
      kwargs = dict(coordinator_address=fv.coordinator_address, num_processes=fv.num_processes,
                    process_id=fv.process_id)
    jax.distributed.initialize(**kwargs)
  from sid2 import plugins  # pylint: disable=g-import-not-at-top
  from sid2 import trainer  # after distributed init
  plugins.load_plugins(fv.config)  # config.plugins, e.g. ('spectral',): registers more models, losses
  logging.info('JAX process %d/%d, local devices %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  trainer.train_and_evaluate(fv.config, fv.workdir, stop_after=fv.stop_after)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
