"""Fréchet distance between Gaussian fits of feature sets, and k-NN precision/recall (issue 7).

FD (Heusel et al. 2017, "GANs trained by a two time-scale update rule", eq. 6; Dowson & Landau 1982):
  d² = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}).
Everything is float64 numpy. The trace term uses the symmetric form: with Σ1 = U diag(w) Uᵀ (eigh, negative
round-off eigenvalues clipped to 0), S = Σ1^{1/2} Σ2 Σ1^{1/2} is symmetric PSD, so tr(S^{1/2}) is the sum of
the square roots of its (clipped) eigenvalues: no complex arithmetic, no imaginary parts to discard. It equals
tr((Σ1 Σ2)^{1/2}) of the usual formulation (Σ1 Σ2 is similar to S).

Precision/recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing generative
models", §2): the manifold of a set is the union of balls around its points with radius the distance to
the k-th nearest neighbour (k = 3) within the set; precision = fraction of generated points inside the real
manifold, recall = fraction of real points inside the generated manifold.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def _as_features(features, name: str = 'features') -> np.ndarray:
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f'{name} must be a 2-d array [N, D] with N >= 2; got shape {x.shape}')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} contains NaN or inf')
  return x


def feature_stats(features) -> Tuple[np.ndarray, np.ndarray]:
  """(mean [D], covariance [D, D]) of features [N, D], float64, unbiased (N − 1) covariance."""
  x = _as_features(features)
  return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root via eigh, round-off negative eigenvalues clipped to 0."""
  w, u = np.linalg.eigh(0.5 * (sigma + sigma.T))
  return (u * np.sqrt(np.clip(w, 0.0, None))) @ u.T


def trace_sqrt_product(sigma1, sigma2) -> float:
  """tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}) = tr((Σ1 Σ2)^{1/2}) for symmetric PSD Σ1, Σ2 (Heusel et al. eq. 6)."""
  root1 = _psd_sqrt(np.asarray(sigma1, np.float64))
  s = root1 @ np.asarray(sigma2, np.float64) @ root1
  w = np.linalg.eigvalsh(0.5 * (s + s.T))
  return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}) in float64 (Heusel et al. 2017, eq. 6).

  Clipped at 0 (round-off can make identical statistics give −1e−13).
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f'mu1, mu2 must be [D] and sigma1, sigma2 [D, D] with the same D; got {mu1.shape}, '
                     f'{mu2.shape}, {sigma1.shape}, {sigma2.shape}')
  for name, a in (('mu1', mu1), ('mu2', mu2), ('sigma1', sigma1), ('sigma2', sigma2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f'{name} contains NaN or inf')
  diff = mu1 - mu2
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
  return float(max(value, 0.0))


def frechet_distance_features(features1, features2) -> float:
  """FD between the Gaussian fits (`feature_stats`) of two feature sets [N1, D], [N2, D].

  With fewer samples than dimensions (max(N1, N2) < D, e.g. a quick 2048-d Inception FID) the D x D
  eigendecompositions are avoided: with Σ1 = A Aᵀ, Σ2 = B Bᵀ (A = X1cᵀ / sqrt(N1 − 1) [D, N1], X1c
  centred), Σ1 Σ2 has the nonzero eigenvalues of (AᵀB)(AᵀB)ᵀ, so tr((Σ1 Σ2)^{1/2}) is the sum of the
  singular values of AᵀB [N1, N2], and tr Σ = ‖A‖²_F. Same value as `frechet_distance` up to round-off.
  """
  x1, x2 = _as_features(features1, 'features1'), _as_features(features2, 'features2')
  if x1.shape[1] != x2.shape[1]:
    raise ValueError(f'features1 and features2 must have the same D; got {x1.shape[1]} and {x2.shape[1]}')
  if max(x1.shape[0], x2.shape[0]) >= x1.shape[1]:
    return frechet_distance(*feature_stats(x1), *feature_stats(x2))
  mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
  a = (x1 - mu1) / np.sqrt(x1.shape[0] - 1)
  b = (x2 - mu2) / np.sqrt(x2.shape[0] - 1)
  diff = mu1 - mu2
  nuclear = float(np.sum(np.linalg.svd(a @ b.T, compute_uv=False)))
  value = diff @ diff + np.sum(a * a) + np.sum(b * b) - 2.0 * nuclear
  return float(max(value, 0.0))


def _pairwise_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """‖a_i − b_j‖² [len(a), len(b)], float64, clipped at 0."""
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.clip(d, 0.0, None)


def knn_radii(features, k: int = 3, block: int = 1024) -> np.ndarray:
  """Squared distance of each point to its k-th nearest other point in the set (Kynkäänniemi et al. §2)."""
  x = _as_features(features)
  if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < x.shape[0]:
    raise ValueError(f'k must be an integer in [1, N) with N = {x.shape[0]}; got {k!r}')
  out = np.empty(x.shape[0])
  for start in range(0, x.shape[0], block):
    d = _pairwise_sq_dists(x[start:start + block], x)
    # Column 0 of the sorted row is the point itself (distance 0), so the k-th neighbour is column k.
    out[start:start + block] = np.partition(d, k, axis=1)[:, k]
  return out


def _coverage(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray, block: int) -> float:
  """Fraction of `points` inside ∪_j ball(manifold_j, radius_j)."""
  inside = 0
  for start in range(0, points.shape[0], block):
    d = _pairwise_sq_dists(points[start:start + block], manifold)
    inside += int(np.any(d <= radii[None, :], axis=1).sum())
  return inside / points.shape[0]


def precision_recall(real_features, fake_features, k: int = 3, block: int = 1024) -> Tuple[float, float]:
  """(precision, recall) of generated vs real features, k-NN manifolds (Kynkäänniemi et al. 2019, §2)."""
  real = _as_features(real_features, 'real_features')
  fake = _as_features(fake_features, 'fake_features')
  if real.shape[1] != fake.shape[1]:
    raise ValueError(f'real_features and fake_features must have the same D; got {real.shape[1]} and '
                     f'{fake.shape[1]}')
  precision = _coverage(fake, real, knn_radii(real, k, block), block)
  recall = _coverage(real, fake, knn_radii(fake, k, block), block)
  return precision, recall
