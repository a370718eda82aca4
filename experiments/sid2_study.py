"""SiD2's claims at small scale, with seeds (issue 17): weighting, time-shifted bias, resolution shift, depth.

  python -m experiments.sid2_study --out runs/sid2_study                        # every claim, 3 seeds
  python -m experiments.sid2_study --out runs/sid2_study --claims weighting,time_shift --seeds 0
  python -m experiments.sid2_study --out /tmp/sid2_smoke --smoke                # CI: tiny, about 2 minutes

Every arm is the default recipe (`configs/fashion_mnist.py`, made unconditional) with the overrides in ARMS,
trained for `--steps` steps (the same for every arm, so arms compare at equal steps; each arm's forward
GFLOPs per image and its wall / CPU seconds are reported beside its FD) for each seed. Each run is scored
without guidance by FD, precision and recall at N = `--num_samples` against the first N Fashion-MNIST test
images (sid2.eval's Fashion-MNIST features; 64x64 runs are box-averaged 2x2 to 32x32 first, the exact
inverse of the pixel repetition that made their data; DDPM `--sample_steps` steps): the arms of a claim
whose figure is FD over training (`curve`) at `--points` evenly spaced checkpoints, every other arm at its
last step. Control: N real training images against the same test images (the floor FD reaches at this N).

The claims (SiD2 supplement) and their arms:
  weighting   Fig. 13 / C.1: the sigmoid loss (bias shifted for the resolution) beats EDM-monotonic without
              guidance, more so later in training.                       sigmoid vs edm_monotonic
  time_shift  Fig. 14 / C.2: a bias that starts lower and rises linearly to the final one over the first
              steps helps a little.                                      sigmoid_time_shifted vs sigmoid
  resolution  B.1 / B.6: at 64x64 (Fashion-MNIST pixel-repeated 2x, patch 4 so the compute per step equals
              the 32x32 model's) the plain cosine schedule with the 32x32 bias does worse than the
              cosine-interpolated schedule with the bias moved for the resolution, by either rule
              (2 log 2 per halving: 1.16, or B.6's ~1.5 per halving: 1.5).
  depth       Fig. 15 / C.3: more depth helps (E2-D2 vs E1-D1 = the default's one block per level each way),
              and at a fixed total the decoder may be a little heavier (E1-D3 vs E3-D1).
Each claim's verdict (`verdicts` in the JSON) compares the final FDs of its pair(s): 'reproduced' when the
claimed-better arm's mean ± std interval lies entirely below the other's, 'reversed' when entirely above,
else 'not distinguishable at this scale' (no verdict with fewer than 2 seeds); Welch's t is given beside it.

Writes <out>/<arm>/seed<s>/result.json (reused by reruns with unchanged settings), <out>/sid2_study.json
(per arm: mean ± std over seeds with n, at every scored step; verdicts; control) and <out>/sid2_study.png
(FD over training per arm, one panel per claim).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

from absl import flags

from experiments import cli
from sid2 import study
from sid2 import weightings

# SiD2 B.6's bias rule from -3 at 512x512: +2 log 2 per halving (weightings.bias_for_resolution) gives 2.55
# at 32x32 and 1.16 at 64x64; the ~1.5 per halving that B.6's own values imply gives 1.5 at 64x64.
BIAS_32 = round(weightings.bias_for_resolution(-3.0, 512, 32), 2)
BIAS_64 = round(weightings.bias_for_resolution(-3.0, 512, 64), 2)
BIAS_64_B6 = -3.0 + 1.5 * 3
TIME_SHIFT_DROP = 4.0  # C.2: b_start a few units below b_end (the supplement's -8/-6 -> -3)
TIME_SHIFT_FRACTION = 0.2  # of --steps: C.2's "relatively quick" warmup (100k of the ImageNet runs' steps)
RES64 = {'image_res': 64, 'model.patching_size': 4}

# Each arm: (what it is, overrides of the default recipe; '{t_b}' in a loss_type is filled per size).
ARMS = {
    'sigmoid': ('the default recipe: sigmoid:2.55, cosine (= cosine_interpolated at 32x32), E1-D1 per level',
                {}),
    'edm_monotonic': ('EDM-monotonic weighting instead of the sigmoid', {'loss_type': 'edm_monotonic'}),
    'sigmoid_time_shifted': (f'sigmoid bias rising linearly from {BIAS_32 - TIME_SHIFT_DROP:g} to {BIAS_32:g} '
                             f'over the first {TIME_SHIFT_FRACTION:.0%} of the steps (C.2)',
                             {'loss_type': f'sigmoid:{BIAS_32 - TIME_SHIFT_DROP:g}:{BIAS_32:g}:{{t_b}}'}),
    'res64_unshifted': (f'64x64, plain cosine schedule and the 32x32 bias {BIAS_32:g}',
                        dict(RES64, schedule='cosine', loss_type=f'sigmoid:{BIAS_32:g}')),
    'res64_shifted': (f'64x64, cosine_interpolated schedule and bias {BIAS_64:g} (2 log 2 per halving)',
                      dict(RES64, schedule='cosine_interpolated', loss_type=f'sigmoid:{BIAS_64:g}')),
    'res64_shifted_b6': (f"64x64, cosine_interpolated schedule and bias {BIAS_64_B6:g} (B.6's ~1.5 per halving)",
                         dict(RES64, schedule='cosine_interpolated', loss_type=f'sigmoid:{BIAS_64_B6:g}')),
    'e2_d2': ('two ResBlocks per level in the encoder and two in the decoder',
              {'model.enc_blocks': (2, 2, 2), 'model.dec_blocks': (2, 2, 2)}),
    'e1_d3': ('one ResBlock per level in the encoder, three in the decoder',
              {'model.enc_blocks': (1, 1, 1), 'model.dec_blocks': (3, 3, 3)}),
    'e3_d1': ('three ResBlocks per level in the encoder, one in the decoder',
              {'model.enc_blocks': (3, 3, 3), 'model.dec_blocks': (1, 1, 1)}),
}
# Each claim: its figure, its arms, whether its figure is FD over training, and the (better, worse) pairs
# the supplement claims.
CLAIMS = {
    'weighting': dict(title='Fig. 13 / C.1: sigmoid beats EDM-monotonic without guidance',
                      arms=('sigmoid', 'edm_monotonic'), curve=True, pairs=(('sigmoid', 'edm_monotonic'),)),
    'time_shift': dict(title='Fig. 14 / C.2: a time-shifted sigmoid bias helps a little',
                       arms=('sigmoid', 'sigmoid_time_shifted'), curve=True,
                       pairs=(('sigmoid_time_shifted', 'sigmoid'),)),
    'resolution': dict(title='B.1 / B.6: at 64x64 the shifted schedule and bias beat the unshifted ones',
                       arms=('res64_unshifted', 'res64_shifted', 'res64_shifted_b6'), curve=False,
                       pairs=(('res64_shifted', 'res64_unshifted'), ('res64_shifted_b6', 'res64_unshifted'))),
    'depth': dict(title='Fig. 15 / C.3: depth helps; the decoder may be a little heavier',
                  arms=('sigmoid', 'e2_d2', 'e1_d3', 'e3_d1'), curve=False,
                  pairs=(('e2_d2', 'sigmoid'), ('e1_d3', 'e3_d1'))),
}
# steps: training steps per run; points: scored checkpoints of curve arms; num_samples: N of FD / P-R;
# sample_steps: DDPM steps. 'default' is sized for about two hours of this 2-core machine alone: 9 arms x 3
# seeds of ~600 steps at ~4.5 steps/s (the E2-D2 / E1-D3 / E3-D1 arms ~1.5x slower), plus 2000 samples x 32
# DDPM steps per score (~35 s) at 5 points for the 3 curve arms and at the end for the other 6.
SIZES = {
    'smoke': dict(steps=4, points=2, num_samples=8, sample_steps=2, batch_size=8, seeds=(0,),
                  claims=('weighting', 'resolution'), tiny=True),
    'default': dict(steps=600, points=5, num_samples=2000, sample_steps=32, batch_size=500, seeds=(0, 1, 2),
                    claims=tuple(CLAIMS)),
}


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  flags.DEFINE_string('out', None, 'Output folder.', **d)
  flags.DEFINE_enum('size', 'default', list(SIZES), 'Study size (steps, points, N, seeds, claims).', **d)
  flags.DEFINE_bool('smoke', False, '= --size smoke (CI: tiny models, about 2 minutes).', **d)
  flags.DEFINE_list('claims', [], f'Claims to run, of {list(CLAIMS)} (default: the size\'s).', **d)
  flags.DEFINE_list('seeds', [], 'Training (and sampling) seeds (default: the size\'s).', **d)
  flags.DEFINE_integer('steps', 0, 'Training steps per run (default: the size\'s).', **d)
  flags.DEFINE_integer('points', 0, 'Scored checkpoints of the curve claims\' arms (default: the size\'s).', **d)
  flags.DEFINE_integer('num_samples', 0, 'Samples (and test images) per score (default: the size\'s).', **d)
  flags.DEFINE_integer('sample_steps', 0, 'DDPM sampling steps (default: the size\'s).', **d)
  flags.mark_flags_as_required(['out'], **d)


def arms_of(claims) -> tuple:
  """The arms the claims need, each once, in claim order."""
  out = []
  for c in claims:
    out += [a for a in CLAIMS[c]['arms'] if a not in out]
  return tuple(out)


def curve_arms(claims) -> set:
  return {a for c in claims if CLAIMS[c]['curve'] for a in CLAIMS[c]['arms']}


def score_steps(steps: int, points: int, curve: bool) -> list:
  """The steps at which a run is scored: `points` evenly spaced checkpoints (curve arms) or the last."""
  if not curve:
    return [steps]
  return sorted({max(1, round(steps * k / points)) for k in range(1, points + 1)})


def arm_config(arm: str, seed: int, size: dict):
  """The training config of one run: the default recipe, unconditional, with the arm's overrides."""
  from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
  if arm not in ARMS:
    raise ValueError(f'unknown arm {arm!r}; allowed: {sorted(ARMS)}')
  c = study.unconditional(fashion_mnist.get_config(), f'sid2 study: {arm} seed {seed}')
  steps = int(size['steps'])
  if size.get('tiny'):
    c.batch_size = 8
    c.log_every = 1
    c.model.channels = (8, 16, 16)
    c.model.transformer_channels, c.model.transformer_blocks, c.model.num_heads = 16, 1, 2
    c.optimizer.warmup_steps = 1
  t_b = max(1, round(TIME_SHIFT_FRACTION * steps))
  study.set_fields(c, ARMS[arm][1], lambda v: v.format(t_b=t_b) if isinstance(v, str) else v)
  c.seed = int(seed)
  c.total_steps = steps
  every = score_steps(steps, size['points'], True)
  every = every[0] if len(every) > 1 else steps
  c.checkpoint_every = every
  c.keep_every = every  # every scored checkpoint is kept
  c.keep_checkpoints = 1
  c.eval_every = steps + 1
  c.log_every = min(c.log_every, steps)
  c.sampler.num_samples = 0  # the study samples after training
  return c


