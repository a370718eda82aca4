"""Image-folder and zip datasets: index, labels, preprocessing, flips, determinism, bad input, training."""
import json
import os
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

from sid2 import data, trainer
from sid2.data import folder as folder_lib
from tests.train_utils import tiny_config, flat_params


def _write_pngs(root, sizes=((20, 24), (16, 16), (30, 18)), classes=('cat', 'dog'), per_class=4, mode='RGB'):
  rng = np.random.default_rng(0)
  c = 3 if mode == 'RGB' else 1
  for ci, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      h, w = sizes[i % len(sizes)]
      arr = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
      Image.fromarray(arr.squeeze(-1) if c == 1 else arr, mode=mode).save(os.path.join(root, name, f'{i}.png'))
  return root


def _zip(folder, path):
  with zipfile.ZipFile(path, 'w') as z:
    for d, _, files in os.walk(folder):
      for f in files:
        full = os.path.join(d, f)
        z.write(full, os.path.relpath(full, folder))
  return path


def _ds(name, **kw):
  cfg = dict(name=name, **{k: v for k, v in kw.items() if k not in ('batch', 'pi', 'pc')})
  return data.get_dataset(cfg, image_res=16, global_batch_size=kw.get('batch', 4), seed=3,
                          process_index=kw.get('pi', 0), process_count=kw.get('pc', 1))


def test_folder_index_labels_and_determinism(tmp_path):
  root = _write_pngs(str(tmp_path / 'imgs'))
  ds = _ds(f'folder:{root}')
  assert (ds.num_classes, ds.num_channels, ds.num_examples) == (2, 3, 8)
  assert ds.files[0] == 'cat/0.png' and ds.files[-1] == 'dog/3.png'
  b = ds.next_batch(5)
  assert b['image'].shape == (4, 16, 16, 3) and b['image'].dtype == np.float32
  assert b['image'].min() >= -1 and b['image'].max() <= 1
  idx = ds.example_indices(5)
  np.testing.assert_array_equal(b['label'], (idx >= 4).astype(np.int32))
  np.testing.assert_array_equal(_ds(f'folder:{root}').next_batch(5)['image'], b['image'])  # pure in step
  # The 16x16 image passes through unresampled: values are exact k / 127.5 - 1.
  arr = np.asarray(Image.open(os.path.join(root, 'cat', '1.png')), np.float32)
  np.testing.assert_array_equal(ds.eval_images(2)[1], arr / np.float32(127.5) - 1)
  # Two processes each load half of the global batch; together they are the one-process batch.
  halves = [_ds(f'folder:{root}', pi=p, pc=2).next_batch(5)['image'] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), b['image'])
  state = ds.get_state()
  fresh = _ds(f'folder:{root}')
  fresh.set_state(state)
  assert fresh.get_state() == state == dict(step=6, seed=3, global_batch_size=4)


def test_resize_center_crop_matches_tfds_path(tmp_path):
  root = _write_pngs(str(tmp_path / 'imgs'), sizes=((40, 64),), per_class=1, classes=('a',))
  arr = np.asarray(Image.open(os.path.join(root, 'a', '0.png')))
  ours = folder_lib.fit_image(Image.fromarray(arr), 16, 3)
  theirs = np.asarray(data.resize_and_center_crop(arr, 16))
  assert ours.shape == theirs.shape == (16, 16, 3)
  # Same geometry (shorter side 40 -> 16, width 64 -> 26, crop offset 5); the two antialiasing kernels
  # differ slightly (PIL's triangle filter vs tf's scaled triangle), a few grey levels at most.
  assert np.mean(np.abs(ours - theirs)) < 0.02, np.mean(np.abs(ours - theirs))
  assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99


def test_random_flip_off_by_default_and_deterministic(tmp_path):
  root = _write_pngs(str(tmp_path / 'imgs'))
  plain = _ds(f'folder:{root}').next_batch(2)['image']
  flipped = _ds(f'folder:{root}', random_flip=True).next_batch(2)['image']
  mask = folder_lib.flip_mask(3, 2, 4)
  for i in range(4):
    np.testing.assert_array_equal(flipped[i], plain[i][:, ::-1] if mask[i] else plain[i])
  np.testing.assert_array_equal(_ds(f'folder:{root}', random_flip=True).next_batch(2)['image'], flipped)
  masks = np.stack([folder_lib.flip_mask(3, s, 4) for s in range(50)])
  assert 0.3 < masks.mean() < 0.7 and not np.all(masks == masks[0])  # flips vary with the step
  halves = [_ds(f'folder:{root}', random_flip=True, pi=p, pc=2).next_batch(2)['image'] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), flipped)


