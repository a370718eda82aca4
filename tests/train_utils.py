"""Tiny training configs for tests, and a worker entry point for multi-device / multi-process runs.

  python tests/train_utils.py --workdir D --steps N --out params.npz [--devices K]
      [--process_id i --num_processes n --coordinator 127.0.0.1:port]
"""
import argparse
import os
import sys

import ml_collections
import numpy as np


def tiny_config(**overrides):
  from configs import fashion_mnist_sid2  # SiD2's recipe: tests of mechanics do not follow the default's
  c = fashion_mnist_sid2.get_config()
  c.batch_size = 8
  c.total_steps = 6
  c.log_every = 2
  c.eval_every = 6
  c.checkpoint_every = 3
  c.keep_checkpoints = 5
  c.model.channels = (8, 16)
  c.model.enc_blocks = (1, 1)
  c.model.dec_blocks = (1, 1)
  c.model.transformer_channels = 32
  c.model.transformer_blocks = 1
  c.model.num_heads = 2
  c.optimizer.warmup_steps = 2
  c.sampler.num_steps = 4
  c.sampler.num_samples = 4
  for k, v in overrides.items():
    node = c
    *path, last = k.split('.')
    for p in path:
      node = node[p]
    node[last] = v
  return c


def flat_params(tree):
  import jax
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--workdir', required=True)
  ap.add_argument('--steps', type=int, default=4)
  ap.add_argument('--out', required=True)
  ap.add_argument('--devices', type=int, default=0)
  ap.add_argument('--process_id', type=int, default=-1)
  ap.add_argument('--num_processes', type=int, default=1)
  ap.add_argument('--coordinator', default='')
  ap.add_argument('--checkpoint_every', type=int, default=0)
  args = ap.parse_args()
  import jax
  if args.devices:
    jax.config.update('jax_num_cpu_devices', args.devices)
  if args.process_id >= 0:
    jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id)
  from sid2 import trainer
  cfg = tiny_config(total_steps=args.steps, eval_every=1000, checkpoint_every=args.checkpoint_every or args.steps,
                    log_every=1,
                    **{'sampler.num_samples': 0,
                       # Adam divides by sqrt(v) + eps: with eps = 1e-8 parameters whose gradient is ~0
                       # (behind the zero-initialised output layers) take lr-sized steps in the direction
                       # of float reduction-order noise, so runs on different device counts drift apart.
                       'optimizer.eps': 1e-5})
  state = trainer.train_and_evaluate(cfg, args.workdir)
  if jax.process_index() == 0:
    out = flat_params(jax.device_get(state.params))
    out['__loss_log__'] = np.array([0.0])
    np.savez(args.out, **out)
  print('devices', jax.device_count(), 'processes', jax.process_count())


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
