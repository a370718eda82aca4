"""Tests for sid2.data (sid2/data/core.py): IDX parsing, Fashion-MNIST layout, determinism, resume, sharding,
tfds path, and the package layout."""
import gzip
import os
import struct

import ml_collections
import numpy as np
import pytest

from sid2 import data

N_TINY = 50  # Examples in the tiny Fashion-MNIST-format folder; image i is constant 4 (i + 1).


def _idx_bytes(array, type_code):
  """IDX file contents, written by hand: magic 0x0000TTNN, big-endian uint32 dims, big-endian data."""
  big = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}[type_code]
  header = struct.pack('>BBBB', 0, 0, type_code, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
  return header + np.asarray(array).astype(big).tobytes()


def _cfg(**kw):
  base = dict(name='fashion_mnist', split='train', data_dir=None, shuffle_buffer=1000)
  base.update(kw)
  return ml_collections.ConfigDict(base)


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('fmnist')
  images = np.repeat(4 * (np.arange(N_TINY, dtype=np.uint8) + 1), 28 * 28).reshape(N_TINY, 28, 28)
  labels = np.arange(N_TINY, dtype=np.uint8) % 10
  for prefix in ('train', 't10k'):
    (d / f'{prefix}-images-idx3-ubyte.gz').write_bytes(gzip.compress(_idx_bytes(images, 0x08)))
    (d / f'{prefix}-labels-idx1-ubyte.gz').write_bytes(gzip.compress(_idx_bytes(labels, 0x08)))
  return str(d)


def _ids(images):
  """Example index of each tiny image, read from its centre pixel (value 4 (i + 1))."""
  c = images.shape[1] // 2
  return np.round((images[:, c, c, 0] + 1) * 127.5 / 4).astype(int) - 1


# ---------------------------------------------------------------------------------------- IDX parsing


@pytest.mark.parametrize('gz', [False, True])
def test_read_idx_roundtrip_and_endianness(tmp_path, gz):
  arrays = {0x08: np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
            0x0C: np.array([1, -2, 70000, -(2**31)], np.int32),
            0x0D: np.array([[0.5, -1.25], [3e5, 7.0]], np.float32)}
  for code, a in arrays.items():
    raw = _idx_bytes(a, code)
    path = tmp_path / f'a{code}'
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = data.read_idx(str(path))
    assert out.shape == a.shape and out.dtype == a.dtype
    np.testing.assert_array_equal(out, a)
    assert out.dtype.isnative


def test_read_idx_rejects_bad_files(tmp_path):
  good = _idx_bytes(np.zeros((2, 3), np.uint8), 0x08)
  cases = {'truncated': (good[:-1], 'bytes'), 'extra': (good + b'\x00', 'bytes'),
           'magic': (b'\x01' + good[1:], 'magic'), 'type': (good[:2] + b'\x07' + good[3:], 'type code')}
  for name, (raw, match) in cases.items():
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(ValueError, match=match):
      data.read_idx(str(tmp_path / name))


# ---------------------------------------------------------------------------------- Fashion-MNIST


def test_tiny_fashion_layout(tiny_dir):
  ds = data.get_dataset(_cfg(data_dir=tiny_dir), image_res=32, global_batch_size=N_TINY, seed=3,
                        process_index=0, process_count=1)
  assert (ds.num_classes, ds.num_channels, ds.per_process_batch_size, ds.num_examples) == (10, 1, N_TINY,
                                                                                           N_TINY)
  b = ds.next_batch(0)
  x, y = b['image'], b['label']
  assert x.shape == (N_TINY, 32, 32, 1) and x.dtype == np.float32 and y.dtype == np.int32
  ids = _ids(x)
  assert sorted(ids) == list(range(N_TINY))  # One epoch = one permutation of all examples.
  assert list(ids) != list(range(N_TINY))
  np.testing.assert_array_equal(y, ids % 10)
  # Padding (2 rows/cols each side) is the background -1; the 28x28 interior is 4 (i + 1) / 127.5 - 1.
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert np.all(x[:, border] == -1.0)
  expected = (4 * (ids + 1)).astype(np.float32) / np.float32(127.5) - 1
  np.testing.assert_array_equal(x[:, 2:30, 2:30, 0],
                                np.broadcast_to(expected[:, None, None], (N_TINY, 28, 28)))


def test_fashion_other_resolutions(tiny_dir):
  images, _ = data.load_fashion_mnist(tiny_dir, 'train')
  x32 = data.fit_fashion_resolution(images[:3], 32)
  x64 = data.fit_fashion_resolution(images[:3], 64)
  np.testing.assert_array_equal(x64[:, ::2, ::2], x32)  # Pixel repetition.
  x16 = data.fit_fashion_resolution(images[:3], 16)
  np.testing.assert_allclose(x16, x32.reshape(3, 16, 2, 16, 2, 1).mean(axis=(2, 4)), atol=1e-6)
  x29 = data.fit_fashion_resolution(images[:3], 29)
  assert x29.shape == (3, 29, 29, 1)  # 28 + 1: the extra row/column goes bottom/right.
  assert np.all(x29[:, 28] == -1) and np.all(x29[:, :, 28] == -1) and np.all(x29[:, :28, :28] > -1)
  with pytest.raises(ValueError, match='image_res'):
    data.get_dataset(_cfg(data_dir=tiny_dir), image_res=20, global_batch_size=4, seed=0,
                     process_index=0, process_count=1)


@pytest.mark.skipif(not os.path.exists(os.path.join(data.FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz')),
                    reason='apt-get install dataset-fashion-mnist')
def test_real_fashion_mnist():
  ds = data.get_dataset(_cfg(), image_res=32, global_batch_size=60000, seed=0, process_index=0,
                        process_count=1)
  assert ds.num_examples == 60000
  b = ds.next_batch(0)
  x = b['image']
  assert x.shape == (60000, 32, 32, 1) and x.dtype == np.float32
  assert x.min() == -1.0 and x.max() == 1.0
  assert np.all(x[:, :2] == -1) and np.all(x[:, 30:] == -1)
  assert np.all(x[:, :, :2] == -1) and np.all(x[:, :, 30:] == -1)
  np.testing.assert_array_equal(np.bincount(b['label'], minlength=10), np.full(10, 6000))
  _, test_labels = data.load_fashion_mnist(None, 'test')
  assert test_labels.shape == (10000,)
  ev = data.load_eval_images(_cfg(), 32, 16)
  np.testing.assert_array_equal(ev, data.load_eval_images(_cfg(), 32, 16))
  assert ev.shape == (16, 32, 32, 1)


def test_determinism_resume_and_epochs(tiny_dir):
  kw = dict(image_res=32, global_batch_size=16, seed=11, process_index=0, process_count=1)
  a = data.get_dataset(_cfg(data_dir=tiny_dir), **kw)
  b = data.get_dataset(_cfg(data_dir=tiny_dir), **kw)
  straight = [a.next_batch(k) for k in range(10)]  # 160 examples: crosses three epoch boundaries.
  for k in (7, 3, 9):  # Pure in step: any order.
    np.testing.assert_array_equal(b.next_batch(k)['image'], straight[k]['image'])
  # Resume: state after step 4 -> a new object continues exactly like the straight run.
  c = data.get_dataset(_cfg(data_dir=tiny_dir), **kw)
  for k in range(5):
    c.next_batch(k)
  state = c.get_state()
  assert state == dict(step=5, seed=11, global_batch_size=16)
  d = data.get_dataset(_cfg(data_dir=tiny_dir), **kw)
  d.set_state({k: np.asarray(v) for k, v in state.items()})  # As a checkpointer hands it back.
  assert d.get_state() == state
  for k in range(5, 10):
    np.testing.assert_array_equal(d.next_batch(k)['image'], straight[k]['image'])
    np.testing.assert_array_equal(d.next_batch(k)['label'], straight[k]['label'])
  # The stream is a sequence of per-epoch permutations, each different.
  stream = np.concatenate([_ids(s['image']) for s in straight])
  epochs = stream[:150].reshape(3, N_TINY)
  for e in epochs:
    assert sorted(e) == list(range(N_TINY))
  assert not np.array_equal(epochs[0], epochs[1])
  np.testing.assert_array_equal(epochs[0], data.epoch_permutation(11, 0, N_TINY))
  # Another seed gives another order; a state from another seed is refused.
  other = data.get_dataset(_cfg(data_dir=tiny_dir), **{**kw, 'seed': 12})
  assert not np.array_equal(other.next_batch(0)['image'], straight[0]['image'])
  with pytest.raises(ValueError, match='seed'):
    other.set_state(state)


def test_process_shards_partition_global_batch(tiny_dir):
  kw = dict(image_res=32, global_batch_size=12, seed=5)
  single = data.get_dataset(_cfg(data_dir=tiny_dir), process_index=0, process_count=1, **kw)
  shards = [data.get_dataset(_cfg(data_dir=tiny_dir), process_index=p, process_count=3, **kw)
            for p in range(3)]
  assert shards[0].per_process_batch_size == 4
  for step in (0, 4, 13):
    parts = [_ids(s.next_batch(step)['image']) for s in shards]
    np.testing.assert_array_equal(np.concatenate(parts), _ids(single.next_batch(step)['image']))
    if step != 4:  # Step 4 (positions 48..59) straddles an epoch boundary: two epochs may share ids.
      assert len(set(np.concatenate(parts))) == 12  # Disjoint shards.
  # Across one epoch's non-straddling steps, the three shards never repeat an example.
  seen = np.concatenate([_ids(s.next_batch(k)['image']) for k in range(4) for s in shards])
  assert len(set(seen)) == 48


def test_config_errors(tiny_dir, tmp_path):
  with pytest.raises(ValueError, match='batch_size'):
    data.get_dataset(_cfg(data_dir=tiny_dir), image_res=32, global_batch_size=10, seed=0,
                     process_index=0, process_count=4)
  with pytest.raises(ValueError, match='dataset.split'):
    data.get_dataset(_cfg(data_dir=tiny_dir, split='validation'), image_res=32, global_batch_size=4,
                     seed=0, process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
    data.get_dataset(_cfg(data_dir=str(tmp_path / 'missing')), image_res=32, global_batch_size=4, seed=0,
                     process_index=0, process_count=1)
  with pytest.raises(ValueError, match='dataset.name'):
    data.get_dataset(_cfg(name='no_such_dataset_xyz'), image_res=32, global_batch_size=4, seed=0,
                     process_index=0, process_count=1)
  with pytest.raises(ValueError, match='num'):
    data.load_eval_images(_cfg(data_dir=tiny_dir), 32, N_TINY + 1)
  with pytest.raises(FileNotFoundError, match='not prepared'):  # Never downloads.
    data.get_dataset(_cfg(name='cifar10', data_dir=str(tmp_path)), image_res=32, global_batch_size=4,
                     seed=0, process_index=0, process_count=1)


# ------------------------------------------------------------------------------------------------- tfds


def test_resize_and_center_crop_closed_form():
  tf = pytest.importorskip('tensorflow')
  ramp = np.broadcast_to(4 * np.arange(60, dtype=np.uint8), (40, 60))[..., None]  # 40x60, value 4 col.
  out = data.resize_and_center_crop(tf.constant(ramp), 20).numpy()
  assert out.shape == (20, 20, 1)
  # Shorter side 40 -> 20 halves the width to 30, the crop keeps columns 5..24: the ramp is centred on
  # the middle column of the original (value 4 * 29.5 = 118) and antisymmetric about it.
  centre = 118 / 127.5 - 1
  np.testing.assert_allclose(out.mean(), centre, atol=1e-4)
  np.testing.assert_allclose(out[:, :, 0] + out[:, ::-1, 0], 2 * centre, atol=1e-4)
  assert np.ptp(out, axis=0).max() < 1e-5  # Constant along columns stays constant.
  # Same size passes through exactly.
  img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  np.testing.assert_array_equal(data.resize_and_center_crop(tf.constant(img), 16).numpy(),
                                data.scale_uint8(img))


@pytest.fixture
def tfds_mock():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=24):
    yield


def _cifar(**kw):
  return data.get_dataset(_cfg(name='cifar10', shuffle_buffer=1000),
                          **{**dict(image_res=32, global_batch_size=8, seed=1, process_index=0,
                                    process_count=1), **kw})


def test_tfds_mock_cifar10(tfds_mock):
  ds = _cifar()
  assert (ds.num_classes, ds.num_channels, ds.per_process_batch_size, ds.num_examples) == (10, 3, 8, 24)
  batches = [ds.next_batch(k) for k in range(6)]  # Two epochs of 24.
  x, y = batches[0]['image'], batches[0]['label']
  assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
  assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9 and x.max() > 0.9
  assert np.all((y >= 0) & (y < 10))
  q = (x + 1) * 127.5  # No resampling at the source size: exact uint8 levels.
  np.testing.assert_allclose(q, np.round(q), atol=1e-4)
  # Each epoch is a permutation of the 24 mock examples (buffer >= 24), in a new order.
  keys = [im.tobytes() for b in batches for im in b['image']]
  assert len(set(keys[:24])) == 24 and set(keys[:24]) == set(keys[24:])
  assert keys[:24] != keys[24:]
  # Resize/crop path, other resolutions.
  for res in (20, 48):
    xr = _cifar(image_res=res).next_batch(0)['image']
    assert xr.shape == (8, res, res, 3) and xr.min() >= -1 and xr.max() <= 1
  ev = data.load_eval_images(_cfg(name='cifar10'), 24, 5)
  assert ev.shape == (5, 24, 24, 3) and ev.dtype == np.float32


def test_tfds_mock_determinism_and_resume(tfds_mock):
  a = _cifar()
  straight = [a.next_batch(k) for k in range(7)]
  state = a.get_state()
  assert state == dict(step=7, seed=1, global_batch_size=8, process_count=1)
  b = _cifar()
  for k in range(3):  # A second object gives the same batches.
    np.testing.assert_array_equal(b.next_batch(k)['image'], straight[k]['image'])
  state = b.get_state()
  assert state == dict(step=3, seed=1, global_batch_size=8, process_count=1)
  c = _cifar()
  c.set_state(state)
  for k in range(3, 7):  # Crosses the epoch boundary at step 3.
    bc = c.next_batch(k)
    np.testing.assert_array_equal(bc['image'], straight[k]['image'])
    np.testing.assert_array_equal(bc['label'], straight[k]['label'])
  with pytest.raises(ValueError, match='step'):
    c.next_batch(3)  # Out of order.
  # A fresh object may start anywhere: it skips there.
  np.testing.assert_array_equal(_cifar().next_batch(5)['image'], straight[5]['image'])
  assert not np.array_equal(_cifar(seed=2).next_batch(0)['image'], straight[0]['image'])
  with pytest.raises(ValueError, match='batch_size'):
    _cifar().set_state(dict(step=3, seed=1, global_batch_size=16, process_count=1))


@pytest.fixture(scope='module')
def tiny_tfds_dir(tmp_path_factory):
  """A real (file-backed) tfds dataset 'sid2_test_images': 40 constant 20x30 images, value 5 (i + 1)."""
  tfds = pytest.importorskip('tensorflow_datasets')

  class Sid2TestImages(tfds.core.GeneratorBasedBuilder):
    # A one-part module name keeps tfds from resolving a package code path (which needs the
    # `importlib_resources` backport when the test runs under a package name).
    __module__ = 'sid2_test_builders'
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(num_classes=7)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(40)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {'image': np.full((20, 30, 3), 5 * (i + 1), np.uint8), 'label': i % 7}

  d = str(tmp_path_factory.mktemp('tfds'))
  Sid2TestImages(data_dir=d).download_and_prepare()
  return d


def test_tfds_files_per_process_shards_and_resume(tiny_tfds_dir):
  cfg = _cfg(name='sid2_test_images', data_dir=tiny_tfds_dir, shuffle_buffer=100)
  kw = dict(image_res=16, global_batch_size=8, seed=4)
  ids = lambda b: np.round((b['image'].mean(axis=(1, 2, 3)) + 1) * 127.5 / 5).astype(int) - 1
  epochs = []
  for p in range(2):
    ds = data.get_dataset(cfg, process_index=p, process_count=2, **kw)
    assert (ds.num_examples, ds.num_classes, ds.num_channels, ds.per_process_batch_size) == (20, 7, 3, 4)
    batches = [ds.next_batch(k) for k in range(10)]  # Two epochs of this process's 20 examples.
    b0 = batches[0]
    assert b0['image'].shape == (4, 16, 16, 3)  # 20x30 -> 16x24 -> centre crop 16x16.
    np.testing.assert_array_equal(b0['label'], ids(b0) % 7)
    stream = np.concatenate([ids(b) for b in batches])
    assert sorted(stream[:20]) == sorted(stream[20:]) and list(stream[:20]) != list(stream[20:])
    epochs.append(set(stream[:20]))
    resumed = data.get_dataset(cfg, process_index=p, process_count=2, **kw)
    resumed.set_state(dict(step=6, seed=4, global_batch_size=8, process_count=2))
    for k in range(6, 10):
      np.testing.assert_array_equal(resumed.next_batch(k)['image'], batches[k]['image'])
    ds.set_state(dict(step=np.int64(3), seed=np.array(4), global_batch_size=8, process_count=2))
    for k in range(3, 5):  # Rewind a used iterator (as after a restore from an older checkpoint).
      np.testing.assert_array_equal(ds.next_batch(k)['image'], batches[k]['image'])
  assert not epochs[0] & epochs[1] and epochs[0] | epochs[1] == set(range(40))
  with pytest.raises(ValueError, match='process_count'):
    data.get_dataset(cfg, process_index=0, process_count=1, **kw).set_state(
        dict(step=6, seed=4, global_batch_size=8, process_count=2))


def test_package_registers_the_built_ins_and_its_modules_import_only_core():
  """`sid2.data` re-exports core's names and registers video.py's and folder.py's datasets; those two modules
  import sid2.data.core, never the package that imports them."""
  import ast
  assert data.get_dataset is data.core.get_dataset and data.InMemoryDataset is data.core.InMemoryDataset
  assert list(data.DATASET_BUILDERS)[:3] == ['synthetic_video', 'folder:', 'zip:']
  for module in (data.video, data.folder):
    with open(module.__file__) as f:
      tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('sid2'):
        imported.update(f'{node.module}.{a.name}' for a in node.names)
      elif isinstance(node, ast.Import):
        imported.update(a.name for a in node.names if a.name.startswith('sid2'))
    assert imported == {'sid2.data.core'}, (module.__name__, imported)
