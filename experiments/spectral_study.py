"""The Spectral Diffusion study (issue 12): every arm, pixel and latent space, several seeds, one table.

  python -m experiments.spectral_study --out runs/spectral_study                 # default size (see SIZES)
  python -m experiments.spectral_study --out runs/spectral_study --size small --seeds 0
  python -m experiments.spectral_study --out /tmp/sd_smoke --smoke              # CI: < 3 minutes

Arms (each in `--spaces pixel,latent`; `--arms` picks a subset):
  teacher      plain UNet, the wider teacher widths
  lite         Lite-LDM baseline: plain UNet at the student's widths (3x3 stride-2 conv / nearest + conv)
  wg           WG-UNet student at the same widths (current readings: low-pass gate init, >= 4 channels per
               GroupNorm group)
  wg_distill   wg + spectrum-aware distillation (output + feat-up1, λs = λf = 0.1, weights mean 1 per tap)
  positive     wg + the positive control (output only, spatial only, λs = 1, λf = 0)
  wg_iso       the iso-MAC WG-UNet: wg plus one full-resolution ResBlock after the last WG-Up, spending the
               MACs the removed resampling convs saved (the table shows both MAC counts)
  and the readings' ablations: wg_old (first readings: default gate init, gcd(C, 32) groups), wg_gcd_norm
  (only the gcd(C, 32) groups), wg_channel
  ('channel' gates), wg_distill_raw (unnormalised frequency weights), wg_distill_fnorm (each tap's loss
  relative to the teacher feature's mean square: distill.feature_norm='teacher').
Distilled arms of seed s use the teacher of seed s, pinned by step and sha256 in their config and record.
Latent space: the KL autoencoder of spectral.autoencoder (f = 4, 32x32x1 -> 8x8x4), trained once into
<out>/autoencoder (or `--autoencoder DIR` from experiments.train_autoencoder), whose sha256 every latent arm's
dataset pins; samples are decoded to 32x32 images before scoring.

Scores per run: FD in sid2.eval's Fashion-MNIST feature space at N samples vs the first N test images,
precision/recall (k = 3), and the held-out ε-MSE at fixed logSNRs split at radial frequency 0.25 cycles/pixel
(spectral.metrics); per arm mean ± std over seeds. Writes <out>/<space>/<arm>/seed<s>/result.json (reused by
reruns when the run's settings are unchanged), <out>/study.json and <out>/study.png (the table).
Bad settings (an unknown arm or space, a teacher whose schedule/resolution/parametrisation differs, latents
made by another autoencoder) fail before any training, naming what differs.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Optional

from absl import flags
import numpy as np

from experiments import cli
from sid2 import study as study_lib

SPACES = ('pixel', 'latent')
MAIN_ARMS = ('teacher', 'lite', 'wg', 'wg_distill', 'positive', 'wg_iso')
ABLATION_ARMS = ('wg_old', 'wg_gcd_norm', 'wg_channel', 'wg_distill_raw', 'wg_distill_fnorm')
ARMS = MAIN_ARMS + ABLATION_ARMS
DISTILLED = ('wg_distill', 'positive', 'wg_distill_raw', 'wg_distill_fnorm')

# steps: training steps per run; batch; fd_n: samples for FD / P-R; sample_steps: DDIM steps; hf_n: held-out
# images for the ε-MSE split; seeds; ae_steps / ae_train: autoencoder training. 'default' is sized for about
# two hours of a 2-core machine alone (estimate: the pixel teacher's train step costs 0.64 CPU-s at batch 64,
# the other arms scale with their MACs; sampling 2000 x 20 guided DDIM steps per run is ~1/3 of the total);
# `--steps 2000` matches the README's first-readings runs (about 2.5x the training time). 'small' is a
# preliminary single-seed pass (about 40 minutes).
SIZES = {
    'smoke': dict(steps=3, batch=8, fd_n=16, sample_steps=2, hf_n=16, seeds=(0,), ae_steps=3, ae_train=256,
                  arms=('teacher', 'wg_distill'), tiny=True, ae_channels=(8, 8)),
    'small': dict(steps=600, batch=64, fd_n=1000, sample_steps=25, hf_n=500, seeds=(0,), ae_steps=1000,
                  ae_train=60000, arms=MAIN_ARMS),
    'default': dict(steps=800, batch=64, fd_n=2000, sample_steps=20, hf_n=1000, seeds=(0, 1, 2),
                    ae_steps=1000, ae_train=60000, arms=MAIN_ARMS),
}

# Latent-space UNets (8x8x4 latents: two stages 8 -> 4 -> mid at 2).
LATENT_SLIM = dict(channels=(32, 48), blocks=(1, 1), heads=(0, 1), mid_heads=1, conditioning='class',
                   num_classes=10, context_dim=32, time_embedding='logsnr')
LATENT_TEACHER = dict(LATENT_SLIM, channels=(48, 64), heads=(0, 2), mid_heads=2)
# --smoke: one-stage unconditional UNets (XLA compiles them in seconds; the code path is the same).
TINY_SLIM = dict(channels=(4,), blocks=(1,), heads=(0,), mid_heads=0, conditioning='none', num_classes=0)
TINY_TEACHER = dict(TINY_SLIM, channels=(8,))


# ---------------------------------------------------------------------------------------------------------
# Settings, checked before anything runs.

def parse_list(value, allowed, name):
  items = tuple(t.strip() for t in (value or '').split(',') if t.strip())
  unknown = [t for t in items if t not in allowed]
  if unknown:
    raise ValueError(f'--{name}: unknown {name} {unknown}; allowed: {allowed}')
  if not items:
    raise ValueError(f'--{name} must name at least one of {allowed}')
  return items


def with_teachers(arms):
  """Adds 'teacher' when a distilled arm needs it (it is trained first)."""
  return (('teacher',) if any(a in DISTILLED for a in arms) and 'teacher' not in arms else ()) + tuple(arms)


def arm_model(space, arm, tiny=False):
  """The model sub-config of `arm` in `space` (tiny: the --smoke models)."""
  from configs import spectral_fmnist_student as student
  from configs import spectral_fmnist_teacher as teacher
  from spectral import configs as sc
  slim, wide = (student.SLIM, teacher.TEACHER) if space == 'pixel' else (LATENT_SLIM, LATENT_TEACHER)
  if tiny:
    slim, wide = TINY_SLIM, TINY_TEACHER
  if arm == 'teacher':
    return sc.unet_config('unet', **wide)
  if arm == 'lite':
    return sc.unet_config('unet', **slim)
  extra = {}
  if arm == 'wg_iso':
    extra = dict(final_blocks=1)
  elif arm == 'wg_old':
    extra = dict(gate_init='default', norm_group_channels=1)
  elif arm == 'wg_gcd_norm':  # the first GroupNorm reading only (wg_old also has the first gate init)
    extra = dict(norm_group_channels=1)
  elif arm == 'wg_channel':
    extra = dict(gate='channel')
  elif arm in DISTILLED:
    extra = dict(proj_taps=('feat-up1',), proj_channels=(wide['channels'][0],))
  return sc.unet_config('wg_unet', **slim, **extra)


def arm_config(space, arm, seed, size, *, latents_dir='', ae_sha256='', teacher=None):
  """The training config of one run. teacher = (workdir, step, sha256) for distilled arms."""
  from configs import spectral_fmnist_distill as distill_cfg
  from configs import spectral_fmnist_student as student
  from spectral import configs as sc
  c = student.fmnist_config(f'spectral study: {space} {arm} seed {seed}',
                            arm_model(space, arm, size.get('tiny', False)))
  if size.get('tiny', False):
    c.dataset.num_classes = 0
    c.cond_drop_prob = 0.0
  c.seed = int(seed)
  c.total_steps = size['steps']
  c.batch_size = size['batch']
  c.log_every = max(1, min(100, size['steps']))
  c.eval_every = size['steps']
  c.checkpoint_every = size['steps']
  c.keep_checkpoints = 1
  c.optimizer.warmup_steps = min(200, max(1, size['steps'] // 10))
  c.sampler.num_samples = 0  # the study samples itself (more samples, after training)
  c.sampler.num_steps = size['sample_steps']
  if space == 'latent':
    c.image_res = 8
    c.num_channels = 4
    c.dataset.name = 'latents:' + latents_dir
    c.dataset.autoencoder_sha256 = ae_sha256
    c.sampler.clip_x = 'none'
  if arm in DISTILLED:
    c.distill = sc.distill_config()
    if arm == 'positive':
      c.distill = sc.distill_config(**distill_cfg.POSITIVE_CONTROL)
    elif arm == 'wg_distill_raw':
      c.distill.weight_norm = 'none'
    elif arm == 'wg_distill_fnorm':
      c.distill.feature_norm = 'teacher'
    if teacher is not None:
      c.teacher_workdir, c.distill.teacher_step, c.distill.teacher_sha256 = teacher
    else:
      c.teacher_workdir = ''
  return c


def check_teacher_compatible(config, teacher_config):
  """ValueError naming the field where a distilled arm's teacher differs (schedule, resolution, ...)."""
  from spectral import distill
  distill.check_compatible(config, teacher_config)


