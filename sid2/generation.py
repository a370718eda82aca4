"""Sample generation from a trained workdir: settings, per-sample keys, chunked and sharded (SPEC §6, §7, §12).

The library behind `experiments.sample`, `experiments.evaluate`, `experiments.spectra` and
`experiments.reference_stats` (the commands only parse flags and write files).

Randomness: sample i (a global index 0..N-1) is drawn from `jax.random.fold_in(PRNGKey(seed), i)` alone
(the sampler vmapped over samples, each with its own key), so it depends only on (seed, i, its label, the
settings), not on N, the chunk size, the device count or the process count.

Devices: the chunk of `batch_size` samples (rounded up to a multiple of the global device count) is one
jitted call whose sample axis is sharded (`NamedSharding` over a 1-D mesh 'data' of all devices, parameters
replicated). On several processes every host runs the same loop; the global index array is split by the
sharding, so each host computes and receives only the samples of its own devices (`local_rows`).

Autoguidance (SiD2 B.5): settings with a `guide` ({workdir, step, params_sha256}; `sampling.GuideSettings`)
sample with `sample_fns.make_autoguided_sample_fn`, whose parameters are the pair (model, guide), both
replicated. `resolve_settings` checks the guide's config against the model's (`restore.check_guide`), and
`prepare` checks the restored channel counts and the recorded guide sha256 before anything is sampled.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Iterator, Optional

import numpy as np

from sid2 import restore
from sid2 import sampling

OUT_EXTENSIONS = ('.png', '.npz')
# 2: per-sample keys fold_in(PRNGKey(seed), i) (version 1 used one key per chunk of batch_size).
SETTINGS_VERSION = 2
DATA_AXIS = 'data'


# ---------------------------------------------------------------------------------------------------------
# Parsing and validation (all before any compute).

parse_interval = sampling.parse_interval  # 'lo,hi' -> (lo, hi); 'none' -> None


def parse_labels(text: str) -> list:
  """'0,1,2' -> [0, 1, 2]; ValueError for anything but comma-separated integers."""
  try:
    labels = [int(p) for p in text.split(',')]
  except (AttributeError, ValueError):
    raise ValueError(f"labels must be comma-separated integers, e.g. '0,1,2'; got {text!r}") from None
  return labels


def positive_int(value, field):
  """`value` if it is a positive int, else ValueError naming `field`."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'{field} must be a positive integer; got {value!r}')
  return value


