"""Post-hoc EMA (EDM2: Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", §3 and its appendix on power-function EMA): power-function EMA profiles and their
least-squares recombination.

A power-function EMA with exponent gamma, read after t updates, averages the parameter trajectory with the
profile p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t] (EDM2 §3). Its length is given as the
relative standard deviation sigma_rel of that profile (std over t):
  sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3))           (EDM2 §3)
The training state tracks two such EMAs (EDM2 uses sigma_rel 0.05 and 0.10: gamma ~ 16.97 and 6.94) and the
permanent snapshots (`keep_every`) store them. An EMA of any other length, read at any step, is then a
linear combination sum_i x_i theta_i of the stored averages theta_i: x solves the least-squares problem
  min_x || sum_i x_i p_i - p_target ||^2_{L2[0, inf)}   ->   A x = b,
  A_ij = <p_i, p_j>,  b_i = <p_i, p_target>,
  <p_(g,t), p_(h,s)> = (g + 1)(h + 1) min(t, s)^(g + h + 1) / ((g + h + 1) t^(g + 1) s^(h + 1))
(EDM2 §3 and its appendix on post-hoc EMA; closed form of the integral of two power profiles). The discrete update of
`sid2.train_step.power_ema_beta` realises the profile exactly for parameters held constant on each
(s - 1, s], so the only error of the reconstruction is the least-squares residual (measured in the tests).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SIGMA_REL_MAX = 12 ** -0.5  # sigma_rel of gamma = 0 (the uniform average); longer EMAs are not power profiles


def sigma_rel_from_gamma(gamma: float) -> float:
  """sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3)) (EDM2 §3)."""
  gamma = float(gamma)
  return float(np.sqrt(gamma + 1.0) / ((gamma + 2.0) * np.sqrt(gamma + 3.0)))


def gamma_from_sigma_rel(sigma_rel: float) -> float:
  """The exponent gamma >= 0 of the power profile with relative std sigma_rel (EDM2 §3, inverted).

  sigma^2 (gamma + 2)^2 (gamma + 3) = gamma + 1 is the cubic sigma^2 g^3 + 7 sigma^2 g^2 + (16 sigma^2 - 1) g
  + 12 sigma^2 - 1 = 0; sigma_rel decreases monotonically in gamma on [0, inf), so one root is >= 0.
  """
  s = float(sigma_rel)
  if not 0.0 < s < SIGMA_REL_MAX:
    raise ValueError(f'sigma_rel must be in (0, {SIGMA_REL_MAX:.4f}) (the power-function EMA lengths, EDM2 §3); '
                     f'got {sigma_rel!r}')
  s2 = s * s
  roots = np.roots([s2, 7.0 * s2, 16.0 * s2 - 1.0, 12.0 * s2 - 1.0])
  real = [r.real for r in roots if abs(r.imag) < 1e-9 * max(1.0, abs(r)) and r.real >= 0.0]
  return float(max(real))


def profile_inner(gamma_a, t_a, gamma_b, t_b) -> np.ndarray:
  """<p_(gamma_a, t_a), p_(gamma_b, t_b)> over [0, inf) (EDM2 §3, appendix), broadcast over arrays, float64.

  Times should be scaled (e.g. by the last step): the inner products scale by 1/T, the solution does not.
  """
  ga, gb = np.asarray(gamma_a, np.float64), np.asarray(gamma_b, np.float64)
  ta, tb = np.asarray(t_a, np.float64), np.asarray(t_b, np.float64)
  lo = np.minimum(ta, tb)
  e = ga + gb + 1.0
  # (ga + 1)(gb + 1) / e * lo^e / (ta^(ga + 1) tb^(gb + 1)), in logs for large exponents.
  log = np.log((ga + 1.0) * (gb + 1.0) / e) + e * np.log(lo) - (ga + 1.0) * np.log(ta) - (gb + 1.0) * np.log(tb)
  return np.exp(log)


def solve_weights(gammas: Sequence[float], steps: Sequence[int], target_gamma: float, target_step: int):
  """Least-squares weights x of the stored averages (gamma_i at step t_i) for a target (gamma, step).

  Returns (x [n] float64, relative L2 error ||sum x_i p_i - p_target|| / ||p_target|| of the profile fit).
  """
  g = np.asarray(gammas, np.float64)
  t = np.asarray(steps, np.float64)
  if g.shape != t.shape or g.ndim != 1 or not g.size:
    raise ValueError(f'gammas and steps must be equal-length non-empty lists; got {g.shape} and {t.shape}')
  if np.any(t <= 0) or target_step <= 0:
    raise ValueError(f'steps must be > 0 (a profile is read after at least one update); got {t.tolist()} '
                     f'and target_step={target_step}')
  scale = float(max(t.max(), target_step))
  t, tr = t / scale, float(target_step) / scale
  a = profile_inner(g[:, None], t[:, None], g[None, :], t[None, :])
  b = profile_inner(g, t, target_gamma, tr)
  x = np.linalg.lstsq(a, b, rcond=None)[0]
  rr = float(profile_inner(target_gamma, tr, target_gamma, tr))
  resid2 = max(float(x @ a @ x - 2.0 * x @ b + rr), 0.0)
  return x, float(np.sqrt(resid2 / rr))


def combine(trees: Sequence, weights) -> object:
  """sum_i w_i tree_i (numpy, float64 accumulation, cast back to each leaf's dtype)."""
  import jax  # pylint: disable=g-import-not-at-top
  weights = [float(w) for w in weights]

  def mix(*leaves):
    acc = sum(w * np.asarray(leaf, np.float64) for w, leaf in zip(weights, leaves))
    return acc.astype(np.asarray(leaves[0]).dtype)
  return jax.tree.map(mix, *trees)
