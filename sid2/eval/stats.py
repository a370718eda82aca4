"""Streaming feature statistics and reference-statistics files (issue 14).

`StreamingStats` accumulates the mean and the centred second moment M2 = Σ (x − μ)(x − μ)ᵀ of feature
batches in float64 with Chan et al.'s pairwise merge (Chan, Golub & LeVeque 1979, "Updating formulae and a
pairwise algorithm for computing sample variances"): for sets a, b with n_a, n_b points, δ = μ_b − μ_a,
  n = n_a + n_b,  μ = μ_a + δ n_b / n,  M2 = M2_a + M2_b + δ δᵀ n_a n_b / n,
and Σ = M2 / (n − 1). Memory is O(D²) whatever N is; batches, devices and processes merge in any order.
Precision/recall (k-NN manifolds) need the feature vectors themselves: `FeatureSubset` keeps those of the
samples with global index < cap (a capped subset; the metrics are then computed on that subset).

Reference files (`.npz`, read with allow_pickle=False), three formats:
  * ours (`write_reference`): mu [D] f64, sigma [D, D] f64, num int64, feature_net, feature_sha256,
    preprocess, source (strings), optionally pr_features [K, D] float32 (the first K features);
  * ADM reference batches (guided-diffusion's evaluator): mu, sigma (TF Inception pool3) and arr_0 uint8
    images [N, H, W, 3] (spatial statistics mu_s/sigma_s are ignored);
  * plain mu / sigma files (e.g. precomputed FID statistics).
The last two carry no feature-net hash: they are accepted for the Inception features only, and the result
records that the net could not be verified from the file.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
from sid2 import hashing

REFERENCE_VERSION = 1
FORMATS = ('sid2', 'adm', 'plain')


class StreamingStats:
  """Running count, mean [D] and centred second moment M2 [D, D] (float64), merged pairwise (Chan et al.)."""

  def __init__(self, dim: int):
    self.dim = int(dim)
    self.num = 0
    self.mean = np.zeros(self.dim, np.float64)
    self.m2 = np.zeros((self.dim, self.dim), np.float64)

  def merge(self, num: int, mean: np.ndarray, m2: np.ndarray) -> 'StreamingStats':
    """Merges another set's (n_b, μ_b, M2_b) into this one (Chan et al. 1979)."""
    if num == 0:
      return self
    if self.num == 0:
      self.num, self.mean, self.m2 = int(num), np.array(mean, np.float64), np.array(m2, np.float64)
      return self
    n = self.num + num
    delta = np.asarray(mean, np.float64) - self.mean
    self.mean = self.mean + delta * (num / n)
    self.m2 = self.m2 + np.asarray(m2, np.float64) + np.outer(delta, delta) * (self.num * num / n)
    self.num = n
    return self

  def update(self, features) -> 'StreamingStats':
    """Adds a batch of features [n, D] (any float dtype; accumulated in float64)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f'features must be [n, {self.dim}]; got shape {x.shape}')
    if not np.all(np.isfinite(x)):
      raise ValueError('features contain NaN or inf')
    if not x.shape[0]:
      return self
    mu = x.mean(axis=0)
    c = x - mu
    return self.merge(x.shape[0], mu, c.T @ c)

  def covariance(self) -> np.ndarray:
    """Unbiased covariance M2 / (n − 1), float64 [D, D]."""
    if self.num < 2:
      raise ValueError(f'a covariance needs at least 2 feature vectors; have {self.num}')
    return self.m2 / (self.num - 1)

  def all_processes(self) -> 'StreamingStats':
    """The merge of every process's statistics (identical result on all processes; exact float64 transfer)."""
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() == 1:
      return self
    parts = _allgather_f64(np.concatenate([[float(self.num)], self.mean, self.m2.ravel()]))
    out = StreamingStats(self.dim)
    for row in parts:
      out.merge(int(row[0]), row[1:1 + self.dim], row[1 + self.dim:].reshape(self.dim, self.dim))
    return out


