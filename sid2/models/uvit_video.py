"""A space-time (3-D) variant of the SiD2 residual U-ViT for video (SiD2 B.7, Kinetics600: "3D Convs").

The same design as `sid2.models.uvit` (SiD2 §3, C.3; simple diffusion, arXiv 2301.11093, §3.3), on videos
[B, T, H, W, C]: ResBlock levels with 3-D convolutions (k_t x 3 x 3), one skip per level, down/up-sampling
that halves/doubles space (and, per level, optionally time), optional spatial patching, a transformer over
all space-time tokens at the lowest level with a fixed 3-D sin/cos position embedding, and a
zero-initialised output. Its forward FLOPs are `sid2.flops.video_uvit_gflops` (B.3 "adapted to 3D convs").
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from sid2.models import checks
from sid2.models import layers
from sid2.models import uvit

# Fields a `name='uvit_video'` sub-config may set (`UVIT_VIDEO_DEFAULTS`, below `UViTVideo`): the U-ViT's
# (same meaning, `uvit.UVIT_DEFAULTS`) plus
#   num_frames: T, frames per example the model is built for (validated against temporal down-sampling).
#   temporal_kernel_size: k_t, the temporal extent of every 3-D convolution (odd; 1 = per-frame 2-D convs).
#   temporal_downsample: () (space only everywhere), a bool for all levels, or one bool per entry of
#     `channels`: whether that level's down-sampling also halves time (2x2x2 instead of 1x2x2).
VIDEO_FIELDS = ('num_frames', 'temporal_kernel_size', 'temporal_downsample')


def _temporal_flags(value, num_levels):
  """`temporal_downsample` as a tuple of `num_levels` bools, or ValueError naming the field."""
  if isinstance(value, bool):
    return (value,) * num_levels
  if not hasattr(value, '__len__') or isinstance(value, str):
    raise ValueError(f'model.temporal_downsample must be (), a bool or a list/tuple of {num_levels} bools '
                     f'(one per model.channels entry), got {value!r}')
  flags = tuple(value)
  if not flags:
    return (False,) * num_levels
  if len(flags) != num_levels or not all(isinstance(f, bool) for f in flags):
    raise ValueError(f'model.temporal_downsample must be (), a bool or a list/tuple of {num_levels} bools '
                     f'(one per model.channels entry), got {value!r}')
  return flags


def resolve_uvit_video_config(model_config):
  """Checks a video U-ViT sub-config; returns its fields (defaults filled in, sequences as tuples).

  Raises ValueError for unknown fields and bad values, naming the field and the allowed values.
  """
  cfg = checks.as_dict(model_config)
  cfg.pop('name', None)
  checks.check_known_fields(cfg, UVIT_VIDEO_DEFAULTS, 'uvit_video')
  video = {k: cfg.pop(k, UVIT_VIDEO_DEFAULTS[k]) for k in VIDEO_FIELDS}
  f = uvit.resolve_uvit_config(cfg)  # The image U-ViT's fields and checks.
  t = video['num_frames']
  if isinstance(t, bool) or not isinstance(t, int) or t < 1:
    raise ValueError(f'model.num_frames must be an int >= 1, got {t!r}')
  k = video['temporal_kernel_size']
  if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
    raise ValueError(f'model.temporal_kernel_size must be an odd int >= 1 (1, 3, 5, ...), got {k!r}')
  f.update(num_frames=t, temporal_kernel_size=k,
           temporal_downsample=_temporal_flags(video['temporal_downsample'], len(f['channels'])))
  return f


def temporal_factor(fields):
  """How many times time is halved on the way to the transformer: 2^(used levels with a temporal flag)."""
  levels = uvit.used_levels(fields['channels'], fields['drop_top_level'])
  return 2 ** sum(fields['temporal_downsample'][i] for i in levels)


def check_video_resolution(fields, image_res, num_frames=None):
  """ValueError unless H = W = image_res is divisible by patching_size * 2^levels and T (default
  `fields['num_frames']`) by 2^(levels with temporal_downsample)."""
  uvit.check_resolution(fields, image_res)
  t = fields['num_frames'] if num_frames is None else num_frames
  factor = temporal_factor(fields)
  if isinstance(t, bool) or not isinstance(t, int) or t < 1 or t % factor:
    raise ValueError(f'num_frames={t!r} must be divisible by 2^(levels with temporal down-sampling) = {factor} '
                     f'(model.temporal_downsample={fields["temporal_downsample"]}, model.drop_top_level='
                     f'{fields["drop_top_level"]})')


def _frames_to_batch(x, fn):
  """Applies an image function [N, H, W, C] -> [N, H', W', C'] to every frame of [B, T, H, W, C]."""
  b, t = x.shape[:2]
  y = fn(x.reshape((b * t,) + x.shape[2:]))
  return y.reshape((b, t) + y.shape[1:])


def space_time_to_depth(x, pt, ps):
  """[B, T, H, W, C] -> [B, T/pt, H/ps, W/ps, pt*ps*ps*C]: each pt x ps x ps block becomes one voxel."""
  b, t, h, w, c = x.shape
  x = x.reshape(b, t // pt, pt, h // ps, ps, w // ps, ps, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // pt, h // ps, w // ps, pt * ps * ps * c)


def depth_to_space_time(x, pt, ps):
  """[B, T, H, W, pt*ps*ps*C] -> [B, T*pt, H*ps, W*ps, C]; exact inverse of `space_time_to_depth`."""
  b, t, h, w, c = x.shape
  c_out = c // (pt * ps * ps)
  x = x.reshape(b, t, h, w, pt, ps, ps, c_out)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, t * pt, h * ps, w * ps, c_out)


def _sincos_1d(positions, num_freqs):
  """[n] positions -> [n, 2 num_freqs]: sin and cos at frequencies 1 / 10000^(k / num_freqs)."""
  freqs = 1. / (10000. ** (jnp.arange(num_freqs, dtype=jnp.float32) / max(num_freqs, 1)))
  args = positions.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def sincos_3d(frames, height, width, dim):
  """Fixed 3-D sinusoidal position embedding [T*H*W, dim] (token order t, y, x; no parameters).

  A sixth of the channels each for sin/cos of t, y and x (as `layers.sincos_2d` does for y and x); the
  dim mod 6 remaining channels are zero.
  """
  k = dim // 6
  ts, ys, xs = jnp.meshgrid(jnp.arange(frames), jnp.arange(height), jnp.arange(width), indexing='ij')
  emb = jnp.concatenate([_sincos_1d(a.reshape(-1), k) for a in (ts, ys, xs)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim - 6 * k)))


