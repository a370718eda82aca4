"""Wavelet-gated down/up-sampling of Spectral Diffusion (arXiv 2211.17106; SPEC §5, §13) and the plain
down/up-sampling of the Lite-LDM baseline, plus the attention block of its UNet (supplement Tables 4-7).

Shapes are NHWC. The Haar transform is `sid2.wavelets` (SPEC §5): one level maps [B, H, W, C] to the bands
(LL, LH, HL, HH), each [B, H/2, W/2, C]. Gates have shape [B, 4] (one scalar per band per example, the
default) or [B, 4, C] (per channel), values in (0, 1), bands in the order LL, LH, HL, HH.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sid2 import wavelets
from sid2.models import layers as sid2_layers

NUM_BANDS = 4
# 'band': one gate per band per example (SPEC §13); 'channel': one per band and channel; 'none': gates = 1.
GATE_MODES = ('band', 'channel', 'none')
# Gate initialisation (SPEC §13, ours): 'default' = flax's default Dense init (every gate ~0.5 at init, so
# WG-Down starts as 2 g x[::2, ::2], an aliased decimation); 'lowpass' = fc2 kernel 0, biases such that
# g_LL = 1/2 and the detail gates = LOWPASS_DETAIL_GATE (WG-Down starts as the anti-aliased 2x2 average).
GATE_INITS = ('default', 'lowpass')
LOWPASS_DETAIL_GATE = 0.05

Dtype = Any


# ---------------------------------------------------------------------------------------------------------
# Pure functions.

def _gate_factors(gates, num_channels):
  """Gates [B, 4] or [B, 4, C] -> four arrays broadcastable against [B, h, w, C] (band order LL, LH, HL, HH)."""
  if gates.ndim == 2 and gates.shape[1] == NUM_BANDS:
    return [gates[:, b, None, None, None] for b in range(NUM_BANDS)]
  if gates.ndim == 3 and gates.shape[1] == NUM_BANDS and gates.shape[2] == num_channels:
    return [gates[:, b, None, None, :] for b in range(NUM_BANDS)]
  raise ValueError(f'gates must have shape [B, {NUM_BANDS}] or [B, {NUM_BANDS}, {num_channels}]; '
                   f'got {gates.shape}')


def norm_groups(channels, min_group_channels=1, max_groups=32):
  """GroupNorm groups: the largest divisor g of `channels` with g <= max_groups and channels / g >=
  min_group_channels (1: sid2's gcd(C, 32), per-channel instance norm at C <= 32; ours: 4 by default)."""
  if channels < 1 or min_group_channels < 1:
    raise ValueError(f'channels and min_group_channels must be >= 1; got {channels}, {min_group_channels}')
  if min_group_channels == 1:
    return sid2_layers.num_groups(channels, max_groups)
  limit = max(1, min(max_groups, channels // min_group_channels))
  return max(g for g in range(1, limit + 1) if channels % g == 0)


def lowpass_gate_bias(per_channel_shape):
  """fc2 bias of the 'lowpass' init: logit(1/2) = 0 for LL, logit(LOWPASS_DETAIL_GATE) for the details."""
  detail = math.log(LOWPASS_DETAIL_GATE / (1.0 - LOWPASS_DETAIL_GATE))
  bias = jnp.full(per_channel_shape, detail, jnp.float32)
  return bias.at[0].set(0.0).reshape(-1)


def haar_bands(x):
  """concat(LL, LH, HL, HH) of one Haar level along channels: [B,H,W,C] -> [B,H/2,W/2,4C] (SPEC §5)."""
  return jnp.concatenate(wavelets.haar_dwt_level(x), axis=-1)


def gated_band_sum(x, gates):
  """WG-Down (SPEC §13): sum_b g_b * X_b over the Haar bands X_b of x -> [B, H/2, W/2, C]."""
  bands = wavelets.haar_dwt_level(x)
  factors = _gate_factors(gates, x.shape[-1])
  return sum(g.astype(x.dtype) * band for g, band in zip(factors, bands))


def gated_inverse_haar(x, gates):
  """WG-Up's synthesis (SPEC §13): x's channels split into four chunks taken as (LL, LH, HL, HH), each
  multiplied by its gate, inverse Haar -> [B, 2H, 2W, C/4]. With gates = 1 this inverts `haar_bands`."""
  if x.shape[-1] % NUM_BANDS:
    raise ValueError(f'WG-Up needs channels divisible by {NUM_BANDS}; got shape {x.shape}')
  chunks = jnp.split(x, NUM_BANDS, axis=-1)
  factors = _gate_factors(gates, chunks[0].shape[-1])
  return wavelets.haar_idwt_level(*[g.astype(x.dtype) * c for g, c in zip(factors, chunks)])


def nearest_upsample(x, factor=2):
  """Nearest-neighbour up-sampling [B,H,W,C] -> [B,fH,fW,C] (each pixel repeated in a f x f block)."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


# ---------------------------------------------------------------------------------------------------------
# Modules.

class WaveletGate(nn.Module):
  """g = sigmoid(FFN(GAP(X))) in (0, 1) (SPEC §13; FFN ours: Dense(C_in / r) -> SiLU -> Dense(4 or 4 C)).

  Returns [B, 4] (mode 'band') or [B, 4, channels] (mode 'channel'); mode 'none' returns ones without
  parameters. GAP is the mean over height and width of the module's input X [B, H, W, C_in].
  """
  channels: int
  mode: str = 'band'
  reduction: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  gate_init: str = 'default'

  @nn.compact
  def __call__(self, x):
    if self.mode not in GATE_MODES:
      raise ValueError(f'gate mode must be one of {GATE_MODES}; got {self.mode!r}')
    if self.gate_init not in GATE_INITS:
      raise ValueError(f'gate init must be one of {GATE_INITS}; got {self.gate_init!r}')
    b = x.shape[0]
    per_channel = self.mode == 'channel'
    shape = (b, NUM_BANDS, self.channels) if per_channel else (b, NUM_BANDS)
    if self.mode == 'none':
      return jnp.ones(shape, jnp.float32)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    h = nn.Dense(max(x.shape[-1] // self.reduction, 1), name='fc1', **kw)(pooled)
    init = {}
    if self.gate_init == 'lowpass':
      bias = lowpass_gate_bias(shape[1:])
      init = dict(kernel_init=nn.initializers.zeros, bias_init=lambda *_: bias.astype(self.param_dtype))
    h = nn.Dense(math.prod(shape[1:]), name='fc2', **init, **kw)(nn.silu(h))
    gates = jax.nn.sigmoid(h.astype(jnp.float32)).reshape(shape)
    self.sow('intermediates', 'gates', gates)
    return gates


class _WaveletGated(nn.Module):
  """The fields WG-Down and WG-Up share: output channels (WG-Up; WG-Down keeps its input's) and the gate's."""
  channels: Optional[int] = None
  gate: str = 'band'
  reduction: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  gate_init: str = 'default'

  def gates(self, x, channels: int):
    """The WaveletGate of these fields on input x, for `channels` channels per band."""
    return WaveletGate(channels, self.gate, self.reduction, self.dtype, self.param_dtype, self.gate_init,
                       name='gate')(x)


class WGDown(_WaveletGated):
  """WG-Down (SPEC §13): gated sum of the four Haar bands of X, [B,H,W,C] -> [B,H/2,W/2,C]."""

  @nn.compact
  def __call__(self, x):
    if self.channels not in (None, x.shape[-1]):
      raise ValueError(f'WG-Down keeps its input channels ({x.shape[-1]}); got channels={self.channels}')
    return gated_band_sum(x, self.gates(x, x.shape[-1]))


class WGUp(_WaveletGated):
  """WG-Up (SPEC §13): 1x1 conv C_in -> 4 C (ours, `project`), split into (LL, LH, HL, HH), gate, inverse
  Haar -> [B, 2H, 2W, C]. Without `project` the input's C_in channels are the bands (C = C_in / 4)."""
  project: bool = True

  @nn.compact
  def __call__(self, x):
    if self.channels is None:
      raise ValueError('WG-Up needs channels (its output channels)')
    h = (nn.Dense(NUM_BANDS * self.channels, name='proj', dtype=self.dtype, param_dtype=self.param_dtype)(x)
         if self.project else x)
    if h.shape[-1] != NUM_BANDS * self.channels:
      raise ValueError(f'WG-Up without projection needs {NUM_BANDS} x channels={self.channels} input '
                       f'channels; got {x.shape[-1]}')
    return gated_inverse_haar(h, self.gates(x, self.channels))


class PlainDown(sid2_layers.Resample):
  """Plain 2x down-sampling (Lite-LDM / ordinary UNet, SPEC §13): 3x3 conv, stride 2, padding 1, C -> C."""

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                   param_dtype=self.param_dtype, name='conv')(x)


class PlainUp(sid2_layers.Resample):
  """Plain 2x up-sampling (Lite-LDM / ordinary UNet, SPEC §13): nearest neighbour, then a 3x3 conv -> C."""

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.channels, (3, 3), padding='SAME', dtype=self.dtype, param_dtype=self.param_dtype,
                   name='conv')(nearest_upsample(x))


def attend(q, k, v, implementation):
  """Multi-head attention of q [B,Tq,N,D] over k, v [B,Tk,N,D] (same switch as sid2's MultiHeadAttention)."""
  if implementation == 'naive':
    logits = jnp.einsum('bqnd,bknd->bnqk', q, k) / math.sqrt(q.shape[-1])
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum('bnqk,bknd->bqnd', weights, v)
  impl = None if implementation == 'auto' else implementation
  return jax.nn.dot_product_attention(q, k, v, implementation=impl)


class CrossAttention(nn.Module):
  """Cross-attention of tokens x [B,T,C] to a conditioning sequence [B,S,D] (Tables 6-7 "Cross-Attn"):
  q from x, k and v from the context, C / num_heads per head; the output projection is zero-initialised."""
  num_heads: int
  implementation: str = 'xla'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context):
    c = x.shape[-1]
    head_dim = c // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = nn.DenseGeneral((self.num_heads, head_dim), name='q', **kw)(x)
    kv = nn.DenseGeneral((2, self.num_heads, head_dim), name='kv', **kw)(context.astype(self.dtype))
    out = attend(q, kv[:, :, 0], kv[:, :, 1], self.implementation)
    return nn.DenseGeneral(c, axis=(-2, -1), kernel_init=nn.initializers.zeros, name='out', **kw)(out)


class AttentionBlock(nn.Module):
  """Self-attention over the H*W positions of a feature map (Tables 4-7 "Self-Attn"), then, given a
  context, cross-attention to it ("Self-Attn+Cross-Attn"); each residual, pre-normalised (GroupNorm before
  self-attention as in LDM's attention block, LayerNorm before cross-attention)."""
  num_heads: int
  implementation: str = 'xla'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  min_group_channels: int = 1

  @nn.compact
  def __call__(self, x, context: Optional[jax.Array] = None):
    b, h, w, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    groups = norm_groups(c, self.min_group_channels)
    t = nn.GroupNorm(num_groups=groups, name='norm', **kw)(x).reshape(b, h * w, c)
    t = sid2_layers.MultiHeadAttention(self.num_heads, self.implementation, name='self_attn', **kw)(t)
    x = x + t.reshape(b, h, w, c)
    if context is not None:
      t = nn.LayerNorm(name='cross_norm', **kw)(x).reshape(b, h * w, c)
      t = CrossAttention(self.num_heads, self.implementation, name='cross_attn', **kw)(t, context)
      x = x + t.reshape(b, h, w, c)
    return x
