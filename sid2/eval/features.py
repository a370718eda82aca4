"""The feature network for Fréchet distances of 32x32x1 (Fashion-MNIST-like) images (issue 7).

Inception-v3 features (FID, Heusel et al. 2017) need downloaded weights and 299x299 RGB inputs; here the
features come from a small classifier trained on the Fashion-MNIST training split by
`experiments.train_features` and committed to `sid2/eval/weights/` (safetensors, no pickle), with its
sha256 and test accuracy in a JSON sidecar. `load_feature_fn` checks the sha256 before use, so a changed
file can not silently change the metric. Nothing is downloaded.

Network: three blocks conv3x3 -> swish -> 2x2 average pool (32 -> 16 -> 8 -> 4), flatten (4x4x128),
Dense(128) -> swish (the 128-d feature layer), Dense(10) logits. Swish rather than ReLU keeps every feature
unit alive, so the feature covariance is full rank.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from sid2 import export
from sid2 import hashing

IMAGE_SHAPE = (32, 32, 1)
FEATURE_DIM = 128
NUM_CLASSES = 10
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, 'fmnist_classifier.safetensors')


class FeatureClassifier(nn.Module):
  """Small CNN classifier; `__call__` returns (features [N, 128], logits [N, 10])."""
  channels: Sequence[int] = (32, 64, 128)
  feature_dim: int = FEATURE_DIM
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    h = x
    for c in self.channels:
      h = nn.swish(nn.Conv(c, (3, 3))(h))
      h = nn.avg_pool(h, (2, 2), strides=(2, 2))
    h = h.reshape(h.shape[0], -1)
    features = nn.swish(nn.Dense(self.feature_dim)(h))
    return features, nn.Dense(self.num_classes)(features)


def init_params(rng):
  """Fresh parameters of `FeatureClassifier` for [N, 32, 32, 1] inputs."""
  return FeatureClassifier().init(rng, jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32))['params']


file_sha256 = hashing.file_sha256  # one home: sid2.hashing

def sidecar_path(weights_path: str) -> str:
  """`<name>.json` next to `<name>.safetensors`."""
  return os.path.splitext(weights_path)[0] + '.json'


def load_params(path: str = DEFAULT_WEIGHTS):
  """(params, sidecar dict) from a safetensors file whose sha256 matches its JSON sidecar.

  FileNotFoundError when either file is missing; ValueError when the sha256 or the shapes do not match.
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  meta_path = sidecar_path(path)
  for p in (path, meta_path):
    if not os.path.isfile(p):
      raise FileNotFoundError(f'feature-net file {p} not found (build it with `python -m '
                              f'experiments.train_features --out {path}`)')
  with open(meta_path) as f:
    meta = json.load(f)
  digest = file_sha256(path)
  if meta.get('sha256') != digest:
    raise ValueError(f'feature-net weights {path} have sha256 {digest} but {meta_path} records '
                     f'{meta.get("sha256")!r}: the file was changed, so its Fréchet distances would not be '
                     'comparable')
  params = jax.tree.map(jnp.asarray, export.unflatten_params(load_file(path)))  # '/'-joined keys
  want = jax.tree.map(lambda s: s.shape, jax.eval_shape(init_params, jax.random.PRNGKey(0)))
  got = jax.tree.map(lambda a: a.shape, params)
  if want != got:
    raise ValueError(f'feature-net weights {path} do not fit FeatureClassifier: shapes {got} vs {want}')
  return params, meta


def check_images(images) -> None:
  """ValueError unless images are [N, 32, 32, 1] (the feature net's input shape)."""
  shape = tuple(getattr(images, 'shape', ()))
  if len(shape) != 4 or shape[1:] != IMAGE_SHAPE:
    raise ValueError(f'images must be [N, 32, 32, 1] in [-1, 1] (Fashion-MNIST-like) for the shipped feature '
                     f'net; got shape {shape}')


def load_feature_fn(path: str = DEFAULT_WEIGHTS) -> Callable:
  """A jitted `features(images [N, 32, 32, 1] in [-1, 1]) -> [N, 128]` float32, weights sha256-checked."""
  params, _ = load_params(path)
  model = FeatureClassifier()

  @jax.jit
  def _features(x):
    return model.apply({'params': params}, x.astype(jnp.float32))[0]

  def features(images):
    check_images(images)
    return _features(jnp.asarray(images))

  return features


def batched_features(feature_fn: Callable, images, batch_size: int = 500) -> np.ndarray:
  """Features of many images in fixed-size chunks (last chunk padded, so one compilation): float64 [N, D]."""
  images = np.asarray(images, np.float32)
  check_images(images)
  n = images.shape[0]
  out = []
  for start in range(0, n, batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + IMAGE_SHAPE, np.float32)])
    out.append(np.asarray(feature_fn(chunk), np.float64)[:batch_size - pad])
  return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))


FASHION_MNIST_TEST_SIZE = 10_000


def check_fmnist_config(config) -> None:
  """ValueError unless the run makes 32x32x1 images (this feature net's input)."""
  from sid2 import restore  # pylint: disable=g-import-not-at-top
  res = config.get('image_res', None)
  channels = config.get('num_channels', None) or restore.KNOWN_CHANNELS.get(
      config.get('dataset', {}).get('name', None))
  if res != 32 or channels != 1:
    raise ValueError(f'the Fashion-MNIST feature net (sid2/eval/weights/fmnist_classifier.safetensors) takes only '
                     f'32x32x1 (Fashion-MNIST-like) runs; this run has image_res={res!r}, num_channels='
                     f'{channels!r} (dataset.name={config.get("dataset", {}).get("name", None)!r})')


def fashion_mnist_test_images(config, num: int) -> np.ndarray:
  """The first `num` Fashion-MNIST test images at 32x32x1 in [-1, 1] (data_dir from a fashion_mnist config)."""
  from sid2 import data  # pylint: disable=g-import-not-at-top
  dataset = config.get('dataset', {})
  data_dir = dataset.get('data_dir', None) if dataset.get('name', None) == 'fashion_mnist' else None
  return data.load_eval_images(dict(name='fashion_mnist', split='test', data_dir=data_dir or None), 32, num)
