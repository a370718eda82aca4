"""FD of no guidance, classifier-free guidance and autoguidance (SiD2 B.5) over seeds, as a markdown table.

  python -m experiments.autoguide_table --workdir runs/fmnist --guide_step 800 --strengths 0.5,1,2 \
      --num_samples 10000 --seeds 0,1,2 [--guide_workdir runs/fmnist_small] [--step N] [--ref ref.npz]
      [--features fmnist | --features inception --inception_weights ...] [--sampler ddpm --num_steps 128]
      [--cfg_guidance 1.0 --cfg_interval=-3,5] [--autoguide_interval none] [--out table.json]

Rows (each scored at every seed; the table shows mean ± std over the seeds, `sid2.study.aggregate`):
  none          guidance w = 0
  cfg           classifier-free guidance w = --cfg_guidance on all logSNRs    (class-conditional models only)
  cfg_interval  the same on --cfg_interval                                     (class-conditional models only)
  autoguidance  w = each of --strengths on --autoguide_interval, guided by --guide_workdir (default: --workdir)
                at --guide_step (default: the guide's latest checkpoint)

FD is `sid2.eval`'s, exactly as `experiments.evaluate` computes it (the same feature nets, reference files or
streamed reference, per-sample keys fold_in(PRNGKey(seed), i)); the reference is read or streamed once for all
rows. The model's step and the guide's step are fixed when the command starts (default: the latest
checkpoints), so a run still training does not change a table half way.

Resumable: every finished (row, seed) is stored in --out (default `<workdir>/eval/autoguide_table.json`) under
`sid2.eval.evaluation.cache_key` of its settings (step, sampler settings, guidance, guide, seed, N, feature
net, reference); a rerun reuses stored results whose key matches and computes only the rest. The table is also
written as markdown to `<out>.md`.
"""
from __future__ import annotations
from sid2 import runtime  # first, before jax: one CPU device per core, persistent compile cache
runtime.configure(__name__)  # (only when run as a program)

import json
import math
import os
from typing import Optional

from absl import flags

from experiments import cli
from sid2 import restore
from sid2 import sampling
from sid2 import study
from sid2.eval import evaluation
from sid2.eval import feature_nets

TABLE_VERSION = 1
# What of a score is stored per (row, seed).
KEPT = ('fd', 'precision', 'recall', 'step', 'num_samples', 'seed', 'sampling', 'sample_seconds')


def define_flags(fv: flags.FlagValues):
  """This command's flags on `fv`."""
  d = dict(flag_values=fv)
  cli.define_checkpoint_flags(fv, 'Training workdir of the model (config.json + checkpoints/).',
                              'Checkpoint step of the model (default: its latest).')
  cli.define_guide_flags(fv)  # --guide_workdir (default here: --workdir), --guide_step
  flags.DEFINE_string('strengths', '0.5,1,2', 'Comma-separated autoguidance strengths w.', **d)
  flags.DEFINE_string('seeds', '0,1,2', 'Comma-separated sampling seeds.', **d)
  flags.DEFINE_integer('num_samples', 10_000, 'Samples per (row, seed).', **d)
  flags.DEFINE_integer('batch_size', 500, 'Samples per jitted sampling call (over all devices).', **d)
  cli.define_sampler_flags(fv, sampling.LOOP_FIELDS)  # --sampler, --num_steps, --clip_x, --logvar_type, --eta
  flags.DEFINE_float('cfg_guidance', 1.0, 'Classifier-free guidance w of the cfg rows.', **d)
  flags.DEFINE_string('cfg_interval', '-3,5', "logSNR interval 'lo,hi' of the cfg_interval row.", **d)
  flags.DEFINE_string('autoguide_interval', 'none', "logSNR interval of the autoguidance rows ('none': all).",
                      **d)
  flags.DEFINE_string('features', 'fmnist', f'Feature net: one of {feature_nets.NAMES}.', **d)
  flags.DEFINE_string('fmnist_weights', None, 'Fashion-MNIST feature-net safetensors (default: shipped).', **d)
  flags.DEFINE_string('inception_weights', None, 'Inception-v3 FID weight file, for --features inception.', **d)
  flags.DEFINE_string('inception_sha256', None, 'Assert this sha256 for --inception_weights.', **d)
  flags.DEFINE_string('ref', None, 'Reference statistics .npz (as experiments.evaluate); default: streamed '
                      'from the run\'s dataset.', **d)
  flags.DEFINE_string('ref_split', evaluation.REAL_SPLIT, 'Dataset split of the default reference.', **d)
  flags.DEFINE_bool('precision_recall', False, 'Also compute k-NN precision/recall (stored, not tabled).', **d)
  flags.DEFINE_string('out', None, 'Output JSON (default: <workdir>/eval/autoguide_table.json).', **d)


