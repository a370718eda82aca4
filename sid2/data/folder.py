"""Your own images: `dataset.name = 'folder:<path>'` (a directory tree) or `'zip:<path>'` (a zip archive).

Files: every member ending in .png, .jpg, .jpeg, .bmp, .webp, .gif or .tif(f) (case-insensitive), listed
recursively and sorted by their path relative to the root, so the index is the same on every host.
Labels, in this order:
  * `dataset.labels_file` (a path relative to the root, or absolute for folders): JSON, either
    {"labels": [[relative_path, class], ...]} (EDM's dataset.json) or {relative_path: class}; every image
    must be listed, classes are ints >= 0 and num_classes = max + 1;
  * else, when every image lies inside a first-level sub-folder: the sorted sub-folder names are the classes
    0, 1, ... (ImageFolder convention);
  * else unlabeled (num_classes = 0, labels 0).
Preprocessing matches the tfds path (`sid2.data.resize_and_center_crop`): the shorter side is resized to
`image_res` (bilinear, antialiased; PIL's filter widens with the downscale factor as tf's antialias does;
computed in float, so values are not rounded to uint8) and the center is cropped; an image already
`image_res` square passes through unresampled (exact multiples of 1/127.5). Channels: `dataset.num_channels`
(1 or 3) converts every image; unset, every image must have the same channel count (grey 1, RGB 3; palette
images count as RGB, alpha is dropped), else a ValueError lists examples of each. `dataset.random_flip`
(default False) flips an example horizontally with probability 1/2, decided by (seed, global stream
position), so a step's flips do not depend on the process count or on resuming.

Determinism and resuming: the batch is a pure function of (seed, step, process), as for the in-memory
Fashion-MNIST (`sid2.data.InMemoryDataset`, which this class extends with the file index as its "images"):
per-epoch permutations `default_rng([seed, epoch])`, global step k takes stream positions [kB, (k+1)B),
process p the p-th of P equal parts; the checkpointed state is {step, seed, global_batch_size}.

Why not grain? `grain` (0.2.18 on PyPI, installs here) is the JAX ecosystem's loader for deterministic
multi-host input, and its index sampler gives the same guarantees as the permutation above. But the
project already has that index logic (tested for resume and multi-process equality), grain's state would
be one more serialised object per host, and the heavy part, decoding, runs here in a thread pool (PIL
releases the GIL while decoding) without a new dependency. For large runs the tfds path (prepared
TFRecords) remains the scalable option.

Bad input fails when the dataset is built, before any compute: a missing or empty folder/zip, a file PIL
cannot open (its path), mixed channel counts, a labels file that misses images or is malformed. A file
that opens but fails to decode later raises a ValueError with its path at the batch that reads it.
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import os
import threading
import zipfile
from typing import Optional

import numpy as np

from sid2.data import core

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.gif', '.tif', '.tiff')
MODE_CHANNELS = {'1': 1, 'L': 1, 'I': 1, 'I;16': 1, 'F': 1, 'LA': 1, 'P': 3, 'PA': 3, 'RGB': 3, 'RGBA': 3,
                 'CMYK': 3, 'YCbCr': 3}
CONVERT_MODE = {1: 'L', 3: 'RGB'}
PREFIXES = ('folder:', 'zip:')
_FLIP_STREAM = 0x666C6970  # separates the flip draws from the permutation draws of the same seed


# ------------------------------------------------------------------------------------------------------
# Sources: a folder or a zip, read by relative path.

class _FolderSource:
  def __init__(self, root: str):
    if not os.path.isdir(root):
      raise ValueError(f"dataset.name='folder:{root}': {root} is not a directory")
    self.root = root
    self.desc = f'folder {root}'

  def list(self):
    out = []
    for d, _, files in os.walk(self.root):
      out.extend(os.path.relpath(os.path.join(d, f), self.root) for f in files)
    return [p.replace(os.sep, '/') for p in out]

  def read(self, rel: str) -> bytes:
    with open(os.path.join(self.root, rel), 'rb') as f:
      return f.read()

  def path(self, rel: str) -> str:
    return os.path.join(self.root, rel)


class _ZipSource:
  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise ValueError(f"dataset.name='zip:{path}': {path} is not a file")
    try:
      with zipfile.ZipFile(path) as z:
        self._names = [i.filename for i in z.infolist() if not i.is_dir()]
    except zipfile.BadZipFile as e:
      raise ValueError(f"dataset.name='zip:{path}': {path} is not a readable zip archive ({e})") from None
    self.root = path
    self.desc = f'zip {path}'
    self._local = threading.local()  # one ZipFile handle per decoding thread

  def list(self):
    return list(self._names)

  def read(self, rel: str) -> bytes:
    z = getattr(self._local, 'zip', None)
    if z is None:
      z = self._local.zip = zipfile.ZipFile(self.root)
    return z.read(rel)

  def path(self, rel: str) -> str:
    return f'{self.root}:{rel}'


def make_source(name: str):
  """The source for a `folder:<path>` or `zip:<path>` dataset name."""
  kind, _, path = name.partition(':')
  if not path:
    raise ValueError(f"dataset.name={name!r} needs a path: 'folder:<directory>' or 'zip:<file.zip>'")
  path = os.path.abspath(os.path.expanduser(path))
  return _FolderSource(path) if kind == 'folder' else _ZipSource(path)


# ------------------------------------------------------------------------------------------------------
# Index: files, labels, channels (all checked up front).

def list_images(source) -> list:
  """Sorted relative paths of the image files; ValueError when there is none."""
  files = sorted(p for p in source.list() if p.lower().endswith(EXTENSIONS) and not _hidden(p))
  if not files:
    raise ValueError(f'{source.desc} holds no images (expected files ending in {", ".join(EXTENSIONS)})')
  return files


def _hidden(rel: str) -> bool:
  return any(part.startswith('.') or part == '__MACOSX' for part in rel.split('/'))


def labels_from_file(source, files, labels_file: str):
  """(labels int32 [n], num_classes) from a JSON labels file (see the module docstring)."""
  try:
    if os.path.isabs(labels_file) or isinstance(source, _FolderSource):
      path = labels_file if os.path.isabs(labels_file) else source.path(labels_file)
      with open(path, 'rb') as f:
        raw = json.loads(f.read())
    else:
      raw = json.loads(source.read(labels_file))
  except (OSError, KeyError, ValueError) as e:
    raise ValueError(f'dataset.labels_file={labels_file!r} of {source.desc} could not be read as JSON '
                     f'({type(e).__name__}: {e})') from None
  pairs = raw.get('labels', None) if isinstance(raw, dict) and 'labels' in raw else raw
  if isinstance(pairs, dict):
    pairs = list(pairs.items())
  if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
    raise ValueError(f'dataset.labels_file={labels_file!r}: expected {{"labels": [[path, class], ...]}} or '
                     '{path: class}')
  table = {str(p).replace(os.sep, '/'): c for p, c in pairs}
  missing = [f for f in files if f not in table]
  if missing:
    raise ValueError(f'dataset.labels_file={labels_file!r} has no label for {len(missing)} of {len(files)} '
                     f'images, e.g. {missing[:3]}')
  labels = [table[f] for f in files]
  bad = [(f, c) for f, c in zip(files, labels) if isinstance(c, bool) or not isinstance(c, int) or c < 0]
  if bad:
    raise ValueError(f'dataset.labels_file={labels_file!r}: classes must be ints >= 0; got {bad[:3]}')
  labels = np.asarray(labels, np.int32)
  return labels, int(labels.max()) + 1


def labels_from_folders(files):
  """(labels, num_classes, class names): sorted first-level sub-folders, or unlabeled (0) if any image is
  at the root."""
  if any('/' not in f for f in files):
    return np.zeros(len(files), np.int32), 0, []
  names = sorted({f.split('/', 1)[0] for f in files})
  index = {n: i for i, n in enumerate(names)}
  return np.asarray([index[f.split('/', 1)[0]] for f in files], np.int32), len(names), names


def image_channels(source, files, num_workers: int) -> np.ndarray:
  """Channel count of every file from its header (PIL opens lazily); ValueError naming an unreadable one."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def channels(rel):
    try:
      with Image.open(io.BytesIO(source.read(rel))) as im:
        mode = im.mode
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
      raise ValueError(f'{source.path(rel)} is not a readable image ({type(e).__name__}: {e})') from None
    if mode not in MODE_CHANNELS:
      raise ValueError(f'{source.path(rel)} has image mode {mode!r}; supported: {sorted(MODE_CHANNELS)}')
    return MODE_CHANNELS[mode]
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    return np.asarray(list(pool.map(channels, files)), np.int32)