def resolve_settings(raw: dict, config) -> dict:
  """Complete, validated settings from user values (None = the config's default). ValueError naming the
  field for anything invalid; nothing is computed. Keys: those of `experiments.sample`'s flags."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  s_cfg = config.sampler
  out = raw.get('out')
  if not out or os.path.splitext(out)[1].lower() not in OUT_EXTENSIONS:
    raise ValueError(f'out must be a file name ending in one of {OUT_EXTENSIONS}; got {out!r}')
  num_samples = raw.get('num_samples')
  num_samples = positive_int(s_cfg.get('num_samples', 64) if num_samples is None else num_samples,
                             'num_samples')
  batch_size = raw.get('batch_size')
  batch_size = positive_int(num_samples if batch_size is None else batch_size, 'batch_size')
  batch_size = min(batch_size, num_samples)
  seed = raw.get('seed', 0)
  if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
    raise ValueError(f'seed must be an integer in [0, 2^63); got {seed!r}')
  sampled = sampling.SamplerSettings.from_flags(config.sampler, raw)  # validates every sampler field
  guidance = sampled.guidance

  labels, class_label = raw.get('labels'), raw.get('class_label')
  num_classes = int(config.model.get('num_classes', 0) or 0)
  if labels is not None and class_label is not None:
    raise ValueError('give at most one of labels and class_label')
  if isinstance(labels, str):
    labels = parse_labels(labels)
  if class_label is not None:
    labels = [class_label]
  if labels is not None:
    if not labels:
      raise ValueError('labels must not be empty')
    restore.check_labels(config, labels)
    labels = [labels[i % len(labels)] for i in range(num_samples)]
  else:
    labels = restore.default_labels(config, num_samples)
  guide = sampling.GuideSettings.from_raw(raw)
  if guide is not None and not sampling.guidance_given(raw):
    raise ValueError(f'with a guide (autoguidance) give guidance w explicitly: it is the autoguidance '
                     f'strength, and the config\'s guidance={s_cfg.get("guidance", None)!r} is a classifier-free '
                     f'guidance strength')
  if not num_classes and guidance != 0 and guide is None:
    logging.warning('the model is unconditional: guidance=%s is ignored', guidance)
    guidance = 0.0

  step = raw.get('step')
  steps = restore.checkpoint_steps(raw['workdir'])
  if not steps:
    raise FileNotFoundError(f'no checkpoints in {restore.checkpoint_dir(raw["workdir"])}')
  if step is not None and step not in steps:
    raise ValueError(f'step={step!r} is not a checkpoint of {raw["workdir"]}; available steps: {steps}')
  resolved = dict(version=SETTINGS_VERSION, workdir=os.path.abspath(raw['workdir']), step=step,
                  num_samples=num_samples, batch_size=batch_size,
                  **sampled.override(guidance=float(guidance)).to_record(),
                  labels=labels, seed=seed,
                  out=os.path.abspath(out), params_sha256=raw.get('params_sha256'))
  if guide is not None:  # only when guided, so unguided records (and evaluation cache keys) are unchanged
    resolved[sampling.GUIDE_RECORD_KEY] = resolve_guide(guide, config, raw['workdir']).to_record()
  return resolved


def resolve_guide(guide: 'sampling.GuideSettings', config, workdir: str) -> 'sampling.GuideSettings':
  """The guide with an absolute workdir, after checking (from the config files, before any checkpoint is
  read) that its model is registered, its step exists and it fits the model (`restore.check_guide`)."""
  guide_config = restore.load_registered_config(guide.workdir)
  steps = restore.checkpoint_steps(guide.workdir)
  if not steps:
    raise FileNotFoundError(f'no checkpoints in {restore.checkpoint_dir(guide.workdir)} (guide_workdir)')
  if guide.step is not None and guide.step not in steps:
    raise ValueError(f'guide_step={guide.step!r} is not a checkpoint of {guide.workdir}; available steps: '
                     f'{steps}')
  restore.check_guide(config, guide_config, workdir=os.path.abspath(workdir),
                      guide_workdir=os.path.abspath(guide.workdir))
  return dataclasses.replace(guide, workdir=os.path.abspath(guide.workdir))


def label_array(settings: dict) -> np.ndarray:
  """int32 [N] labels of the settings (zeros for unconditional models)."""
  n = settings['num_samples']
  return np.asarray(settings['labels'] if settings['labels'] is not None else [0] * n, np.int32)


# ---------------------------------------------------------------------------------------------------------
# Devices and sharded arrays.

def data_mesh(devices=None):
  """A 1-D mesh named 'data' over `devices` (default: every device of every process)."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def sharded(mesh, array: np.ndarray):
  """`array` (the same global value on every process) as a jax.Array split along axis 0 over the mesh."""
  import jax  # pylint: disable=g-import-not-at-top
  spec = jax.sharding.PartitionSpec(DATA_AXIS, *([None] * (array.ndim - 1)))
  sharding = jax.sharding.NamedSharding(mesh, spec)
  return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def replicated(mesh, tree):
  """A pytree of host/device arrays (identical on every process) replicated over the mesh."""
  import jax  # pylint: disable=g-import-not-at-top
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def put(x):
    x = np.asarray(jax.device_get(x)) if not isinstance(x, jax.Array) or x.is_fully_addressable else x
    if isinstance(x, jax.Array):
      return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, tree)