def _allgather_f64(x: np.ndarray) -> np.ndarray:
  """[P, ...] float64 of every process's `x`, bit-exact (sent as uint32 pairs: JAX may run without x64)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  bits = np.ascontiguousarray(x, np.float64).view(np.uint32)
  out = np.asarray(multihost_utils.process_allgather(bits, tiled=False))
  return np.ascontiguousarray(out).view(np.float64).reshape((-1,) + x.shape)


class FeatureSubset:
  """The features of the samples with global index < cap, in index order (for precision/recall)."""

  def __init__(self, cap: int, dim: int):
    self.cap, self.dim = int(cap), int(dim)
    self.values = np.zeros((self.cap, self.dim), np.float32)
    self.filled = np.zeros(self.cap, bool)

  def update(self, indices: np.ndarray, features) -> None:
    keep = np.asarray(indices) < self.cap
    idx = np.asarray(indices)[keep]
    self.values[idx] = np.asarray(features, np.float32)[keep]
    self.filled[idx] = True

  def gather(self) -> np.ndarray:
    """float32 [K, D]: the kept rows (K = min(cap, N)), merged over processes (each row lives on one)."""
    import jax  # pylint: disable=g-import-not-at-top
    values, filled = self.values, self.filled
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      values = np.asarray(multihost_utils.process_allgather(values, tiled=False)).sum(axis=0)
      filled = np.asarray(multihost_utils.process_allgather(filled.astype(np.int32), tiled=False)).sum(0) > 0
    return values[filled]


# ---------------------------------------------------------------------------------------------------------
# Reference files.

file_sha256 = hashing.file_sha256  # one home: sid2.hashing

def write_reference(path: str, stats: StreamingStats, *, feature_net: str, feature_sha256: str,
                    preprocess: str, source: str, pr_features: Optional[np.ndarray] = None) -> str:
  """Writes our reference format (module docstring); returns the file's sha256."""
  os.makedirs(os.path.dirname(os.path.abspath(path)) or '.', exist_ok=True)
  arrays = dict(mu=stats.mean, sigma=stats.covariance(), num=np.int64(stats.num),
                version=np.int64(REFERENCE_VERSION), feature_net=np.array(feature_net),
                feature_sha256=np.array(feature_sha256), preprocess=np.array(preprocess),
                source=np.array(source))
  if pr_features is not None:
    arrays['pr_features'] = np.asarray(pr_features, np.float32)
  with open(path, 'wb') as f:
    np.savez(f, **arrays)
  return file_sha256(path)


def read_reference(path: str) -> dict:
  """{format, mu, sigma, num, feature_net, feature_sha256, preprocess, source, pr_features, images, sha256}
  of a reference file in any of the three formats (missing fields None). FileNotFoundError / ValueError
  naming the file."""
  if not isinstance(path, str) or not path:
    raise ValueError(f'ref must be a .npz file path; got {path!r}')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'reference statistics file {path} not found (make one with `python -m '
                            'experiments.reference_stats --config ... --out ref.npz`)')
  try:
    z = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise ValueError(f'reference file {path} is not a readable .npz ({e})') from None
  with z:
    keys = set(z.files)
    if not {'mu', 'sigma'} <= keys:
      raise ValueError(f'reference file {path} must hold mu and sigma (ours, ADM reference batches or plain '
                       f'FID statistics); it holds {sorted(keys)}')
    out = dict(mu=np.asarray(z['mu'], np.float64), sigma=np.asarray(z['sigma'], np.float64), path=path,
               num=None, feature_net=None, feature_sha256=None, preprocess=None, source=None,
               pr_features=None, images=None)
    if 'feature_sha256' in keys:
      out.update(format='sid2', num=int(z['num']), feature_net=str(z['feature_net']),
                 feature_sha256=str(z['feature_sha256']), preprocess=str(z['preprocess']),
                 source=str(z['source']))
      if 'pr_features' in keys:
        out['pr_features'] = np.asarray(z['pr_features'], np.float32)
    elif 'arr_0' in keys:
      images = z['arr_0']
      if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f'reference file {path}: arr_0 must be uint8 images [N, H, W, 1|3] (ADM reference '
                         f'batch); got {images.dtype} {images.shape}')
      out.update(format='adm', images=images, num=int(images.shape[0]), feature_net='inception',
                 source='ADM reference batch')
    else:
      out.update(format='plain', feature_net='inception', source='precomputed mu/sigma')
  d = out['mu'].shape[0] if out['mu'].ndim == 1 else -1
  if d < 1 or out['sigma'].shape != (d, d):
    raise ValueError(f'reference file {path}: mu must be [D] and sigma [D, D]; got {out["mu"].shape}, '
                     f'{out["sigma"].shape}')
  if not (np.all(np.isfinite(out['mu'])) and np.all(np.isfinite(out['sigma']))):
    raise ValueError(f'reference file {path}: mu or sigma contains NaN or inf')
  out['sha256'] = file_sha256(path)
  return out
