"""Input-pipeline throughput for the SiD2 ImageNet configs: can one host feed its accelerators?

  python -m experiments.benchmark_input [--config configs/imagenet512_small.py] [--num_hosts 8] \
      [--chips_per_host 4] [--chip_tflops 197] [--batches 10] [--json PATH]

Measures images/s of `sid2.data.get_dataset` for tfds 'imagenet2012' (decode, resize shorter side, center
crop, scale, batch) at the config's resolution with the real per-host batch (config.batch_size / num_hosts),
under `tfds.testing.mock_data`. The mock serves ImageNet-like records (`imagenet_like_jpegs`): JPEGs of
ImageNet's typical sizes (375-500 px sides, smooth content, ~100 kB; ImageNet's training JPEGs average
~110 kB), so decoding and resizing cost what they cost on real data; reading files from disk is not measured.

Against it: the config's training demand in images/s, train step = 3 x forward (SPEC §8, SiD2 B.3, a
multiply-add = 1 flop) from `sid2.flops.uvit_gflops`, at a stated accelerator rate:
  * this machine: the float32 matmul peak measured here (`sid2.bench.matmul_peak`),
  * a reference accelerator, by default a TPU v5e chip: 197 TFLOP/s bf16 (vendor flops, 2 per multiply-add,
    so 98.5 T multiply-adds/s), times --chips_per_host, times --utilization (1.0: peak, the most demanding).
ratio = pipeline images/s / training images/s; >= 1 means the pipeline keeps up. The pipeline number is
per host as measured here (os.cpu_count() cores, shared); scale by the reference host's cores.

`mock_imagenet` is the mock: unlike plain `tfds.testing.mock_data` (whose records ignore the split, so both
halves of `tfds.split_for_jax_process` would get the same examples), its records honour sub-splits, so
per-process sharding can be checked (tests/test_data_imagenet.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from typing import Optional, Sequence

import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments import cli

DATASET = 'imagenet2012'
# ImageNet training JPEGs: mostly 500 x 375 / 375 x 500 / 500 x 333, ~110 kB on average.
TYPICAL_SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (400, 400))
TPU_V5E_BF16_TFLOPS = 197.0  # Vendor figure per chip: 2 flops per multiply-add.


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  config_flags.DEFINE_config_file('config', 'configs/imagenet512_small.py', 'Config with get_config().',
                                  lock_config=False, **d)
  flags.DEFINE_integer('num_hosts', 8, 'Processes (hosts) sharing config.batch_size: the per-host batch is '
                       'batch_size / num_hosts.', **d)
  flags.DEFINE_integer('chips_per_host', 4, 'Accelerator chips fed by one host (TPU v5e hosts: 4 or 8).', **d)
  flags.DEFINE_float('chip_tflops', TPU_V5E_BF16_TFLOPS, 'Reference chip throughput in vendor TFLOP/s '
                     '(2 flops per multiply-add); default: TPU v5e bf16.', **d)
  flags.DEFINE_float('utilization', 1.0, 'Fraction of --chip_tflops the training step achieves.', **d)
  flags.DEFINE_integer('batches', 10, 'Timed batches (after the first, which fills the shuffle buffer).', **d)
  flags.DEFINE_integer('num_records', 4096, 'Records of the mock split (one epoch).', **d)
  flags.DEFINE_integer('num_distinct', 64, 'Distinct JPEGs the mock records cycle through.', **d)
  flags.DEFINE_integer('shuffle_buffer', 0, 'Override dataset.shuffle_buffer (0: keep the config\'s).', **d)
  flags.DEFINE_string('json', '', 'Write the results here (default runs/benchmarks/input_<time>.json).', **d)


# ------------------------------------------------------------------------------------------------------
# The mock dataset.
# ------------------------------------------------------------------------------------------------------


def imagenet_like_jpegs(num: int, seed: int = 0, sizes: Sequence = TYPICAL_SIZES, quality: int = 90):
  """`num` JPEG-encoded uint8 RGB images of ImageNet's typical sizes with smooth random content (a
  bilinearly upsampled 12 x 12 noise field plus pixel noise of std 24), about 100 kB each at quality 90,
  near ImageNet's training JPEGs (~110 kB on average)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  out = []
  for k in range(num):
    h, w = sizes[k % len(sizes)]
    coarse = rng.uniform(0, 255, (1, 12, 12, 3)).astype(np.float32)
    img = tf.image.resize(coarse, (h, w), method='bilinear')[0].numpy()
    img += rng.normal(0, 24, img.shape)
    out.append(tf.io.encode_jpeg(np.clip(img, 0, 255).astype(np.uint8), quality=quality).numpy())
  return out


