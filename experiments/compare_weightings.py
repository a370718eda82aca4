"""FD over training for several loss weightings, without guidance (SiD2 Figures 13 and 14 at small scale).

  python -m experiments.compare_weightings [--config configs/fashion_mnist.py] \
      [--loss_types sigmoid:2.55,edm_monotonic,sigmoid:-1:2.55:800] [--steps 2400] [--eval_every 400] \
      [--num_samples 1000] [--out runs/compare_weightings] [--config.model.channels=8,16 ...]

Figure 13 compares the sigmoid loss with EDM-monotonic without guidance, Figure 14 a time-shifted sigmoid
bias (C.2: b moves linearly from b_start to b_end over t_b steps, `sigmoid:<b_start>:<b_end>:<t_b>`). Here
each loss_type trains the same config (`--config`, default the Fashion-MNIST one; `--config.<field>=...`
overrides as in `experiments.train`) for `--steps` steps in its own workdir `<out>/<loss_type>` with
`sid2.trainer.train_and_evaluate`, with a checkpoint every `--eval_every` steps (all kept). Every checkpoint
is then evaluated by `sid2.eval.evaluation.evaluate` with guidance 0: FD (and k-NN precision/recall) of
`--num_samples` EMA samples against as many Fashion-MNIST test images on the shipped feature net. Runs
resume: an existing workdir continues training, and a checkpoint whose `eval/fd_<step>.json` already holds
the same evaluation settings is not evaluated again.
Writes `<out>/compare_weightings.json` (FD per step per loss_type) and `<out>/compare_weightings.png`.
"""
from __future__ import annotations

import copy
import json
import os
import re
import time

from absl import flags
from ml_collections import config_flags
import numpy as np

from experiments import cli
from sid2 import sampling

DEFAULT_LOSS_TYPES = ('sigmoid:2.55', 'edm_monotonic', 'sigmoid:-1:2.55:800')
# Settings that must match for a stored fd_<step>.json to be reused.
REUSE_KEYS = ('num_samples', 'batch_size') + sampling.record_keys(sampling.VALUE_FIELDS) + ('seed',)

def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  config_flags.DEFINE_config_file('config', 'configs/fashion_mnist.py', 'Config file with get_config().',
                                  lock_config=True, **d)
  flags.DEFINE_list('loss_types', list(DEFAULT_LOSS_TYPES), 'loss_type of each run (sid2.losses names).', **d)
  flags.DEFINE_integer('steps', None, 'Training steps per run (default: config.total_steps).', **d)
  flags.DEFINE_integer('eval_every', None, 'Checkpoint + FD evaluation interval (default: config.eval_every).', **d)
  flags.DEFINE_integer('num_samples', 1000, 'Generated and real images per FD evaluation.', **d)
  flags.DEFINE_integer('batch_size', 500, 'Samples per jitted sampling call.', **d)
  cli.define_sampler_flags(fv, ('num_steps',))  # --num_steps (sid2.sampling)
  flags.DEFINE_integer('seed', 0, 'Sampling seed (the training seed is config.seed).', **d)
  flags.DEFINE_bool('precision_recall', True, 'Also compute k-NN precision/recall.', **d)
  flags.DEFINE_string('out', 'runs/compare_weightings', 'Output directory (one workdir per loss_type).', **d)


def workdir_name(loss_type: str) -> str:
  """A directory name for a loss_type: ':' becomes '_' (e.g. sigmoid_-1_2.55_800)."""
  return re.sub(r'[^A-Za-z0-9.+-]', '_', loss_type)


