"""The SiD2 residual U-ViT (SiD2 §3 "Residual U-ViTs", C.3; simple diffusion, arXiv 2301.11093, §3.3, Fig. 7).

Convolutional ResBlock levels go down to a transformer at the lowest resolution and back up. Unlike a U-Net
with a skip per block, each level has ONE skip connection: the encoder's output at a level is added to the
decoder's input at that level (after up-sampling). So the encoder and decoder may use different numbers of
blocks per level (SiD2 C.3, asymmetric U-ViTs).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sid2.models import checks
from sid2.models import layers

DTYPES = checks.DTYPES


def _int_tuple(name, value):
  """A list/tuple of ints as a tuple, else ValueError naming the field."""
  if isinstance(value, int) or not hasattr(value, '__len__'):
    raise ValueError(f'model.{name} must be a list/tuple of ints, got {value!r}')
  out = tuple(value)
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
    raise ValueError(f'model.{name} must contain ints, got {value!r}')
  return out


def dropout_rate(dropout, dropout_from_level, level, drop_top_level):
  """Dropout at `level` (index into channels; len(channels): the transformer). Levels count from the top
  level that exists, so with drop_top_level the highest-resolution maps present (channels[1]) are level 0 and
  get none when dropout_from_level >= 1 (simple diffusion: no dropout at the highest resolution)."""
  first = 1 if drop_top_level else 0
  return dropout if level - first >= dropout_from_level else 0.0


def used_levels(channels, drop_top_level):
  """Indices into `channels` of the levels that exist (SiD2 B.6: at 128^2 the top level is removed)."""
  return list(range(1 if drop_top_level else 0, len(channels)))


def resolve_uvit_config(model_config):
  """Checks a U-ViT sub-config and returns its fields (defaults filled in, sequences as tuples).

  Raises ValueError for unknown fields and bad values, naming the field and the allowed values.
  """
  cfg = checks.as_dict(model_config)
  cfg.pop('name', None)
  checks.check_known_fields(cfg, UVIT_DEFAULTS, 'uvit')
  f = dict(UVIT_DEFAULTS)
  f.update(cfg)
  for name in ('channels', 'enc_blocks', 'dec_blocks'):
    f[name] = _int_tuple(name, f[name])
  n = checks.check_per_level(f, ('channels', 'enc_blocks', 'dec_blocks'))
  if any(c < 1 for c in f['channels']):
    raise ValueError(f'model.channels must be positive, got {f["channels"]}')
  if any(b < 0 for b in f['enc_blocks'] + f['dec_blocks']):
    raise ValueError(f'model.enc_blocks / model.dec_blocks must be >= 0, got {f["enc_blocks"]}, '
                     f'{f["dec_blocks"]}')
  for name in ('transformer_channels', 'num_heads', 'patching_size'):
    if not isinstance(f[name], int) or f[name] < 1:
      raise ValueError(f'model.{name} must be an int >= 1, got {f[name]!r}')
  for name in ('transformer_blocks', 'num_classes', 'emb_channels', 'dropout_from_level'):
    if not isinstance(f[name], int) or f[name] < 0:
      raise ValueError(f'model.{name} must be an int >= 0, got {f[name]!r}')
  if f['transformer_channels'] % f['num_heads']:
    raise ValueError(f'model.transformer_channels={f["transformer_channels"]} must be divisible by '
                     f'model.num_heads={f["num_heads"]}')
  checks.check_dropout(f)
  for name in ('drop_top_level', 'remat'):
    if not isinstance(f[name], bool):
      raise ValueError(f'model.{name} must be a bool, got {f[name]!r}')
  if f['drop_top_level'] and n < 2:
    raise ValueError('model.drop_top_level=True needs at least 2 levels in model.channels, got '
                     f'{f["channels"]}')
  if f['attention'] not in layers.ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f'model.attention must be one of {layers.ATTENTION_IMPLEMENTATIONS}, got '
                     f'{f["attention"]!r}')
  checks.check_dtypes(f)
  return f


def downsampling_factor(fields):
  """Total down-sampling from image to transformer grid: patching_size * 2^(number of used levels)."""
  return fields['patching_size'] * 2 ** len(used_levels(fields['channels'], fields['drop_top_level']))


def check_resolution(fields, image_res):
  """ValueError unless image_res is divisible by patching_size * 2^levels (each level halves the grid)."""
  factor = downsampling_factor(fields)
  if not isinstance(image_res, int) or image_res < 1 or image_res % factor:
    levels = len(used_levels(fields['channels'], fields['drop_top_level']))
    raise ValueError(
        f'image_res={image_res!r} must be divisible by patching_size * 2^levels = {fields["patching_size"]} * '
        f'2^{levels} = {factor} (model.patching_size={fields["patching_size"]}, model.channels='
        f'{fields["channels"]}, model.drop_top_level={fields["drop_top_level"]})')


def emb_width(fields):
  """Width E of the conditioning embedding: `emb_channels`, or 4x the first used level's width when 0."""
  if fields['emb_channels']:
    return fields['emb_channels']
  return 4 * fields['channels'][used_levels(fields['channels'], fields['drop_top_level'])[0]]


