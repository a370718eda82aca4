"""SiD2 Appendix A, Figures 11 and 12: the eps-loss of the optimal denoiser on n-bit data (SPEC §9).

  python -m experiments.lowbit_figures --out runs/lowbit

Writes to --out:
  figure11_loss_per_bits.png   E||eps - eps_hat||^2 over lambda for n = 1..8 bits, log y axis.
  figure12_sigmoid_vs_mixture.png
                               sigmoid(10.7 - lambda) * loss of 8-bit data against the unweighted loss of the
                               [8, 7, 6, 5]-bit mixture with proportions [1, 4, 4, 6]. Left: the raw curves
                               (no rescaling: both tend to e^lambda Var(x) at low lambda, so they meet there).
                               Right: each divided by its area over lambda, i.e. where along lambda each
                               objective puts its loss.
  lowbit_curves.csv            the numbers behind both figures, one row per lambda.
  lowbit_summary.json          settings, areas (with the closed form 2 n log 2 for Figure 11), runtime.
"""
import csv
import json
import math
import os
import time

from absl import flags
import numpy as np

from experiments import cli
from sid2 import lowbit

def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  flags.DEFINE_string('out', 'runs/lowbit', 'Output directory.', **d)
  flags.DEFINE_float('lambda_min', -20.0, 'Smallest logSNR.', **d)
  flags.DEFINE_float('lambda_max', 20.0, 'Largest logSNR.', **d)
  flags.DEFINE_integer('num_points', 201, 'Number of logSNR values (evenly spaced).', **d)
  flags.DEFINE_list('bits', ['1', '2', '3', '4', '5', '6', '7', '8'], 'Bit precisions for Figure 11.', **d)
  flags.DEFINE_integer('weighted_bits', 8, 'Bit precision of the sigmoid-weighted curve in Figure 12.', **d)
  flags.DEFINE_float('bias', lowbit.FIGURE12_BIAS, 'Sigmoid bias b of Figure 12 (1 + 2 log 128 = 10.7).', **d)
  flags.DEFINE_list('mixture_bits', [str(b) for b in lowbit.MIXTURE_BITS], 'Bit precisions of the mixture.', **d)
  flags.DEFINE_list('mixture_proportions', [str(p) for p in lowbit.MIXTURE_PROPORTIONS],
                    'Mixture proportions (normalised to sum 1).', **d)
  flags.DEFINE_float('y_floor', 1e-8, 'Lower limit of the log y axis of Figure 11.', **d)
  flags.DEFINE_float('fig12_lambda_min', -10.0, 'Left x limit of Figure 12 (its curves are ~0 below).', **d)


def _parse_ints(values, name):
  try:
    return [int(v) for v in values]
  except ValueError as e:
    raise ValueError(f'--{name} must be a comma-separated list of integers; got {values!r}') from e


def _parse_floats(values, name):
  try:
    return [float(v) for v in values]
  except ValueError as e:
    raise ValueError(f'--{name} must be a comma-separated list of numbers; got {values!r}') from e


def compute(logsnr, bits, weighted_bits, bias, mixture_bits, mixture_proportions):
  """All curves of Figures 11 and 12 in float64 numpy (SPEC §9)."""
  curves = {b: np.asarray(lowbit.expected_eps_loss(logsnr, b), np.float64) for b in bits}
  for b in set([weighted_bits] + list(mixture_bits)) - set(curves):
    curves[b] = np.asarray(lowbit.expected_eps_loss(logsnr, b), np.float64)
  props = np.asarray(mixture_proportions, np.float64)
  props = props / props.sum()
  mixture = sum(p * curves[b] for p, b in zip(props, mixture_bits))
  weighted = np.asarray(lowbit.sigmoid_weighted(logsnr, curves[weighted_bits], bias), np.float64)
  return curves, weighted, mixture


def _area(y, x):
  return float(np.trapezoid(y, x))


def plot_figure11(path, logsnr, curves, bits, y_floor):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.0, 4.2))
  cmap = plt.get_cmap('viridis')
  for i, b in enumerate(bits):
    y = np.where(curves[b] > 0, curves[b], np.nan)
    ax.plot(logsnr, y, color=cmap(i / max(len(bits) - 1, 1)), label=f'{b}-bit')
  ax.set_yscale('log')
  ax.set_ylim(y_floor, 2.0)
  ax.set_xlim(logsnr[0], logsnr[-1])
  ax.set_xlabel(r'log signal-to-noise ratio $\lambda$')
  ax.set_ylabel(r'$\mathrm{E}_{q(x)}\|\epsilon - \hat\epsilon_\lambda\|^2$')
  ax.set_title('Expected loss of the optimal denoiser, n-bit data')
  ax.grid(True, which='major', alpha=0.3)
  ax.legend(fontsize=8, ncol=2, loc='lower left')
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def plot_figure12(path, logsnr, curves, weighted, mixture, weighted_bits, bias, mixture_bits, props,
                  x_min):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  mix_label = (f'mixture {mixture_bits}-bit, proportions {[_fmt(p) for p in props]}, '
               r'unweighted')
  sig_label = rf'{weighted_bits}-bit, $\sigma({bias:.1f} - \lambda)$-weighted'
  fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2))
  ax = axes[0]
  ax.plot(logsnr, curves[weighted_bits], color='0.6', ls='--', lw=1.0, label=f'{weighted_bits}-bit, unweighted')
  ax.plot(logsnr, weighted, color='C0', lw=2.0, label=sig_label)
  ax.plot(logsnr, mixture, color='C3', lw=2.0, ls='-.', label=mix_label)
  ax.set_title('Weighted loss (raw)')
  ax.set_ylabel(r'$\tilde w(\lambda)\,\mathrm{E}\|\epsilon - \hat\epsilon_\lambda\|^2$')
  ax = axes[1]
  ax.plot(logsnr, weighted / _area(weighted, logsnr), color='C0', lw=2.0, label=sig_label)
  ax.plot(logsnr, mixture / _area(mixture, logsnr), color='C3', lw=2.0, ls='-.', label=mix_label)
  ax.set_title('Each normalised to unit area over $\\lambda$')
  ax.set_ylabel('loss density over $\\lambda$')
  for ax in axes:
    ax.set_xlim(max(x_min, logsnr[0]), logsnr[-1])
    ax.set_ylim(0.0, 1.4 * ax.get_ylim()[1])
    ax.set_xlabel(r'log signal-to-noise ratio $\lambda$')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc='upper left')
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def _fmt(p):
  return int(p) if float(p).is_integer() else p