def check_plan(spaces, arms, size, *, teacher_override=None, ae_dir=None, ae_sha256=None):
  """Every run's config validates and every distilled arm matches its teacher, before any training."""
  import ml_collections
  from sid2 import config_lib
  from spectral import latents as latents_lib
  for space in spaces:
    for arm in with_teachers(arms):
      c = arm_config(space, arm, 0, size, latents_dir='x', ae_sha256=ae_sha256 or '')
      if arm in DISTILLED:
        c.teacher_workdir = 'x'
      config_lib.validate_config(c, num_devices=1)
      if arm in DISTILLED:
        t = arm_config(space, 'teacher', 0, size)
        if teacher_override:
          t = _read_config(teacher_override)
        t = ml_collections.ConfigDict(t.to_dict())
        if space == 'latent' and not teacher_override:
          t.image_res, t.num_channels = 8, 4
        check_teacher_compatible(c, t)
  if 'latent' in spaces and ae_dir and ae_sha256:
    lat = os.path.join(ae_dir, 'latents')
    if os.path.isdir(lat):
      latents_lib.check_autoencoder(dict(autoencoder_sha256=ae_sha256), lat)


def _read_config(workdir):
  from sid2 import restore
  return restore.load_config(workdir)


def fingerprint(config):
  """sha256 of the run's config (a rerun reuses a finished run only when it is unchanged)."""
  return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Running and scoring.

