"""sid2.host_input: uint8 batches scaled on device equal the float32 host path; the prefetch thread yields
the synchronous loop's batches and dataset positions, in order, and hands on the dataset's errors."""
import gzip
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sid2 import data
from sid2 import host_input
from tests.test_data import _idx_bytes


def test_on_device_scaling_is_bitwise_the_host_formula():
  # Every 8-bit value, inside a jitted consumer (so XLA may fuse the scaling into what follows).
  x = np.arange(256, dtype=np.uint8).reshape(16, 16)
  y = np.linspace(-3, 3, 256, dtype=np.float32).reshape(16, 16)
  consume = jax.jit(lambda a, b: (host_input.uint8_to_unit(a) * 3.0 + b, host_input.uint8_to_unit(a)))
  fused, plain = consume(x, y)
  want = data.scale_uint8(x)
  np.testing.assert_array_equal(np.asarray(plain), want)
  np.testing.assert_array_equal(np.asarray(fused), np.asarray(consume(want, y)[0]))
  assert float(want.min()) == -1.0 and float(want.max()) == 1.0
  f = np.ones((2, 2), np.float32)
  assert host_input.uint8_to_unit(jnp.asarray(f)).dtype == jnp.float32  # floats pass through
  step = host_input.scale_images_on_device(lambda s, b, fr=None: (s, b))
  _, got = jax.jit(step)(0, dict(image=x, label=np.zeros(2, np.int32)))
  np.testing.assert_array_equal(np.asarray(got['image']), want)


@pytest.fixture(scope='module')
def fmnist_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('fmnist_u8')
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (24, 28, 28)).astype(np.uint8)
  labels = np.arange(24, dtype=np.uint8) % 10
  for prefix in ('train', 't10k'):
    (d / f'{prefix}-images-idx3-ubyte.gz').write_bytes(gzip.compress(_idx_bytes(images, 0x08)))
    (d / f'{prefix}-labels-idx1-ubyte.gz').write_bytes(gzip.compress(_idx_bytes(labels, 0x08)))
  return str(d)


@pytest.mark.parametrize('res', [28, 32, 64, 16])
def test_fashion_mnist_uint8_batches_equal_the_float_path(fmnist_dir, res):
  cfg = ml_collections.ConfigDict(dict(name='fashion_mnist', split='train', data_dir=fmnist_dir))
  make = lambda u8: data.get_dataset(cfg, image_res=res, global_batch_size=8, seed=1, process_index=0,
                                     process_count=1, uint8_images=u8)
  floats, raw = make(False), make(True)
  scale = jax.jit(host_input.uint8_to_unit)
  for step in range(4):  # crosses an epoch boundary (24 examples)
    a, b = floats.next_batch(step), raw.next_batch(step)
    # 16x16 is box-averaged (not 8-bit values): it stays float32.
    assert b['image'].dtype == (np.float32 if res == 16 else np.uint8)
    assert b['image'].nbytes * (1 if res == 16 else 4) == a['image'].nbytes
    np.testing.assert_array_equal(np.asarray(scale(b['image'])), a['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
    assert floats.get_state() == raw.get_state()


def test_tfds_uint8_batches_match_the_float_path():
  tf = pytest.importorskip('tensorflow')
  pytest.importorskip('tensorflow_datasets')
  from experiments import benchmark_input  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  # 16x16 images pass unresampled (exact); 20x30 ones are resized (8-bit rounding: within half a level).
  for shape, atol in (((16, 16, 3), 0.0), ((20, 30, 3), 0.5 / 127.5 + 1e-6)):
    pngs = [tf.io.encode_png(rng.integers(0, 256, shape).astype(np.uint8)).numpy() for _ in range(12)]
    cfg = dict(name='imagenet2012', split='train', data_dir='', shuffle_buffer=16, num_classes=1000)
    with benchmark_input.mock_imagenet(pngs):
      make = lambda u8: data.get_dataset(cfg, image_res=16, global_batch_size=4, seed=2, process_index=0,
                                         process_count=1, uint8_images=u8)
      floats, raw = make(False), make(True)
      for step in range(4):
        a, b = floats.next_batch(step), raw.next_batch(step)
        assert b['image'].dtype == np.uint8 and a['image'].dtype == np.float32
        np.testing.assert_allclose(data.scale_uint8(b['image']), a['image'], rtol=0, atol=atol)
        np.testing.assert_array_equal(a['label'], b['label'])
      if atol:
        assert np.abs(data.scale_uint8(b['image']) - a['image']).max() > 0  # really resampled


class _Counting:
  """A stand-in dataset: next_batch(step) must be called in order; its state is the next step."""

  def __init__(self, start=0, fail_at=None):
    self.next, self.fail_at, self.threads = start, fail_at, set()

  def next_batch(self, step):
    self.threads.add(threading.current_thread().name)
    assert step == self.next
    if step == self.fail_at:
      raise FileNotFoundError(f'record of step {step} missing')
    self.next += 1
    return dict(image=np.full((2,), step, np.uint8))

  def get_state(self):
    return dict(step=self.next)


@pytest.mark.parametrize('depth', [0, 1, 3])
def test_prefetcher_yields_the_synchronous_sequence(depth):
  ds = _Counting(start=5)
  with host_input.Prefetcher(lambda s: (ds.next_batch(s), ds.get_state()), 5, 12, depth) as p:
    got = [p.get(s) for s in range(5, 12)]
    with pytest.raises(ValueError, match='past the last step'):
      p.get(12)
  assert [int(b['image'][0]) for b, _ in got] == list(range(5, 12))
  assert [st['step'] for _, st in got] == list(range(6, 13))  # the position after each batch, not ahead
  assert ('sid2-prefetch' in ds.threads) == (depth > 0)


def test_prefetcher_errors_and_order():
  ds = _Counting(fail_at=2)
  with host_input.Prefetcher(lambda s: ds.next_batch(s), 0, 10, 2) as p:
    p.get(0), p.get(1)
    with pytest.raises(FileNotFoundError, match='record of step 2 missing'):
      p.get(2)
  with host_input.Prefetcher(lambda s: s, 0, 10, 2) as p:
    with pytest.raises(ValueError, match='step 3 requested, expected 0'):
      p.get(3)
  with pytest.raises(ValueError, match=r'prefetch_batches\) must be an int >= 0'):
    host_input.Prefetcher(lambda s: s, 0, 1, -1)
  # Closing early stops the thread even with the queue full.
  p = host_input.Prefetcher(lambda s: s, 0, 10 ** 9, 2)
  p.get(0)
  p.close()
  assert not p._thread.is_alive()