def validate(claims, seeds, size: dict) -> None:
  """ValueError naming the flag, before any compute (every arm's config is also validated)."""
  from sid2 import config_lib  # pylint: disable=g-import-not-at-top
  if not claims:
    raise ValueError(f'--claims must name at least one of {list(CLAIMS)}')
  for c in claims:
    if c not in CLAIMS:
      raise ValueError(f'--claims: unknown claim {c!r}; allowed: {list(CLAIMS)}')
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'--seeds must be distinct integers; got {list(seeds)}')
  if size['steps'] < 1 or size['points'] < 1 or size['points'] > size['steps']:
    raise ValueError(f'--steps must be >= 1 and 1 <= --points <= --steps; got {size["steps"]}, {size["points"]}')
  if size['num_samples'] < 2 or size['sample_steps'] < 1:
    raise ValueError(f'--num_samples must be >= 2 and --sample_steps >= 1; got {size["num_samples"]}, '
                     f'{size["sample_steps"]}')
  for arm in arms_of(claims):
    config_lib.validate_config(arm_config(arm, seeds[0], size))


def forward_gflops(config) -> float:
  """Forward GFLOPs (multiply-add = 1) per image of the arm's U-ViT (sid2.flops, B.3)."""
  from sid2 import flops  # pylint: disable=g-import-not-at-top
  return float(flops.uvit_gflops(config.model, config.image_res, num_channels=1))