def resolve_channels(source, files, counts, requested: Optional[int]) -> int:
  """dataset.num_channels if set (1 or 3: images are converted), else the one count all images share."""
  if requested:
    if requested not in CONVERT_MODE:
      raise ValueError(f'dataset.num_channels must be 1 or 3 for image folders; got {requested}')
    return requested
  found = sorted(set(counts.tolist()))
  if len(found) > 1:
    examples = '; '.join(f'{c} channels: {[files[i] for i in np.nonzero(counts == c)[0][:2]]}' for c in found)
    raise ValueError(f'{source.desc} mixes channel counts {found} ({examples}); expected one channel count '
                     'for all images: set dataset.num_channels=1 or 3 to convert them')
  return found[0]


# ------------------------------------------------------------------------------------------------------
# Decoding and preprocessing.

def fit_image(im, image_res: int, num_channels: int) -> np.ndarray:
  """PIL image -> float32 [r, r, c] in [-1, 1]: shorter side to r (bilinear, antialiased), center crop.

  Same geometry as `sid2.data.resize_and_center_crop`: new size round(h r / min(h, w)) (at least r), crop
  offsets floor((new - r) / 2); an image already r x r is not resampled.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  im = im.convert(CONVERT_MODE[num_channels])
  w, h = im.size
  scale = image_res / min(h, w)
  new_h, new_w = max(image_res, int(round(h * scale))), max(image_res, int(round(w * scale)))
  if (new_h, new_w) == (h, w):
    x = np.asarray(im, np.float32).reshape(h, w, num_channels)
  else:
    bands = [np.asarray(b.convert('F').resize((new_w, new_h), Image.BILINEAR), np.float32) for b in im.split()]
    x = np.stack(bands, axis=-1)
  top, left = (new_h - image_res) // 2, (new_w - image_res) // 2
  x = x[top:top + image_res, left:left + image_res]
  return np.clip(x / np.float32(127.5) - np.float32(1.0), -1.0, 1.0)


def decode(source, rel: str, image_res: int, num_channels: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(source.read(rel))) as im:
      im.load()
      return fit_image(im, image_res, num_channels)
  except Exception as e:
    raise ValueError(f'{source.path(rel)} could not be decoded as an image ({type(e).__name__}: {e})') from None


def flip_mask(seed: int, step: int, global_batch_size: int) -> np.ndarray:
  """Which examples of global step `step` are flipped: Bernoulli(1/2) per global batch position."""
  return np.random.default_rng([seed, _FLIP_STREAM, step]).random(global_batch_size) < 0.5


class ImageFolderDataset(core.InMemoryDataset):
  """Images decoded from a folder or zip per batch; the order logic is InMemoryDataset's (pure in step)."""

  def __init__(self, source, files, labels, *, num_classes, num_channels, image_res, random_flip,
               num_workers, global_batch_size, seed, process_index, process_count):
    self.source = source
    self.files = list(files)
    self.image_res = image_res
    self.random_flip = random_flip
    self._pool = concurrent.futures.ThreadPoolExecutor(num_workers)
    super().__init__(np.arange(len(files), dtype=np.int64), labels, num_classes=num_classes,
                     num_channels=num_channels, transform=self._load, global_batch_size=global_batch_size,
                     seed=seed, process_index=process_index, process_count=process_count)

  def _load(self, indices) -> np.ndarray:
    fn = lambda i: decode(self.source, self.files[int(i)], self.image_res, self.num_channels)
    return np.stack(list(self._pool.map(fn, indices)))

  def next_batch(self, step: int) -> dict:
    """InMemoryDataset's batch for `step`, with this process's part of the step's flips applied."""
    batch = super().next_batch(step)
    if self.random_flip:
      b = self.per_process_batch_size
      mask = flip_mask(self.seed, int(step), self.global_batch_size)[self.process_index * b:][:b]
      batch['image'] = np.where(mask[:, None, None, None], batch['image'][:, :, ::-1], batch['image'])
    return batch

  def eval_images(self, num: int) -> np.ndarray:
    """The first `num` images in index order (unflipped), for Frechet distances and plots."""
    if num > len(self.files):
      raise ValueError(f'num={num} eval images requested but {self.source.desc} holds {len(self.files)}')
    return self._load(np.arange(num))


