"""A small KL-regularised autoencoder (LDM's "KL-f" first stage, Rombach et al. 2022 §3.1; Spectral Diffusion
trains on such latents, supplement Tables 2-3) at downsampling factor 4: 32x32x1 -> 8x8x4 for Fashion-MNIST.

Encoder: 3x3 conv -> [ResBlock, 3x3 stride-2 conv] x 2 -> ResBlock -> 3x3 conv to (μ, log σ²), each [h, w,
latent_channels]. Decoder: 3x3 conv -> [ResBlock, nearest x2 + 3x3 conv] x 2 -> ResBlock -> 3x3 conv to the
image. Loss per example: mean |x - D(z)|² + β mean KL(N(μ, σ²) || N(0, 1)), z = μ + σ ε (reparametrised).
Latents for diffusion are the posterior means μ, stored with `scale_factor` = 1 / std(μ) (LDM's convention,
SPEC §13: the model sees (μ - shift) * scale_factor) and the autoencoder's sha256 (`latents.json`).

Weights: safetensors (flat names, `sid2.export.flatten_params`) + `<file>.json` with the config, step and the
sha256 of the parameters (`sid2.export.params_sha256`), checked on load. Nothing is pickled.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral import layers

FORMAT = 'spectral-kl-autoencoder-v1'
AE_DEFAULTS = dict(channels=(16, 32), latent_channels=4, kl_weight=1e-3, image_channels=1)


def resolve_ae_config(cfg):
  """The autoencoder's fields with defaults; ValueError naming a bad field."""
  cfg = dict(cfg or {})
  unknown = sorted(set(cfg) - set(AE_DEFAULTS))
  if unknown:
    raise ValueError(f'unknown autoencoder field(s) {unknown}; allowed: {sorted(AE_DEFAULTS)}')
  f = dict(AE_DEFAULTS, **cfg)
  ch = f['channels']
  if isinstance(ch, (str, bytes)) or not hasattr(ch, '__len__') or not ch or not all(
      isinstance(c, int) and not isinstance(c, bool) and c >= 4 and c % 4 == 0 for c in ch):
    raise ValueError(f'autoencoder.channels must be a non-empty list of ints >= 4 divisible by 4, got {ch!r}')
  f['channels'] = tuple(int(c) for c in ch)
  for k in ('latent_channels', 'image_channels'):
    if isinstance(f[k], bool) or not isinstance(f[k], int) or f[k] < 1:
      raise ValueError(f'autoencoder.{k} must be an int >= 1, got {f[k]!r}')
  if isinstance(f['kl_weight'], bool) or not isinstance(f['kl_weight'], (int, float)) or f['kl_weight'] < 0:
    raise ValueError(f'autoencoder.kl_weight must be a number >= 0, got {f["kl_weight"]!r}')
  f['kl_weight'] = float(f['kl_weight'])
  return f


def downsampling_factor(fields):
  return 2 ** len(fields['channels'])


class _Res(nn.Module):
  """GroupNorm (>= 4 channels per group) -> swish -> 3x3 conv, twice, plus the identity."""
  channels: int

  @nn.compact
  def __call__(self, x):
    g = layers.norm_groups(self.channels, 4)
    h = nn.Conv(self.channels, (3, 3), padding='SAME')(nn.swish(nn.GroupNorm(num_groups=g)(x)))
    h = nn.Conv(self.channels, (3, 3), padding='SAME')(nn.swish(nn.GroupNorm(num_groups=g)(h)))
    return x + h


class Encoder(nn.Module):
  channels: Sequence[int]
  latent_channels: int

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.channels[0], (3, 3), padding='SAME', name='conv_in')(x)
    for k, c in enumerate(self.channels):
      if h.shape[-1] != c:
        h = nn.Dense(c, name=f'in{k}')(h)
      h = _Res(c, name=f'res{k}')(h)
      h = nn.Conv(c, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name=f'down{k}')(h)
    h = _Res(self.channels[-1], name='res_mid')(h)
    g = layers.norm_groups(h.shape[-1], 4)
    h = nn.Conv(2 * self.latent_channels, (3, 3), padding='SAME', name='conv_out')(
        nn.swish(nn.GroupNorm(num_groups=g, name='norm_out')(h)))
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, jnp.clip(logvar, -20.0, 10.0)


