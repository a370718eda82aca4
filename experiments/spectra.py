"""Reduced spectra of real vs generated images, and FD of blurred real images (Spectral Diffusion supplement
§3.4 Figure 3 and §3.1 Figure 1; SPEC §13; `spectral/spectra.py`).

  python -m experiments.spectra --workdir runs/fmnist [--num_samples 1000] [--out DIR]
      [--sigma2 0.1,0.3,...,5.0] [--sampler ddpm --num_steps 128 --guidance 1.0 --seed 0 ...]
  python -m experiments.spectra --out runs/blur          # no workdir: real images only (blur experiment)

1. Reduced spectra: the ring-averaged 2-D power spectrum (`spectral.spectra.reduced_spectrum`) of the first
   `num_samples` Fashion-MNIST test images, of as many images sampled from the workdir's EMA parameters
   (drawn exactly as `experiments.evaluate` draws them: same settings resolution, chunks and seeds), and of
   the real images blurred at a few σ²; plus the ratio generated / real per radius.
2. Blur experiment: each real image blurred with the 9×9 Gaussian of variance σ² for σ² in the supplement's
   list, FD(blurred, the same images unblurred) on the Fashion-MNIST feature net (`sid2.eval.features`,
   sha256-checked; the FD of `sid2.eval.fd`), with FD(generated, real) at the same N as a reference line
   and the σ² at which blurring costs as much FD as the model does.
Writes `<out>/spectra.png` and `<out>/spectra.json` (default out: `<workdir>/analysis`).

The supplement's FID of 2e-12 at σ² = 0.1 would need a kernel that is the identity to float precision; with
σ² = 0.1 as a variance the neighbours still get weight e^{-5} ≈ 0.7% each, as with σ = 0.1 they get
e^{-50}. `--blur_parameter sigma` reads the list as standard deviations instead.
"""
from __future__ import annotations

import math
import os
import time

from absl import flags
import numpy as np

from experiments import cli
from sid2 import generation
from sid2 import restore
from sid2.eval import fd
from sid2.eval import features as features_lib

SUPPLEMENT_SIGMA2 = ('0.1', '0.3', '0.4', '0.5', '0.7', '0.8', '0.9', '1.0', '1.5', '2.0', '3.0', '5.0')
SPECTRUM_BLURS = (0.5, 1.0, 2.0)

def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  cli.define_checkpoint_flags(fv, cli.WORKDIR_HELP[:-1] + '; without it only real images.')
  flags.DEFINE_string('out', None, 'Output directory (default <workdir>/analysis).', **d)
  flags.DEFINE_integer('num_samples', 1000,
                       f'Generated and real images each (at most {features_lib.FASHION_MNIST_TEST_SIZE}).', **d)
  flags.DEFINE_integer('batch_size', 500, 'Samples per jitted sampling call.', **d)
  cli.define_sampler_flags(fv)  # --sampler, --num_steps, --clip_x, ... (sid2.sampling)
  flags.DEFINE_integer('seed', 0, 'Sampling seed.', **d)
  flags.DEFINE_list('sigma2', list(SUPPLEMENT_SIGMA2), 'Blur values (supplement §3.1 list).', **d)
  flags.DEFINE_enum('blur_parameter', 'sigma2', ['sigma2', 'sigma'], 'Read --sigma2 as variances or as std devs.', **d)
  flags.DEFINE_integer('blur_size', 9, 'Gaussian kernel size (supplement §3.1: 9).', **d)
  flags.DEFINE_string('features', features_lib.DEFAULT_WEIGHTS, 'Feature-net safetensors file.', **d)


def parse_blur(values, parameter: str) -> list:
  """Blur variances σ² from the flag values (ValueError naming the field)."""
  try:
    v = [float(x) for x in values]
  except (TypeError, ValueError):
    raise ValueError(f'sigma2 must be comma-separated numbers > 0; got {values!r}') from None
  if not v or any(not (x > 0 and math.isfinite(x)) for x in v):
    raise ValueError(f'sigma2 must be a non-empty list of finite numbers > 0; got {values!r}')
  if parameter not in ('sigma2', 'sigma'):
    raise ValueError(f"blur_parameter must be 'sigma2' or 'sigma'; got {parameter!r}")
  return sorted(x * x if parameter == 'sigma' else x for x in v)


def equivalent_sigma2(sigma2s, fds, target):
  """σ² where the (monotone-interpolated) blur FD curve reaches `target`; None outside its range."""
  fds = np.maximum.accumulate(np.asarray(fds, np.float64))
  if not len(fds) or target < fds[0] or target > fds[-1]:
    return None
  return float(np.interp(target, fds, np.asarray(sigma2s, np.float64)))