def main(argv, flag_values=None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  bits = _parse_ints(fv.bits, 'bits')
  mixture_bits = _parse_ints(fv.mixture_bits, 'mixture_bits')
  proportions = _parse_floats(fv.mixture_proportions, 'mixture_proportions')
  if fv.num_points < 2 or not fv.lambda_max > fv.lambda_min:
    raise ValueError('--num_points must be >= 2 and --lambda_max > --lambda_min; got '
                     f'{fv.num_points}, [{fv.lambda_min}, {fv.lambda_max}]')
  if not bits:
    raise ValueError('--bits must name at least one bit precision')
  # Validate everything (bits ranges, proportions) before any compute.
  for b in bits + [fv.weighted_bits]:
    lowbit.data_variance(b)
  lowbit.mixture_weights(mixture_bits, proportions)

  logsnr = np.linspace(fv.lambda_min, fv.lambda_max, fv.num_points)
  os.makedirs(fv.out, exist_ok=True)
  start = time.time()
  curves, weighted, mixture = compute(logsnr, bits, fv.weighted_bits, fv.bias, mixture_bits,
                                      proportions)
  compute_s = time.time() - start
  props = np.asarray(proportions) / np.sum(proportions)

  plot_figure11(os.path.join(fv.out, 'figure11_loss_per_bits.png'), logsnr, curves, bits, fv.y_floor)
  plot_figure12(os.path.join(fv.out, 'figure12_sigmoid_vs_mixture.png'), logsnr, curves, weighted,
                mixture, fv.weighted_bits, fv.bias, mixture_bits, proportions, fv.fig12_lambda_min)

  area_w, area_m = _area(weighted, logsnr), _area(mixture, logsnr)
  columns = {'logsnr': logsnr}
  columns.update({f'loss_{b}bit': curves[b] for b in sorted(curves)})
  columns[f'loss_{fv.weighted_bits}bit_sigmoid_weighted'] = weighted
  columns['loss_mixture'] = mixture
  columns[f'loss_{fv.weighted_bits}bit_sigmoid_weighted_unit_area'] = weighted / area_w
  columns['loss_mixture_unit_area'] = mixture / area_m
  with open(os.path.join(fv.out, 'lowbit_curves.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(list(columns))
    for row in zip(*columns.values()):
      writer.writerow([f'{v:.9g}' for v in row])

  # Tail below lambda_min is e^lambda Var(x) exactly (SPEC §9); above lambda_max the loss is ~0.
  tail = lambda b: math.exp(logsnr[0]) * lowbit.data_variance(b)
  summary = {
      'logsnr': {'min': fv.lambda_min, 'max': fv.lambda_max, 'num_points': fv.num_points},
      'figure11': {
          'bits': bits,
          'area_over_logsnr': {str(b): _area(curves[b], logsnr) + tail(b) for b in bits},
          'area_closed_form_2_n_log2': {str(b): lowbit.elbo_area(b) for b in bits},
          'peak_logsnr': {str(b): float(logsnr[np.argmax(curves[b])]) for b in bits},
      },
      'figure12': {
          'weighted_bits': fv.weighted_bits,
          'bias': fv.bias,
          'bias_derivation': '1 (sigmoid bias at 128x128, SiD2 B.6) + 2 log 128 (one pixel vs 128x128)',
          'mixture_bits': mixture_bits,
          'mixture_proportions_normalised': [float(p) for p in props],
          'area_weighted': area_w,
          'area_mixture': area_m,
          'peak_logsnr_weighted': float(logsnr[np.argmax(weighted)]),
          'peak_logsnr_mixture': float(logsnr[np.argmax(mixture)]),
          'max_abs_diff_raw': float(np.max(np.abs(weighted - mixture))),
          'max_abs_diff_unit_area': float(np.max(np.abs(weighted / area_w - mixture / area_m))),
          'normalisation': 'left panel raw; right panel each curve divided by its area over logsnr',
      },
      'compute_seconds': compute_s,
      'total_seconds': time.time() - start,
  }
  with open(os.path.join(fv.out, 'lowbit_summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print(json.dumps({'out': fv.out, 'compute_seconds': round(compute_s, 2),
                    'total_seconds': round(summary['total_seconds'], 2)}))


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
