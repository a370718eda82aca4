"""Trains the small KL autoencoder (`spectral.autoencoder`, f = 4: 32x32x1 -> 8x8x4) on Fashion-MNIST and
encodes the train and test splits to a `latents:<dir>` dataset (issue 12; Spectral Diffusion's LDM setting).
The command is `python -m experiments.train_autoencoder`; `experiments.spectral_study` calls `run` too.

`run(out, ...)` writes <out>/autoencoder.safetensors (+ .json: config, step, sha256, held-out reconstruction
MSE and that of the trivial baseline `block_average_baseline`, a 4x4 block average upsampled back) and
<out>/latents/{train,test}.safetensors with latents.json (scale_factor = 1 / std of the training latents,
shift = their mean, the autoencoder's sha256).
"""
from __future__ import annotations

import os
import time

import numpy as np

from spectral import autoencoder as ae


def block_average_baseline(images, factor=4):
  """The trivial f-fold compressor: average f x f blocks, repeat back (its MSE bounds a useful autoencoder)."""
  n, h, w, c = images.shape
  small = images.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
  return np.repeat(np.repeat(small, factor, axis=1), factor, axis=2)


def run(out, *, steps=1000, batch_size=64, learning_rate=2e-3, kl_weight=1e-3, seed=0, num_train=60000,
        num_test=10000, data_dir=None, fields=None, log=print, images=None):
  """Trains, writes the weights and the latents; returns the sidecar dict. `images` = (train x, train labels,
  test x, test labels) overrides Fashion-MNIST (tests)."""
  from sid2 import data  # pylint: disable=g-import-not-at-top
  if not out:
    raise ValueError('out must name the output folder')
  for name, v in (('steps', steps), ('batch_size', batch_size), ('num_train', num_train), ('num_test', num_test)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f'{name} must be a positive integer; got {v!r}')
  fields = ae.resolve_ae_config(dict(fields or {}, kl_weight=kl_weight))
  if images is None:
    tr, tr_lab = data.load_fashion_mnist(data_dir, 'train')
    te, te_lab = data.load_fashion_mnist(data_dir, 'test')
    images = (data.fit_fashion_resolution(tr[:num_train], 32), tr_lab[:num_train],
              data.fit_fashion_resolution(te[:num_test], 32), te_lab[:num_test])
  x_train, y_train, x_test, y_test = images
  t0 = time.time()
  params, history = ae.train(fields, x_train, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                             seed=seed, log=log)
  train_seconds = time.time() - t0
  held = x_test[:2000]
  mu = ae.encode(fields, params, held)
  rec = ae.decode(fields, params, mu)
  rec_mse = float(np.mean((rec - held) ** 2))
  base_mse = float(np.mean((block_average_baseline(held, ae.downsampling_factor(fields)) - held) ** 2))
  z_train = ae.encode(fields, params, x_train)
  shift, std = float(z_train.mean()), float(z_train.std())
  path = os.path.join(out, 'autoencoder.safetensors')
  extra = dict(train_seconds=round(train_seconds, 1), history=history, heldout_recon_mse=rec_mse,
               block_average_mse=base_mse, latent_mean=shift, latent_std=std,
               latent_shape=list(z_train.shape[1:]), train=dict(steps=steps, batch_size=batch_size,
                                                                learning_rate=learning_rate, seed=seed))
  digest = ae.save(path, fields, params, step=steps, extra=extra)
  lat_dir = os.path.join(out, 'latents')
  ae.write_latents(lat_dir, 'train', z_train, y_train, scale_factor=1.0 / std, shift=shift, ae_sha256=digest,
                   ae_path=path)
  ae.write_latents(lat_dir, 'test', ae.encode(fields, params, x_test), y_test, scale_factor=1.0 / std,
                   shift=shift, ae_sha256=digest, ae_path=path)
  log(f'autoencoder {path}: sha256 {digest}, held-out reconstruction MSE {rec_mse:.5f} (4x4 block average '
      f'{base_mse:.5f}), latents {tuple(z_train.shape[1:])} std {std:.3f}; {train_seconds:.0f} s; '
      f'latents in {lat_dir}')
  return dict(extra, sha256=digest, path=path, latents=lat_dir)
