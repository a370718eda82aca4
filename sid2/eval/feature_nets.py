"""The feature networks of the Fréchet distance by name, checked before any sampling (issue 14).

  'fmnist'    the shipped Fashion-MNIST classifier (`sid2.eval.features`, 128-d), 32x32x1 images, or square
              greyscale images of side 32k, box-averaged k x k to 32x32 first (the exact inverse of the
              pixel repetition that makes Fashion-MNIST 64x64 or 128x128: `sid2.data.fit_fashion_resolution`);
  'inception' the FID Inception-v3 pool3 (`sid2.eval.inception`, 2048-d) from a user-supplied weight file,
              any resolution, 1 or 3 channels (greyscale tiled to RGB, resized to 299x299 as the TF FID
              graph does).

Both see images as the papers' pipeline does: samples in [-1, 1] are first quantized to 8-bit pixels
p = round(127.5 (x + 1)) (what writing PNGs or ADM's uint8 batches does), then mapped back as p / 127.5 − 1.
`feature_fn(net, mesh)` is one jitted call per chunk, its batch sharded over the mesh like the sampler's.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Tuple

import numpy as np

NAMES = ('fmnist', 'inception')
QUANTIZE = 'uint8 round(127.5 (x + 1)), then p / 127.5 - 1'


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A loaded feature network: `apply(params, images [N, H, W, C] in [-1, 1]) -> [N, dim]` (pure)."""
  name: str
  path: str
  sha256: str
  dim: int
  preprocess: str
  params: Any
  apply: Callable
  shapes: str  # the image shapes it accepts, in words

  def check_shape(self, shape: Tuple[int, int, int], what: str) -> None:
    """ValueError unless images of `shape` (H, W, C) can be fed to this net; `what` names their origin."""
    h, w, c = (int(v) for v in shape)
    ok = fmnist_shape_ok(h, w, c) if self.name == 'fmnist' else (h >= 1 and w >= 1 and c in (1, 3))
    if not ok:
      raise ValueError(f'{what} has images of shape {h}x{w}x{c}, but features={self.name!r} ({self.path}) takes '
                       f'{self.shapes}' + ('; use --features inception for other datasets'
                                           if self.name == 'fmnist' else ''))

  def info(self) -> dict:
    return dict(name=self.name, path=os.path.abspath(self.path), sha256=self.sha256, feature_dim=self.dim,
                preprocess=self.preprocess)


def fmnist_shape_ok(h: int, w: int, c: int) -> bool:
  """Whether the fmnist net takes [h, w, c] images: greyscale, square, side a multiple of 32."""
  return c == 1 and h == w and h >= 32 and h % 32 == 0


def box_average_to(x, res: int):
  """[N, H, W, C] -> [N, res, res, C] by k x k means (k = H / res): undoes a k-fold pixel repetition exactly."""
  n, h, w, c = x.shape
  k = h // res
  if k == 1:
    return x
  return x.reshape(n, res, k, res, k, c).mean(axis=(2, 4))


