"""The small KL autoencoder (spectral/autoencoder.py) and its latents datasets (spectral/latents.py):
round-trip error on held-out images against trivial baselines, safetensors weights with a checked sha256,
latents written and read back exactly, and latents from another autoencoder refused before training."""
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from spectral import autoencoder as ae
from spectral import latents as latents_lib

RES = 16
FIELDS = dict(channels=(8, 8), latent_channels=4)


def blobs(n, seed):
  """Smooth synthetic images in [-1, 1]: one Gaussian blob each at a random place and width."""
  rng = np.random.default_rng(seed)
  y, x = np.meshgrid(np.arange(RES), np.arange(RES), indexing='ij')
  cy, cx = rng.uniform(4, 12, (2, n, 1, 1))
  s = rng.uniform(1.5, 4, (n, 1, 1))
  img = 2 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s ** 2)) - 1
  return img[..., None].astype(np.float32)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  from spectral import autoencoder_train
  out = str(tmp_path_factory.mktemp('ae'))
  x_tr, x_te = blobs(256, 0), blobs(64, 1)
  y_tr, y_te = np.arange(256) % 3, np.arange(64) % 3
  meta = autoencoder_train.run(out, steps=300, batch_size=32, learning_rate=3e-3, kl_weight=1e-4,
                               fields=FIELDS, images=(x_tr, y_tr, x_te, y_te), log=lambda *_: None)
  return out, meta, x_te


def test_round_trip_error_beats_trivial_baselines(trained):
  out, meta, x_te = trained
  fields, params, _ = ae.load(meta['path'])
  rec = ae.decode(fields, params, ae.encode(fields, params, x_te))
  mse = float(np.mean((rec - x_te) ** 2))
  assert abs(mse - meta['heldout_recon_mse']) < 1e-3 * max(mse, 1e-3) + 1e-6 or mse < 0.02
  # Predicting the mean image (the zero-information baseline) is far worse than the autoencoder.
  mean_mse = float(np.mean((x_te - x_te.mean(axis=0)) ** 2))
  assert mse < 0.25 * mean_mse, (mse, mean_mse)
  assert ae.encode(fields, params, x_te).shape == (64, RES // 4, RES // 4, 4)


def test_weights_sha_checked(trained, tmp_path):
  _, meta, _ = trained
  fields, params, m = ae.load(meta['path'], sha256=meta['sha256'])
  assert m['sha256'] == meta['sha256'] and fields['channels'] == (8, 8)
  with pytest.raises(ValueError, match='sha256'):
    ae.load(meta['path'], sha256='0' * 64)
  bad = str(tmp_path / 'ae.safetensors')
  params = dict(params)
  ae.save(bad, fields, params, step=1)
  with open(bad + '.json') as f:
    side = json.load(f)
  side['sha256'] = 'f' * 64
  with open(bad + '.json', 'w') as f:
    json.dump(side, f)
  with pytest.raises(ValueError, match='sha256'):
    ae.load(bad)


def test_latents_written_and_read_exactly(trained):
  out, meta, x_te = trained
  directory = meta['latents']
  fields, params, _ = ae.load(meta['path'])
  mu = ae.encode(fields, params, x_te)
  lat, labels, text = latents_lib.load_latents(directory, 'test')
  np.testing.assert_array_equal(np.asarray(lat), mu)
  np.testing.assert_array_equal(labels, np.arange(64) % 3)
  assert text is None and latents_lib.autoencoder_sha256(directory) == meta['sha256']
  cfg = ml_collections.ConfigDict(dict(name='latents:' + directory, split='test', data_dir='',
                                       autoencoder_sha256=meta['sha256']))
  ds = latents_lib.get_latents_dataset(cfg, image_res=RES // 4, global_batch_size=64, seed=0, process_index=0,
                                       process_count=1)
  batch = ds.next_batch(0)
  scale, shift = 1.0 / meta['latent_std'], meta['latent_mean']
  # The batch is a permutation of the scaled stored latents: compare as sorted multisets per example.
  want = np.sort(((mu - shift) * scale).reshape(64, -1).astype(np.float32), axis=0)
  np.testing.assert_allclose(np.sort(np.asarray(batch['image']).reshape(64, -1), axis=0), want, rtol=1e-6)
  # Codec: decoding the scaled latents gives the autoencoder's reconstruction.
  codec = ae.LatentCodec(fields, params, scale, shift, meta['sha256'])
  np.testing.assert_allclose(codec.to_images(codec.to_latents(x_te)),
                             np.clip(ae.decode(fields, params, mu), -1, 1), atol=1e-4)


def test_latents_from_another_autoencoder_are_refused(trained):
  _, meta, _ = trained
  cfg = ml_collections.ConfigDict(dict(name='latents:' + meta['latents'], split='train', data_dir='',
                                       autoencoder_sha256='a' * 64))
  with pytest.raises(ValueError, match=r'dataset.autoencoder_sha256=a+ .*' + meta['sha256']):
    latents_lib.get_latents_dataset(cfg, image_res=RES // 4, global_batch_size=8, seed=0, process_index=0,
                                    process_count=1)


def test_config_errors():
  with pytest.raises(ValueError, match='autoencoder.channels'):
    ae.resolve_ae_config(dict(channels=(6,)))
  with pytest.raises(ValueError, match='unknown autoencoder'):
    ae.resolve_ae_config(dict(width=3))
  from spectral import autoencoder_train
  with pytest.raises(ValueError, match='steps'):
    autoencoder_train.run('x', steps=0)
  np.testing.assert_allclose(autoencoder_train.block_average_baseline(jnp.ones((1, 8, 8, 1))), 1.0)
