"""Post-hoc EMA (EDM2 §3): synthesise EMA weights of any length from a run's stored power-function EMAs.

  python -m experiments.posthoc_ema --workdir W --sigma_rel 0.05,0.10 [--step N] [--out DIR]

The run must track power-function EMAs (`config.posthoc_ema.sigma_rels`, e.g. (0.05, 0.10)) and keep
snapshots (`keep_every`, with `checkpoint_every` dividing it). Every checkpoint of W at or before the target
step (default: the latest) enters the least-squares fit of `sid2.posthoc_ema.solve_weights`; the weights are
applied snapshot by snapshot (one snapshot in memory at a time). For each sigma_rel the result is a new,
sample-ready workdir `<out>/sigma_rel_<s>/` (default out: `W/posthoc_ema`) with W's config.json and one
checkpoint at the target step whose `ema_params` are the synthesised weights, so `experiments.sample`,
`experiments.evaluate` and `experiments.export` take it as `--workdir` unchanged. `posthoc.json` beside
it records the snapshots, the weights and the profile fit's relative L2 error.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import flags

from experiments import cli
from sid2 import checkpoint as ckpt_lib
from sid2 import posthoc_ema as lib
from sid2 import restore
from sid2 import trainer


def define_flags(fv: flags.FlagValues):
  d = dict(flag_values=fv)
  cli.define_checkpoint_flags(fv, 'Training workdir with power-EMA snapshots.',
                              'Target step (default: the latest checkpoint).')
  flags.DEFINE_string('sigma_rel', None, 'Comma-separated target EMA lengths, e.g. 0.05,0.10.', **d)
  flags.DEFINE_string('out', None, 'Output folder (default: <workdir>/posthoc_ema).', **d)


def parse_sigma_rels(text) -> list:
  try:
    rels = [float(s) for s in str(text).split(',') if s.strip()]
  except ValueError:
    rels = []
  if not rels:
    raise ValueError(f"--sigma_rel must be comma-separated floats in (0, {lib.SIGMA_REL_MAX:.4f}), e.g. "
                     f"'0.05,0.10'; got {text!r}")
  for r in rels:
    lib.gamma_from_sigma_rel(r)  # range check
  return rels


def _abstract_power_ema(config, num_channels, num):
  params = restore.abstract_params(config, num_channels)
  return tuple(params for _ in range(num))


def load_power_emas(manager, step: int, config, num_channels: int, num: int):
  """The tuple of power-EMA params trees stored in checkpoint `step` (partial orbax restore)."""
  target = {'power_ema': _abstract_power_ema(config, num_channels, num)}
  args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                partial_restore=True)
  restored = manager.restore(step, args=ocp.args.Composite(state=args))
  return tuple(restored['state']['power_ema'])


def synthesize(workdir: str, sigma_rels: Sequence[float], step: Optional[int] = None,
               use_profiles: Optional[Sequence[int]] = None):
  """{sigma_rel: (params, info)} for the target step; info has snapshots, weights and the profile error.

  use_profiles: indices into config.posthoc_ema.sigma_rels to use (default all; tests leave one out).
  """
  config = restore.load_config(workdir)
  gammas = trainer.power_ema_gammas(config)
  if not gammas:
    raise ValueError(f'{workdir} was trained without power-function EMAs: set config field posthoc_ema.sigma_rels '
                     '(e.g. (0.05, 0.10)) and keep_every when training')
  use = list(range(len(gammas))) if use_profiles is None else list(use_profiles)
  steps = [s for s in restore.checkpoint_steps(workdir) if s > 0]
  if not steps:
    raise FileNotFoundError(f'no checkpoints in {restore.checkpoint_dir(workdir)}')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f'step={step} is not a checkpoint of {workdir}; available steps: {steps}')
  steps = [s for s in steps if s <= step]
  pairs = [(s, i) for s in steps for i in use]
  num_channels = int(config.get('num_channels', 0) or 0) or restore.load(workdir, steps[-1]).num_channels
  solutions = {}
  for r in sigma_rels:
    x, err = lib.solve_weights([gammas[i] for _, i in pairs], [s for s, _ in pairs],
                               lib.gamma_from_sigma_rel(r), step)
    solutions[r] = (x, err)
  sums = {r: None for r in sigma_rels}
  manager = restore._manager(workdir)  # pylint: disable=protected-access
  try:
    for s in steps:
      trees = load_power_emas(manager, s, config, num_channels, len(gammas))
      for r, (x, _) in solutions.items():
        ws = [x[k] for k, (ps, _) in enumerate(pairs) if ps == s]
        part = lib.combine([trees[i] for i in use], ws)
        part = jax.tree.map(lambda a: np.asarray(a, np.float64), part)
        sums[r] = part if sums[r] is None else jax.tree.map(np.add, sums[r], part)
  finally:
    manager.close()
  out = {}
  dtypes = jax.tree.map(lambda a: a.dtype, restore.abstract_params(config, num_channels))
  for r, (x, err) in solutions.items():
    params = jax.tree.map(lambda a, d: np.asarray(a, d), sums[r], dtypes)
    info = dict(sigma_rel=r, gamma=lib.gamma_from_sigma_rel(r), step=step,
                snapshots=[dict(step=s, sigma_rel=config.posthoc_ema.sigma_rels[i], gamma=gammas[i], weight=float(w))
                           for (s, i), w in zip(pairs, x)],
                profile_rel_l2_error=err)
    out[r] = (params, info)
  return out, num_channels


def write_workdir(src_workdir: str, dst: str, params, info: dict) -> str:
  """A sample-ready workdir: src's config.json, checkpoints/<step>/ with `ema_params`, posthoc.json."""
  if os.path.exists(dst):
    shutil.rmtree(dst)
  os.makedirs(dst)
  shutil.copy(restore.config_path(src_workdir), restore.config_path(dst))
  with open(os.path.join(dst, 'posthoc.json'), 'w') as f:
    json.dump(dict(info, source_workdir=os.path.abspath(src_workdir)), f, indent=2)
  manager = ocp.CheckpointManager(restore.checkpoint_dir(dst), options=ocp.CheckpointManagerOptions(create=True),
                                  handler_registry=ckpt_lib.handler_registry())
  state = dict(ema_params=params, step=np.asarray(info['step'], np.int32))
  manager.save(info['step'], args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(posthoc_ema=True))))
  manager.wait_until_finished()
  manager.close()
  return dst


def run(workdir: str, sigma_rels: Sequence[float], step: Optional[int] = None, out: Optional[str] = None,
        log=print) -> dict:
  """Synthesises and writes one workdir per sigma_rel; returns {sigma_rel: path}."""
  results, _ = synthesize(workdir, sigma_rels, step)
  out = out or os.path.join(os.path.abspath(workdir), 'posthoc_ema')
  paths = {}
  for r, (params, info) in results.items():
    paths[r] = write_workdir(workdir, os.path.join(out, f'sigma_rel_{r:.3f}'), params, info)
    log(f'sigma_rel {r:.3f} (gamma {info["gamma"]:.2f}) at step {info["step"]}: {len(info["snapshots"])} '
        f'stored profiles, profile fit error {info["profile_rel_l2_error"]:.2e} -> {paths[r]}')
  return paths


def main(argv, flag_values: Optional[flags.FlagValues] = None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  if not fv.workdir:
    raise ValueError('--workdir is required')
  run(fv.workdir, parse_sigma_rels(fv.sigma_rel), fv.step, fv.out)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