class UViT(nn.Module):
  """Residual U-ViT denoiser: (z [B,H,W,C], logsnr [B], labels [B] | None) -> output [B,H,W,C] float32.

  The output has the input's channels; the caller reads it as eps, x or v (SPEC §2). The output conv is
  zero-initialised, as are the last layer of every residual branch, so the network starts at output 0.

  Fields (the model sub-config sets them; `name='uvit'` selects this module):
    channels: width of each convolutional level, top (full resolution / patching_size) first.
    enc_blocks: ResBlocks per level on the way down (same length as channels).
    dec_blocks: ResBlocks per level on the way up; may differ from enc_blocks (SiD2 C.3).
    transformer_channels: width of the transformer at the lowest resolution.
    transformer_blocks: number of transformer blocks there.
    num_heads: attention heads (transformer_channels must be divisible by it).
    patching_size: p; the input is space-to-depth'ed into p x p patches (p*p*C channels) before the first
      conv and the output depth-to-space'd back (SiD2 §3, "flop heavy" scaling uses a small p).
    drop_top_level: drop channels[0] / enc_blocks[0] / dec_blocks[0] entirely (SiD2 B.6: "for 128^2
      resolutions the top-level layer (128 channels) is entirely removed").
    dropout: dropout rate in ResBlocks (before their second conv) and on transformer residual branches.
    dropout_from_level: the first level that gets dropout, counted from the top level that exists (with
      drop_top_level, channels[1] is level 0); the transformer counts as the level after the last. Simple
      diffusion: no dropout on the highest-resolution feature maps present (`dropout_rate`).
    num_classes: 0 for unconditional; else labels in [0, num_classes) plus a learned null class at index
      num_classes (labels=None means all-null; the train step drops labels to it for guidance).
    emb_channels: width E of the logSNR (+ class) embedding; 0 means 4 x the first used level's width.
    attention: 'xla' | 'cudnn' | 'auto' (jax.nn.dot_product_attention) or 'naive' (einsum + softmax).
    dtype: compute dtype name ('float32', 'bfloat16', 'float16'); the output is always float32.
    param_dtype: parameter dtype name (keep 'float32').
    remat: rematerialise every ResBlock and transformer block (`nn.remat`): their activations are recomputed
      in the backward pass instead of stored. Same outputs, gradients and parameter names; less memory for
      roughly one more forward pass of compute.
    num_channels: image channels expected (set by `get_model` from the data, not by the sub-config);
      0 accepts any.

  Conditioning: λ -> sinusoidal features (width of the first used level) -> Dense(E), swish, Dense(E);
  plus a class embedding when num_classes > 0; swish of the sum feeds every ResBlock and transformer block,
  each of which maps it to per-channel scale/shift of a normalisation (h * (1 + scale) + shift).

  Down/up-sampling between levels: space-to-depth(2) + Dense (to the next level's width) and Dense +
  depth-to-space(2) (back). The transformer sees a fixed 2-D sin/cos position embedding.
  """
  channels: Sequence[int] = (128, 256)
  enc_blocks: Sequence[int] = (2, 2)
  dec_blocks: Sequence[int] = (2, 2)
  transformer_channels: int = 256
  transformer_blocks: int = 4
  num_heads: int = 4
  patching_size: int = 1
  drop_top_level: bool = False
  dropout: float = 0.0
  dropout_from_level: int = 1
  num_classes: int = 0
  emb_channels: int = 0
  attention: str = 'xla'
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: bool = False
  num_channels: int = 0

  def _fields(self):
    """The config fields of this module, checked (ValueError before any compute)."""
    return resolve_uvit_config({k: getattr(self, k) for k in UVIT_DEFAULTS})

  def _drop(self, level):
    """Dropout rate at `level` (index into channels; len(channels) is the transformer)."""
    return dropout_rate(self.dropout, self.dropout_from_level, level, self.drop_top_level)

  def _conditioning(self, f, logsnr, labels, kw):
    """swish(MLP(sinusoidal(λ)) + class embedding) [B, E]: the embedding every block is conditioned on.

    Called from `__call__` (compact), so its layers are named children of the model (shared by the video
    U-ViT, which subclasses this module)."""
    b = logsnr.shape[0]
    e = emb_width(f)
    emb = layers.sinusoidal_embedding(logsnr, f['channels'][used_levels(f['channels'], f['drop_top_level'])[0]])
    emb = nn.Dense(e, name='emb_dense0', **kw)(emb)
    emb = nn.Dense(e, name='emb_dense1', **kw)(nn.swish(emb))
    if self.num_classes:
      if labels is None:
        labels = jnp.full((b,), self.num_classes, jnp.int32)
      labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (b,))
      emb = emb + nn.Embed(self.num_classes + 1, e, name='class_embed', **kw)(labels)
    return nn.swish(emb)

  def _block(self, block_cls, *args, name, train, **kw):
    """`block_cls(*args, name=name, **kw)(h, cond, train=train)` as a function of (h, cond), rematerialised
    under `remat`. The block is built inside the lifted function, as a child of the (lifted) module, so its
    parameters keep their names; `train` is closed over (jax.checkpoint would trace a bool argument)."""
    def apply(module, h, cond):
      return block_cls(*args, name=name, parent=module, **kw)(h, cond, train=train)
    return functools.partial(nn.remat(apply) if self.remat else apply, self)

  @nn.compact
  def __call__(self, z, logsnr, labels: Optional[Any] = None, train: bool = False):
    f = self._fields()
    b, _, _, c_in = checks.check_input(z, self.num_channels, downsampling_factor(f), 'patching_size * 2^levels')
    logsnr = jnp.broadcast_to(jnp.asarray(logsnr, jnp.float32), (b,))
    if labels is not None and not self.num_classes:
      raise ValueError('labels were given but model.num_classes=0 (unconditional model)')

    dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    levels = used_levels(f['channels'], f['drop_top_level'])
    chans = f['channels']
    c_t = f['transformer_channels']
    p = f['patching_size']

    cond = self._conditioning(f, logsnr, labels, kw)

    # Encoder.
    h = layers.space_to_depth(z.astype(dtype), p)
    h = nn.Conv(chans[levels[0]], (3, 3), padding='SAME', name='conv_in', **kw)(h)
    skips = []
    for i in levels:
      for j in range(f['enc_blocks'][i]):
        h = self._block(layers.ResBlock, chans[i], self._drop(i), name=f'enc_{i}_block_{j}', train=train,
                        **kw)(h, cond)
      skips.append(h)
      c_next = chans[i + 1] if i + 1 < len(chans) else c_t
      h = layers.Downsample(c_next, name=f'down_{i}', **kw)(h)

    # Transformer core at the lowest resolution.
    _, th, tw, _ = h.shape
    tokens = h.reshape(b, th * tw, c_t) + layers.sincos_2d(th, tw, c_t).astype(dtype)[None]
    for j in range(f['transformer_blocks']):
      tokens = self._block(layers.TransformerBlock, f['num_heads'], self._drop(len(chans)), f['attention'],
                           name=f'transformer_block_{j}', train=train, **kw)(tokens, cond)
    tokens = nn.LayerNorm(name='transformer_norm', **kw)(tokens)
    h = tokens.reshape(b, th, tw, c_t)

    # Decoder: one skip per level, added after up-sampling.
    for i in reversed(levels):
      h = layers.Upsample(chans[i], name=f'up_{i}', **kw)(h) + skips.pop()
      for j in range(f['dec_blocks'][i]):
        h = self._block(layers.ResBlock, chans[i], self._drop(i), name=f'dec_{i}_block_{j}', train=train,
                        **kw)(h, cond)

    h = nn.GroupNorm(num_groups=layers.num_groups(chans[levels[0]]), name='norm_out', **kw)(h)
    h = nn.swish(h)
    h = nn.Conv(c_in * p * p, (3, 3), padding='SAME', kernel_init=nn.initializers.zeros, name='conv_out',
                **kw)(h)
    return layers.depth_to_space(h, p).astype(jnp.float32)


# The fields a `name='uvit'` sub-config may set, with their defaults (the module's own).
UVIT_DEFAULTS = checks.field_defaults(UViT)


# The pair `sid2.models.register_model` takes (ValueError on bad fields or resolution).
build_uvit, validate_uvit = checks.builders(UViT, resolve_uvit_config, check_resolution)