def ensure_autoencoder(out, size, ae_dir, log):
  """(folder, sha256, codec) of the study's autoencoder: trained into <out>/autoencoder unless present."""
  from spectral import autoencoder as ae
  from spectral import autoencoder_train
  folder = ae_dir or os.path.join(out, 'autoencoder')
  path = os.path.join(folder, 'autoencoder.safetensors')
  if not os.path.isfile(path):
    if ae_dir:
      raise FileNotFoundError(f'--autoencoder {ae_dir}: no autoencoder.safetensors there')
    fields = dict(channels=size['ae_channels']) if 'ae_channels' in size else None
    autoencoder_train.run(folder, steps=size['ae_steps'], num_train=size['ae_train'], fields=fields,
                          num_test=max(size['fd_n'], size['hf_n'], 2000 if size['ae_train'] > 2000 else 64),
                          log=log)
  fields, params, meta = ae.load(path)
  from spectral import latents as latents_lib
  lat = os.path.join(folder, 'latents')
  got = latents_lib.autoencoder_sha256(lat)
  if got != meta['sha256']:
    raise ValueError(f'the latents in {lat} were made by the autoencoder with sha256 {got or "(unrecorded)"}, '
                     f'not by {path} (sha256 {meta["sha256"]}): re-encode them with experiments.train_autoencoder')
  scale, shift = 1.0 / meta['latent_std'], meta['latent_mean']
  return folder, meta['sha256'], ae.LatentCodec(fields, params, scale, shift, meta['sha256'])


def train_run(config, workdir, log):
  from sid2 import trainer
  t0 = time.time()
  trainer.train_and_evaluate(config, workdir)
  return time.time() - t0


