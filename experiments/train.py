"""Train a diffusion model from an ml-collections config.

  python -m experiments.train --config configs/fashion_mnist.py --workdir runs/fmnist \
      [--config.total_steps=2000 ...]

Several processes (a TPU pod slice, or one process per GPU host): pass --multiprocess (TPU pods need no
further flags; elsewhere set --coordinator_address=host:port --num_processes=N --process_id=i, or the
environment variables JAX reads) and every process runs the same command.
"""
from sid2 import runtime  # first, before jax: one CPU device per core, persistent compile cache
runtime.configure(__name__)  # (only when run as a program)
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file with get_config().', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples.')
flags.DEFINE_bool('multiprocess', False, 'Call jax.distributed.initialize() (multi-host runs).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host, non-TPU).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host, non-TPU).')
flags.DEFINE_integer('process_id', None, 'This process id (multi-host, non-TPU).')
flags.DEFINE_integer('local_device_count', None, 'CPU only: devices per process (tests).')
flags.DEFINE_integer('stop_after', None, 'Stop (with a checkpoint) after this many steps in this run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  import jax
  if FLAGS.local_device_count:
    jax.config.update('jax_num_cpu_devices', FLAGS.local_device_count)
  if FLAGS.multiprocess:
    kwargs = {}
    if FLAGS.coordinator_address:
      kwargs = dict(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                    process_id=FLAGS.process_id)
    jax.distributed.initialize(**kwargs)
  from sid2 import plugins  # pylint: disable=g-import-not-at-top
  from sid2 import trainer  # after distributed init
  plugins.load_plugins(FLAGS.config)  # config.plugins, e.g. ('spectral',): registers more models, losses
  logging.info('JAX process %d/%d, local devices %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir, stop_after=FLAGS.stop_after)


if __name__ == '__main__':
  app.run(main)