def run_one(arm, seed, out, size, *, curve, log=print) -> dict:
  """Trains (or reuses) one run and scores it at its score steps."""
  config = arm_config(arm, seed, size)
  workdir = os.path.join(out, arm, f'seed{seed}')
  steps = score_steps(size['steps'], size['points'], curve)
  scoring = dict(num_samples=size['num_samples'], sample_steps=size['sample_steps'],
                 batch_size=min(size['batch_size'], size['num_samples']), seed=int(seed))

  def train_and_score():
    from sid2 import train_clock  # pylint: disable=g-import-not-at-top
    from sid2 import trainer  # pylint: disable=g-import-not-at-top
    log(f'[{arm}/seed{seed}] training {size["steps"]} steps in {workdir}; scored at steps {steps}')
    final = int(trainer.train_and_evaluate(config, workdir).step)
    clock = train_clock.read(workdir).get('steps', {}).get(str(final), {})
    scores = [study.score(workdir, s, log=log, **scoring) for s in steps]
    last = scores[-1]
    log(f'[{arm}/seed{seed}] step {final}: FD {last["fd"]:.2f}, P/R {last["precision"]:.2f}/'
        f'{last["recall"]:.2f}' + ''.join(f'; step {s["step"]}: {s["fd"]:.2f}' for s in scores[:-1]))
    return dict(arm=arm, seed=int(seed), steps=final, scores=scores, wall_seconds=clock.get('wall'),
                process_seconds=clock.get('process'), gflops=forward_gflops(config),
                config=json.loads(config.to_json_best_effort()))

  fp = study.fingerprint(config, dict(scoring, score_steps=steps))
  return study.reuse_or_run(workdir, fp, train_and_score, f'{arm}/seed{seed}', log)