def pin_teacher(workdir):
  """(workdir, step, sha256) of a finished teacher run's EMA params."""
  from sid2 import export, restore
  r = restore.load(workdir)
  return os.path.abspath(workdir), int(r.step), export.params_sha256(r.params)


def score_run(config, workdir, size, reals, real_features, feature_fn, codec, heldout, log):
  """FD, precision/recall, ε-MSE split for one finished run."""
  import jax
  import jax.numpy as jnp
  from sid2 import restore, sample_fns
  from sid2.models import build as model_build
  from sid2.eval import fd, features as features_lib
  from spectral import metrics
  r = restore.load(workdir)
  model = model_build.build_model(config, r.num_channels)
  n, chunk = size['fd_n'], min(size['fd_n'], 500)
  sample_fn = sample_fns.make_sample_fn(model, config, chunk, r.num_channels)
  guidance = sample_fns.guidance_args(config)
  num_classes = config.model.get('num_classes', 0)
  out = []
  t0 = time.time()
  for k, start in enumerate(range(0, n, chunk)):
    labels = jnp.asarray((np.arange(start, start + chunk) % max(num_classes, 1)), jnp.int32)
    out.append(np.asarray(sample_fn(r.params, jax.random.PRNGKey(10_000 + k), labels, *guidance)))
  samples = np.concatenate(out)[:n]
  if codec is not None:
    samples = codec.to_images(samples)
  sample_seconds = time.time() - t0
  fake = features_lib.batched_features(feature_fn, np.clip(samples, -1, 1))
  result = dict(fd=fd.frechet_distance_features(real_features, fake))
  result['precision'], result['recall'] = fd.precision_recall(real_features, fake, k=3)
  apply_fn = lambda p, z, lam, lab: model.apply({'params': p}, z, lam, lab, train=False)
  x_held, y_held = heldout
  split = metrics.eps_mse_by_frequency(metrics.make_eps_fn(apply_fn, config.parametrization), r.params,
                                       x_held, y_held if num_classes else None)
  result['eps_mse'] = split
  result['eps_mse_high_mean'] = float(np.mean([v['high'] for v in split.values()]))
  result['eps_mse_low_mean'] = float(np.mean([v['low'] for v in split.values()]))
  result['sample_seconds'] = round(sample_seconds, 1)
  result['step'] = int(r.step)
  return result, samples


def arm_cost(config, num_channels):
  """(parameters, MACs of one denoising step) from XLA's cost analysis (spectral.cost)."""
  from sid2.models import build as model_build
  from spectral import cost
  model = model_build.build_model(config, num_channels)
  return cost.macs_per_step(model, config.image_res, num_channels)


def summarise(results):
  """{space: {arm: {metric: (mean, std, n)}}} over seeds."""
  table = {}
  for (space, arm), runs in results.items():
    row = {}
    for key in ('fd', 'precision', 'recall', 'eps_mse_high_mean', 'eps_mse_low_mean', 'train_seconds'):
      vals = np.array([r[key] for r in runs], np.float64)
      row[key] = dict(mean=float(vals.mean()), std=float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                      n=int(len(vals)), values=[float(v) for v in vals])
    row['params'], row['gmacs'] = runs[0]['params'], runs[0]['macs'] / 1e9
    table.setdefault(space, {})[arm] = row
  return table


def format_rows(table):
  """Rows of the study table: space, arm, params, GMACs, FD, precision, recall, high/low-freq ε-MSE."""
  rows = [('space', 'arm', 'params', 'GMACs', 'FD (mean ± std, n)', 'precision', 'recall',
           'ε-MSE high', 'ε-MSE low')]
  fmt = lambda d, p=2: f'{d["mean"]:.{p}f} ± {d["std"]:.{p}f}'
  for space, arms in table.items():
    for arm, r in arms.items():
      rows.append((space, arm, f'{r["params"] / 1e6:.3f}M', f'{r["gmacs"]:.4f}',
                   fmt(r['fd']) + f' ({r["fd"]["n"]})', fmt(r['precision']), fmt(r['recall']),
                   fmt(r['eps_mse_high_mean'], 4), fmt(r['eps_mse_low_mean'], 4)))
  return rows