class _VideoResample(nn.Module):
  """Fields of the video down/up-sampling layers: output channels, whether time is resampled too, dtypes."""
  channels: int
  temporal: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32


class VideoDownsample(_VideoResample):
  """Down-sampling C_in -> C_out by 2 in space (and in time when `temporal`): space(-time)-to-depth then a
  Dense (= a 1x2x2 or 2x2x2 strided 3-D conv)."""

  @nn.compact
  def __call__(self, x):
    h = space_time_to_depth(x, 2 if self.temporal else 1, 2)
    return nn.Dense(self.channels, dtype=self.dtype, param_dtype=self.param_dtype)(h)


class VideoUpsample(_VideoResample):
  """Up-sampling C_in -> C_out by 2 in space (and time when `temporal`): a Dense to (4 or 8) C_out then
  depth-to-space(-time) (= a strided transposed 3-D conv); inverse layout of `VideoDownsample`."""

  @nn.compact
  def __call__(self, x):
    pt = 2 if self.temporal else 1
    h = nn.Dense(pt * 4 * self.channels, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return depth_to_space_time(h, pt, 2)


class UViTVideo(uvit.UViT):
  """Space-time residual U-ViT: (z [B,T,H,W,C], logsnr [B], labels [B] | None) -> [B,T,H,W,C] float32.

  A subclass of `uvit.UViT`: its fields (same meaning; convolutions become k_t x 3 x 3; `remat` wraps the
  same blocks) plus `num_frames`, `temporal_kernel_size` and `temporal_downsample` (`UVIT_VIDEO_DEFAULTS`).
  Patching (`patching_size`) is spatial only, frame by frame. The output conv and the last layer of every
  residual branch are zero-initialised, so the network starts at output 0; the caller reads the output as
  eps, x or v (SPEC §2). The conditioning (logSNR and optional class embedding, adaptive norms) is the
  U-ViT's. GroupNorm statistics are per example over the whole clip (T, H, W), so frames outside a conv's
  temporal window still interact through them (and through the transformer's attention).
  """
  num_frames: int = 16
  temporal_kernel_size: int = 3
  temporal_downsample: Any = ()

  def _fields(self):
    """The config fields of this module, checked (ValueError before any compute)."""
    return resolve_uvit_video_config({k: getattr(self, k) for k in UVIT_VIDEO_DEFAULTS})

  @nn.compact
  def __call__(self, z, logsnr, labels: Optional[Any] = None, train: bool = False):
    f = self._fields()
    b, frames, _, _, c_in = checks.check_input(z, self.num_channels, uvit.downsampling_factor(f),
                                               'patching_size * 2^levels',
                                               layout='[B, T, H, W, C] (a video batch)', what='frame')
    if frames % temporal_factor(f):
      raise ValueError(f'z has {frames} frames; it must be divisible by 2^(levels with temporal down-sampling) '
                       f'= {temporal_factor(f)} (model.temporal_downsample={f["temporal_downsample"]})')
    logsnr = jnp.broadcast_to(jnp.asarray(logsnr, jnp.float32), (b,))
    if labels is not None and not self.num_classes:
      raise ValueError('labels were given but model.num_classes=0 (unconditional model)')

    dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    levels = uvit.used_levels(f['channels'], f['drop_top_level'])
    chans, c_t, p = f['channels'], f['transformer_channels'], f['patching_size']
    kernel = (f['temporal_kernel_size'], 3, 3)
    tflags = f['temporal_downsample']

    cond = self._conditioning(f, logsnr, labels, kw)  # λ (+ class), as in the image U-ViT

    # Encoder: 3-D ResBlocks, one skip per level.
    h = _frames_to_batch(z.astype(dtype), lambda x: layers.space_to_depth(x, p))
    h = nn.Conv(chans[levels[0]], kernel, padding='SAME', name='conv_in', **kw)(h)
    skips = []
    for i in levels:
      for j in range(f['enc_blocks'][i]):
        h = self._block(layers.ResBlock, chans[i], self._drop(i), name=f'enc_{i}_block_{j}', train=train,
                        kernel_size=kernel, **kw)(h, cond)
      skips.append(h)
      c_next = chans[i + 1] if i + 1 < len(chans) else c_t
      h = VideoDownsample(c_next, tflags[i], name=f'down_{i}', **kw)(h)

    # Transformer over all space-time tokens at the lowest resolution.
    _, tt, th, tw, _ = h.shape
    tokens = h.reshape(b, tt * th * tw, c_t) + sincos_3d(tt, th, tw, c_t).astype(dtype)[None]
    for j in range(f['transformer_blocks']):
      tokens = self._block(layers.TransformerBlock, f['num_heads'], self._drop(len(chans)), f['attention'],
                           name=f'transformer_block_{j}', train=train, **kw)(tokens, cond)
    tokens = nn.LayerNorm(name='transformer_norm', **kw)(tokens)
    h = tokens.reshape(b, tt, th, tw, c_t)

    # Decoder: the skip is added after up-sampling.
    for i in reversed(levels):
      h = VideoUpsample(chans[i], tflags[i], name=f'up_{i}', **kw)(h) + skips.pop()
      for j in range(f['dec_blocks'][i]):
        h = self._block(layers.ResBlock, chans[i], self._drop(i), name=f'dec_{i}_block_{j}', train=train,
                        kernel_size=kernel, **kw)(h, cond)

    h = nn.GroupNorm(num_groups=layers.num_groups(chans[levels[0]]), name='norm_out', **kw)(h)
    h = nn.swish(h)
    h = nn.Conv(c_in * p * p, kernel, padding='SAME', kernel_init=nn.initializers.zeros, name='conv_out',
                **kw)(h)
    out = _frames_to_batch(h, lambda x: layers.depth_to_space(x, p))
    return out.astype(jnp.float32)


# The fields a `name='uvit_video'` sub-config may set, with their defaults (the module's own).
UVIT_VIDEO_DEFAULTS = checks.field_defaults(UViTVideo)


# The pair `sid2.models.register_model` takes (ValueError on bad fields or resolution).
build_uvit_video, validate_uvit_video = checks.builders(UViTVideo, resolve_uvit_video_config,
                                                      check_video_resolution)
