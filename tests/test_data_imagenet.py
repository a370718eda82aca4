"""tfds 'imagenet2012' through `sid2.data.get_dataset` under a mock (experiments.benchmark_input.mock_imagenet):
per-process sharding and deterministic resume.

Plain `tfds.testing.mock_data` ignores the split (every sub-split yields the same records), so it cannot show
sharding; `mock_imagenet` serves record i for absolute index i of whatever (sub-)split is asked for.
"""
import numpy as np
import pytest

from sid2 import data

tf = pytest.importorskip('tensorflow')
pytest.importorskip('tensorflow_datasets')

from experiments import benchmark_input  # pylint: disable=g-import-not-at-top

NUM = 40
CFG = dict(name='imagenet2012', split='train', data_dir='', shuffle_buffer=100, num_classes=1000)
KW = dict(image_res=16, global_batch_size=8, seed=3)


def _ids(batch):
  """Record index of each image: record i is a constant image of value 5 (i + 1) (exact after the resize)."""
  return np.round((batch['image'].mean(axis=(1, 2, 3)) + 1) * 127.5 / 5).astype(int) - 1


@pytest.fixture(scope='module')
def mock():
  pngs = [tf.io.encode_png(np.full((20, 30, 3), 5 * (i + 1), np.uint8)).numpy() for i in range(NUM)]
  with benchmark_input.mock_imagenet(pngs):
    yield


def test_processes_get_disjoint_halves_of_each_step(mock):
  per_proc = []
  for p in range(2):
    ds = data.get_dataset(CFG, process_index=p, process_count=2, **KW)
    assert (ds.num_examples, ds.num_classes, ds.num_channels, ds.per_process_batch_size) == (20, 1000, 3, 4)
    batches = [ds.next_batch(k) for k in range(5)]  # One epoch of this process's 20 records.
    assert batches[0]['image'].shape == (4, 16, 16, 3)  # 20x30 -> 16x24 -> centre crop 16x16.
    for b in batches:
      np.testing.assert_array_equal(b['label'], _ids(b))  # Label i % 1000 of record i.
    per_proc.append([set(_ids(b)) for b in batches])
  for k in range(5):
    half0, half1 = per_proc[0][k], per_proc[1][k]
    assert len(half0) == len(half1) == 4 and not half0 & half1  # Disjoint halves of the global batch 8.
  shards = [set().union(*sets) for sets in per_proc]
  assert shards[0] == set(range(20)) and shards[1] == set(range(20, 40))  # tfds.split_for_jax_process.


@pytest.mark.parametrize('process_index', [0, 1])
def test_resume_from_state_equals_uninterrupted(mock, process_index):
  kw = dict(process_index=process_index, process_count=2, **KW)
  straight = data.get_dataset(CFG, **kw)
  expected = [straight.next_batch(k) for k in range(8)]  # Crosses the epoch boundary after step 4.
  first = data.get_dataset(CFG, **kw)
  for k in range(3):
    first.next_batch(k)
  state = first.get_state()
  assert state == dict(step=3, seed=3, global_batch_size=8, process_count=2)
  resumed = data.get_dataset(CFG, **kw)
  resumed.set_state(state)
  for k in range(3, 8):
    got = resumed.next_batch(k)
    np.testing.assert_array_equal(got['image'], expected[k]['image'])
    np.testing.assert_array_equal(got['label'], expected[k]['label'])
  assert not np.array_equal(_ids(expected[0]), _ids(expected[5]))  # A new order in the second epoch...
  assert set(_ids(expected[0])) | set().union(*[set(_ids(b)) for b in expected[1:5]]) == set(
      range(20 * process_index, 20 * process_index + 20))  # ...of the same 20 records.


def test_mock_split_slicing():
  np.testing.assert_array_equal(benchmark_input._absolute_indices('train', 40), np.arange(40))
  np.testing.assert_array_equal(benchmark_input._absolute_indices('train[10:15]', 40), np.arange(10, 15))
  np.testing.assert_array_equal(benchmark_input._absolute_indices('validation[75%:]', 40), np.arange(30, 40))


def test_training_images_per_s_closed_form():
  """Train step = 3 x forward (SPEC §8): a 197 TFLOP/s chip (98.5 T multiply-adds/s) at 100 GFLOPs forward."""
  assert benchmark_input.training_images_per_s(100.0, 98.5e12) == pytest.approx(98.5e12 / 3e11)


def test_mock_validates_its_arguments():
  with pytest.raises(ValueError, match='labels must have shape'):
    with benchmark_input.mock_imagenet([b'x'], 2, labels=np.zeros(3)):
      pass