def _absolute_indices(split, num_examples: int) -> np.ndarray:
  """Record indices [from, to) of a tfds split spec ('train', 'train[:50%]', an even split, ...) of a split
  holding `num_examples` records; any split name maps to the same records."""
  from tensorflow_datasets.core import splits as splits_lib  # pylint: disable=g-import-not-at-top
  parts = splits_lib.AbstractSplit.from_spec(split).to_absolute(_AnySplit(num_examples))
  return np.concatenate([np.arange(p.from_ or 0, num_examples if p.to is None else p.to) for p in parts])


class _AnySplit(dict):
  """split_infos stand-in for `to_absolute`: every split name has `num_examples` records."""

  def __init__(self, num_examples):
    super().__init__()
    self._num = num_examples

  def __contains__(self, key):
    return True

  def __getitem__(self, key):
    from tensorflow_datasets.core import splits as splits_lib  # pylint: disable=g-import-not-at-top
    return splits_lib.SplitInfo(name=str(key), shard_lengths=[self._num], num_bytes=0)


@contextlib.contextmanager
def mock_imagenet(encoded_images: Sequence[bytes], num_examples: Optional[int] = None,
                  labels: Optional[np.ndarray] = None):
  """`tfds.testing.mock_data` for 'imagenet2012' whose split has `num_examples` records (default: one per
  image); record i holds encoded_images[i % len], label labels[i] (default i % 1000), and sub-splits (e.g.
  `tfds.split_for_jax_process`) select their part of the records, as prepared files would."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  n = len(encoded_images) if num_examples is None else int(num_examples)
  if n < 1 or not encoded_images:
    raise ValueError(f'mock_imagenet needs at least one image and one record; got {len(encoded_images)} '
                     f'images, num_examples={num_examples!r}')
  labels = np.arange(n) % 1000 if labels is None else np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(f'labels must have shape ({n},); got {labels.shape}')
  pool = tf.constant(list(encoded_images))
  all_labels = tf.constant(labels, tf.int64)

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del read_config, shuffle_files
    idx = _absolute_indices(split, n)
    image_feature = self.info.features['image']
    skip = decoders is not None and isinstance(decoders.get('image'), tfds.decode.SkipDecoding)

    def record(i):
      image = tf.gather(pool, i % len(encoded_images))
      return {'image': image if skip else image_feature.decode_example(image),
              'label': tf.gather(all_labels, i),
              'file_name': tf.strings.format('n{}.JPEG', i)}

    return tf.data.Dataset.from_tensor_slices(idx).map(record)

  with tfds.testing.mock_data(num_examples=n, as_dataset_fn=as_dataset,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    yield


# ------------------------------------------------------------------------------------------------------
# The measurement.
# ------------------------------------------------------------------------------------------------------


def training_images_per_s(forward_gflops: float, multiply_adds_per_s: float) -> float:
  """Training images/s at a rate of multiply-adds/s: one image costs 3 x forward (SPEC §8, B.3)."""
  from sid2 import flops  # pylint: disable=g-import-not-at-top
  return multiply_adds_per_s / (flops.train_gflops(forward_gflops) * 1e9)


def pipeline_images_per_s(config, *, per_host_batch: int, num_hosts: int, batches: int,
                          shuffle_buffer: int = 0, log=print) -> dict:
  """Times `sid2.data.get_dataset` for host 0 of `num_hosts` under the current (mock) tfds."""
  from sid2 import data  # pylint: disable=g-import-not-at-top
  ds_cfg = config.dataset.to_dict() if hasattr(config.dataset, 'to_dict') else dict(config.dataset)
  if shuffle_buffer:
    ds_cfg['shuffle_buffer'] = shuffle_buffer
  t0 = time.perf_counter()
  ds = data.get_dataset(ds_cfg, image_res=config.image_res, global_batch_size=per_host_batch * num_hosts,
                        seed=config.seed, process_index=0, process_count=num_hosts)
  batch = ds.next_batch(0)
  first_s = time.perf_counter() - t0
  shape = batch['image'].shape
  t0 = time.perf_counter()
  for step in range(1, batches + 1):
    batch = ds.next_batch(step)
  dt = time.perf_counter() - t0
  rate = batches * per_host_batch / dt
  log(f'pipeline: {batches} batches of {shape} in {dt:.2f} s -> {rate:.1f} images/s '
      f'(first batch incl. setup and shuffle-buffer fill: {first_s:.1f} s)')
  return dict(images_per_s=rate, batch_shape=list(shape), timed_batches=batches, seconds=dt,
              first_batch_seconds=first_s, shuffle_buffer=ds_cfg.get('shuffle_buffer'),
              records_per_host=ds.num_examples)


def benchmark(config, *, num_hosts: int, chips_per_host: int, chip_tflops: float, utilization: float,
              batches: int, num_records: int, num_distinct: int, shuffle_buffer: int = 0, log=print) -> dict:
  """The measurement of the module docstring; returns a JSON-able dict."""
  from sid2 import bench  # pylint: disable=g-import-not-at-top
  from sid2 import flops  # pylint: disable=g-import-not-at-top
  if config.batch_size % num_hosts:
    raise ValueError(f'num_hosts={num_hosts} must divide config.batch_size={config.batch_size}')
  for name, value in (('num_hosts', num_hosts), ('chips_per_host', chips_per_host), ('batches', batches),
                      ('num_records', num_records), ('num_distinct', num_distinct)):
    if value < 1:
      raise ValueError(f'{name} must be >= 1; got {value}')
  if chip_tflops <= 0 or not 0 < utilization <= 1:
    raise ValueError(f'chip_tflops must be > 0 and utilization in (0, 1]; got {chip_tflops}, {utilization}')
  per_host_batch = config.batch_size // num_hosts
  fwd = flops.uvit_gflops(config.model, config.image_res)
  log(f'{config.get("description", "")}: {config.image_res}^2, forward {fwd:.1f} GFLOPs, train step '
      f'{flops.train_gflops(fwd):.1f} GFLOPs per image (multiply-add = 1)')
  jpegs = imagenet_like_jpegs(num_distinct)
  mean_kb = float(np.mean([len(j) for j in jpegs])) / 1e3
  cpus, load = os.cpu_count(), os.getloadavg()
  log(f'mock {DATASET}: {num_records} records cycling {num_distinct} JPEGs of {mean_kb:.0f} kB mean; '
      f'{cpus} CPUs, load average {load[0]:.1f}')
  with mock_imagenet(jpegs, num_records):
    pipe = pipeline_images_per_s(config, per_host_batch=per_host_batch, num_hosts=num_hosts, batches=batches,
                                 shuffle_buffer=shuffle_buffer, log=log)
  peak = bench.matmul_peak()
  here = training_images_per_s(fwd, peak)
  chip_macs = chip_tflops * 1e12 / 2 * utilization
  per_chip = training_images_per_s(fwd, chip_macs)
  per_host = per_chip * chips_per_host
  result = dict(
      config=config.get('description', ''), image_res=config.image_res, dataset=DATASET,
      global_batch_size=config.batch_size, num_hosts=num_hosts, per_host_batch=per_host_batch,
      forward_gflops=fwd, train_gflops_per_image=flops.train_gflops(fwd),
      machine=dict(platform=platform.platform(), cpu_count=cpus, load_average=list(load)),
      mock=dict(num_records=num_records, num_distinct_jpegs=num_distinct, mean_jpeg_kb=mean_kb),
      pipeline=pipe,
      here=dict(matmul_peak_gmacs_per_s=peak / 1e9, training_images_per_s=here,
                ratio=pipe['images_per_s'] / here),
      reference=dict(chip_tflops=chip_tflops, multiply_adds_per_flop=0.5, utilization=utilization,
                     chips_per_host=chips_per_host, training_images_per_s_per_chip=per_chip,
                     training_images_per_s_per_host=per_host, ratio=pipe['images_per_s'] / per_host,
                     cpu_cores_needed_per_host=per_host / pipe['images_per_s'] * cpus))
  log(f'this machine: matmul peak {peak / 1e9:.1f} G multiply-adds/s -> trains {here:.2f} images/s; '
      f'pipeline / training = {pipe["images_per_s"] / here:.1f}')
  log(f'reference: {chips_per_host} x {chip_tflops:g} TFLOP/s at {utilization:.0%} -> {per_chip:.1f} images/s '
      f'per chip, {per_host:.1f} per host; pipeline / training = {pipe["images_per_s"] / per_host:.3f} '
      f'(a host needs ~{per_host / pipe["images_per_s"] * cpus:.0f} of these CPU cores)')
  return result


def default_json_path(prefix: str) -> str:
  return os.path.join('runs', 'benchmarks', f'{prefix}_{time.strftime("%Y%m%d_%H%M%S")}.json')


def write_json(result: dict, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  return path


def main(argv, flag_values=None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  result = benchmark(fv.config, num_hosts=fv.num_hosts, chips_per_host=fv.chips_per_host,
                     chip_tflops=fv.chip_tflops, utilization=fv.utilization, batches=fv.batches,
                     num_records=fv.num_records, num_distinct=fv.num_distinct,
                     shuffle_buffer=fv.shuffle_buffer)
  print('wrote', write_json(result, fv.json or default_json_path('input')))


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