def welch_t(a: dict, b: dict) -> float:
  """(mean_b - mean_a) / sqrt(s_a^2 / n_a + s_b^2 / n_b) of two `study.aggregate`s (nan without spread)."""
  se = math.sqrt(a['std'] ** 2 / a['n'] + b['std'] ** 2 / b['n'])
  return (b['mean'] - a['mean']) / se if se > 0 else float('nan')


def verdict(better: dict, worse: dict) -> str:
  """The word for 'better has a lower FD than worse' from the two arms' final FDs (mean ± std over seeds)."""
  if min(better['n'], worse['n']) < 2:
    return 'no verdict from one seed'
  if better['mean'] + better['std'] < worse['mean'] - worse['std']:
    return 'reproduced'
  if better['mean'] - better['std'] > worse['mean'] + worse['std']:
    return 'reversed'
  return 'not distinguishable at this scale'


def summarise(results: dict, claims) -> dict:
  """{'arms': {arm: row}, 'verdicts': [...]}: per arm, FD / P / R mean ± std over seeds at every scored step."""
  agg = study.aggregate
  arms = {}
  for arm, runs in results.items():
    steps = sorted({s['step'] for r in runs for s in r['scores']})
    at = {}
    for step in steps:
      got = [next((s for s in r['scores'] if s['step'] == step), None) for r in runs]
      at[str(step)] = {k: agg([g[k] if g else None for g in got]) for k in ('fd', 'precision', 'recall')}
    final = at[str(steps[-1])]
    arms[arm] = dict(description=ARMS[arm][0], loss_type=runs[0]['config']['loss_type'],
                     schedule=runs[0]['config']['schedule'], image_res=runs[0]['config']['image_res'],
                     gflops=runs[0]['gflops'], steps=steps[-1], fd=final['fd'], precision=final['precision'],
                     recall=final['recall'], at=at, wall_seconds=agg([r['wall_seconds'] for r in runs]),
                     process_seconds=agg([r['process_seconds'] for r in runs]))
  verdicts = []
  for c in claims:
    for better, worse in CLAIMS[c]['pairs']:
      b, w = arms[better]['fd'], arms[worse]['fd']
      verdicts.append(dict(claim=c, title=CLAIMS[c]['title'], better=better, worse=worse, verdict=verdict(b, w),
                           welch_t=welch_t(b, w), fd_better=b, fd_worse=w))
  return dict(arms=arms, verdicts=verdicts)


