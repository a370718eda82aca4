"""The recipe study (issue 18): which Fashion-MNIST recipe gives the best samples per unit of training time.

  python -m experiments.recipe_study --out runs/recipe_study                       # defaults below
  python -m experiments.recipe_study --out runs/recipe_study --recipes sid2_default,uvit_small --seeds 0
  python -m experiments.recipe_study --out /tmp/recipe_smoke --smoke               # CI: tiny, < 2 minutes

Every recipe (RECIPES: overrides of SiD2's recipe `configs/fashion_mnist_sid2.py`, made unconditional) trains for a fixed time
budget (`config.max_train_seconds` on `config.train_clock`, compilation included: `--budget`, `--clock`;
the 'process' clock counts the CPU seconds of the training process, so runs stay comparable when other
jobs share the machine; alone on 2 cores it is about 2x the wall time) and for >= 3 seeds. Each run is scored
at the budget and at the fixed step `--fixed_step` (the same step for every recipe) by FD, precision and
recall at N = `--num_samples` against the first N test images (sid2.eval's Fashion-MNIST features, DDPM
`--sample_steps` steps, no guidance). Controls: real training images against the same test images (the floor
FD reaches at this N) and the untrained model of each recipe's shape at step 0 is not scored (its samples are
noise); a recipe whose run did not reach `--fixed_step` in its budget reports no fixed-step score.

Writes <out>/<recipe>/seed<s>/result.json (reused by reruns with unchanged settings), <out>/recipe_study.json
(per recipe: mean ± std over seeds with n, steps reached, seconds on both clocks) and <out>/recipe_study.png
(FD against training seconds, one line per recipe, one point per seed and scored checkpoint).
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import flags

from experiments import cli
from sid2 import study

# Shape of a small U-ViT at 32x32 close to the simple reference of issue 18 (lucidrains' simple_diffusion
# U-ViT: dims 32/64/128, patch 2, 6 transformer layers; ~3.0M parameters there, 2.71M here). The study's
# winner: configs/fashion_mnist.py (the default) is SiD2's recipe in this shape.
UVIT_SMALL = {'model.channels': (32, 64, 128), 'model.enc_blocks': (1, 1, 1), 'model.dec_blocks': (1, 1, 1),
              'model.transformer_channels': 128, 'model.transformer_blocks': 6, 'model.num_heads': 4}
# Each recipe: (what it tests, overrides of SiD2's recipe (configs/fashion_mnist_sid2.py)).
RECIPES = {
    'sid2_default': ("SiD2's recipe, the default before this study (48/96 U-ViT, 2x192 transformer, "
                     'sigmoid:2.55, v, lr 2e-3)', {}),
    'uvit_small': ('model shape only: 32/64/128 U-ViT with 6x128 transformer', dict(UVIT_SMALL)),
    'uvit_small_min_snr': ('uvit_small + min-SNR-5 weighting instead of sigmoid:2.55',
                           dict(UVIT_SMALL, loss_type='min_snr:5')),
    'uvit_small_bias1.5': ('uvit_small + sigmoid bias 1.5 (SiD2 B.6 values: ~1.5 per 2x from 512^2)',
                           dict(UVIT_SMALL, loss_type='sigmoid:1.5')),
    'uvit_small_lr1e-3': ('uvit_small + peak learning rate 1e-3',
                          dict(UVIT_SMALL, **{'optimizer.learning_rate': 1e-3})),
    'uvit_small_eps': ('uvit_small + eps-prediction instead of v (the same sigmoid-weighted loss; only the '
                       'network output changes)',
                       dict(UVIT_SMALL, parametrization='eps')),
    'uvit_small_edm_monotonic': ('uvit_small + EDM-monotonic weighting instead of sigmoid:2.55 (SiD2 Fig. 13)',
                                 dict(UVIT_SMALL, loss_type='edm_monotonic')),
    'uvit_small_batch128': ('uvit_small + batch 128 instead of 64 (half the steps in the budget)',
                            dict(UVIT_SMALL, batch_size=128)),
    'uvit_small_uniform_t': ('uvit_small + i.i.d. uniform t instead of low-discrepancy t',
                             dict(UVIT_SMALL, low_discrepancy=False)),
    'uvit_small_warm50': ('uvit_small + 50 warmup steps instead of 200',
                          dict(UVIT_SMALL, **{'optimizer.warmup_steps': 50})),
    'reference_recipe': ('the simple reference recipe in this codebase: uvit_small, min-SNR-5, v, Adam 2e-4 '
                         'constant, no warmup, EMA 0.999',
                         dict(UVIT_SMALL, loss_type='min_snr:5', **{'optimizer.learning_rate': 2e-4,
                                                                    'optimizer.warmup_steps': 0,
                                                                    'optimizer.decay': 'constant'})),
}
DEFAULT_RECIPES = ('sid2_default', 'uvit_small', 'uvit_small_min_snr', 'uvit_small_warm50')
# Steps cap per run: the budget, not the step count, ends a run (cosine decays run over this horizon, so
# within a budget their learning rate is close to the peak: the same for every recipe).
MAX_STEPS = 100_000


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  flags.DEFINE_string('out', None, 'Output folder.', **d)
  flags.DEFINE_list('recipes', list(DEFAULT_RECIPES), f'Recipes to run, of {sorted(RECIPES)}.', **d)
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Training (and sampling) seeds.', **d)
  flags.DEFINE_float('budget', 960.0, 'Training seconds per run on --clock (compilation included).', **d)
  flags.DEFINE_enum('clock', 'process', ['process', 'wall'], 'Clock of the budget (sid2.train_clock).', **d)
  flags.DEFINE_integer('fixed_step', 400, 'Also score every run at this step (0: only at the budget).', **d)
  flags.DEFINE_integer('num_samples', 1000, 'Samples (and test images) per FD / precision-recall score.', **d)
  flags.DEFINE_integer('sample_steps', 64, 'DDPM sampling steps.', **d)
  flags.DEFINE_integer('batch_size', 500, 'Samples per jitted sampling call.', **d)
  flags.DEFINE_bool('smoke', False, 'Tiny models, budgets and N (a CI test of the whole path).', **d)
  flags.mark_flags_as_required(['out'], **d)


def recipe_config(name: str, seed: int, *, budget: float, clock: str, fixed_step: int, smoke: bool = False):
  """The training config of recipe `name`, seed `seed`: unconditional Fashion-MNIST, stopped by the budget."""
  from configs import fashion_mnist_sid2  # pylint: disable=g-import-not-at-top
  if name not in RECIPES:
    raise ValueError(f'unknown recipe {name!r}; allowed: {sorted(RECIPES)}')
  c = study.unconditional(fashion_mnist_sid2.get_config(), f'recipe study: {name} seed {seed}')
  study.set_fields(c, RECIPES[name][1])
  c.seed = int(seed)
  c.total_steps = MAX_STEPS
  c.max_train_seconds = float(budget)
  c.train_clock = clock
  every = fixed_step if fixed_step > 0 else MAX_STEPS
  c.checkpoint_every = every
  c.keep_every = fixed_step if fixed_step > 0 else 0  # the fixed-step checkpoint is kept for scoring
  c.keep_checkpoints = 1
  c.eval_every = MAX_STEPS
  c.sampler.num_samples = 0  # no sample grid inside the budget; the study samples after training
  if smoke:
    c.batch_size = 8
    c.log_every = 1
    c.model.channels, c.model.enc_blocks, c.model.dec_blocks = (8, 16), (1, 1), (1, 1)
    c.model.transformer_channels, c.model.transformer_blocks, c.model.num_heads = 16, 1, 2
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, 2)
  return c


def validate(recipes, seeds, budget, fixed_step, num_samples, sample_steps):
  """ValueError naming the flag, before any compute."""
  for r in recipes:
    if r not in RECIPES:
      raise ValueError(f'--recipes: unknown recipe {r!r}; allowed: {sorted(RECIPES)}')
  if not recipes:
    raise ValueError('--recipes must name at least one recipe')
  if len(set(seeds)) != len(seeds) or not seeds:
    raise ValueError(f'--seeds must be distinct integers; got {seeds}')
  if not budget > 0:
    raise ValueError(f'--budget must be > 0 seconds; got {budget}')
  if fixed_step < 0:
    raise ValueError(f'--fixed_step must be >= 0 (0: none); got {fixed_step}')
  if num_samples < 2 or sample_steps < 1:
    raise ValueError(f'--num_samples must be >= 2 and --sample_steps >= 1; got {num_samples}, {sample_steps}')


def run_one(name, seed, out, *, budget, clock, fixed_step, scoring, smoke, log=print) -> dict:
  """Trains (or reuses) one run and scores it at the budget and at the fixed step."""
  config = recipe_config(name, seed, budget=budget, clock=clock, fixed_step=fixed_step, smoke=smoke)
  workdir = os.path.join(out, name, f'seed{seed}')

  def train_and_score():
    from sid2 import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    from sid2 import restore  # pylint: disable=g-import-not-at-top
    from sid2 import train_clock  # pylint: disable=g-import-not-at-top
    from sid2 import trainer  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    log(f'[{name}/seed{seed}] training for {budget:g} s on the {clock} clock in {workdir}')
    final = int(trainer.train_and_evaluate(config, workdir).step)
    clock_rec = train_clock.read(workdir)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'))
    steps = sorted(int(s) for s in ckpt.all_steps())
    ckpt.close()
    params, _ = restore.load_ema_params(workdir, final)
    result = dict(recipe=name, seed=int(seed), steps_reached=final, budget=budget, clock=clock,
                  seconds_at=clock_rec.get('steps', {}), stopped_by_budget=clock_rec.get('stopped_by_budget'),
                  num_params=int(sum(x.size for x in jax.tree.leaves(params))), checkpoints=steps,
                  budget_score=study.score(workdir, final, log=log, **scoring),
                  fixed_score=study.score(workdir, fixed_step, log=log, **scoring)
                  if 0 < fixed_step <= final else None,
                  config=json.loads(config.to_json_best_effort()))
    b = result['budget_score']
    log(f'[{name}/seed{seed}] {final} steps in the budget: FD {b["fd"]:.2f}, P/R {b["precision"]:.2f}/'
        f'{b["recall"]:.2f}' + (f'; at step {fixed_step}: FD {result["fixed_score"]["fd"]:.2f}'
                                if result['fixed_score'] else
                                f'; step {fixed_step} not reached' if fixed_step > 0 else ''))
    return result

  fp = study.fingerprint(config, dict(scoring, fixed_step=fixed_step))
  return study.reuse_or_run(workdir, fp, train_and_score, f'{name}/seed{seed}', log)


def summarise(results: dict) -> dict:
  """{recipe: {metric: {mean, std, n, values}}} over seeds, at the budget and at the fixed step."""
  agg = study.aggregate
  table = {}
  for name, runs in results.items():
    row = dict(description=RECIPES[name][0], num_params=runs[0]['num_params'])
    for key in ('fd', 'precision', 'recall'):
      row[f'budget_{key}'] = agg([r['budget_score'][key] for r in runs])
      row[f'fixed_{key}'] = agg([r['fixed_score'][key] if r['fixed_score'] else None for r in runs])
    row['steps_reached'] = agg([r['steps_reached'] for r in runs])
    last = [r['seconds_at'].get(str(r['steps_reached']), {}) for r in runs]
    row['wall_seconds'] = agg([s.get('wall') for s in last])
    row['process_seconds'] = agg([s.get('process') for s in last])
    table[name] = row
  return table


def markdown(table: dict, summary: dict) -> str:
  fmt = study.fmt
  lines = [f'| recipe | params | steps in budget | FD @ budget | P / R @ budget | FD @ step '
           f'{summary["fixed_step"]} | wall s | CPU s |', '|---|---|---|---|---|---|---|---|']
  for name, r in table.items():
    pr = '—' if r['budget_precision'] is None else \
        f'{r["budget_precision"]["mean"]:.2f} / {r["budget_recall"]["mean"]:.2f}'
    lines.append(f'| {name} | {r["num_params"] / 1e6:.2f}M | {fmt(r["steps_reached"], 0)} | '
                 f'{fmt(r["budget_fd"])} | {pr} | {fmt(r["fixed_fd"])} | {fmt(r["wall_seconds"], 0)} | '
                 f'{fmt(r["process_seconds"], 0)} |')
  c = summary['control']
  lines.append(f'| control: real train vs test images | — | — | {c["fd"]:.2f} (N={c["num_samples"]}) | '
               + f'{c["precision"]:.2f} / {c["recall"]:.2f} | — | — | — |')
  return '\n'.join(lines)


def plot(results: dict, clock: str, path: str) -> None:
  """FD against training seconds (on the budget's clock), one line per recipe through the seed means."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, runs in results.items():
    pts = []
    for r in runs:
      for score in (r['fixed_score'], r['budget_score']):
        if score:
          secs = r['seconds_at'].get(str(score['step']), {}).get(clock)
          if secs is not None:
            pts.append((secs, score['fd']))
    if pts:
      xs, ys = zip(*sorted(pts))
      line, = ax.plot(xs, ys, 'o', alpha=0.5)
      ax.plot([], [], 'o-', color=line.get_color(), label=name)
  ax.set_xlabel(f'training seconds ({clock} clock, compilation included)')
  ax.set_ylabel('FD (lower is better)')
  ax.set_yscale('log')
  ax.legend(fontsize=8)
  ax.set_title('Recipe study: FD at the fixed step and at the budget, per seed')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(out, recipes, seeds, *, budget, clock, fixed_step, num_samples, sample_steps, batch_size,
        smoke=False, log=print) -> dict:
  validate(recipes, seeds, budget, fixed_step, num_samples, sample_steps)
  for name in recipes:  # every config validates before any training
    from sid2 import config_lib  # pylint: disable=g-import-not-at-top
    config_lib.validate_config(recipe_config(name, seeds[0], budget=budget, clock=clock,
                                             fixed_step=fixed_step, smoke=smoke))
  os.makedirs(out, exist_ok=True)
  t0 = time.time()
  results = {}
  for seed in seeds:  # seed-major: an interrupted study has whole seeds of every recipe
    for name in recipes:
      scoring = dict(num_samples=num_samples, sample_steps=sample_steps, batch_size=batch_size, seed=int(seed))
      results.setdefault(name, []).append(run_one(name, int(seed), out, budget=budget, clock=clock,
                                                  fixed_step=fixed_step, scoring=scoring, smoke=smoke,
                                                  log=log))
  table = summarise(results)
  summary = dict(recipes=list(recipes), seeds=[int(s) for s in seeds], budget=budget, clock=clock,
                 fixed_step=fixed_step, num_samples=num_samples, sample_steps=sample_steps, sampler='ddpm',
                 guidance=0.0, table=table, control=study.real_control(num_samples, batch_size, log),
                 wall_seconds=round(time.time() - t0, 1),
                 command=' '.join(['python -m experiments.recipe_study'] + sys.argv[1:]))
  summary['markdown'] = markdown(table, summary)
  with open(os.path.join(out, 'recipe_study.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  plot(results, clock, os.path.join(out, 'recipe_study.png'))
  log(summary['markdown'])
  return summary


def main(argv, flag_values=None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  seeds = [int(s) for s in fv.seeds]
  kwargs = dict(budget=fv.budget, clock=fv.clock, fixed_step=fv.fixed_step, num_samples=fv.num_samples,
                sample_steps=fv.sample_steps, batch_size=fv.batch_size)
  recipes = list(fv.recipes)
  if fv.smoke:
    kwargs.update(budget=min(fv.budget, 4.0) if fv['budget'].present else 4.0, clock='wall', fixed_step=1,
                  num_samples=8, sample_steps=2, batch_size=8)
    recipes = recipes if fv['recipes'].present else ['sid2_default', 'reference_recipe']
    seeds = seeds if fv['seeds'].present else [0, 1]
  return run(fv.out, recipes, seeds, smoke=fv.smoke, **kwargs)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
