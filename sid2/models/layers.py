"""Layers of the SiD2 residual U-ViT (SiD2 §3; simple diffusion, arXiv 2301.11093, §3.3 and Fig. 7).

Shapes are NHWC for images and [B, T, C] for token sequences. Every module takes a compute `dtype` and a
`param_dtype` (params stay float32 when computing in bfloat16).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ATTENTION_IMPLEMENTATIONS = ('xla', 'naive', 'cudnn', 'auto')

Dtype = Any


def space_to_depth(x, p):
  """[B, H, W, C] -> [B, H/p, W/p, p*p*C]: each p x p patch becomes one pixel (input patching, SiD2 §3)."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x, p):
  """[B, H, W, p*p*C] -> [B, H*p, W*p, C]; exact inverse of `space_to_depth`."""
  if p == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, p, p, c // (p * p))
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c // (p * p))


def sinusoidal_embedding(x, dim, min_period=0.5, max_period=1000.):
  """Sinusoidal features [sin(x w_k), cos(x w_k)] with periods 2 pi / w_k geometric in [min_period, max_period].

  x: [B] (the logSNR λ, range about [-20, 20]); returns [B, dim] float32 (dim even; an odd dim is zero padded).
  The default periods resolve both a 0.1 change of λ and its whole range.
  """
  half = dim // 2
  periods = jnp.exp(jnp.linspace(math.log(min_period), math.log(max_period), half))
  args = jnp.asarray(x, jnp.float32)[:, None] * (2 * jnp.pi / periods)[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def sincos_2d(height, width, dim):
  """Fixed 2-D sinusoidal position embedding [H*W, dim] (no parameters, so any token grid works)."""
  quarter = dim // 4
  freqs = 1. / (10000. ** (jnp.arange(quarter, dtype=jnp.float32) / max(quarter, 1)))
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                        indexing='ij')
  ay = ys.reshape(-1, 1) * freqs[None]
  ax = xs.reshape(-1, 1) * freqs[None]
  emb = jnp.concatenate([jnp.sin(ay), jnp.cos(ay), jnp.sin(ax), jnp.cos(ax)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim - 4 * quarter)))


def num_groups(channels, max_groups=32):
  """GroupNorm group count: the largest divisor of `channels` that is <= max_groups."""
  return math.gcd(channels, max_groups)


class ResBlock(nn.Module):
  """Pre-activation ResBlock C -> C: GN, swish, 3x3 conv, GN, scale/shift from the conditioning, swish,
  dropout, 3x3 conv (zero-initialised), plus the identity (two 3x3 convs as in SiD2 B.3 `resblock_gflops`).

  `cond` is swish(embedding) [B, E]; a Dense maps it to a per-channel (scale, shift) applied as
  h * (1 + scale) + shift after the second GroupNorm.
  `kernel_size` sets the convolutions' window and so the number of spatial axes: (3, 3) for images
  [B, H, W, C], (k_t, 3, 3) for videos [B, T, H, W, C] (SiD2 B.7, "3D Convs"; `sid2.models.uvit_video`).
  """
  channels: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_size: tuple = (3, 3)
  groups: int = 0  # GroupNorm groups; 0: num_groups(channels)

  @nn.compact
  def __call__(self, x, cond, *, train):
    c = self.channels
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    groups = self.groups or num_groups(c)
    h = nn.GroupNorm(num_groups=groups, **kw)(x)
    h = nn.swish(h)
    kernel = tuple(self.kernel_size)
    h = nn.Conv(c, kernel, padding='SAME', **kw)(h)
    h = nn.GroupNorm(num_groups=groups, use_scale=False, use_bias=False, **kw)(h)
    mod = nn.Dense(2 * c, **kw)(cond)
    mod = mod.reshape(mod.shape[:1] + (1,) * (x.ndim - 2) + mod.shape[1:])  # [B, 1, ..., 1, 2C]
    scale, shift = jnp.split(mod, 2, axis=-1)
    h = h * (1 + scale) + shift
    h = nn.swish(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(c, kernel, padding='SAME', kernel_init=nn.initializers.zeros, **kw)(h)
    return x + h


class MultiHeadAttention(nn.Module):
  """Self-attention over [B, T, C]: q, k, v and output projections (4 C^2 per token, SiD2 B.3).

  implementation: 'xla' / 'cudnn' -> `jax.nn.dot_product_attention(..., implementation=...)`, 'auto' -> the
  same with implementation=None (JAX picks), 'naive' -> two einsums with a float32 softmax.
  """
  num_heads: int
  implementation: str = 'xla'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    head_dim = c // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), name='qkv', **kw)(x)  # [B, T, 3, N, D]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.implementation == 'naive':
      logits = jnp.einsum('bqnd,bknd->bnqk', q, k) / math.sqrt(head_dim)
      weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
      out = jnp.einsum('bnqk,bknd->bqnd', weights, v)
    else:
      impl = None if self.implementation == 'auto' else self.implementation
      if impl == 'cudnn' and jax.default_backend() != 'gpu':
        raise ValueError(f"model.attention='cudnn' needs a CUDA GPU (cuDNN flash attention); the backend is "
                         f"{jax.default_backend()!r}: use 'xla' or 'auto'")
      out = jax.nn.dot_product_attention(q, k, v, implementation=impl)
    return nn.DenseGeneral(c, axis=(-2, -1), kernel_init=nn.initializers.zeros, name='out', **kw)(out)


class TransformerBlock(nn.Module):
  """Pre-LN transformer block with adaptive LayerNorm conditioning (scale/shift from `cond`, like the ResBlock):
  x + Attn(LN(x)(1+s1)+b1), then x + MLP(LN(x)(1+s2)+b2), MLP C -> 4C -> C with GELU (12 C^2 per token in
  all, SiD2 B.3). Dropout on both residual branches; both output projections are zero-initialised.
  """
  num_heads: int
  dropout: float = 0.0
  attention: str = 'xla'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond, *, train):
    c = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mod = nn.Dense(4 * c, **kw)(cond)[:, None, :]
    s1, b1, s2, b2 = jnp.split(mod, 4, axis=-1)
    h = nn.LayerNorm(use_scale=False, use_bias=False, **kw)(x) * (1 + s1) + b1
    h = MultiHeadAttention(self.num_heads, self.attention, **kw)(h)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.LayerNorm(use_scale=False, use_bias=False, **kw)(x) * (1 + s2) + b2
    h = nn.Dense(4 * c, **kw)(h)
    h = nn.gelu(h)
    h = nn.Dense(c, kernel_init=nn.initializers.zeros, **kw)(h)
    return x + nn.Dropout(self.dropout, deterministic=not train)(h)


class Resample(nn.Module):
  """Fields of a 2x down/up-sampling layer (here and in spectral.layers): output channels and dtypes."""
  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32


class Downsample(Resample):
  """2x down-sampling C_in -> C_out: space-to-depth(2) then a Dense (= a 2x2 stride-2 conv)."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.channels, dtype=self.dtype, param_dtype=self.param_dtype)(space_to_depth(x, 2))


class Upsample(Resample):
  """2x up-sampling C_in -> C_out: a Dense to 4 C_out then depth-to-space(2) (= a 2x2 stride-2 transposed conv)."""

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(4 * self.channels, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return depth_to_space(h, 2)