def markdown(summary: dict) -> str:
  fmt = study.fmt
  lines = ['| claim | arm | loss / schedule / res | fwd GFLOPs | FD (final) | P / R | wall s |',
           '|---|---|---|---|---|---|---|']
  for c in summary['claims']:
    for arm in CLAIMS[c]['arms']:
      r = summary['table']['arms'][arm]
      pr = '—' if r['precision'] is None else f'{r["precision"]["mean"]:.2f} / {r["recall"]["mean"]:.2f}'
      lines.append(f'| {c} | {arm} | {r["loss_type"]} / {r["schedule"]} / {r["image_res"]} | '
                   f'{r["gflops"]:.3f} | {fmt(r["fd"])} | {pr} | {fmt(r["wall_seconds"], 0)} |')
  ctl = summary['control']
  lines.append(f'| control | real train vs test images | — | — | {ctl["fd"]:.2f} (N={ctl["num_samples"]}) | '
               f'{ctl["precision"]:.2f} / {ctl["recall"]:.2f} | — |')
  lines.append('')
  for v in summary['table']['verdicts']:
    lines.append(f'- {v["claim"]}: {v["better"]} {fmt(v["fd_better"])} vs {v["worse"]} {fmt(v["fd_worse"])}: '
                 f'**{v["verdict"]}** (Welch t = {v["welch_t"]:.1f})')
  return '\n'.join(lines)


def plot(summary: dict, path: str) -> None:
  """FD over training (mean ± std over seeds) per arm, one panel per claim."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  claims = summary['claims']
  fig, axes = plt.subplots(1, len(claims), figsize=(4.5 * len(claims), 3.8), squeeze=False)
  for ax, c in zip(axes[0], claims):
    for arm in CLAIMS[c]['arms']:
      at = summary['table']['arms'][arm]['at']
      xs = [int(s) for s in at]
      ys = [at[s]['fd']['mean'] for s in at]
      es = [at[s]['fd']['std'] for s in at]
      ax.errorbar(xs, ys, yerr=es, marker='o', capsize=3, label=arm)
    ax.set_title(CLAIMS[c]['title'], fontsize=8)
    ax.set_xlabel('training step')
    ax.set_ylabel(f'FD (N={summary["num_samples"]}, lower is better)')
    ax.set_yscale('log')
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(out, claims, seeds, size: dict, log=print) -> dict:
  validate(claims, seeds, size)  # before any training
  os.makedirs(out, exist_ok=True)
  t0 = time.time()
  curves = curve_arms(claims)
  results = {}
  for seed in seeds:  # seed-major: an interrupted study has whole seeds of every arm
    for arm in arms_of(claims):
      results.setdefault(arm, []).append(run_one(arm, int(seed), out, size, curve=arm in curves, log=log))
  summary = dict(claims=list(claims), seeds=[int(s) for s in seeds], size=dict(size, seeds=list(seeds)),
                 num_samples=size['num_samples'], sampler='ddpm', sample_steps=size['sample_steps'],
                 guidance=0.0, table=summarise(results, claims),
                 control=study.real_control(size['num_samples'], size['batch_size'], log),
                 wall_seconds=round(time.time() - t0, 1),
                 command=' '.join(['python -m experiments.sid2_study'] + sys.argv[1:]))
  summary['markdown'] = markdown(summary)
  with open(os.path.join(out, 'sid2_study.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  plot(summary, os.path.join(out, 'sid2_study.png'))
  log(summary['markdown'])
  return summary


def main(argv, flag_values=None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  size = dict(SIZES['smoke' if fv.smoke else fv.size])
  for key in ('steps', 'points', 'num_samples', 'sample_steps'):
    if fv[key].value:
      size[key] = int(fv[key].value)
  claims = tuple(fv.claims) or size.pop('claims')
  size.pop('claims', None)
  try:
    seeds = tuple(int(s) for s in fv.seeds) or size['seeds']
  except ValueError:
    raise ValueError(f'--seeds must be distinct integers; got {fv.seeds}') from None
  return run(fv.out, claims, seeds, size)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
