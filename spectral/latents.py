"""Datasets of pre-computed autoencoder latents (Spectral Diffusion trains on LDM latents, supplement
Tables 2-3: f=4 VQ 64x64x3, f=8 KL 32x32x4).

`dataset.name = 'latents:<folder>'`: the folder is `<dataset.data_dir>/<folder>` (or `<folder>` itself when
data_dir is empty) and holds, for a split (`dataset.split`, default 'train'), either
  <split>.npy                [N, h, w, c] float16/float32 latents (read with allow_pickle=False, memory-mapped),
  <split>_labels.npy         optional [N] integer class labels,
  <split>_text.npy           optional [N, S, D] float text embeddings (e.g. CLIP ViT-L/14, [N, 77, 768]),
or
  <split>.safetensors        tensors 'latents' [N, h, w, c] and optionally 'labels' [N], 'text' [N, S, D],
and optionally `latents.json` = {"scale_factor": s, "shift": m, "autoencoder": {"sha256": ..., "path": ...}}:
the model sees (latent - m) * s (LDM scales its KL-f8 latents by 0.18215; the VQ-f4 latents are used as they
are: s = 1, m = 0). With `dataset.autoencoder_sha256` set, latents made by another autoencoder are refused
before training. `spectral.autoencoder` (python -m experiments.train_autoencoder) writes such folders.

Batches come from sid2.data's in-memory dataset, so the order is a pure function of (seed, step, process)
and the checkpointed position is the step. The batch is {'image': float32 [b, h, w, c], 'label': int32 [b]}
(labels 0 without a labels file) plus 'text': float32 [b, S, D] when text embeddings are present; the train
step then conditions on batch['text'] (a model with conditioning='text'), dropping rows to the null context
with probability cond_drop_prob. Decoding latent samples back to pixels needs the autoencoder's decoder, which
is not part of this repository: `experiments.sample --format npz` writes the raw latents (divide by
scale_factor and add shift before decoding).
"""
from __future__ import annotations

import json
import os

import numpy as np

from sid2 import data as data_lib

PREFIX = 'latents:'
META_FILE = 'latents.json'


def latents_dir(dataset_config):
  """The folder named by `dataset.name = 'latents:<folder>'` under `dataset.data_dir`."""
  name = dataset_config.get('name', '')
  if not isinstance(name, str) or not name.startswith(PREFIX) or len(name) == len(PREFIX):
    raise ValueError(f"dataset.name must be '{PREFIX}<folder>' for a latents dataset; got {name!r}")
  data_dir = dataset_config.get('data_dir', '') or ''
  return os.path.join(data_dir, name[len(PREFIX):]) if data_dir else name[len(PREFIX):]


def _read_meta(directory):
  """(scale_factor, shift) from latents.json, (1, 0) without one."""
  path = os.path.join(directory, META_FILE)
  if not os.path.exists(path):
    return 1.0, 0.0
  with open(path) as f:
    meta = json.load(f)
  unknown = sorted(set(meta) - {'scale_factor', 'shift', 'autoencoder'})
  if unknown:
    raise ValueError(f'{path}: unknown field(s) {unknown}; allowed: scale_factor, shift, autoencoder')
  scale, shift = meta.get('scale_factor', 1.0), meta.get('shift', 0.0)
  for key, v in (('scale_factor', scale), ('shift', shift)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
      raise ValueError(f'{path}: {key} must be a finite number; got {v!r}')
  if scale == 0:
    raise ValueError(f'{path}: scale_factor must be non-zero')
  return float(scale), float(shift)


def autoencoder_sha256(directory):
  """The sha256 of the autoencoder that made the latents in `directory` (latents.json), '' if not recorded."""
  path = os.path.join(directory, META_FILE)
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    ae = json.load(f).get('autoencoder', {}) or {}
  return str(ae.get('sha256', '') or '')


def check_autoencoder(dataset_config, directory):
  """ValueError unless the latents were made by `dataset.autoencoder_sha256` (when set), naming both shas."""
  want = dataset_config.get('autoencoder_sha256', '') or ''
  if not want:
    return
  got = autoencoder_sha256(directory)
  if got != want:
    raise ValueError(f'dataset.autoencoder_sha256={want} but the latents in {directory} were made by the '
                     f'autoencoder with sha256 {got or "(not recorded in latents.json)"}: another autoencoder')


def _load_npy(path, mmap_mode=None):
  """np.load with allow_pickle=False; object (pickled) arrays are refused with a ValueError naming the file."""
  try:
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f'{path}: not a plain numeric .npy array (object arrays need pickle, which is never '
                     f'used here): {e}') from None