def _numbers(text: str, field: str, kind=float) -> list:
  try:
    values = [kind(p) for p in str(text).split(',') if p.strip()]
  except ValueError:
    raise ValueError(f'{field} must be comma-separated numbers; got {text!r}') from None
  if not values or len(set(values)) != len(values):
    raise ValueError(f'{field} must be a non-empty list without repeats; got {text!r}')
  if kind is float and not all(math.isfinite(v) for v in values):
    raise ValueError(f'{field} must be finite; got {text!r}')
  return values


def _latest(workdir: str, step: Optional[int], field: str) -> int:
  steps = restore.checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'no checkpoints in {restore.checkpoint_dir(workdir)} ({field})')
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(f'{field}={step!r} is not a checkpoint of {workdir}; available steps: {steps}')
  return step


def _interval_text(interval) -> str:
  return 'all logSNRs' if not interval else f'({interval[0]:g}, {interval[1]:g})'


def table_rows(conditional: bool, strengths, cfg_guidance, cfg_interval, autoguide_interval, guide) -> list:
  """[(row id, method, w, interval or None, raw overrides)] in table order."""
  none = dict(guide_workdir=None, guide_step=None)
  rows = [('none', 'none', 0.0, None, dict(none, **sampling.guidance_flags(0.0)))]
  if conditional:
    rows.append(('cfg', 'CFG', cfg_guidance, None, dict(none, **sampling.guidance_flags(cfg_guidance))))
    rows.append(('cfg_interval', 'CFG', cfg_guidance, cfg_interval,
                 dict(none, **sampling.guidance_flags(cfg_guidance, cfg_interval))))
  for w in strengths:
    rows.append((f'autoguidance_{w:g}', 'autoguidance', w, autoguide_interval,
                 dict(guide_workdir=guide['workdir'], guide_step=guide['step'],
                      **sampling.guidance_flags(w, autoguide_interval))))
  return rows


def markdown(table: dict) -> str:
  g = table['guide']
  lines = [f"FD ({table['features']}, N = {table['num_samples']}) of {table['workdir']} step {table['step']}, "
           f"seeds {table['seeds']}; autoguidance by {g['workdir']} step {g['step']}",
           '', '| guidance | w | interval | FD (mean ± std over seeds) | per seed |', '|---|---|---|---|---|']
  for r in table['rows']:
    per_seed = ', '.join(f'{v:.3f}' for v in r['fd']['values'])
    lines.append(f"| {r['method']} | {r['w']:g} | {_interval_text(r['interval'])} | {study.fmt(r['fd'], 3)} | "
                 f"{per_seed} |")
  return '\n'.join(lines) + '\n'