def local_rows(array) -> tuple:
  """(row indices int64 [m], values [m, ...]) of the rows of a jax.Array (split along axis 0) that live on
  this process's devices, ascending, each row once."""
  rows, parts, seen = [], [], set()
  for shard in array.addressable_shards:
    sl = shard.index[0]
    start = 0 if sl.start is None else sl.start
    if start in seen:
      continue  # a replica of a row block already taken
    seen.add(start)
    data = np.asarray(shard.data)
    rows.append(np.arange(start, start + data.shape[0], dtype=np.int64))
    parts.append(data)
  order = np.argsort([r[0] if len(r) else 0 for r in rows])
  return np.concatenate([rows[i] for i in order]), np.concatenate([parts[i] for i in order])


def round_up_batch(batch_size: int, num_devices: int) -> int:
  """The global chunk size: batch_size rounded up to a multiple of the device count."""
  return -(-batch_size // num_devices) * num_devices


# ---------------------------------------------------------------------------------------------------------
# Sampling.

def make_generate_fn(config, num_channels: int, mesh, guide_config=None):
  """`_generate_fn` cached by the sampling-relevant config fields and the mesh (one compilation per setting,
  also across the checkpoints of `evaluate --all_steps`). With `guide_config` the sampler is autoguided and
  its `params` argument is the pair (params, guide params)."""
  # pylint: disable=protected-access
  key = restore._sampler_key(config, 1, num_channels)
  guide_key = None if guide_config is None else restore._guide_key(guide_config)
  # pylint: enable=protected-access
  return _generate_fn(key, mesh, guide_key)


@functools.lru_cache(maxsize=8)
def _generate_fn(key, mesh, guide_key=None):
  """Jitted `gen(params, indices [B], labels [B], base_key, guidance, lo, hi) -> images [B, H, W, C]` in
  [-1, 1] (clipped), sample b drawn with key fold_in(base_key, indices[b]); B sharded over the mesh.
  guide_key: autoguidance (`restore._guide_key` of the guide's config); params is then (params, guide)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  # The 1-sample sampler of sample_fns (autoguided: both models in it).
  one = (restore._cached_sample_fn(*key) if guide_key is None  # pylint: disable=protected-access
         else restore._cached_autoguided_sample_fn(*key, guide_key))  # pylint: disable=protected-access

  def gen(params, indices, labels, base, guidance, lo, hi):
    def draw(index, label):
      key = jax.random.fold_in(base, index)
      return one(params, key, label[None], guidance, lo, hi)[0]
    return jnp.clip(jax.vmap(draw)(indices, labels).astype(jnp.float32), -1.0, 1.0)

  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(gen, in_shardings=(rep, data, data, rep, rep, rep, rep), out_shardings=data)


@dataclasses.dataclass
class Generator:
  """A restored workdir ready to sample: `chunks()` yields the sharded chunks of the settings' samples."""
  settings: dict
  config: object
  params: object
  step: int
  num_channels: int
  params_sha256: str
  mesh: object
  chunk_size: int
  fn: object
  # Autoguidance: the guide's EMA parameters, and {'workdir', 'step', 'params_sha256'} of what was restored.
  guide_params: object = None
  guide: Optional[dict] = None
  _base_key: object = None

  @functools.cached_property
  def sampler(self) -> 'sampling.SamplerSettings':
    """The recorded sampler settings, validated (once)."""
    return sampling.SamplerSettings.from_record(self.settings)

  @property
  def num_chunks(self) -> int:
    return -(-self.settings['num_samples'] // self.chunk_size)

  def chunk(self, k: int):
    """(images jax.Array [chunk_size, H, W, C] sharded, number of valid rows) of chunk k; the rows past N are
    padding (index >= N, label 0) and must be dropped."""
    s, b = self.settings, self.chunk_size
    n = s['num_samples']
    idx = np.arange(k * b, k * b + b, dtype=np.int32)
    labels = label_array(s)
    chunk_labels = np.where(idx < n, labels[np.minimum(idx, n - 1)], 0).astype(np.int32)
    lo, hi = self.sampler.interval_bounds()
    if self._base_key is None:
      import jax  # pylint: disable=g-import-not-at-top
      self._base_key = replicated(self.mesh, np.asarray(jax.random.PRNGKey(s['seed'])))
    params = self.params if self.guide is None else (self.params, self.guide_params)
    x = self.fn(params, sharded(self.mesh, idx), sharded(self.mesh, chunk_labels), self._base_key,
                np.float32(self.sampler.guidance), np.float32(lo), np.float32(hi))
    return x, max(0, min(b, n - k * b))

  def chunks(self, log=print) -> Iterator:
    """Yields (k, images jax.Array [chunk_size, ...] sharded, global start index, valid rows) per chunk."""
    s = self.settings
    guided = (self.guide is not None or int(self.config.model.get('num_classes', 0) or 0) > 0) and \
        self.sampler.guidance != 0
    for k in range(self.num_chunks):
      t0 = time.time()
      x, valid = self.chunk(k)
      x.block_until_ready()
      dt = time.time() - t0
      log(f'  chunk {k + 1}/{self.num_chunks}: samples {k * self.chunk_size}..'
          f'{k * self.chunk_size + valid - 1} in {dt:.2f} s ({self.chunk_size * self.sampler.num_steps / dt:.1f} '
          f'sample-steps/s{", 2 passes per guided step" if guided else ""}'
          f'{", incl. compilation" if k == 0 else ""})')
      yield k, x, k * self.chunk_size, valid

  def record(self, **extra) -> dict:
    """The settings with the restored step, parameter hash, image shape and the device layout."""
    import jax  # pylint: disable=g-import-not-at-top
    res = self.config.image_res
    guide = {} if self.guide is None else {sampling.GUIDE_RECORD_KEY: dict(self.guide)}
    return dict(self.settings, step=self.step, params_sha256=self.params_sha256,
                image_shape=[res, res, self.num_channels], model=self.config.model.name,
                jax_version=jax.__version__, devices=int(self.mesh.devices.size),
                processes=int(jax.process_count()), chunk_size=self.chunk_size, **guide, **extra)


def prepare(settings: dict, config, *, mesh=None, log=print) -> Generator:
  """Restores the EMA parameters (replicated over the mesh), checks the recorded parameter hash, builds the
  sharded sampler. mesh: default `data_mesh()` (all devices of all processes)."""
  from sid2 import export as export_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  mesh = data_mesh() if mesh is None else mesh
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  restored = restore.load(settings['workdir'], settings['step'], config=config, sharding=rep)
  digest = export_lib.params_sha256(restored.params)
  if settings.get('params_sha256') and settings['params_sha256'] != digest:
    raise ValueError(f'the parameters of step {restored.step} (sha256 {digest}) are not those recorded in the '
                     f'settings (sha256 {settings["params_sha256"]}): the samples would differ')
  guide_params, guide, guide_config = None, None, None
  if settings.get(sampling.GUIDE_RECORD_KEY):
    recorded = sampling.GuideSettings(**settings[sampling.GUIDE_RECORD_KEY])
    guide_config = restore.load_registered_config(recorded.workdir)
    r_guide = restore.load(recorded.workdir, recorded.step, config=guide_config, sharding=rep)
    restore.check_guide(config, guide_config, restored.num_channels, r_guide.num_channels,
                        workdir=settings['workdir'], guide_workdir=recorded.workdir)
    guide_digest = export_lib.params_sha256(r_guide.params)
    if recorded.params_sha256 and recorded.params_sha256 != guide_digest:
      raise ValueError(f'the guide\'s parameters ({recorded.workdir} step {r_guide.step}, sha256 {guide_digest}) '
                       f'are not those recorded in the settings (sha256 {recorded.params_sha256}): the samples '
                       'would differ')
    guide_params = r_guide.params
    guide = sampling.GuideSettings(recorded.workdir, r_guide.step, guide_digest).to_record()
  s_config = restore.override_sampler(config, **sampling.overrides_from_record(settings))
  chunk = round_up_batch(settings['batch_size'], int(mesh.devices.size))
  gen = Generator(settings=settings, config=config, params=restored.params, step=restored.step,
                  num_channels=restored.num_channels, params_sha256=digest, mesh=mesh, chunk_size=chunk,
                  fn=make_generate_fn(s_config, restored.num_channels, mesh, guide_config),
                  guide_params=guide_params, guide=guide)
  how = ('guidance' if guide is None else
         f'autoguidance by {guide["workdir"]} step {guide["step"]}, w')
  log(f'sampling {settings["num_samples"]} images from {settings["workdir"]} step {restored.step} (seed '
      f'{settings["seed"]}): {gen.sampler.describe(how)}, {gen.num_chunks} chunk(s) of {chunk} over '
      f'{mesh.devices.size} device(s), {jax.process_count()} process(es)')
  return gen


def local_samples(images, start: int, valid: int) -> tuple:
  """(global indices int64 [m], images numpy [m, ...]) of one chunk's rows on this process, padding dropped."""
  rows, values = local_rows(images)
  keep = rows < valid
  return rows[keep] + start, values[keep]


def generate(settings: dict, config, *, log=print, mesh=None):
  """(images float32 [n, H, W, C] in [-1, 1], labels int32 [n] or None, record, global indices [n]) of this
  process's samples, all held in memory (for small N: sample grids, spectra; use `prepare` + `chunks` and
  stream for large N). On one process n = N and indices = 0..N-1."""
  t_start = time.time()
  gen = prepare(settings, config, mesh=mesh, log=log)
  index_parts, image_parts = [], []
  for _, x, start, valid in gen.chunks(log=log):
    rows, values = local_samples(x, start, valid)
    index_parts.append(rows)
    image_parts.append(values)
  indices = np.concatenate(index_parts)
  images = np.concatenate(image_parts).astype(np.float32)
  labels = label_array(settings)[indices] if settings['labels'] is not None else None
  return images, labels, gen.record(seconds=round(time.time() - t_start, 3)), indices


# ---------------------------------------------------------------------------------------------------------
# Outputs.

def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels round(127.5 (x + 1)) (what saving as PNG does; SPEC §9's scaling)."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_outputs(out: str, images, labels, record: dict) -> str:
  """Writes the PNG grid or the npz (`images` float32, `labels`, `settings` JSON), and `<out>.json`."""
  from sid2.images import save_image_grid  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  text = json.dumps(record, indent=2)
  if out.lower().endswith('.npz'):
    np.savez(out, images=images, labels=np.zeros((0,), np.int32) if labels is None else labels,
             settings=np.array(text))
  else:
    save_image_grid(images, out)
  path = out + '.json'
  with open(path, 'w') as f:
    f.write(text + '\n')
  return path


class ShardWriter:
  """Optional sharded sample outputs of a streaming run, written by each process for its own samples.

  npz_dir: ADM-compatible uint8 shards `samples_p<process>_<k>.npz` holding `arr_0` uint8 [n, H, W, C],
  `labels` int32 [n] (empty for unconditional models) and `indices` int64 [n] (the global sample indices):
  plain `np.load` reads them (no pickle). png_dir: one `<index:06d>.png` per sample.
  """

  def __init__(self, npz_dir: Optional[str] = None, png_dir: Optional[str] = None, process_index: int = 0):
    self.npz_dir, self.png_dir, self.process_index = npz_dir, png_dir, process_index
    self.files = []
    for d in (npz_dir, png_dir):
      if d:
        os.makedirs(d, exist_ok=True)

  def write(self, k: int, indices: np.ndarray, images, labels: Optional[np.ndarray]) -> None:
    if not (self.npz_dir or self.png_dir) or not len(indices):
      return
    pixels = to_uint8(images)
    if self.npz_dir:
      path = os.path.join(self.npz_dir, f'samples_p{self.process_index}_{k:05d}.npz')
      np.savez(path, arr_0=pixels, labels=np.zeros((0,), np.int32) if labels is None else
               np.asarray(labels, np.int32), indices=np.asarray(indices, np.int64))
      self.files.append(path)
    if self.png_dir:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      for i, p in zip(indices, pixels):
        Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p).save(os.path.join(self.png_dir, f'{i:06d}.png'))