class Decoder(nn.Module):
  channels: Sequence[int]
  image_channels: int

  @nn.compact
  def __call__(self, z):
    chans = tuple(reversed(self.channels))
    h = nn.Conv(chans[0], (3, 3), padding='SAME', name='conv_in')(z)
    h = _Res(chans[0], name='res_mid')(h)
    for k, c in enumerate(chans):
      if h.shape[-1] != c:
        h = nn.Dense(c, name=f'in{k}')(h)
      h = _Res(c, name=f'res{k}')(h)
      h = nn.Conv(c, (3, 3), padding='SAME', name=f'up{k}')(layers.nearest_upsample(h))
    g = layers.norm_groups(h.shape[-1], 4)
    return nn.Conv(self.image_channels, (3, 3), padding='SAME', name='conv_out')(
        nn.swish(nn.GroupNorm(num_groups=g, name='norm_out')(h)))


class KLAutoencoder(nn.Module):
  """encode(x) -> (μ, log σ²); decode(z) -> x̂; __call__(x, rng) -> (x̂, μ, log σ²) with z = μ + σ ε."""
  channels: Sequence[int] = AE_DEFAULTS['channels']
  latent_channels: int = AE_DEFAULTS['latent_channels']
  image_channels: int = AE_DEFAULTS['image_channels']

  def setup(self):
    self.encoder = Encoder(self.channels, self.latent_channels)
    self.decoder = Decoder(self.channels, self.image_channels)

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z):
    return self.decoder(z)

  def __call__(self, x, rng):
    mean, logvar = self.encoder(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.decoder(z), mean, logvar


def build(fields):
  f = resolve_ae_config(fields)
  return KLAutoencoder(f['channels'], f['latent_channels'], f['image_channels'])


def kl_divergence(mean, logvar):
  """Per example [B]: mean over latent elements of KL(N(μ, σ²) || N(0, 1)) = ½(μ² + σ² - 1 - log σ²)."""
  return 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))


def loss_fn(model, params, x, rng, kl_weight):
  """(scalar loss, (reconstruction MSE, KL)): mean over the batch of |x - x̂|² mean + β KL mean."""
  recon, mean, logvar = model.apply({'params': params}, x, rng)
  rec = jnp.mean(jnp.square(recon - x), axis=(1, 2, 3))
  kl = kl_divergence(mean, logvar)
  return jnp.mean(rec + kl_weight * kl), (jnp.mean(rec), jnp.mean(kl))


def init_params(model, image_res, image_channels, seed=0):
  x = jnp.zeros((1, image_res, image_res, image_channels))
  return model.init(jax.random.PRNGKey(seed), x, jax.random.PRNGKey(0))['params']


