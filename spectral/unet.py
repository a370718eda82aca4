"""The (wavelet-gated) UNet of Spectral Diffusion (arXiv 2211.17106; supplement Tables 4-7; SPEC §13).

Stage k = 1..n of the way down (width c_k at resolution R_k = R / 2^(k-1)): blocks_k x [ResBlock, then
Self-Attn(+Cross-Attn) where heads_k > 0], keep the feature as skip_k, down-sample (WG-Down or a strided
conv) to R_k / 2 with c_k channels. Mid stage at R / 2^n: ResBlock, Self-Attn(+Cross-Attn), ResBlock
(width `mid_channels`). Stage k of the way up, k = n..1, at R_k / 2: blocks_k x [ResBlock, attention],
up-sample (WG-Up or nearest + conv) to R_k with c_k channels, concatenate skip_k (SPEC §13, ours: "Down_k's
features before down-sampling pair with Up_k's output after WG-Up"); the concatenation feeds Up_(k-1), and
after Up_1 a GroupNorm, swish and 3x3 conv give the output. A ResBlock whose input width differs from its
own is preceded by a 1x1 conv (so sid2's C -> C ResBlock is reused). The tables' "Input Size" column is
exactly these resolutions: Up_k runs at Down_(k+1)'s resolution.

Feature taps (SPEC §13, supplement §3.2): `output` (the model output), `feat-up1` (right after the last
up-sampling, [B, R, R, c_1]), `feat-up2` (after the second-last, [B, R/2, R/2, c_2]) and `feat-down4`
(after the last down-sampling, [B, R/2^n, R/2^n, c_n]). `return_features=True` returns (output, {tap:
feature}); taps listed in `proj_taps` come out through the student's 1x1 projections Pi_i to
`proj_channels` (the teacher's widths), which are part of this model's parameters.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sid2 import schedules
from sid2.models import checks
from sid2.models import layers as sid2_layers
from spectral import layers

DTYPES = checks.DTYPES
DOWNSAMPLE = ('wavelet', 'plain')
CONDITIONING = ('none', 'class', 'text')
TIME_EMBEDDINGS = ('logsnr', 'ddpm_timestep')
TAPS = ('output', 'feat-up1', 'feat-up2', 'feat-down4')
PROJ_TAPS = TAPS[1:]  # `output` is compared as is (Pi = identity, SPEC §13).
MODEL_NAMES = ('wg_unet', 'unet')


def _int_tuple(name, value, minimum):
  """A list/tuple of ints >= minimum as a tuple, else ValueError naming the field."""
  if isinstance(value, (str, bytes)) or not hasattr(value, '__len__'):
    raise ValueError(f'model.{name} must be a list/tuple of ints, got {value!r}')
  out = tuple(value)
  if not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in out):
    raise ValueError(f'model.{name} must contain ints >= {minimum}, got {value!r}')
  return out


def _int(f, name, minimum):
  if isinstance(f[name], bool) or not isinstance(f[name], int) or f[name] < minimum:
    raise ValueError(f'model.{name} must be an int >= {minimum}, got {f[name]!r}')


def _choice(f, name, allowed):
  if f[name] not in allowed:
    raise ValueError(f'model.{name} must be one of {allowed}, got {f[name]!r}')


def resolve_unet_config(model_config):
  """Checks a UNet sub-config (name 'wg_unet' or 'unet') and returns its fields, defaults filled in.

  'unet' is the plain UNet: its `downsample` defaults to, and must be, 'plain'. Raises ValueError for
  unknown fields and bad values, naming the field and the allowed values.
  """
  cfg = checks.as_dict(model_config)
  name = cfg.pop('name', 'wg_unet')
  if name not in MODEL_NAMES:
    raise ValueError(f'model.name must be one of {MODEL_NAMES} for the spectral UNet, got {name!r}')
  checks.check_known_fields(cfg, UNET_DEFAULTS, name)
  f = dict(UNET_DEFAULTS, downsample='plain' if name == 'unet' else 'wavelet')
  f.update(cfg)
  if name == 'unet' and f['downsample'] != 'plain':
    raise ValueError(f"model.downsample must be 'plain' for model.name=unet (use model.name=wg_unet for "
                     f"the wavelet-gated UNet), got {f['downsample']!r}")
  f['channels'] = _int_tuple('channels', f['channels'], 1)
  f['blocks'] = _int_tuple('blocks', f['blocks'], 0)
  f['heads'] = _int_tuple('heads', f['heads'], 0)
  n = checks.check_per_level(f, ('channels', 'blocks', 'heads'), 'stage')
  for name_ in ('mid_channels', 'mid_heads', 'num_classes', 'emb_channels'):
    _int(f, name_, 0)
  _int(f, 'gate_reduction', 1)
  _int(f, 'norm_group_channels', 1)
  _int(f, 'final_blocks', 0)
  _int(f, 'context_dim', 1)
  if f['mid_channels'] == 0:
    f['mid_channels'] = f['channels'][-1]
  for k, (c, h) in enumerate(zip(f['channels'], f['heads'])):
    if h and c % h:
      raise ValueError(f'model.heads[{k}]={h} must divide model.channels[{k}]={c} (0: no attention)')
  if f['mid_heads'] and f['mid_channels'] % f['mid_heads']:
    raise ValueError(f'model.mid_heads={f["mid_heads"]} must divide the mid-stage width '
                     f'model.mid_channels={f["mid_channels"]}')
  _choice(f, 'downsample', DOWNSAMPLE)
  _choice(f, 'gate', layers.GATE_MODES)
  _choice(f, 'gate_init', layers.GATE_INITS)
  _choice(f, 'conditioning', CONDITIONING)
  _choice(f, 'time_embedding', TIME_EMBEDDINGS)
  _choice(f, 'attention', sid2_layers.ATTENTION_IMPLEMENTATIONS)
  if f['conditioning'] == 'class' and f['num_classes'] < 1:
    raise ValueError("model.num_classes must be >= 1 with model.conditioning='class'")
  if f['conditioning'] != 'class' and f['num_classes']:
    raise ValueError(f"model.num_classes must be 0 unless model.conditioning='class' (labels are class "
                     f"indices only then), got {f['num_classes']} with conditioning={f['conditioning']!r}")
  if f['conditioning'] != 'none' and not (any(f['heads']) or f['mid_heads']):
    raise ValueError(f"model.conditioning={f['conditioning']!r} enters through cross-attention, so some "
                     f"stage needs attention: model.heads or model.mid_heads must be non-zero")
  checks.check_dropout(f)
  taps = f['proj_taps']
  if isinstance(taps, str) or not hasattr(taps, '__len__'):
    raise ValueError(f'model.proj_taps must be a list/tuple of tap names from {PROJ_TAPS}, got {taps!r}')
  f['proj_taps'] = tuple(taps)
  for tap in f['proj_taps']:
    if tap not in PROJ_TAPS:
      raise ValueError(f'model.proj_taps entries must be in {PROJ_TAPS} (`output` needs no projection), '
                       f'got {tap!r}')
  if len(set(f['proj_taps'])) != len(f['proj_taps']):
    raise ValueError(f'model.proj_taps has repeated entries: {f["proj_taps"]}')
  if 'feat-up2' in f['proj_taps'] and n < 2:
    raise ValueError('model.proj_taps has feat-up2 but a 1-stage UNet has only one up-sampling')
  f['proj_channels'] = _int_tuple('proj_channels', f['proj_channels'], 1)
  if len(f['proj_channels']) != len(f['proj_taps']):
    raise ValueError(f'model.proj_channels (teacher widths) must have one entry per model.proj_taps entry, '
                     f'got {f["proj_channels"]} for {f["proj_taps"]}')
  checks.check_dtypes(f)
  return f


def downsampling_factor(fields):
  """2^n: every stage halves the resolution once."""
  return 2 ** len(fields['channels'])


def check_resolution(fields, image_res):
  """ValueError unless image_res is divisible by 2^(number of stages)."""
  factor = downsampling_factor(fields)
  if isinstance(image_res, bool) or not isinstance(image_res, int) or image_res < 1 or image_res % factor:
    raise ValueError(f'image_res={image_res!r} must be divisible by 2^len(model.channels) = {factor} '
                     f'(model.channels={fields["channels"]}: one down-sampling per stage)')


def emb_width(fields):
  """Width E of the time embedding: `emb_channels`, or 4 c_1 when 0 (LDM's time_embed_dim)."""
  return fields['emb_channels'] or 4 * fields['channels'][0]


def time_features(logsnr, dim, kind):
  """Sinusoidal features of the noise level [B] -> [B, dim].

  'logsnr': of λ itself (sid2's embedding, periods 0.5..1000). 'ddpm_timestep': of the DDPM step index
  t = 1000 * linear_beta_inverse(λ) with LDM's periods 2π..2π·10^4 (SPEC §1; for the linear-β schedule of
  Tables 2-3 this is exactly the step LDM embeds; for another schedule a monotone reparametrisation of λ).
  """
  if kind == 'logsnr':
    return sid2_layers.sinusoidal_embedding(logsnr, dim)
  step = 1000.0 * schedules.linear_beta_inverse(logsnr)
  return sid2_layers.sinusoidal_embedding(step, dim, min_period=2 * math.pi, max_period=2 * math.pi * 1e4)


class UNet(nn.Module):
  """(Wavelet-gated) UNet denoiser: (z [B,H,W,C], logsnr [B], labels) -> output [B,H,W,C] float32.

  Fields (the model sub-config sets them; see the module docstring for the layout):
    channels, blocks, heads: per stage (top first) width, ResBlocks, attention heads (0: no attention;
      head width channels/heads, 32 in Tables 4-7). The up stages mirror the down stages.
    mid_channels, mid_heads: mid-stage width (0: channels[-1]) and heads (0: no attention).
    downsample: 'wavelet' (WG-Down / WG-Up) or 'plain' (3x3 stride-2 conv / nearest + 3x3 conv).
    gate, gate_reduction: WG gates 'band' ([B, 4]), 'channel' ([B, 4, C]) or 'none' (= 1); FFN hidden
      width C_in / gate_reduction. gate_init: 'lowpass' (g_LL = 1/2, details 0.05: WG-Down starts as the
      2x2 average, WG-Up as nearest up-sampling of the LL chunk) or 'default' (all gates ~1/2: decimation).
    norm_group_channels: GroupNorm groups = largest divisor of C <= 32 with >= this many channels per
      group (1: gcd(C, 32), the first reading). final_blocks: ResBlocks (width c_1) after the top skip.
    conditioning: 'none'; 'class' (labels [B] int in [0, num_classes), null class = num_classes, embedded
      by nn.Embed(num_classes + 1, context_dim) as a 1-token sequence; labels=None = all null); 'text'
      (labels = embeddings [B, S, context_dim], e.g. CLIP [B, 77, 768], or {'text': embeddings, 'keep':
      bool [B]} where keep=False rows get the null context (the train step's guidance dropout, fed from
      batch['text']); None = a learned 1-token null context). The context enters every attention stage through cross-attention (Tables 6-7).
    time_embedding: 'logsnr' or 'ddpm_timestep' (see `time_features`); emb_channels: its width (0: 4 c_1).
    dropout: in every ResBlock. proj_taps, proj_channels: the student's 1x1 projections Pi_i (SPEC §13).
    attention: 'xla' | 'cudnn' | 'auto' | 'naive'. dtype / param_dtype: compute / parameter dtype names.
    num_channels: image (latent) channels, set by `get_model` from the data; 0 accepts any.
  Output and last residual layers are zero-initialised (the network starts at output 0).
  """
  channels: Sequence[int] = (64, 128, 192, 256)
  blocks: Sequence[int] = (3, 3, 3, 3)
  heads: Sequence[int] = (0, 4, 6, 8)
  mid_channels: int = 0
  mid_heads: int = 8
  downsample: str = 'wavelet'
  gate: str = 'band'
  gate_reduction: int = 4
  gate_init: str = 'lowpass'  # SPEC §13 (ours, amended): WG-Down starts as the anti-aliased LL band.
  norm_group_channels: int = 4  # ours: >= 4 channels per GroupNorm group (1: sid2's gcd(C, 32)).
  final_blocks: int = 0  # ours: ResBlocks at full resolution after the last up-sampling + skip.
  conditioning: str = 'none'
  num_classes: int = 0
  context_dim: int = 512
  time_embedding: str = 'logsnr'
  emb_channels: int = 0
  dropout: float = 0.0
  proj_taps: Sequence[str] = ()
  proj_channels: Sequence[int] = ()
  attention: str = 'xla'
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  num_channels: int = 0

  def fields(self):
    """The config fields of this module, checked (ValueError before any compute)."""
    return resolve_unet_config({k: getattr(self, k) for k in UNET_DEFAULTS})

  def _context(self, f, labels, batch, kw):
    """The cross-attention sequence [B, S, context_dim] (None when unconditional)."""
    if f['conditioning'] == 'none':
      if labels is not None:
        raise ValueError("labels were given but model.conditioning='none' (unconditional model)")
      return None
    if f['conditioning'] == 'class':
      if labels is None:
        labels = jnp.full((batch,), f['num_classes'], jnp.int32)
      labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (batch,))
      return nn.Embed(f['num_classes'] + 1, f['context_dim'], name='class_embed', **kw)(labels)[:, None]
    null = self.param('null_context', nn.initializers.normal(0.02), (1, 1, f['context_dim']),
                      kw['param_dtype']).astype(kw['dtype'])
    if labels is None:
      return jnp.broadcast_to(null, (batch, 1, f['context_dim']))
    keep = None
    if isinstance(labels, dict):
      unknown = sorted(set(labels) - {'text', 'keep'})
      if unknown or 'text' not in labels:
        raise ValueError("model.conditioning='text' takes labels = embeddings [B, S, context_dim] or a dict "
                         f"{{'text': embeddings, 'keep': bool [B]}}; got keys {sorted(labels)}")
      labels, keep = labels['text'], labels.get('keep')
    labels = jnp.asarray(labels)
    if labels.ndim != 3 or labels.shape[0] != batch or labels.shape[2] != f['context_dim']:
      raise ValueError(f"model.conditioning='text' takes labels = embeddings [B={batch}, S, "
                       f"context_dim={f['context_dim']}], got shape {labels.shape}")
    text = labels.astype(kw['dtype'])
    if keep is None:
      return text
    # Dropped examples attend to the null token repeated S times: attention over S identical keys/values
    # equals attention over one, so this is the unconditional branch (classifier-free guidance training).
    keep = jnp.broadcast_to(jnp.asarray(keep, bool), (batch,))
    return jnp.where(keep[:, None, None], text, jnp.broadcast_to(null, text.shape))

  @nn.compact
  def __call__(self, z, logsnr, labels: Optional[Any] = None, train: bool = False,
               return_features: bool = False):
    f = self.fields()
    b, _, _, c_in = checks.check_input(z, self.num_channels, downsampling_factor(f), '2^len(model.channels)')
    dtype, param_dtype = jnp.dtype(f['dtype']), jnp.dtype(f['param_dtype'])
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    logsnr = jnp.broadcast_to(jnp.asarray(logsnr, jnp.float32), (b,))
    chans, n = f['channels'], len(f['channels'])
    wavelet = f['downsample'] == 'wavelet'

    # Time embedding -> `cond` for every ResBlock's scale/shift; the class/text context for cross-attention.
    e = emb_width(f)
    emb = nn.Dense(e, name='emb_dense0', **kw)(time_features(logsnr, chans[0], f['time_embedding']))
    cond = nn.swish(nn.Dense(e, name='emb_dense1', **kw)(nn.swish(emb)))
    context = self._context(f, labels, b, kw)

    def res(h, c, name):
      if h.shape[-1] != c:
        h = nn.Dense(c, name=f'{name}_in', **kw)(h)  # 1x1 conv to the block's width.
      groups = layers.norm_groups(c, f['norm_group_channels'])
      return sid2_layers.ResBlock(c, f['dropout'], name=name, groups=groups, **kw)(h, cond, train=train)

    def attn(h, heads, name):
      if not heads:
        return h
      return layers.AttentionBlock(heads, f['attention'], min_group_channels=f['norm_group_channels'],
                                   name=name, **kw)(h, context)

    gate_kw = dict(gate=f['gate'], reduction=f['gate_reduction'], gate_init=f['gate_init'], **kw)

    def down(h, k):
      if wavelet:
        return layers.WGDown(name=f'down{k}_sample', **gate_kw)(h)
      return layers.PlainDown(h.shape[-1], name=f'down{k}_sample', **kw)(h)

    def up(h, c, k):
      if wavelet:
        return layers.WGUp(c, name=f'up{k}_sample', **gate_kw)(h)
      return layers.PlainUp(c, name=f'up{k}_sample', **kw)(h)

    features = {}
    h = nn.Conv(chans[0], (3, 3), padding='SAME', name='conv_in', **kw)(z.astype(dtype))
    skips = []
    for k in range(1, n + 1):
      for j in range(f['blocks'][k - 1]):
        h = res(h, chans[k - 1], f'down{k}_res{j}')
        h = attn(h, f['heads'][k - 1], f'down{k}_attn{j}')
      skips.append(h)
      h = down(h, k)
    features['feat-down4'] = h

    h = res(h, f['mid_channels'], 'mid_res0')
    h = attn(h, f['mid_heads'], 'mid_attn')
    h = res(h, f['mid_channels'], 'mid_res1')

    for k in range(n, 0, -1):
      for j in range(f['blocks'][k - 1]):
        h = res(h, chans[k - 1], f'up{k}_res{j}')
        h = attn(h, f['heads'][k - 1], f'up{k}_attn{j}')
      h = up(h, chans[k - 1], k)
      if k <= 2:
        features[f'feat-up{k}'] = h
      h = jnp.concatenate([h, skips.pop()], axis=-1)
    for j in range(f['final_blocks']):
      h = res(h, chans[0], f'final_res{j}')

    h = nn.GroupNorm(num_groups=layers.norm_groups(h.shape[-1], f['norm_group_channels']), name='norm_out',
                     **kw)(h)
    h = nn.Conv(c_in, (3, 3), padding='SAME', kernel_init=nn.initializers.zeros, name='conv_out',
                **kw)(nn.swish(h))
    out = h.astype(jnp.float32)
    if not (return_features or self.is_initializing()):
      return out
    for tap, c in zip(f['proj_taps'], f['proj_channels']):
      features[tap] = nn.Dense(c, name='proj_' + tap.replace('-', '_'), **kw)(features[tap])
    features = {k: v.astype(jnp.float32) for k, v in features.items()}
    features['output'] = out
    return (out, features) if return_features else out


# The fields a 'wg_unet' / 'unet' sub-config may set (besides `name`), with their defaults: the module's own
# (Table 4's student).
UNET_DEFAULTS = checks.field_defaults(UNet)


# The pair `sid2.models.register_model` takes (ValueError on bad fields or resolution).
build_unet, validate_unet = checks.builders(UNet, resolve_unet_config, check_resolution)


def tap_shapes(model, image_res, num_channels):
  """{tap: ShapeDtypeStruct} of `model`'s features for one image (no parameters are allocated)."""
  z = jax.ShapeDtypeStruct((1, image_res, image_res, num_channels), jnp.float32)
  logsnr = jax.ShapeDtypeStruct((1,), jnp.float32)

  def run(z, logsnr):
    variables = model.init(jax.random.PRNGKey(0), z, logsnr, None)
    return model.apply(variables, z, logsnr, None, return_features=True)[1]
  return jax.eval_shape(run, z, logsnr)

