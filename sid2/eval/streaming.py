"""Streaming Fréchet-distance evaluation: samples or dataset images -> features -> running statistics (issue 14).

Nothing holds more than one chunk of images: each chunk is generated (or read), passed through the feature
net on all devices, and folded into `stats.StreamingStats` (float64 Chan merges); only the features of the
first `pr_cap` global indices are kept, for precision/recall. FD and precision/recall thus come from the same
features. Reference statistics of a dataset split are made the same way (`dataset_stats`).
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from sid2 import generation
from sid2.eval import fd
from sid2.eval import feature_nets
from sid2.eval import stats as stats_lib

DEFAULT_PR_CAP = 10_000
PR_K = 3


def sample_stats(gen: 'generation.Generator', net: 'feature_nets.FeatureNet', *, pr_cap: int = DEFAULT_PR_CAP,
                 writer: Optional['generation.ShardWriter'] = None, log=print):
  """(StreamingStats merged over processes, FeatureSubset features [min(pr_cap, N), D]) of the generator's
  samples; `writer` (optional) writes this process's samples as uint8 npz shards / PNGs."""
  fn, params = feature_nets.feature_fn(net, gen.mesh)
  acc = stats_lib.StreamingStats(net.dim)
  subset = stats_lib.FeatureSubset(pr_cap, net.dim)
  labels = generation.label_array(gen.settings) if gen.settings['labels'] is not None else None
  for k, images, start, valid in gen.chunks(log=log):
    rows, feats = generation.local_rows(fn(params, images))
    keep = rows < valid
    acc.update(feats[keep])
    subset.update(rows[keep] + start, feats[keep])
    if writer is not None and (writer.npz_dir or writer.png_dir):
      idx, pixels = generation.local_samples(images, start, valid)
      writer.write(k, idx, pixels, None if labels is None else labels[idx])
  return acc.all_processes(), subset.gather()


def iterate_dataset(dataset_config, image_res: int, batch_size: int, num: Optional[int] = None):
  """Yields float32 batches [b, r, r, C] in [-1, 1] covering each example of the split once (the first
  epoch of `sid2.data.get_dataset`'s stream, one process; tfds in file order), `num` examples at most."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from sid2 import data  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(dataset_config))
  if not str(cfg.get('name', 'fashion_mnist')).startswith(tuple(data.DATASET_BUILDERS)) and \
      cfg.get('name', 'fashion_mnist') != 'fashion_mnist':
    cfg.shuffle_buffer = 1  # tfds: file order, no shuffle buffer held
  ds = data.get_dataset(cfg, image_res=image_res, global_batch_size=batch_size, seed=0, process_index=0,
                        process_count=1)
  total = ds.num_examples if num is None else min(num, ds.num_examples)
  seen, step = 0, 0
  while seen < total:
    batch = np.asarray(ds.next_batch(step)['image'], np.float32)
    take = min(batch.shape[0], total - seen)
    yield batch[:take]
    seen += take
    step += 1


def dataset_stats(dataset_config, image_res: int, net: 'feature_nets.FeatureNet', *, mesh=None,
                  batch_size: int = 500, num: Optional[int] = None, pr_cap: int = DEFAULT_PR_CAP, log=print):
  """(StreamingStats, pr_features [min(pr_cap, n), D] float32, image shape) of a dataset split's features,
  computed on `mesh` (default: this process's devices; every process computes the same statistics)."""
  import jax  # pylint: disable=g-import-not-at-top
  mesh = generation.data_mesh(jax.local_devices()) if mesh is None else mesh
  chunk = generation.round_up_batch(batch_size, int(mesh.devices.size))
  fn, params = feature_nets.feature_fn(net, mesh)
  acc = stats_lib.StreamingStats(net.dim)
  subset = stats_lib.FeatureSubset(pr_cap, net.dim)
  shape, t0 = None, time.time()
  for batch in iterate_dataset(dataset_config, image_res, chunk, num):
    if shape is None:
      shape = tuple(batch.shape[1:])
      net.check_shape(shape, f'dataset {dataset_config.get("name")!r}')
    feats = feature_nets.features_of(fn, params, mesh, batch, chunk)
    subset.update(np.arange(acc.num, acc.num + feats.shape[0]), feats)
    acc.update(feats)
    if acc.num // chunk % 20 == 0:
      log(f'  {acc.num} images ({time.time() - t0:.0f} s)')
  return acc, subset.gather(), shape


def reference_features(ref: dict, net: 'feature_nets.FeatureNet', mesh, *, pr_cap: int, batch_size: int):
  """float32 [K, D] reference features for precision/recall: stored ones, or those of the first pr_cap
  images of an ADM batch; None for plain mu/sigma files."""
  if ref['pr_features'] is not None:
    return ref['pr_features'][:pr_cap]
  if ref['images'] is not None:
    fn, params = feature_nets.feature_fn(net, mesh)
    chunk = generation.round_up_batch(batch_size, int(mesh.devices.size))
    images = ref['images'][:pr_cap].astype(np.float32) / 127.5 - 1.0
    return feature_nets.features_of(fn, params, mesh, images, chunk).astype(np.float32)
  return None


def scores(ref: dict, sample_acc: 'stats_lib.StreamingStats', sample_feats: np.ndarray,
           ref_feats: Optional[np.ndarray], compute_pr: bool) -> dict:
  """FD of the streamed statistics against the reference's mu/sigma, and k-NN precision/recall on the capped
  feature subsets (None where unavailable)."""
  out = dict(fd=fd.frechet_distance(ref['mu'], ref['sigma'], sample_acc.mean, sample_acc.covariance()))
  if compute_pr:
    if ref_feats is None or len(ref_feats) <= PR_K or len(sample_feats) <= PR_K:
      out.update(precision=None, recall=None)
    else:
      out['precision'], out['recall'] = fd.precision_recall(ref_feats, sample_feats, k=PR_K)
  return out
