"""Pre-computed latents datasets (spectral/latents.py): .npy and safetensors, labels, scaling, positions."""
import json
import os

import ml_collections
import numpy as np
import pytest

from spectral import latents


def write_npy(directory, n=10, res=4, ch=3, labels=True, split='train'):
  os.makedirs(directory, exist_ok=True)
  x = np.random.default_rng(0).standard_normal((n, res, res, ch)).astype(np.float16)
  np.save(os.path.join(directory, f'{split}.npy'), x)
  if labels:
    np.save(os.path.join(directory, f'{split}_labels.npy'), (np.arange(n) % 3).astype(np.int64))
  return x


def dataset_config(root, name='lat', **kw):
  fields = dict(name=f'latents:{name}', split='train', data_dir=str(root), shuffle_buffer=1, num_classes=0)
  fields.update(kw)
  return ml_collections.ConfigDict(fields)


def make(cfg, batch=4, seed=0, process_index=0, process_count=1, res=4):
  return latents.get_latents_dataset(cfg, image_res=res, global_batch_size=batch, seed=seed,
                                     process_index=process_index, process_count=process_count)


def test_npy_batches_are_deterministic_and_resumable(tmp_path):
  x = write_npy(tmp_path / 'lat')
  ds = make(dataset_config(tmp_path))
  assert (ds.num_classes, ds.num_channels, ds.per_process_batch_size) == (3, 3, 4)
  b0, b1 = ds.next_batch(0), ds.next_batch(1)
  assert b0['image'].dtype == np.float32 and b0['image'].shape == (4, 4, 4, 3)
  assert b0['label'].dtype == np.int32
  # Each batch is a subset of the stored latents with their labels, and an epoch visits every example once.
  stored = {x[i].astype(np.float32).tobytes(): i % 3 for i in range(10)}
  seen = [im.tobytes() for b in (b0, b1) for im in b['image']]
  assert len(set(seen)) == 8 and all(s in stored for s in seen)
  assert [stored[s] for s in seen] == list(b0['label']) + list(b1['label'])
  state = ds.get_state()
  again = make(dataset_config(tmp_path))
  again.set_state(state)
  np.testing.assert_array_equal(again.next_batch(2)['image'], ds.next_batch(2)['image'])
  # Two processes split the global batch.
  parts = [make(dataset_config(tmp_path), process_index=p, process_count=2).next_batch(0) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([p['image'] for p in parts]), b0['image'])


def test_safetensors_scale_and_shift(tmp_path):
  from safetensors.numpy import save_file
  d = tmp_path / 'st'
  os.makedirs(d)
  x = np.full((6, 8, 8, 4), 3.0, np.float32)
  save_file({'latents': x}, str(d / 'train.safetensors'))
  with open(d / 'latents.json', 'w') as f:
    json.dump({'scale_factor': 0.5, 'shift': 1.0}, f)
  ds = make(dataset_config(tmp_path, 'st'), batch=2, res=8)
  assert ds.num_classes == 0 and ds.num_channels == 4
  b = ds.next_batch(0)
  np.testing.assert_array_equal(b['image'], 1.0)  # (3 - 1) * 0.5
  np.testing.assert_array_equal(b['label'], 0)


def test_errors_name_the_problem(tmp_path):
  write_npy(tmp_path / 'lat')
  with pytest.raises(ValueError, match='image_res=8'):
    make(dataset_config(tmp_path), res=8)
  with pytest.raises(ValueError, match='dataset.num_classes=2'):
    make(dataset_config(tmp_path, num_classes=2))
  with pytest.raises(ValueError, match="latents:<folder>"):
    latents.latents_dir(ml_collections.ConfigDict(dict(name='latents:')))
  with pytest.raises(FileNotFoundError, match='dataset.split'):
    make(ml_collections.ConfigDict(dict(name='latents:lat', split='test', data_dir=str(tmp_path))))
  np.save(tmp_path / 'lat' / 'train.npy', np.zeros((3, 4, 4), np.float32))
  with pytest.raises(ValueError, match=r'\[N, h, w, c\]'):
    make(dataset_config(tmp_path))
  # Pickled object arrays are refused (allow_pickle=False).
  np.save(tmp_path / 'lat' / 'train.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
  with pytest.raises(ValueError, match='pickle'):
    make(dataset_config(tmp_path))


def test_text_embeddings_feed_a_text_conditioned_model(tmp_path):
  """<split>_text.npy arrives as batch['text'] and a text-conditioned WG-UNet trains on it end to end."""
  from sid2 import trainer
  from tests import train_utils
  x = write_npy(tmp_path / 'lat', n=12, res=8, ch=4, labels=False)
  text = np.random.default_rng(1).standard_normal((12, 5, 6)).astype(np.float32)
  np.save(tmp_path / 'lat' / 'train_text.npy', text)
  ds = make(dataset_config(tmp_path), res=8)
  b = ds.next_batch(0)
  assert b['text'].shape == (4, 5, 6) and b['text'].dtype == np.float32
  stored = {x[i].astype(np.float32).tobytes(): i for i in range(12)}
  for image, t in zip(b['image'], b['text']):
    np.testing.assert_array_equal(t, text[stored[image.tobytes()]])
  np.save(tmp_path / 'lat' / 'train_text.npy', text[:5])
  with pytest.raises(ValueError, match='text embeddings'):
    make(dataset_config(tmp_path), res=8)
  np.save(tmp_path / 'lat' / 'train_text.npy', text)

  config = train_utils.tiny_config()
  config.image_res = 8
  config.num_channels = 4
  config.dataset = dataset_config(tmp_path)
  config.model = ml_collections.ConfigDict(dict(name='wg_unet', channels=(8, 8), blocks=(1, 1), heads=(0, 2),
                                                mid_heads=2, conditioning='text', context_dim=6))
  config.total_steps = 2
  config.sampler.num_samples = 2  # text-guided samples from the first rows' embeddings
  config.sampler.num_steps = 2
  config.sampler.guidance = 1.0
  config.eval_every = 2
  config.checkpoint_every = 2
  trainer.train_and_evaluate(config, str(tmp_path / 'work'))
  assert os.path.isdir(tmp_path / 'work' / 'checkpoints')
  assert os.path.exists(tmp_path / 'work' / 'samples' / 'step_2.png')