def quantize(x):
  """[-1, 1] floats -> the nearest 8-bit pixel value, back in [-1, 1] (p / 127.5 − 1)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  p = jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0.0, 255.0)
  return p / 127.5 - 1.0


def load_feature_net(name: str, *, fmnist_weights: Optional[str] = None, inception_weights: Optional[str] = None,
                     inception_sha256: Optional[str] = None, inception_preprocess: str = 'tf') -> FeatureNet:
  """The named net with its weights loaded and sha256-checked. ValueError for an unknown name or a bad file,
  FileNotFoundError for a missing one (both name the file)."""
  if name not in NAMES:
    raise ValueError(f'features must be one of {NAMES}; got {name!r}')
  if name == 'fmnist':
    from sid2.eval import features as features_lib  # pylint: disable=g-import-not-at-top
    path = fmnist_weights or features_lib.DEFAULT_WEIGHTS
    params, _ = features_lib.load_params(path)
    model = features_lib.FeatureClassifier()

    def apply_fmnist(p, images):
      return model.apply({'params': p}, box_average_to(quantize(images), 32))[0]
    return FeatureNet('fmnist', path, features_lib.file_sha256(path), features_lib.FEATURE_DIM,
                      f'{QUANTIZE}; 32k x 32k box-averaged k x k to 32x32', params, apply_fmnist,
                      '32x32x1 (Fashion-MNIST-like) images, or 32k x 32k x 1 (box-averaged to 32x32)')
  from sid2.eval import inception as inception_lib  # pylint: disable=g-import-not-at-top
  if not inception_weights:
    raise ValueError('features=inception needs inception_weights: the FID Inception-v3 weight file '
                     f'({inception_lib.STANDARD_FILE_NAME}, sha256 {inception_lib.STANDARD_SHA256}, or a '
                     '.safetensors/.npz converted from it by `python -m experiments.convert_inception`); nothing is '
                     'downloaded')
  if inception_preprocess not in inception_lib.PREPROCESS_MODES:
    raise ValueError(f'inception_preprocess must be one of {inception_lib.PREPROCESS_MODES}; got '
                     f'{inception_preprocess!r}')
  params, info = inception_lib.load_inception_weights(inception_weights, inception_sha256 or None)
  net = inception_lib.InceptionV3()

  def apply_inception(p, images):
    return net.apply({'params': p}, inception_lib.preprocess(quantize(images), inception_preprocess))
  resize = ('TF1 ResizeBilinear to 299x299 (align_corners=False), (p - 128) / 128' if inception_preprocess == 'tf'
            else 'torch bilinear (half-pixel) to 299x299, 2 p / 255 - 1')
  return FeatureNet('inception', inception_weights, info['sha256'], inception_lib.FEATURE_DIM,
                    f'{QUANTIZE}; greyscale tiled to RGB; {resize}', params, apply_inception,
                    'images of any size with 1 or 3 channels')


_FEATURE_FNS = {}  # (name, sha256, preprocess, mesh) -> (jitted fn, replicated params): one compilation each


def feature_fn(net: FeatureNet, mesh):
  """(jitted `f(params, images) -> features float32 [B, D]` sharded over the mesh's 'data' axis, the net's
  parameters replicated over the mesh), cached per net and mesh."""
  import jax  # pylint: disable=g-import-not-at-top
  from sid2 import generation  # pylint: disable=g-import-not-at-top
  key = (net.name, net.sha256, net.preprocess, mesh)
  if key not in _FEATURE_FNS:
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(generation.DATA_AXIS))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    fn = jax.jit(lambda p, x: net.apply(p, x).astype(jax.numpy.float32), in_shardings=(rep, data),
                 out_shardings=data)
    if len(_FEATURE_FNS) >= 4:
      _FEATURE_FNS.pop(next(iter(_FEATURE_FNS)))
    _FEATURE_FNS[key] = (fn, generation.replicated(mesh, net.params))
  return _FEATURE_FNS[key]


def features_of(fn, params, mesh, images: np.ndarray, chunk: int) -> np.ndarray:
  """float64 [n, D] features of host images [n, H, W, C] on a mesh of this process's devices, in chunks of
  `chunk` (a multiple of the device count; the last chunk padded with zeros, so there is one compilation)."""
  from sid2 import generation  # pylint: disable=g-import-not-at-top
  out = []
  for start in range(0, images.shape[0], chunk):
    part = np.asarray(images[start:start + chunk], np.float32)
    valid = part.shape[0]
    if valid < chunk:
      part = np.concatenate([part, np.zeros((chunk - valid,) + part.shape[1:], np.float32)])
    rows, values = generation.local_rows(fn(params, generation.sharded(mesh, part)))
    out.append(np.asarray(values[rows < valid], np.float64))
  return np.concatenate(out)
