"""Input pipelines with a deterministic, checkpointable position (SPEC §0: images in [-1, 1], NHWC).

(sid2.data.core; `sid2.data` re-exports the public names and registers the datasets of video.py and folder.py.)

Two sources, one interface (`get_dataset`):

* `fashion_mnist` (default, offline): the gzipped IDX files of Debian's `dataset-fashion-mnist` package,
  parsed here, held in memory as uint8. The batch is a pure function of (seed, step, process): the global
  example stream is the concatenation of per-epoch permutations `np.random.default_rng([seed, epoch])`,
  global step k takes stream positions [k B, (k + 1) B) and process p the p-th of P equal, disjoint parts.
  Resuming at any step therefore needs nothing but the step, and the union over processes is the global
  batch of a one-process run (the process count may even change between runs).
* any other name: a tensorflow-datasets image dataset, sharded per process with `tfds.split_for_jax_process`.
  The pipeline is deterministic: records are read in file order with the image still encoded, shuffled
  per epoch with a buffer seeded by (seed, epoch), decoded, resized (shorter side to `image_res`,
  antialiased), center-cropped, scaled to [-1, 1] and batched. The checkpointed position is the step: a
  resume at step k starts at epoch floor(k b / n) and skips the (k b mod n) records before it, on the still
  encoded records, so it costs at most one epoch of raw reads and no decoding. (The shuffle seeds are
  op-level seeds: do not call `tf.random.set_seed`, which would change the order.)

  Why not `clu.data.dataset_iterator.TfDatasetIterator.save/restore` (a tf.train.Checkpoint of the tf.data
  iterator)? It is exact, but it serialises the shuffle buffer and the prefetched batches: measured here
  (64x64 PNG records of 12.4 kB, tf 2.21) the checkpoint grows as buffer x record size (12.8 MB for a
  1000-record buffer, 33 MB for 2500), so an ImageNet-sized buffer (10k JPEGs of ~110 kB) would write
  more than 1 GB per process at every checkpoint, and it cannot save pipelines built on Python generators
  (tfds.testing.mock_data: "PyFunc is stateful"). The step-based skip keeps the state a few integers,
  identical on every process, at the price of re-reading at most one epoch of raw records on resume.

Pixel scaling: uint8 x -> x / 127.5 - 1 (SPEC §9's convention), so 0 -> -1 and 255 -> 1 exactly.
"""
from __future__ import annotations

import functools
import gzip
import operator
import os
import re
from typing import Any, Optional

import numpy as np

from sid2 import registry

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_SPLITS = {'train': 'train', 'test': 't10k'}
FASHION_MNIST_CLASSES = 10
FASHION_MNIST_RES = 28
DEFAULT_SHUFFLE_BUFFER = 10_000

# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}
_INSTALL_HINT = ('install the Debian package with `apt-get install dataset-fashion-mnist`, or point '
                 '`dataset.data_dir` at a folder holding the IDX files')


# ------------------------------------------------------------------------------------------------------
# Small pure helpers.
# ------------------------------------------------------------------------------------------------------


def cfg_get(cfg, key: str, default: Any) -> Any:
  """`cfg.get(key, default)` for ConfigDicts and dicts; None counts as unset."""
  value = cfg.get(key, default) if hasattr(cfg, 'get') else getattr(cfg, key, default)
  return default if value is None else value


def as_int(value, field: str, minimum: int) -> int:
  """Integer check with a ValueError naming the field."""
  try:
    out = operator.index(value)
  except TypeError:
    raise ValueError(f'{field} must be an integer >= {minimum}; got {value!r}') from None
  if out < minimum:
    raise ValueError(f'{field} must be an integer >= {minimum}; got {value!r}')
  return out


