"""Figure and numbers for the Wiener-filter analysis of linear diffusion (Spectral Diffusion supplement §1,
SPEC §10).

  python -m experiments.wiener_figure --out runs/wiener/wiener.png [--ndim 1 --n 256]

Gaussian signals with a natural-image-like spectrum P_x(f) ∝ 1/|f|² (unit total power) are diffused with the
DDPM linear-β schedule (ᾱ(t) from `sid2.schedules.get_schedule('linear_beta')`). Panels (log axes):
  (a) the Wiener gain H_t*(f) = (1 − ᾱ)/(ᾱ P_x(f) + 1 − ᾱ) at several t, with the gain of a linear denoiser
      trained with Adam (markers);
  (b) the error per frequency relative to the input power, SNR/(1 + SNR)² (eq. 13, exact; solid) and the
      supplement's eq. 14 form 1/(1/SNR + SNR) (dashed), with SNR(f) = ᾱ P_x(f)/(1 − ᾱ); the dotted vertical
      line marks SNR(f) = 1, where the error peaks: the band being denoised moves from high to low
      frequencies as t grows;
  (c) both error forms against SNR (peak at SNR = 1).
Writes the PNG and `<out>.json` with the numbers per t.
"""
from __future__ import annotations

import json
import os
import time

from absl import flags
import numpy as np

from experiments import cli
from spectral import wiener

def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  flags.DEFINE_string('out', 'runs/wiener/wiener.png', 'Output PNG (the numbers go to <out>.json).', **d)
  flags.DEFINE_integer('ndim', 1, 'Signal dimension: 1 (length n) or 2 (n x n).', **d)
  flags.DEFINE_integer('n', 256, 'Grid size per dimension.', **d)
  flags.DEFINE_float('exponent', 2.0, 'Power-law exponent: P_x(f) ∝ 1/|f|^exponent.', **d)
  flags.DEFINE_list('times', ['0.02', '0.05', '0.1', '0.2', '0.4', '0.7'], 'Diffusion times t in (0, 1).', **d)
  flags.DEFINE_integer('train_steps', 400, 'Adam steps of the trained linear denoiser (0: skip it).', **d)
  flags.DEFINE_integer('seed', 0, 'Seed of the trained denoiser.', **d)


def compute(ndim: int, n: int, exponent: float, times, train_steps: int, seed: int) -> dict:
  """The per-t numbers of the figure (see the module docstring)."""
  times = [float(t) for t in times]
  if not times or any(not 0.0 < t < 1.0 for t in times):
    raise ValueError(f'times must be values in (0, 1); got {times}')
  if not isinstance(train_steps, int) or train_steps < 0:
    raise ValueError(f'train_steps must be an integer >= 0; got {train_steps!r}')
  spectrum = wiener.power_law_spectrum(n, ndim, exponent)
  radius = wiener.frequency_radius(n, ndim)
  radii, first = np.unique(radius, return_index=True)
  flat_spectrum = spectrum.reshape(-1)[first]
  rows = []
  for t in times:
    abar = float(wiener.linear_beta_alpha_bar(t))
    p_x, p_e = wiener.dpm_powers(abar, flat_spectrum)
    snr = p_x / p_e
    rel = wiener.relative_wiener_error(snr)
    h_star = wiener.wiener_gain(p_x, p_e)
    row = dict(t=t, alpha_bar=abar, logsnr=float(np.log(abar / (1 - abar))),
               snr_one_frequency=wiener.snr_crossing_frequency(radii, snr),
               peak_error_frequency=float(radii[1:][np.argmax(rel[1:])]),
               mean_wiener_error=float(np.mean(wiener.wiener_error(*wiener.dpm_powers(abar, spectrum)))),
               radius=radii.tolist(), wiener_gain=h_star.tolist(), relative_error=rel.tolist(),
               supplement_error=wiener.supplement_error(snr).tolist())
    if train_steps:
      g = wiener.train_linear_denoiser(spectrum, abar, steps=train_steps, seed=seed)
      full_h = wiener.dpm_wiener_gain(abar, spectrum)
      p_x_full, p_e_full = wiener.dpm_powers(abar, spectrum)
      row.update(trained_gain=g.reshape(-1)[first].tolist(),
                 trained_max_abs_gain_error=float(np.max(np.abs(g - full_h))),
                 trained_mean_error=float(np.mean(wiener.filter_error(g, p_x_full, p_e_full))))
    rows.append(row)
  return dict(ndim=ndim, n=n, exponent=exponent, schedule='linear_beta', train_steps=train_steps,
              seed=seed, spectrum='P_x ∝ 1/|f|^exponent, mean 1 over the DFT bins (DC at |f| = 1/n)',
              per_t=rows)