def test_zip_equals_folder_and_labels_file(tmp_path):
  root = _write_pngs(str(tmp_path / 'imgs'))
  zpath = _zip(root, str(tmp_path / 'imgs.zip'))
  a, b = _ds(f'folder:{root}'), _ds(f'zip:{zpath}')
  assert a.files == b.files and b.num_classes == 2
  np.testing.assert_array_equal(a.next_batch(1)['image'], b.next_batch(1)['image'])
  # A labels file (EDM's dataset.json layout) overrides the folder names.
  labels = {'labels': [[f, i % 3] for i, f in enumerate(a.files)]}
  with open(os.path.join(root, 'dataset.json'), 'w') as f:
    json.dump(labels, f)
  c = _ds(f'folder:{root}', labels_file='dataset.json')
  assert c.num_classes == 3
  np.testing.assert_array_equal(c.next_batch(0)['label'], c.example_indices(0) % 3)
  zpath2 = _zip(root, str(tmp_path / 'imgs2.zip'))
  assert _ds(f'zip:{zpath2}', labels_file='dataset.json').num_classes == 3
  # Unlabeled: images at the root.
  flat = str(tmp_path / 'flat')
  os.makedirs(flat)
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(os.path.join(flat, 'x.png'))
  assert _ds(f'folder:{flat}', batch=1).num_classes == 0


def test_bad_input_fails_before_compute(tmp_path):
  empty = str(tmp_path / 'empty')
  os.makedirs(empty)
  with pytest.raises(ValueError, match='holds no images'):
    _ds(f'folder:{empty}')
  with pytest.raises(ValueError, match='is not a directory'):
    _ds(f'folder:{tmp_path}/missing')
  mixed = _write_pngs(str(tmp_path / 'mixed'), classes=('rgb',))
  _write_pngs(mixed, classes=('grey',), mode='L')
  with pytest.raises(ValueError, match=r'mixes channel counts \[1, 3\].*dataset.num_channels'):
    _ds(f'folder:{mixed}')
  assert _ds(f'folder:{mixed}', num_channels=3).next_batch(0)['image'].shape[-1] == 3
  bad = _write_pngs(str(tmp_path / 'bad'))
  with open(os.path.join(bad, 'cat', 'broken.png'), 'wb') as f:
    f.write(b'not a png at all')
  with pytest.raises(ValueError, match=r'bad/cat/broken.png is not a readable image'):
    _ds(f'folder:{bad}')
  notzip = str(tmp_path / 'x.zip')
  open(notzip, 'wb').write(b'nope')
  with pytest.raises(ValueError, match='not a readable zip'):
    _ds(f'zip:{notzip}')
  root = _write_pngs(str(tmp_path / 'imgs'))
  with open(os.path.join(root, 'l.json'), 'w') as f:
    json.dump({'cat/0.png': 1}, f)
  with pytest.raises(ValueError, match='has no label for 7 of 8 images'):
    _ds(f'folder:{root}', labels_file='l.json')
  with pytest.raises(ValueError, match='random_flip must be True or False'):
    _ds(f'folder:{root}', random_flip='yes')


def _folder_config(name, **kw):
  fields = dict(image_res=16, total_steps=4, checkpoint_every=2, eval_every=4, log_every=2,
                **{'dataset.name': name, 'dataset.random_flip': True, 'model.num_classes': 2,
                   'sampler.num_samples': 2, 'sampler.num_steps': 2})
  return tiny_config(**dict(fields, **kw))


def test_folder_and_zip_train_resume_bitwise_and_sample(tmp_path):
  """A folder run, and the zip of the same folder trained in two halves (resumed), end bitwise equal."""
  root = _write_pngs(str(tmp_path / 'imgs'))
  zpath = _zip(root, str(tmp_path / 'imgs.zip'))
  straight = trainer.train_and_evaluate(_folder_config(f'folder:{root}'), str(tmp_path / 'a'))
  no_eval = {'sampler.num_samples': 0}
  half = trainer.train_and_evaluate(_folder_config(f'zip:{zpath}', **no_eval), str(tmp_path / 'b'), stop_after=2)
  assert int(half.step) == 2
  resumed = trainer.train_and_evaluate(_folder_config(f'zip:{zpath}', **no_eval), str(tmp_path / 'b'))
  assert int(resumed.step) == 4
  fa, fb = flat_params(jax.device_get(straight.params)), flat_params(jax.device_get(resumed.params))
  assert all(np.array_equal(fa[k], fb[k]) for k in fa)
  assert os.path.exists(tmp_path / 'a' / 'samples' / 'step_4.png')
  from experiments import sample
  out = str(tmp_path / 's.npz')
  sample.run(dict(workdir=str(tmp_path / 'a'), out=out, num_samples=2, num_steps=2, labels='0,1'),
             log=lambda *_: None)
  arrays = np.load(out)
  assert arrays['images'].shape == (2, 16, 16, 3) and np.all(np.isfinite(arrays['images']))
  real = data.load_eval_images(dict(name=f'zip:{zpath}'), 16, 3)
  np.testing.assert_array_equal(real, data.load_eval_images(dict(name=f'folder:{root}'), 16, 3))
  assert real.shape == (3, 16, 16, 3)


def test_model_with_too_few_classes_is_rejected(tmp_path):
  root = _write_pngs(str(tmp_path / 'imgs'), classes=('a', 'b', 'c'), per_class=1)
  with pytest.raises(ValueError, match='has 3 classes but model.num_classes=2'):
    trainer.train_and_evaluate(_folder_config(f'folder:{root}'), str(tmp_path / 'w'))