def _write_json(path: str, data: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(data, f, indent=1)
    f.write('\n')
  os.replace(path + '.tmp', path)


def run(fv, log=print) -> dict:
  """Checks every setting, then scores each (row, seed) not already stored in the output JSON."""
  import jax  # pylint: disable=g-import-not-at-top
  if not fv.workdir:
    raise ValueError('workdir is required')
  workdir = os.path.abspath(fv.workdir)
  config = restore.load_registered_config(workdir)
  strengths = _numbers(fv.strengths, 'strengths')
  seeds = _numbers(fv.seeds, 'seeds', int)
  if any(s < 0 for s in seeds):
    raise ValueError(f'seeds must be non-negative; got {fv.seeds!r}')
  cfg_interval = sampling.parse_interval(fv.cfg_interval)
  if cfg_interval is None:
    raise ValueError("cfg_interval must be an interval 'lo,hi' (the cfg row already guides on all logSNRs)")
  autoguide_interval = sampling.parse_interval(fv.autoguide_interval)
  step = _latest(workdir, fv.step, 'step')
  guide_workdir = os.path.abspath(fv.guide_workdir or workdir)
  guide = dict(workdir=guide_workdir, step=_latest(guide_workdir, fv.guide_step, 'guide_step'))
  if guide_workdir == workdir and guide['step'] == step:
    raise ValueError(f'the guide is the model itself ({workdir} step {step}): give --guide_step of an earlier '
                     'checkpoint or --guide_workdir of a smaller run')
  conditional = bool(config.model.get('num_classes', 0))
  if not conditional:
    log('the model is unconditional: the CFG rows are skipped')
  rows = table_rows(conditional, strengths, fv.cfg_guidance, cfg_interval, autoguide_interval, guide)

  raw = dict(workdir=workdir, step=step, num_samples=fv.num_samples, batch_size=fv.batch_size, seed=seeds[0],
             labels=None, class_label=None, **sampling.guidance_flags(0.0),
             **cli.sampler_flag_values(fv, sampling.LOOP_FIELDS))
  ctx = evaluation.Context(raw, features=fv.features, ref=fv.ref, ref_split=fv.ref_split,
                           compute_pr=fv.precision_recall, fmnist_weights=fv.fmnist_weights,
                           inception_weights=fv.inception_weights, inception_sha256=fv.inception_sha256,
                           config=config, log=log)
  # Every row's settings (and the guide's fit to the model) are checked before anything is sampled.
  keys = {(row_id, seed): evaluation.cache_key(ctx.settings(step, **over, seed=seed), ctx)
          for row_id, _, _, _, over in rows for seed in seeds}

  out = fv.out or os.path.join(workdir, 'eval', 'autoguide_table.json')
  results = {}
  if os.path.isfile(out):
    with open(out) as f:
      stored = json.load(f)
    if stored.get('version') != TABLE_VERSION:
      raise ValueError(f'{out}: table version {stored.get("version")!r}, expected {TABLE_VERSION}')
    results = stored.get('results', {})
  table = dict(version=TABLE_VERSION, workdir=workdir, step=step, guide=guide, features=ctx.net.name,
               ref=fv.ref and os.path.abspath(fv.ref), ref_split=None if fv.ref else fv.ref_split,
               num_samples=fv.num_samples, seeds=seeds, rows=[], results=results)
  main_process = jax.process_index() == 0
  reused = computed = 0
  for row_id, method, w, interval, over in rows:
    fds = []
    for seed in seeds:
      key = keys[(row_id, seed)]
      if key in results:
        reused += 1
        log(f'{row_id} seed {seed}: stored (fd {results[key]["fd"]:.4f})')
      else:
        log(f'{row_id} seed {seed}: sampling {fv.num_samples}')
        scored = evaluation.score(ctx, step, write=False, overrides=dict(over, seed=seed))
        results[key] = {k: scored.get(k) for k in KEPT}
        computed += 1
        if main_process:
          _write_json(out, table)  # after every score: an interrupted table resumes here
      fds.append(float(results[key]['fd']))
    table['rows'].append(dict(id=row_id, method=method, w=w, interval=list(interval) if interval else None,
                              seeds=seeds, fd=study.aggregate(fds), keys=[keys[(row_id, s)] for s in seeds]))
  text = markdown(table)
  table['markdown'] = text
  if main_process:
    _write_json(out, table)
    with open(out + '.md', 'w') as f:
      f.write(text)
  log(text)
  log(f'wrote {out} and {out}.md ({computed} scored, {reused} reused)')
  return table


def main(argv, flag_values: Optional[flags.FlagValues] = None):
  """CLI entry; flags parsed into a fresh FlagValues unless given."""
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  return run(fv)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