def write_png_table(rows, path, title):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(15, 0.45 * len(rows) + 1))
  ax.axis('off')
  t = ax.table(cellText=[list(r) for r in rows[1:]], colLabels=list(rows[0]), loc='center', cellLoc='center')
  t.auto_set_font_size(False)
  t.set_fontsize(9)
  t.scale(1, 1.3)
  ax.set_title(title, fontsize=10)
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)


def run(out, *, size_name='default', spaces=SPACES, arms=None, seeds=None, steps=None, ae_dir=None,
        teacher_workdir=None, fd_n=None, log=print):
  """Runs (or reuses) every run of the study and writes the JSON and PNG table; returns the summary."""
  if size_name not in SIZES:
    raise ValueError(f'--size must be one of {sorted(SIZES)}, got {size_name!r}')
  size = dict(SIZES[size_name])
  if steps:
    size['steps'] = int(steps)
  if fd_n:
    size['fd_n'] = int(fd_n)
  arms = tuple(arms or size['arms'])
  for a in arms:
    if a not in ARMS:
      raise ValueError(f'unknown arm {a!r}; allowed: {ARMS}')
  for s in spaces:
    if s not in SPACES:
      raise ValueError(f'unknown space {s!r}; allowed: {SPACES}')
  seeds = tuple(seeds if seeds is not None else size['seeds'])
  ae_sha = None
  if ae_dir:
    with open(os.path.join(ae_dir, 'autoencoder.safetensors.json')) as f:
      ae_sha = json.load(f)['sha256']
  check_plan(spaces, arms, size, teacher_override=teacher_workdir, ae_dir=ae_dir, ae_sha256=ae_sha)

  from sid2 import plugins
  plugins.load_plugins(arm_config(spaces[0], arms[0], 0, size))  # config.plugins: models, distillation
  from sid2 import data
  from sid2.eval import features as features_lib
  os.makedirs(out, exist_ok=True)
  feature_fn = features_lib.load_feature_fn()
  n_real = size['fd_n']
  reals = data.fit_fashion_resolution(data.load_fashion_mnist(None, 'test')[0][:max(n_real, size['hf_n'])], 32)
  real_features = features_lib.batched_features(feature_fn, reals[:n_real])
  test_labels = data.load_fashion_mnist(None, 'test')[1]
  codec, lat_dir, ae_sha256 = None, '', ''
  if 'latent' in spaces:
    folder, ae_sha256, codec = ensure_autoencoder(out, size, ae_dir, log)
    lat_dir = os.path.join(folder, 'latents')
  results = {}
  t_start = time.time()
  for space in spaces:
    if space == 'latent':
      from spectral import latents as latents_lib
      lat, lab, _ = latents_lib.load_latents(lat_dir, 'test')
      held = ((np.asarray(lat[:size['hf_n']], np.float32) - codec.shift) * codec.scale_factor,
              np.asarray(lab[:size['hf_n']]) if lab is not None else None)
    else:
      held = (reals[:size['hf_n']], test_labels[:size['hf_n']])
    costs = {}
    for seed in seeds:
      teacher = None
      for arm in with_teachers(arms):
        workdir = os.path.join(out, space, arm, f'seed{seed}')
        if arm in DISTILLED:
          if teacher_workdir:
            teacher = pin_teacher(teacher_workdir)
          elif teacher is None:
            teacher = pin_teacher(os.path.join(out, space, 'teacher', f'seed{seed}'))
        config = arm_config(space, arm, seed, size, latents_dir=lat_dir, ae_sha256=ae_sha256, teacher=teacher)
        fp = fingerprint(config)
        label = f'{space}/{arm}/seed{seed}'

        def train_and_score(space=space, arm=arm, seed=seed, workdir=workdir, config=config, fp=fp,
                            teacher=teacher, held=held, label=label):
          log(f'[{label}] training {config.total_steps} steps in {workdir}')
          train_seconds = train_run(config, workdir, log)
          if arm not in costs:
            costs[arm] = arm_cost(config, config.num_channels)
          result, samples = score_run(config, workdir, size, reals, real_features, feature_fn,
                                      codec if space == 'latent' else None, held, log)
          from sid2.images import save_image_grid
          save_image_grid(samples[:64], os.path.join(workdir, 'samples.png'))
          result.update(space=space, arm=arm, seed=seed, fingerprint=fp, train_seconds=round(train_seconds, 1),
                        params=int(costs[arm][0]), macs=float(costs[arm][1]), size=size_name,
                        teacher=None if arm not in DISTILLED else dict(workdir=teacher[0], step=teacher[1],
                                                                        sha256=teacher[2]),
                        autoencoder_sha256=ae_sha256 if space == 'latent' else None,
                        config=json.loads(config.to_json_best_effort()))
          log(f'[{label}] FD {result["fd"]:.2f}, P/R {result["precision"]:.2f}/'
              f'{result["recall"]:.2f}, high-freq ε-MSE {result["eps_mse_high_mean"]:.4f}; train '
              f'{train_seconds:.0f} s, sampling {result["sample_seconds"]:.0f} s')
          return result

        # <workdir>/result.json (JSON indent 2, `fingerprint` after `seed`) as before the shared helper, so
        # finished runs are still reused.
        result = study_lib.reuse_or_run(workdir, fp, train_and_score, label, log, indent=2,
                                        describe=lambda prev: f'FD {prev["fd"]:.2f}')
        if arm in arms:
          results.setdefault((space, arm), []).append(result)
  table = summarise(results)
  rows = format_rows(table)
  summary = dict(size=size_name, settings={k: list(v) if isinstance(v, tuple) else v for k, v in size.items()},
                 seeds=list(seeds), spaces=list(spaces), arms=list(arms), table=table,
                 autoencoder_sha256=ae_sha256 or None, wall_seconds=round(time.time() - t_start, 1),
                 command=' '.join(['python -m experiments.spectral_study'] + sys.argv[1:]))
  with open(os.path.join(out, 'study.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  write_png_table(rows, os.path.join(out, 'study.png'),
                  f'Spectral Diffusion study ({size_name}: {size["steps"]} steps, FD at N={size["fd_n"]}, '
                  f'seeds {list(seeds)})')
  for r in rows:
    log(' | '.join(r))
  return summary


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  flags.DEFINE_string('out', None, 'Output folder.', **d)
  flags.mark_flags_as_required(['out'], **d)
  flags.DEFINE_string('size', 'default', f'One of {sorted(SIZES)}.', **d)
  flags.DEFINE_bool('smoke', False, '= --size smoke (CI, < 3 minutes).', **d)
  flags.DEFINE_string('spaces', ','.join(SPACES), f'Comma-separated subset of {SPACES}.', **d)
  flags.DEFINE_string('arms', '', f'Comma-separated subset of {ARMS} (default: the size\'s arms).', **d)
  flags.DEFINE_string('seeds', '', 'Comma-separated seeds (default: the size\'s seeds).', **d)
  flags.DEFINE_integer('steps', 0, 'Training steps per run (default: the size\'s).', **d)
  flags.DEFINE_integer('fd_n', 0, 'Samples for FD / P-R (default: the size\'s).', **d)
  flags.DEFINE_string('autoencoder', '', 'Folder written by experiments.train_autoencoder.', **d)
  flags.DEFINE_string('teacher_workdir', '', 'An existing teacher run for every distilled arm.', **d)


def main(argv, flag_values: Optional[flags.FlagValues] = None):
  a = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  size = 'smoke' if a.smoke else a.size
  if size not in SIZES:
    raise ValueError(f'--size must be one of {sorted(SIZES)}, got {size!r}')
  arms = parse_list(a.arms, ARMS, 'arms') if a.arms else None
  seeds = tuple(int(s) for s in a.seeds.split(',') if s.strip()) if a.seeds else None
  run(a.out, size_name=size, spaces=parse_list(a.spaces, SPACES, 'spaces'), arms=arms, seeds=seeds,
      steps=a.steps or None, ae_dir=a.autoencoder or None, teacher_workdir=a.teacher_workdir or None,
      fd_n=a.fd_n or None)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