def scale_uint8(x: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1]: x / 127.5 - 1 (SPEC §0, §9)."""
  return np.asarray(x, np.float32) / np.float32(127.5) - np.float32(1.0)


def read_idx(path: str) -> np.ndarray:
  """Parses an IDX file (gzipped or raw): magic 0x0000TTNN, NN big-endian uint32 dims, then the data.

  Returns the array in native byte order; raises ValueError for a bad magic number, an unknown type code
  or a data size that does not match the header.
  """
  with open(path, 'rb') as f:
    raw = f.read()
  if raw[:2] == b'\x1f\x8b':
    raw = gzip.decompress(raw)
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise ValueError(f'{path}: not an IDX file (magic number must start with two zero bytes)')
  type_code, ndim = raw[2], raw[3]
  if type_code not in _IDX_DTYPES:
    raise ValueError(f'{path}: unknown IDX type code 0x{type_code:02x}; allowed: '
                     f'{sorted(hex(c) for c in _IDX_DTYPES)}')
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f'{path}: IDX header truncated ({len(raw)} bytes, need {header})')
  dims = tuple(int(d) for d in np.frombuffer(raw, '>u4', count=ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[type_code])
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(f'{path}: IDX data has {len(raw) - header} bytes but dims {dims} of {dtype} need '
                     f'{expected}')
  data = np.frombuffer(raw, dtype, offset=header).reshape(dims)
  return data.astype(dtype.newbyteorder('='))


def _find_idx(directory: str, stem: str) -> str:
  for name in (stem + '.gz', stem):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f'Fashion-MNIST file {stem}(.gz) not found in {directory}: {_INSTALL_HINT}')


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(data_dir: Optional[str] = None, split: str = 'train'):
  """Fashion-MNIST as (images uint8 [n, 28, 28], labels int32 [n]), read-only and cached."""
  if split not in FASHION_MNIST_SPLITS:
    raise ValueError(f'dataset.split must be one of {sorted(FASHION_MNIST_SPLITS)} for fashion_mnist; '
                     f'got {split!r}')
  directory = data_dir or FASHION_MNIST_DIR
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'Fashion-MNIST folder {directory} does not exist: {_INSTALL_HINT}')
  prefix = FASHION_MNIST_SPLITS[split]
  images = read_idx(_find_idx(directory, f'{prefix}-images-idx3-ubyte'))
  labels = read_idx(_find_idx(directory, f'{prefix}-labels-idx1-ubyte'))
  res = FASHION_MNIST_RES
  if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (res, res):
    raise ValueError(f'Fashion-MNIST images in {directory} must be uint8 [n, {res}, {res}]; got '
                     f'{images.dtype} {images.shape}')
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise ValueError(f'Fashion-MNIST labels in {directory} must be [{images.shape[0]}]; got {labels.shape}')
  if labels.size and (labels.min() < 0 or labels.max() >= FASHION_MNIST_CLASSES):
    raise ValueError(f'Fashion-MNIST labels in {directory} must lie in [0, {FASHION_MNIST_CLASSES})')
  labels = labels.astype(np.int32)
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def _check_fashion_res(image_res: int) -> None:
  res = FASHION_MNIST_RES
  ok = res <= image_res <= 32 or image_res % 32 == 0 or 32 % image_res == 0
  if not ok:
    raise ValueError(f'image_res must be in [{res}, 32] (zero-padded), a multiple of 32 (padded to 32, '
                     f'then pixels repeated) or a divisor of 32 (padded, then box-averaged) for '
                     f'fashion_mnist; got {image_res}')


def fit_fashion_resolution(images: np.ndarray, image_res: int, uint8: bool = False) -> np.ndarray:
  """uint8 [n, 28, 28] -> float32 [n, r, r, 1] in [-1, 1].

  Pads with the background value 0 (-1 after scaling) to r if 28 <= r <= 32, else to 32 and then repeats
  pixels (r = 32 m) or box-averages (r = 32 / m); both keep the range [-1, 1].
  uint8: return the padded / repeated uint8 pixels instead (`scale_uint8` of them is the float result, which
  `sid2.host_input` computes on device); box-averaged resolutions are not 8-bit values and stay float32.
  """
  _check_fashion_res(image_res)
  target = image_res if image_res <= 32 and image_res >= FASHION_MNIST_RES else 32
  extra = target - images.shape[1]
  lo = extra // 2
  padded = np.pad(images, ((0, 0), (lo, extra - lo), (lo, extra - lo)))
  if uint8 and image_res >= target:
    m = image_res // target
    return np.repeat(np.repeat(padded, m, axis=1), m, axis=2)[..., None]
  x = scale_uint8(padded)[..., None]
  if image_res > target:
    m = image_res // target
    x = np.repeat(np.repeat(x, m, axis=1), m, axis=2)
  elif image_res < target:
    m = target // image_res
    n = x.shape[0]
    x = x.reshape(n, image_res, m, image_res, m, 1).mean(axis=(2, 4), dtype=np.float32)
  return x


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of the examples in one epoch: a permutation from default_rng([seed, epoch])."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


# ------------------------------------------------------------------------------------------------------
# In-memory datasets (Fashion-MNIST): the batch is a pure function of (seed, step, process).
# ------------------------------------------------------------------------------------------------------


class StepBatches:
  """What every dataset of `sid2.data` shares: the batch layout over processes and the checkpoint position
  (the next step: resuming needs only the step; see the module docstring)."""

  def __init__(self, *, num_classes: int, num_channels: int, global_batch_size: int, seed: int,
               process_index: int, process_count: int):
    self.num_classes = num_classes
    self.num_channels = num_channels
    self.global_batch_size = global_batch_size
    self.per_process_batch_size = global_batch_size // process_count
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self._next_step = 0

  def get_state(self) -> dict:
    """Checkpoint position {'step': next step, 'seed', 'global_batch_size'}: ints, same on all hosts."""
    return dict(step=self._next_step, seed=self.seed, global_batch_size=self.global_batch_size)

  def set_state(self, state: dict) -> None:
    """Restores `get_state()`; seed and global batch size must match this dataset."""
    self._next_step = check_state(state, dict(seed=self.seed, global_batch_size=self.global_batch_size))


class InMemoryDataset(StepBatches):
  """Batches of an in-memory array; `next_batch(step)` is pure in step (see the module docstring)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, num_classes: int, num_channels: int,
               transform, global_batch_size: int, seed: int, process_index: int, process_count: int,
               extras: Optional[dict] = None):
    self._images = images
    self._labels = labels
    # Per-example arrays batched alongside (e.g. text embeddings [N, S, D] as batch['text']).
    self._extras = dict(extras or {})
    for key, value in self._extras.items():
      if key in ('image', 'label') or value.shape[:1] != images.shape[:1]:
        raise ValueError(f'extra dataset array {key!r} must be named other than image/label and have '
                         f'{images.shape[0]} rows; got shape {value.shape}')
    super().__init__(num_classes=num_classes, num_channels=num_channels, global_batch_size=global_batch_size,
                     seed=seed, process_index=process_index, process_count=process_count)
    self._transform = transform
    self.num_examples = int(images.shape[0])
    self._perms = {}
    if self.num_examples == 0:
      raise ValueError('dataset.split holds no examples')

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) >= 2:
        self._perms.pop(min(self._perms))
      self._perms[epoch] = epoch_permutation(self.seed, epoch, self.num_examples)
    return self._perms[epoch]

  def example_indices(self, step: int) -> np.ndarray:
    """Indices of this process's examples at `step`: stream positions step B + p b + [0, b)."""
    step = as_int(step, 'step', 0)
    b = self.per_process_batch_size
    start = step * self.global_batch_size + self.process_index * b
    positions = start + np.arange(b, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self.num_examples)
    out = np.empty(b, np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self._perm(int(epoch))[offsets[sel]]
    return out

  def next_batch(self, step: int) -> dict:
    """The batch for global step `step`: image float32 [b, H, W, C] in [-1, 1], label int32 [b] (+ extras)."""
    idx = self.example_indices(step)
    self._next_step = int(step) + 1
    batch = dict(image=self._transform(self._images[idx]), label=self._labels[idx].astype(np.int32))
    batch.update({k: np.asarray(v[idx], np.float32) for k, v in self._extras.items()})
    return batch

  def has_extra(self, key: str) -> bool:
    """Whether batches carry the per-example array `key` (e.g. 'text')."""
    return key in self._extras

  def extra_rows(self, key: str, num: int) -> np.ndarray:
    """The first `num` rows of extra array `key` (cycled), float32: conditioning for evaluation samples."""
    value = self._extras[key]
    return np.asarray(value[np.arange(num) % value.shape[0]], np.float32)


def _state_int(state, key: str) -> int:
  """An integer entry of a restored state (int, numpy or 0-d array, as checkpointers return them)."""
  value = np.asarray(state[key])
  if value.shape != () or not np.issubdtype(value.dtype, np.integer) or int(value) < 0:
    raise ValueError(f'dataset state entry {key!r} must be an integer >= 0; got {state[key]!r}')
  return int(value)


def check_state(state, expected: dict) -> int:
  """Checks a restored state against this dataset's settings; returns its step."""
  if 'step' not in state:
    raise ValueError(f'dataset state needs a `step` entry; got keys {sorted(state)}')
  for key, want in expected.items():
    if key in state and _state_int(state, key) != want:
      field = 'batch_size' if key == 'global_batch_size' else key
      raise ValueError(f'dataset state was saved with {key}={_state_int(state, key)} but this run has '
                       f'{key}={want}; the data order depends on `{field}`')
  return _state_int(state, 'step')


# ------------------------------------------------------------------------------------------------------
# tensorflow-datasets image datasets.
# ------------------------------------------------------------------------------------------------------


def _import_tf():
  """Imports TensorFlow for tf.data only, keeping it off any accelerator."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):
    pass  # Devices already initialised; tensorflow-cpu has none anyway.
  return tf


def resize_and_center_crop(image, image_res: int, uint8: bool = False):
  """uint8 [h, w, c] -> float32 [r, r, c] in [-1, 1]: shorter side to r (bilinear, antialiased), center crop.

  An image that is already r x r passes through unresampled, so its values stay exact multiples of 1/127.5.
  uint8: the same pixels as uint8 for scaling on device (`sid2.host_input`): exact for an r x r image,
  resampled ones rounded to the nearest 8-bit value (within 0.5 / 127.5 of the float32 result).
  """
  tf = _import_tf()
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  short = tf.cast(tf.minimum(h, w), tf.float32)
  scale = tf.cast(image_res, tf.float32) / short
  new_h = tf.maximum(image_res, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
  new_w = tf.maximum(image_res, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
  x = tf.cast(image, tf.float32)
  x = tf.cond(
      tf.logical_and(tf.equal(h, new_h), tf.equal(w, new_w)),
      lambda: x,
      lambda: tf.image.resize(x, tf.stack([new_h, new_w]), method='bilinear', antialias=True))
  top = (new_h - image_res) // 2
  left = (new_w - image_res) // 2
  x = x[top:top + image_res, left:left + image_res]
  x = tf.ensure_shape(x, [image_res, image_res, image.shape[-1]])
  if uint8:
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)
  return tf.clip_by_value(x / 127.5 - 1.0, -1.0, 1.0)


def _tfds_builder(name: str, data_dir: Optional[str]):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"dataset.name {name!r} is neither 'fashion_mnist' nor a dataset known to "
                     f'tensorflow-datasets ({e.__class__.__name__}: {str(e).splitlines()[0]})') from e


def _as_dataset(builder, split, image_key: str, name: str):
  """The split's records in file order with the image left encoded (cheap to shuffle and skip)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    # No in-memory autocache: every (re)positioning builds a new iterator over the same records, and
    # a shared, partially filled cache must not be written by two of them.
    return builder.as_dataset(split=split, shuffle_files=False,
                              decoders={image_key: tfds.decode.SkipDecoding()},
                              read_config=tfds.ReadConfig(try_autocache=False))
  except AssertionError as e:  # tfds's "dataset not found / not prepared".
    raise FileNotFoundError(
        f'tfds dataset {name!r} is not prepared in {builder.data_dir}: prepare it offline (e.g. '
        f'`tfds build {name} --data_dir ...`) and set dataset.data_dir; nothing is downloaded at run '
        f'time. ({e})') from e


class TfdsDataset(StepBatches):
  """A tfds image dataset, deterministic in (seed, step, process); the position is the step, taken in order."""

  def __init__(self, name: str, *, split: str, data_dir: Optional[str], shuffle_buffer: int,
               image_key: str, label_key: str, image_res: int, global_batch_size: int, seed: int,
               process_index: int, process_count: int, uint8_images: bool = False):
    self._tf = _import_tf()
    self.uint8_images = bool(uint8_images)  # batches of uint8 pixels (scaled on device), not float32
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._builder = _tfds_builder(name, data_dir)
    self.name = name
    features = self._builder.info.features
    if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
      raise ValueError(f'dataset.image_key {image_key!r} is not an Image feature of {name!r}; its '
                       f'features are {sorted(features.keys())}')
    image_feature = features[image_key]
    if image_feature.dtype != self._tf.uint8:
      raise ValueError(f'dataset.name {name!r}: images must be uint8; got {image_feature.dtype}')
    self._image_feature = image_feature
    self._image_key = image_key
    label_feature = features[label_key] if label_key in features else None
    has_labels = isinstance(label_feature, tfds.features.ClassLabel)
    self._label_key = label_key if has_labels else None
    super().__init__(num_classes=int(label_feature.num_classes) if has_labels else 0,
                     num_channels=int(image_feature.shape[-1]), global_batch_size=global_batch_size,
                     seed=seed, process_index=process_index, process_count=process_count)
    self.image_res = image_res
    self.shuffle_buffer = shuffle_buffer
    self._split = (tfds.split_for_jax_process(split, process_index=process_index,
                                              process_count=process_count)
                   if process_count > 1 else split)
    self._records = _as_dataset(self._builder, self._split, image_key, name)
    n = int(self._records.cardinality().numpy())
    if n < 0:
      n = int(self._builder.info.splits[self._split].num_examples)
    if n <= 0:
      raise ValueError(f'dataset.split {split!r} of {name!r} holds no examples for process '
                       f'{process_index} of {process_count}')
    self.num_examples = n  # This process's shard.
    self._iterator = None
    self._position_fixed = False

  def _decode(self, example, uint8=None):
    """Encoded example -> dict(image float32 [r, r, c] in [-1, 1] (uint8 with uint8_images), label int32)."""
    tf = self._tf
    image = self._image_feature.decode_example(example[self._image_key])
    label = (tf.cast(example[self._label_key], tf.int32) if self._label_key
             else tf.constant(0, tf.int32))
    uint8 = self.uint8_images if uint8 is None else uint8
    return dict(image=resize_and_center_crop(image, self.image_res, uint8), label=label)

  def _epoch(self, epoch):
    """One pass over this process's records, shuffled with a seed derived from (seed, epoch)."""
    tf = self._tf
    epoch_seed = tf.random.stateless_uniform(
        [], seed=tf.stack([tf.constant(self.seed, tf.int64), epoch]), minval=None, maxval=None,
        dtype=tf.int64)
    return self._records.shuffle(self.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)

  def _make_iterator(self, step: int):
    tf = self._tf
    start_epoch, offset = divmod(step * self.per_process_batch_size, self.num_examples)
    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(self._epoch)
    ds = ds.skip(offset)  # On encoded records: no decoding of the skipped examples.
    ds = ds.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(self.per_process_batch_size, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).as_numpy_iterator()

  def next_batch(self, step: int) -> dict:
    """The batch for global step `step`; steps must follow 0, 1, 2, ... (or the restored state's step).

    The first call on a fresh dataset may start at any step (it skips there, deterministically).
    """
    step = as_int(step, 'step', 0)
    if step != self._next_step:
      if self._position_fixed:
        raise ValueError(f'tfds dataset is positioned at step {self._next_step} but step {step} was '
                         'requested; batches must be taken in order (restore a position with set_state)')
      self._next_step, self._iterator = step, None
    if self._iterator is None:
      self._iterator = self._make_iterator(step)
    self._position_fixed = True
    batch = next(self._iterator)
    self._next_step += 1
    return dict(image=batch['image'], label=batch['label'])

  def get_state(self) -> dict:
    """{'step': next step, 'seed', 'global_batch_size', 'process_count'}: ints, identical on all hosts."""
    return dict(step=self._next_step, seed=self.seed, global_batch_size=self.global_batch_size,
                process_count=self.process_count)

  def set_state(self, state: dict) -> None:
    """Restores `get_state()`: the next `next_batch` must ask for `state['step']`."""
    self._next_step = check_state(state, dict(seed=self.seed, global_batch_size=self.global_batch_size,
                                               process_count=self.process_count))
    self._iterator = None
    self._position_fixed = True

  def eval_images(self, split: str, num: int) -> np.ndarray:
    """The first `num` images of `split` (all of it, not sharded), decoded like the training batches."""
    records = _as_dataset(self._builder, split, self._image_key, self.name)
    n = int(records.cardinality().numpy())
    if 0 <= n < num:
      raise ValueError(f'num={num} eval images requested but dataset.split {split!r} holds {n}')
    ds = records.take(num).map(lambda e: self._decode(e, uint8=False)).batch(num)
    out = next(ds.as_numpy_iterator())['image']
    if out.shape[0] != num:
      raise ValueError(f'num={num} eval images requested but dataset.split {split!r} holds {out.shape[0]}')
    return out


# ------------------------------------------------------------------------------------------------------
# Public entry points.
# ------------------------------------------------------------------------------------------------------


def process_layout(global_batch_size, process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  process_count = as_int(process_count, 'process_count', 1)
  process_index = as_int(process_index, 'process_index', 0)
  if process_index >= process_count:
    raise ValueError(f'process_index must be in [0, {process_count}); got {process_index}')
  global_batch_size = as_int(global_batch_size, 'batch_size', 1)
  if global_batch_size % process_count:
    raise ValueError(f'batch_size ({global_batch_size}, global) must be divisible by the process count '
                     f'{process_count}')
  return global_batch_size, process_index, process_count


# Dataset builders registered by other packages, by name prefix (e.g. spectral's 'latents:<dir>'); each
# builder takes get_dataset's arguments and returns an object with the same interface.
DATASETS = registry.Registry('dataset', field='dataset.name')
DATASET_BUILDERS = {}  # prefix -> builder, as registered


def register_dataset(prefix: str, builder) -> None:
  """Routes `dataset.name` values starting with `prefix` to `builder(dataset_config, *, image_res, ...)`."""
  if not isinstance(prefix, str) or not prefix:
    raise ValueError(f'dataset prefix must be a non-empty string; got {prefix!r}')
  DATASET_BUILDERS[prefix] = builder
  DATASETS.register_pattern(re.escape(prefix) + '.*', prefix, lambda name, match: builder)


def get_dataset(dataset_config, *, image_res: int, global_batch_size: int, seed: int,
                process_index: Optional[int] = None, process_count: Optional[int] = None,
                uint8_images: bool = False):
  """Builds the training input pipeline (see the module docstring).

  dataset_config fields: `name` ('fashion_mnist' or a tfds name), `split` ('train'), `data_dir` (None: the
  default location), `shuffle_buffer` (tfds only, default 10000), `image_key`/`label_key` (tfds only,
  default 'image'/'label'). Returns an object with `num_classes` (0 if unlabeled), `num_channels`,
  `per_process_batch_size`, `num_examples`, `next_batch(step)`, `get_state()` and `set_state(state)`.
  uint8_images: Fashion-MNIST and tfds batches carry uint8 pixels where they are 8-bit values, to be scaled
  on device by `sid2.host_input.uint8_to_unit` (the trainer does); registered datasets ignore it.
  """
  name = cfg_get(dataset_config, 'name', 'fashion_mnist')
  if not isinstance(name, str) or not name:
    raise ValueError(f"dataset.name must be 'fashion_mnist' or a tfds dataset name; got {name!r}")
  builder = DATASETS.find(name)
  if builder is not None:
    return builder(dataset_config, image_res=image_res, global_batch_size=global_batch_size, seed=seed,
                   process_index=process_index, process_count=process_count)
  split = cfg_get(dataset_config, 'split', 'train')
  data_dir = cfg_get(dataset_config, 'data_dir', None)
  image_res = as_int(image_res, 'image_res', 1)
  seed = as_int(seed, 'seed', 0)
  global_batch_size, process_index, process_count = process_layout(
      global_batch_size, process_index, process_count)
  if name == 'fashion_mnist':
    _check_fashion_res(image_res)
    images, labels = load_fashion_mnist(data_dir, split)
    return InMemoryDataset(
        images, labels, num_classes=FASHION_MNIST_CLASSES, num_channels=1,
        transform=functools.partial(fit_fashion_resolution, image_res=image_res, uint8=uint8_images),
        global_batch_size=global_batch_size, seed=seed, process_index=process_index,
        process_count=process_count)
  shuffle_buffer = as_int(cfg_get(dataset_config, 'shuffle_buffer', DEFAULT_SHUFFLE_BUFFER),
                           'dataset.shuffle_buffer', 1)
  return TfdsDataset(
      name, split=split, data_dir=data_dir, shuffle_buffer=shuffle_buffer,
      image_key=cfg_get(dataset_config, 'image_key', 'image'),
      label_key=cfg_get(dataset_config, 'label_key', 'label'), image_res=image_res,
      global_batch_size=global_batch_size, seed=seed, process_index=process_index,
      process_count=process_count, uint8_images=uint8_images)


def load_eval_images(dataset_config, image_res: int, num: int) -> np.ndarray:
  """A fixed set of real images, float32 [num, r, r, C] in [-1, 1]: the first `num` of `dataset.split`.

  Not sharded: every process gets the same array (for Frechet distances and sample plots).
  """
  name = cfg_get(dataset_config, 'name', 'fashion_mnist')
  split = cfg_get(dataset_config, 'split', 'train')
  data_dir = cfg_get(dataset_config, 'data_dir', None)
  image_res = as_int(image_res, 'image_res', 1)
  num = as_int(num, 'num', 1)
  for prefix, builder in DATASET_BUILDERS.items():  # registered datasets that offer eval_images(num)
    if name.startswith(prefix):
      ds = builder(dataset_config, image_res=image_res, global_batch_size=1, seed=0, process_index=0,
                   process_count=1)
      if not hasattr(ds, 'eval_images'):
        raise ValueError(f'dataset.name={name!r} provides no evaluation images')
      return ds.eval_images(num)
  if name == 'fashion_mnist':
    _check_fashion_res(image_res)
    images, _ = load_fashion_mnist(data_dir, split)
    if num > images.shape[0]:
      raise ValueError(f'num={num} eval images requested but dataset.split {split!r} holds '
                       f'{images.shape[0]}')
    return fit_fashion_resolution(images[:num], image_res)
  ds = TfdsDataset(
      name, split=split, data_dir=data_dir, shuffle_buffer=1,
      image_key=cfg_get(dataset_config, 'image_key', 'image'),
      label_key=cfg_get(dataset_config, 'label_key', 'label'), image_res=image_res,
      global_batch_size=1, seed=0, process_index=0, process_count=1)
  return ds.eval_images(split, num)