def load_latents(directory, split='train'):
  """(latents [N, h, w, c], labels int32 [N] or None, text [N, S, D] or None) of `split` in `directory`."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'latents folder {directory} does not exist (dataset.name / dataset.data_dir)')
  npy = os.path.join(directory, f'{split}.npy')
  st = os.path.join(directory, f'{split}.safetensors')
  if os.path.exists(npy):
    latents = _load_npy(npy, mmap_mode='r')
    label_path = os.path.join(directory, f'{split}_labels.npy')
    labels = _load_npy(label_path) if os.path.exists(label_path) else None
    text_path = os.path.join(directory, f'{split}_text.npy')
    text = _load_npy(text_path, mmap_mode='r') if os.path.exists(text_path) else None
  elif os.path.exists(st):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    tensors = load_file(st)
    if 'latents' not in tensors:
      raise ValueError(f"{st} must hold a tensor named 'latents'; it holds {sorted(tensors)}")
    unknown = sorted(set(tensors) - {'latents', 'labels', 'text'})
    if unknown:
      raise ValueError(f"{st}: unknown tensor(s) {unknown}; allowed: 'latents', 'labels', 'text'")
    latents, labels, text = tensors['latents'], tensors.get('labels'), tensors.get('text')
  else:
    raise FileNotFoundError(f'no {split}.npy or {split}.safetensors in {directory} (dataset.split={split!r})')
  if latents.ndim != 4 or not np.issubdtype(latents.dtype, np.floating):
    raise ValueError(f'latents of {directory}/{split} must be floating [N, h, w, c]; got {latents.dtype} '
                     f'{latents.shape}')
  if labels is not None:
    if labels.shape != (latents.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f'labels of {directory}/{split} must be integers [{latents.shape[0]}]; got '
                       f'{labels.dtype} {labels.shape}')
    labels = labels.astype(np.int32)
  if text is not None and (text.ndim != 3 or text.shape[0] != latents.shape[0] or
                           not np.issubdtype(text.dtype, np.floating)):
    raise ValueError(f'text embeddings of {directory}/{split} must be floating [{latents.shape[0]}, S, D]; got '
                     f'{text.dtype} {text.shape}')
  return latents, labels, text


def _process_layout(global_batch_size, process_index, process_count):
  """(process_index, process_count), from JAX when None; ValueError for an indivisible batch size."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index must be in [0, {process_count}); got {process_index}')
  if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, (int, np.integer)) or (
      global_batch_size < 1 or global_batch_size % process_count):
    raise ValueError(f'batch_size must be a positive int divisible by the process count {process_count}; '
                     f'got {global_batch_size!r}')
  return int(process_index), int(process_count)


def get_latents_dataset(dataset_config, *, image_res, global_batch_size, seed, process_index=None,
                        process_count=None):
  """A dataset over pre-computed latents with sid2.data's interface (`num_classes`, `num_channels`,
  `per_process_batch_size`, `next_batch(step)`, `get_state()`, `set_state(state)`).

  `image_res` must equal the latents' height and width. num_classes: `dataset.num_classes` when set
  (labels must lie below it), else max(label) + 1 with a labels file, else 0.
  """
  directory = latents_dir(dataset_config)
  check_autoencoder(dataset_config, directory)
  split = dataset_config.get('split', 'train') or 'train'
  latents, labels, text = load_latents(directory, split)
  n, h, w, c = latents.shape
  if h != image_res or w != image_res:
    raise ValueError(f'image_res={image_res} must equal the latents\' size {h}x{w} ({directory}/{split})')
  num_classes = int(dataset_config.get('num_classes', 0) or 0)
  if labels is None:
    labels = np.zeros((n,), np.int32)
  else:
    if labels.size and labels.min() < 0:
      raise ValueError(f'labels of {directory}/{split} must be >= 0')
    if num_classes == 0:
      num_classes = int(labels.max()) + 1 if labels.size else 0
    elif labels.size and labels.max() >= num_classes:
      raise ValueError(f'labels of {directory}/{split} reach {int(labels.max())} but dataset.num_classes='
                       f'{num_classes}')
  scale, shift = _read_meta(directory)

  def transform(batch):
    """Stored latents -> (latent - shift) * scale_factor, float32."""
    return (np.asarray(batch, np.float32) - np.float32(shift)) * np.float32(scale)

  process_index, process_count = _process_layout(global_batch_size, process_index, process_count)
  return data_lib.InMemoryDataset(latents, labels, num_classes=num_classes, num_channels=c,
                                  transform=transform, global_batch_size=global_batch_size, seed=int(seed),
                                  process_index=process_index, process_count=process_count,
                                  extras=None if text is None else dict(text=text))


def register():
  """Registers 'latents:' with sid2.data when it offers `register_dataset(prefix, builder)`; True if so."""
  hook = getattr(data_lib, 'register_dataset', None)
  if hook is None:
    return False
  hook(PREFIX, get_latents_dataset)
  return True