def train(fields, images, *, steps, batch_size=64, learning_rate=2e-3, seed=0, log=None, log_every=100):
  """Adam on `images` [N, H, W, C] in [-1, 1] for `steps` steps (cosine decay); returns (params, history)."""
  import optax  # pylint: disable=g-import-not-at-top
  f = resolve_ae_config(fields)
  model = build(f)
  images = np.asarray(images, np.float32)
  params = init_params(model, images.shape[1], images.shape[-1], seed)
  opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 10 + 1),
                                                      max(steps, 2)))
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, x, rng):
    (loss, (rec, kl)), grads = jax.value_and_grad(
        lambda p: loss_fn(model, p, x, rng, f['kl_weight']), has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, rec, kl

  rs = np.random.default_rng(seed)
  history = []
  for i in range(steps):
    idx = rs.integers(0, images.shape[0], batch_size)
    params, opt_state, loss, rec, kl = step(params, opt_state, jnp.asarray(images[idx]),
                                            jax.random.PRNGKey(seed * 1_000_003 + i))
    if (i + 1) % log_every == 0 or i + 1 == steps:
      history.append(dict(step=i + 1, loss=float(loss), rec=float(rec), kl=float(kl)))
      if log:
        log(f'autoencoder step {i + 1}/{steps}: loss {float(loss):.5f} rec {float(rec):.5f} kl {float(kl):.3f}')
  return params, history


def _batched(fn, x, batch_size):
  return np.concatenate([np.asarray(fn(jnp.asarray(x[i:i + batch_size])))
                         for i in range(0, x.shape[0], batch_size)], axis=0)


def encode(fields, params, images, batch_size=500):
  """Posterior means μ [N, h, w, latent_channels] of `images` [N, H, W, C]."""
  model = build(fields)
  fn = jax.jit(lambda x: model.apply({'params': params}, x, method=KLAutoencoder.encode)[0])
  return _batched(fn, np.asarray(images, np.float32), batch_size)


def decode(fields, params, latents, batch_size=500):
  """Images x̂ [N, H, W, C] from (unscaled) latents [N, h, w, latent_channels]."""
  model = build(fields)
  fn = jax.jit(lambda z: model.apply({'params': params}, z, method=KLAutoencoder.decode))
  return _batched(fn, np.asarray(latents, np.float32), batch_size)


# ---------------------------------------------------------------------------------------------------------
# Files.

def save(path, fields, params, *, step, extra=None):
  """Writes `path` (safetensors) and `path + '.json'` (format, config, step, sha256, extra); returns the sha."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from sid2 import export  # pylint: disable=g-import-not-at-top
  flat = {k: np.asarray(v) for k, v in export.flatten_params(jax.device_get(params)).items()}
  digest = export.params_sha256(flat)
  os.makedirs(os.path.dirname(os.path.abspath(path)) or '.', exist_ok=True)
  save_file(flat, path, metadata={'format': FORMAT, 'sha256': digest})
  meta = dict(format=FORMAT, config=dict(resolve_ae_config(fields)), step=int(step), sha256=digest)
  meta['config']['channels'] = list(meta['config']['channels'])
  meta.update(extra or {})
  with open(path + '.json', 'w') as fh:
    json.dump(meta, fh, indent=2)
    fh.write('\n')
  return digest


def load(path, sha256=None):
  """(fields, params, meta) from `path`; ValueError if the weights' sha256 differs from the sidecar's (or
  from `sha256` when given)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from sid2 import export  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path) or not os.path.isfile(path + '.json'):
    raise FileNotFoundError(f'autoencoder weights {path} and {path}.json must both exist '
                            f'(python -m experiments.train_autoencoder writes them)')
  with open(path + '.json') as fh:
    meta = json.load(fh)
  if meta.get('format') != FORMAT:
    raise ValueError(f'{path}.json: format {meta.get("format")!r} is not {FORMAT!r}')
  flat = load_file(path)
  digest = export.params_sha256(flat)
  for want, what in ((meta.get('sha256'), f'{path}.json'), (sha256, 'the requested sha256')):
    if want and want != digest:
      raise ValueError(f'autoencoder {path}: parameters have sha256 {digest}, {what} says {want}')
  fields = resolve_ae_config(meta['config'])
  params = jax.tree.map(jnp.asarray, export.unflatten_params(flat))
  return fields, params, meta


@dataclasses.dataclass(frozen=True)
class LatentCodec:
  """Encode/decode between images and the scaled latents the diffusion model sees (SPEC §13 latents.json)."""
  fields: dict
  params: dict
  scale_factor: float
  shift: float
  sha256: str

  def to_latents(self, images):
    return (encode(self.fields, self.params, images) - self.shift) * self.scale_factor

  def to_images(self, latents):
    return np.clip(decode(self.fields, self.params, np.asarray(latents) / self.scale_factor + self.shift),
                   -1.0, 1.0)


def write_latents(directory, split, latents, labels, *, scale_factor, shift, ae_sha256, ae_path=''):
  """Writes `<directory>/<split>.safetensors` (latents float32, labels int32) and latents.json with the
  scale, shift and the autoencoder's sha256 (spectral.latents reads them)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  tensors = dict(latents=np.ascontiguousarray(latents, np.float32))
  if labels is not None:
    tensors['labels'] = np.ascontiguousarray(labels, np.int32)
  save_file(tensors, os.path.join(directory, f'{split}.safetensors'))
  meta = dict(scale_factor=float(scale_factor), shift=float(shift),
              autoencoder=dict(sha256=ae_sha256, path=os.path.abspath(ae_path) if ae_path else ''))
  with open(os.path.join(directory, 'latents.json'), 'w') as fh:
    json.dump(meta, fh, indent=2)
    fh.write('\n')