def plot(result: dict, out: str) -> None:
  """Writes the three-panel PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
  colors = plt.cm.viridis(np.linspace(0, 0.9, len(result['per_t'])))
  for row, c in zip(result['per_t'], colors):
    r = np.asarray(row['radius'])[1:]
    label = f"t={row['t']:g} (ᾱ={row['alpha_bar']:.3g})"
    axes[0].plot(r, np.asarray(row['wiener_gain'])[1:], color=c, label=label)
    if 'trained_gain' in row:
      step = max(1, len(r) // 16)
      axes[0].plot(r[::step], np.asarray(row['trained_gain'])[1:][::step], 'o', color=c, ms=3)
    axes[1].plot(r, np.asarray(row['relative_error'])[1:], color=c, label=label)
    axes[1].plot(r, np.asarray(row['supplement_error'])[1:], '--', color=c, lw=0.8)
    if np.isfinite(row['snr_one_frequency']):
      axes[1].axvline(row['snr_one_frequency'], color=c, ls=':', lw=0.8)
  axes[0].set(xscale='log', yscale='log', xlabel='|f| (cycles/sample)', ylabel='H_t*(f)',
              title='Wiener gain (lines), trained linear denoiser (dots)')
  axes[0].legend(fontsize=7)
  axes[1].set(xscale='log', yscale='log', ylim=(1e-4, 1), xlabel='|f| (cycles/sample)',
              ylabel='error / (P_x + P_e)',
              title='eq. 13 SNR/(1+SNR)² (solid), supplement eq. 14 (dashed); SNR=1 (dotted)')
  axes[1].title.set_fontsize(8)
  snr = np.exp(np.linspace(-7, 7, 400))
  axes[2].plot(snr, wiener.relative_wiener_error(snr), label='eq. 13 / (P_x+P_e) = SNR/(1+SNR)² (exact)')
  axes[2].plot(snr, wiener.supplement_error(snr), '--', label="supplement's eq. 14: 1/(1/SNR+SNR)")
  axes[2].axvline(1.0, color='k', ls=':', lw=0.8)
  axes[2].set(xscale='log', yscale='log', xlabel='SNR = P_x/P_e', ylabel='error (unit total power)',
              title='both forms peak at SNR = 1')
  axes[2].legend(fontsize=7)
  fig.suptitle(f"Linear diffusion as Wiener filtering: {result['ndim']}-D Gaussian signals, P_x ∝ "
               f"1/|f|^{result['exponent']:g}, DDPM linear-β schedule")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main(argv, flag_values=None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  if not fv.out.lower().endswith('.png'):
    raise ValueError(f'out must end in .png; got {fv.out!r}')
  t0 = time.time()
  result = compute(fv.ndim, fv.n, fv.exponent, fv.times, fv.train_steps, fv.seed)
  plot(result, fv.out)
  result['seconds'] = round(time.time() - t0, 2)
  with open(fv.out + '.json', 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  for row in result['per_t']:
    line = (f"t={row['t']:<5g} alpha_bar={row['alpha_bar']:.4f} SNR=1 at |f|={row['snr_one_frequency']:.4g} "
            f"peak error at |f|={row['peak_error_frequency']:.4g} mean Wiener error={row['mean_wiener_error']:.4g}")
    if 'trained_gain' in row:
      line += (f" trained: max|g-H*|={row['trained_max_abs_gain_error']:.3g} "
               f"mean error={row['trained_mean_error']:.4g}")
    print(line)
  print(f'wrote {fv.out} and {fv.out}.json ({result["seconds"]} s)')


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
