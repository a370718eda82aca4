"""Synthetic video data: bouncing shapes, class = shape (for the video U-ViT, `sid2.models.uvit_video`).

`dataset.name = 'synthetic_video'` (registered with `sid2.data.register_dataset`, so `sid2.data.get_dataset`
builds it). Each example is a video [T, H, W, C] in [-1, 1] of one anti-aliased shape -- a square, a disc, a
diamond or a ring, whose index is the class label -- of random size and colour on a black (-1) background,
moving at a constant velocity and bouncing off the frame's borders. Nothing is read from disk.

Determinism, as for the in-memory datasets of `sid2.data`: the parameters of the whole global batch of step
k are drawn from `np.random.default_rng([seed, k])`; process p of P renders the p-th of P equal, disjoint
slices. So the batch is a pure function of (seed, step, process), resuming needs only the step, and the
union over processes is the global batch of a one-process run.

Config fields (`dataset.*`): `num_frames` (T, default 16), `num_classes` (1..4 shapes, default 4),
`num_channels` (1 or 3, default 3), `split` (ignored: every split is the same endless stream).
"""
from __future__ import annotations

import math

import numpy as np

from sid2.data import core

NAME = 'synthetic_video'
SHAPES = ('square', 'disc', 'diamond', 'ring')  # Class id = index.
CHANNELS = (1, 3)


def _bounce(start, velocity, lo, hi, t):
  """Position at frame t of a point moving from `start` at `velocity`, reflected at lo and hi (lo < hi)."""
  span = hi - lo
  u = np.mod(start - lo + velocity * t, 2 * span)
  return lo + np.where(u <= span, u, 2 * span - u)


def signed_distance(shape_ids, dy, dx, radius):
  """Signed distance (pixels, < 0 inside) of offsets (dy, dx) from each example's shape of size `radius`."""
  r = np.hypot(dy, dx)
  dist = {
      0: np.maximum(np.abs(dy), np.abs(dx)) - radius,                   # square of half-side r
      1: r - radius,                                                     # disc of radius r
      2: (np.abs(dy) + np.abs(dx) - radius) / math.sqrt(2.0),          # diamond (L1 ball) of radius r
      3: np.abs(r - 0.65 * radius) - 0.35 * radius,                      # ring, outer radius r
  }
  return np.select([shape_ids == k for k in dist], list(dist.values())).astype(np.float32)


def draw_params(rng, n, *, num_classes, num_channels, image_res):
  """Per-example parameters of n videos: class, radius, start position, velocity (pixels/frame), colour."""
  radius = rng.uniform(image_res / 8, image_res / 4, n)
  lo, hi = radius, image_res - 1 - radius
  return dict(
      label=rng.integers(0, num_classes, n).astype(np.int32),
      radius=radius,
      start=rng.uniform(lo[:, None], hi[:, None], (n, 2)),
      velocity=rng.uniform(-image_res / 8, image_res / 8, (n, 2)),
      color=rng.uniform(-0.2, 1.0, (n, num_channels)))


def render(params, *, num_frames, image_res):
  """float32 [n, T, r, r, C] in [-1, 1]: each example's shape at its bouncing position in every frame."""
  radius = params['radius'][:, None]                                   # [n, 1]
  t = np.arange(num_frames, dtype=np.float64)[None]                     # [1, T]
  lo, hi = radius, image_res - 1 - radius
  cy = _bounce(params['start'][:, :1], params['velocity'][:, :1], lo, hi, t)  # [n, T]
  cx = _bounce(params['start'][:, 1:], params['velocity'][:, 1:], lo, hi, t)
  grid = np.arange(image_res, dtype=np.float64)
  dy = grid[None, None, :, None] - cy[:, :, None, None]                 # [n, T, r, 1]
  dx = grid[None, None, None, :] - cx[:, :, None, None]                 # [n, T, 1, r]
  ids = params['label'][:, None, None, None]
  dist = signed_distance(ids, dy, dx, radius[:, :, None, None])         # [n, T, r, r]
  coverage = np.clip(0.5 - dist, 0.0, 1.0)[..., None]                  # 1-pixel anti-aliased edge
  color = params['color'][:, None, None, None, :]
  return (-1.0 + coverage * (color + 1.0)).astype(np.float32)


class SyntheticVideoDataset(core.StepBatches):
  """Endless bouncing-shapes videos; `next_batch(step)` is pure in step (see the module docstring)."""

  def __init__(self, *, num_frames: int, image_res: int, num_classes: int, num_channels: int,
               global_batch_size: int, seed: int, process_index: int, process_count: int):
    super().__init__(num_classes=num_classes, num_channels=num_channels, global_batch_size=global_batch_size,
                     seed=seed, process_index=process_index, process_count=process_count)
    self.num_frames = num_frames
    self.image_res = image_res
    self.num_examples = None  # An endless stream.

  def batch_params(self, step: int) -> dict:
    """This process's slice of the global batch's parameters at `step` (drawn from rng([seed, step]))."""
    step = core.as_int(step, 'step', 0)
    rng = np.random.default_rng([self.seed, step])
    params = draw_params(rng, self.global_batch_size, num_classes=self.num_classes,
                         num_channels=self.num_channels, image_res=self.image_res)
    b = self.per_process_batch_size
    lo = self.process_index * b
    return {k: v[lo:lo + b] for k, v in params.items()}

  def next_batch(self, step: int) -> dict:
    """The batch of global step `step`: image float32 [b, T, H, W, C] in [-1, 1], label int32 [b]."""
    params = self.batch_params(step)
    self._next_step = int(step) + 1
    return dict(image=render(params, num_frames=self.num_frames, image_res=self.image_res),
                label=params['label'])


def build_synthetic_video(dataset_config, *, image_res, global_batch_size, seed, process_index=None,
                          process_count=None):
  """`sid2.data.get_dataset`'s builder for `dataset.name='synthetic_video'` (fields: module docstring)."""
  get = lambda key, default: core.cfg_get(dataset_config, key, default)
  name = get('name', NAME)
  if name != NAME:
    raise ValueError(f'dataset.name must be {NAME!r} for the synthetic video dataset; got {name!r}')
  as_int = core.as_int
  image_res = as_int(image_res, 'image_res', 4)
  num_frames = as_int(get('num_frames', 16), 'dataset.num_frames', 1)
  num_classes = as_int(get('num_classes', len(SHAPES)), 'dataset.num_classes', 1)
  if num_classes > len(SHAPES):
    raise ValueError(f'dataset.num_classes must be in [1, {len(SHAPES)}] (shapes {SHAPES}) for {NAME}; '
                     f'got {num_classes}')
  num_channels = get('num_channels', 3)
  if num_channels not in CHANNELS or isinstance(num_channels, bool):
    raise ValueError(f'dataset.num_channels must be one of {CHANNELS} for {NAME}; got {num_channels!r}')
  seed = as_int(seed, 'seed', 0)
  global_batch_size, process_index, process_count = core.process_layout(
      global_batch_size, process_index, process_count)
  return SyntheticVideoDataset(
      num_frames=num_frames, image_res=image_res, num_classes=num_classes, num_channels=int(num_channels),
      global_batch_size=global_batch_size, seed=seed, process_index=process_index,
      process_count=process_count)


def register():
  """Routes `dataset.name='synthetic_video'` to `build_synthetic_video` (sid2.data calls it once)."""
  core.register_dataset(NAME, build_synthetic_video)