def compute(raw: dict, *, sigma2s, blur_size: int, features_path: str, log=print) -> dict:
  """All numbers of the figure; `raw` holds the sampling settings as in `experiments.evaluate`."""
  import jax  # pylint: disable=g-import-not-at-top
  from spectral import spectra  # pylint: disable=g-import-not-at-top

  num = raw['num_samples']
  if isinstance(num, bool) or not isinstance(num, int) or not 2 <= num <= features_lib.FASHION_MNIST_TEST_SIZE:
    raise ValueError(f'num_samples must be an integer in [2, {features_lib.FASHION_MNIST_TEST_SIZE}]; got {num!r}')
  spectra.gaussian_kernel(sigma2s[0], blur_size)  # validates blur_size before any compute
  config, settings = None, None
  if raw['workdir']:
    config = restore.load_config(raw['workdir'])
    features_lib.check_fmnist_config(config)
    cli.ensure_model_registered(config)
    settings = generation.resolve_settings(
        dict(raw, out=os.path.join(os.path.abspath(raw['workdir']), 'analysis', 'samples.npz')), config)
  feature_fn = features_lib.load_feature_fn(features_path)  # sha256 checked before any sampling
  real = features_lib.fashion_mnist_test_images(config if config is not None else {}, num)
  real_feats = features_lib.batched_features(feature_fn, real)
  blur = jax.jit(spectra.gaussian_blur, static_argnames=('sigma2', 'size'))

  out = dict(num_images=num, real_images=f'fashion_mnist test split, first {num}',
             feature_net=dict(path=os.path.abspath(features_path), sha256=features_lib.file_sha256(features_path)),
             radius=list(range(spectra.num_radii(*real.shape[1:3]))),
             spectrum=dict(real=np.asarray(spectra.reduced_spectrum(real)).tolist()))
  for s2 in SPECTRUM_BLURS:
    out['spectrum'][f'real_blur_sigma2_{s2:g}'] = np.asarray(
        spectra.reduced_spectrum(blur(real, sigma2=s2, size=blur_size))).tolist()

  t0 = time.time()
  rows = []
  for s2 in sigma2s:
    blurred = np.asarray(blur(real, sigma2=s2, size=blur_size))
    value = fd.frechet_distance_features(real_feats, features_lib.batched_features(feature_fn, blurred))
    kernel = np.asarray(spectra.gaussian_kernel(s2, blur_size))
    rows.append(dict(sigma2=s2, fd=value, kernel_center_weight_2d=float(kernel[blur_size // 2] ** 2)))
    log(f'  blur sigma2={s2:g}: FD(blurred, real) = {value:.4f}')
  out['blur'] = dict(size=blur_size, padding='reflect', rows=rows, seconds=round(time.time() - t0, 2))

  if settings is not None:
    t1 = time.time()
    images, _, record, _ = generation.generate(settings, config, log=log)
    features_lib.check_images(images)
    gen_spec = np.asarray(spectra.reduced_spectrum(images))
    out['spectrum']['generated'] = gen_spec.tolist()
    out['spectrum']['generated_over_real'] = (gen_spec / np.asarray(out['spectrum']['real'])).tolist()
    gen_fd = fd.frechet_distance_features(real_feats, features_lib.batched_features(feature_fn, images))
    record.pop('labels', None)
    record.pop('out', None)
    out['generated'] = dict(fd=gen_fd, step=record['step'], sampling=record,
                            equivalent_blur_sigma2=equivalent_sigma2([r['sigma2'] for r in rows],
                                                                     [r['fd'] for r in rows], gen_fd),
                            seconds=round(time.time() - t1, 2))
    log(f'  generated (step {record["step"]}): FD(generated, real) = {gen_fd:.4f}; blur with the same FD: '
        f'sigma2 = {out["generated"]["equivalent_blur_sigma2"]}')
  return out


def plot(result: dict, path: str) -> None:
  """Three panels: reduced spectra, generated/real ratio, FD vs σ²."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
  r = np.asarray(result['radius'])
  spec = result['spectrum']
  ax = axes[0]
  ax.plot(r, spec['real'], 'k-', lw=2, label='real')
  if 'generated' in spec:
    ax.plot(r, spec['generated'], 'r-', lw=1.5, label=f"generated (step {result['generated']['step']})")
  for key, value in spec.items():
    if key.startswith('real_blur_sigma2_'):
      ax.plot(r, value, '--', lw=0.8, label=f"real, blurred σ²={key.rsplit('_', 1)[1]}")
  ax.set(yscale='log', xlabel='radius (frequency bin)', ylabel='mean power per bin',
         title=f"reduced spectrum ({result['num_images']} images)")
  ax.legend(fontsize=7)
  ax = axes[1]
  if 'generated_over_real' in spec:
    ax.plot(r, spec['generated_over_real'], 'r-', label='generated / real')
    ax.axhline(1.0, color='k', lw=0.6)
  for key, value in spec.items():
    if key.startswith('real_blur_sigma2_'):
      ax.plot(r, np.asarray(value) / np.asarray(spec['real']), '--', lw=0.8,
              label=f"blurred σ²={key.rsplit('_', 1)[1]} / real")
  ax.set(yscale='log', xlabel='radius (frequency bin)', ylabel='power ratio', title='spectrum relative to real')
  ax.legend(fontsize=7)
  ax = axes[2]
  rows = result['blur']['rows']
  ax.plot([x['sigma2'] for x in rows], [x['fd'] for x in rows], 'o-', label='FD(blurred real, real)')
  if 'generated' in result:
    ax.axhline(result['generated']['fd'], color='r', ls='--', label='FD(generated, real)')
  ax.set(xlabel='σ² of the 9×9 Gaussian blur', ylabel='FD (Fashion-MNIST feature net)', yscale='symlog',
         title='blur experiment (supplement Fig. 1)')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv, flag_values=None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  raw = {n: fv[n].value for n in ('workdir', 'step', 'num_samples', 'batch_size', 'seed')}
  raw.update(cli.sampler_flag_values(fv))
  raw.update(labels=None, class_label=None)
  if not raw['workdir'] and not fv.out:
    raise ValueError('give --workdir (generated vs real) or --out (real images only)')
  out_dir = fv.out or os.path.join(raw['workdir'], 'analysis')
  sigma2s = parse_blur(fv.sigma2, fv.blur_parameter)
  t0 = time.time()
  result = compute(raw, sigma2s=sigma2s, blur_size=fv.blur_size, features_path=fv.features)
  result['blur_parameter_flag'] = fv.blur_parameter
  result['seconds'] = round(time.time() - t0, 1)
  cli.write_figure_and_json(result, out_dir, 'spectra', plot)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