def run_config(base, loss_type: str, steps: int, eval_every: int):
  """The base config with this loss_type, `steps` steps, a checkpoint every eval_every (all kept), guidance
  off and no trainer sample grids (the FD evaluation samples instead)."""
  c = copy.deepcopy(base)
  c.unlock()
  c.loss_type = loss_type
  c.total_steps = steps
  c.eval_every = eval_every
  c.checkpoint_every = eval_every
  c.keep_checkpoints = -(-steps // eval_every) + 1
  c.log_every = min(c.log_every, eval_every)
  c.sampler.guidance = 0.0  # SiD2 convention: w = 0 is no guidance (SPEC §11)
  c.sampler.num_samples = 0
  return c


def validate(base, loss_types, steps, eval_every, num_samples) -> None:
  """ValueError naming the field, before any compute (each run config goes through validate_config)."""
  from sid2 import config_lib  # pylint: disable=g-import-not-at-top
  from sid2 import losses  # pylint: disable=g-import-not-at-top
  from sid2 import schedules  # pylint: disable=g-import-not-at-top
  from sid2.eval import features  # pylint: disable=g-import-not-at-top
  if not loss_types:
    raise ValueError('loss_types must name at least one loss_type')
  if len(set(map(workdir_name, loss_types))) != len(loss_types):
    raise ValueError(f'loss_types must be distinct; got {loss_types}')
  for name, v in (('steps', steps), ('eval_every', eval_every)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f'{name} must be a positive integer; got {v!r}')
  if eval_every > steps:
    raise ValueError(f'eval_every must be <= steps; got eval_every={eval_every}, steps={steps}')
  max_real = features.FASHION_MNIST_TEST_SIZE
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 2 <= num_samples <= max_real:
    raise ValueError(f'num_samples must be an integer in [2, {max_real}]; got {num_samples!r}')
  features.check_fmnist_config(base)
  schedule = schedules.get_schedule(base.schedule, image_res=base.image_res)
  for lt in loss_types:
    losses.get_loss(lt, schedule)  # ValueError naming the allowed loss types
    config_lib.validate_config(run_config(base, lt, steps, eval_every), num_devices=1)


def eval_steps(workdir: str, eval_every: int, steps: int) -> list:
  """The checkpoint steps to evaluate: multiples of eval_every and the last step."""
  from sid2 import restore  # pylint: disable=g-import-not-at-top
  return [s for s in restore.checkpoint_steps(workdir) if s % eval_every == 0 or s == steps]


def _stored(workdir: str, step: int, raw: dict):
  """The stored fd_<step>.json when it was computed with the same settings, else None."""
  path = os.path.join(workdir, 'eval', f'fd_{step}.json')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    rec = json.load(f)
  sampling = dict(rec.get('sampling', {}), num_samples=rec.get('num_samples'))
  for k in REUSE_KEYS:
    want = raw[k]
    if want is not None and sampling.get(k) != want:
      return None
  return rec


def run(base, loss_types, *, steps: int, eval_every: int, num_samples: int, out: str, batch_size: int = 500,
        num_steps=None, seed: int = 0, compute_pr: bool = True, log=print) -> dict:
  """Trains every loss_type, evaluates its checkpoints, writes the JSON and PNG; returns the result."""
  validate(base, loss_types, steps, eval_every, num_samples)
  from sid2 import trainer  # pylint: disable=g-import-not-at-top
  from sid2.eval import evaluation  # pylint: disable=g-import-not-at-top
  result = dict(config_description=base.get('description', ''), steps=steps, eval_every=eval_every,
                num_samples=num_samples, guidance=0.0, runs={})
  os.makedirs(out, exist_ok=True)
  for lt in loss_types:
    workdir = os.path.join(out, workdir_name(lt))
    cfg = run_config(base, lt, steps, eval_every)
    log(f'== {lt}: training {steps} steps in {workdir}')
    t0 = time.time()
    trainer.train_and_evaluate(cfg, workdir)
    train_seconds = time.time() - t0
    raw = dict(dict.fromkeys(sampling.FLAG_NAMES), workdir=workdir, step=None, num_samples=num_samples,
               batch_size=batch_size, num_steps=num_steps, seed=seed, labels=None, class_label=None,
               **sampling.guidance_flags(0.0))
    rows = []
    for step in eval_steps(workdir, eval_every, steps):
      rec = _stored(workdir, step, dict(raw, batch_size=min(batch_size, num_samples)))
      if rec is None:
        rec = evaluation.evaluate(dict(raw, step=step), compute_pr=compute_pr, log=log)
      rows.append(dict(step=step, fd=rec['fd'], precision=rec.get('precision'), recall=rec.get('recall')))
    result['runs'][lt] = dict(workdir=os.path.abspath(workdir), train_seconds=round(train_seconds, 1),
                              evals=rows)
    log(f'== {lt}: ' + ', '.join(f"step {r['step']} FD {r['fd']:.3f}" for r in rows))
  with open(os.path.join(out, 'compare_weightings.json'), 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  plot(result, os.path.join(out, 'compare_weightings.png'))
  return result


def plot(result: dict, path: str) -> None:
  """FD over training per loss_type, and the weightings w(λ) (eps-space, SPEC §3) they use."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from sid2 import weightings  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  lam = np.linspace(-15, 15, 301)
  for i, (lt, run_) in enumerate(result['runs'].items()):
    color = plt.cm.tab10(i)
    rows = run_['evals']
    axes[0].plot([r['step'] for r in rows], [r['fd'] for r in rows], 'o-', color=color, label=lt)
    try:
      w = weightings.get_weighting(lt)
    except ValueError:
      continue  # eps_mse / power losses have no single w(λ)
    axes[1].plot(lam, np.asarray(w(lam, result['steps'])), color=color, label=f'{lt} (end of training)')
    if weightings.maybe_step(w):
      axes[1].plot(lam, np.asarray(w(lam, 0)), '--', color=color, lw=0.8, label=f'{lt} (step 0)')
  axes[0].set(xlabel='training step', ylabel=f"FD ({result['num_samples']} samples, no guidance)",
              yscale='log', title='FD over training (SiD2 Fig. 13/14, small scale)')
  axes[0].legend(fontsize=8)
  axes[1].set(xlabel='logSNR λ', ylabel='w(λ)', yscale='log', title='eps-space weighting w(λ)')
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv, flag_values=None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  from sid2 import plugins  # pylint: disable=g-import-not-at-top
  base = fv.config
  plugins.load_plugins(base)  # config.plugins (registers more models)
  steps = fv.steps if fv.steps is not None else base.total_steps
  eval_every = fv.eval_every if fv.eval_every is not None else base.eval_every
  t0 = time.time()
  run(base, [s.strip() for s in fv.loss_types], steps=steps, eval_every=eval_every,
               num_samples=fv.num_samples, out=fv.out, batch_size=fv.batch_size,
               num_steps=fv.num_steps, seed=fv.seed, compute_pr=fv.precision_recall)
  print(f'wrote {os.path.join(fv.out, "compare_weightings.json")} and .png ({time.time() - t0:.0f} s)')


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