def build_image_folder(dataset_config, *, image_res, global_batch_size, seed, process_index=None,
                       process_count=None):
  """`sid2.data.get_dataset` builder for 'folder:<path>' and 'zip:<path>' (see the module docstring)."""
  get = lambda k, d: core.cfg_get(dataset_config, k, d)
  image_res = core.as_int(image_res, 'image_res', 1)
  seed = core.as_int(seed, 'seed', 0)
  global_batch_size, process_index, process_count = core.process_layout(
      global_batch_size, process_index, process_count)
  random_flip = get('random_flip', False)
  if not isinstance(random_flip, bool):
    raise ValueError(f'dataset.random_flip must be True or False; got {random_flip!r}')
  source = make_source(get('name', ''))
  files = list_images(source)
  num_workers = min(16, os.cpu_count() or 1)
  counts = image_channels(source, files, num_workers)
  num_channels = resolve_channels(source, files, counts, get('num_channels', 0))
  labels_file = get('labels_file', '')
  if labels_file:
    labels, num_classes = labels_from_file(source, files, labels_file)
  else:
    labels, num_classes, _ = labels_from_folders(files)
  want_classes = get('num_classes', 0)
  if want_classes and num_classes > want_classes:
    raise ValueError(f'dataset.num_classes={want_classes} but {source.desc} has {num_classes} classes')
  return ImageFolderDataset(source, files, labels, num_classes=num_classes, num_channels=num_channels,
                            image_res=image_res, random_flip=random_flip, num_workers=num_workers,
                            global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                            process_count=process_count)


def register():
  """Routes 'folder:<path>' and 'zip:<path>' to `build_image_folder` (sid2.data calls it once)."""
  for prefix in PREFIXES:
    core.register_dataset(prefix, build_image_folder)
