"""Sample quality of a trained workdir: Fréchet distance (and k-NN precision/recall) on the shipped
Fashion-MNIST feature net (issue 7; SPEC §12 entry point).

  python -m experiments.evaluate --workdir runs/fmnist --num_samples 10000 [--batch_size 500]
      [--step N] [--sampler ddpm --num_steps 128 --guidance 1.0 --guidance_interval=-3,5 --seed 0]

Samples come from the EMA parameters of the latest (or --step) checkpoint, drawn in chunks exactly as
`experiments.sample` draws them (same settings resolution, same per-chunk keys `fold_in(PRNGKey(seed), k)`,
round-robin class labels for conditional models). They are compared with the first `num_samples` images of
the Fashion-MNIST test split (at most 10000), both passed through `sid2.eval.features` (sha256-checked).
Prints the numbers, writes `<workdir>/eval/fd_<step>.json` (seeds, EMA, sampler settings, sample count,
feature-net sha256) and TensorBoard scalars `eval/fd`, `eval/precision`, `eval/recall` at the checkpoint step.

With --inception_weights PATH (the standard FID network, pytorch-fid's pt_inception-2015-12-05-6726825d.pth
or a file converted from it by `python -m sid2.eval.inception`; never downloaded, sha256-checked before any
sampling, --inception_sha256 to assert a different file) the result also holds `fid_inception`, the FID of
the same samples in the 2048-d pool3 space of `sid2.eval.inception`, and the file's sha256.

Only 32x32x1 (Fashion-MNIST-like) runs are supported: the feature net was trained on that data. FD values
are comparable only between runs with the same feature net (sha256), the same sample count and the same
real set; FD is biased upwards at small N (see the reference values in the feature net's JSON sidecar).
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from absl import flags
from absl import logging
import numpy as np

from experiments import cli
from experiments import sample as sample_lib
from sid2 import data
from sid2 import restore
from sid2.eval import fd
from sid2.eval import features as features_lib
from sid2.eval import inception as inception_lib

REAL_SPLIT = 'test'
MAX_REAL = 10_000


def define_flags(fv: flags.FlagValues):
  """This command's flags on `fv`."""
  d = dict(flag_values=fv)
  flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).', **d)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest readable one).', **d)
  flags.DEFINE_integer('num_samples', 10_000, f'Generated and real images each (at most {MAX_REAL}).', **d)
  flags.DEFINE_integer('batch_size', 500, 'Samples per jitted sampling call.', **d)
  cli.define_sampler_flags(fv)  # --sampler, --num_steps, --clip_x, ... (sid2.sampling)
  flags.DEFINE_integer('seed', 0, 'Sampling seed.', **d)
  flags.DEFINE_bool('precision_recall', True, 'Also compute k-NN precision/recall (k = 3).', **d)
  flags.DEFINE_string('features', features_lib.DEFAULT_WEIGHTS, 'Feature-net safetensors file.', **d)
  flags.DEFINE_string('inception_weights', None, 'Inception-v3 FID weight file (.pth, or .safetensors/.npz '
                      'from `python -m sid2.eval.inception`): also report fid_inception.', **d)
  flags.DEFINE_string('inception_sha256', None, 'Assert this sha256 for --inception_weights instead of the '
                      'standard file\'s.', **d)
  flags.DEFINE_bool('save_samples', False, 'Also write the samples to <workdir>/eval/samples_<step>.npz.', **d)


def check_supported(config) -> None:
  """ValueError unless the run makes 32x32x1 images (the shipped feature net's input)."""
  res = config.get('image_res', None)
  channels = config.get('num_channels', None) or restore.KNOWN_CHANNELS.get(
      config.get('dataset', {}).get('name', None))
  if res != 32 or channels != 1:
    raise ValueError(f'experiments.evaluate supports only Fashion-MNIST-like 32x32x1 runs (the shipped feature '
                     f'net sid2/eval/weights/fmnist_classifier.safetensors is trained on them); this run has '
                     f'image_res={res!r}, num_channels={channels!r} (dataset.name='
                     f'{config.get("dataset", {}).get("name", None)!r})')


def real_images(config, num: int) -> np.ndarray:
  """The first `num` Fashion-MNIST test images at 32x32x1 in [-1, 1]."""
  dataset = config.get('dataset', {})
  data_dir = dataset.get('data_dir', None) if dataset.get('name', None) == 'fashion_mnist' else None
  return data.load_eval_images(dict(name='fashion_mnist', split=REAL_SPLIT, data_dir=data_dir or None), 32, num)


def evaluate(raw: dict, *, compute_pr: bool = True, features_path: str = features_lib.DEFAULT_WEIGHTS,
             save_samples: bool = False, inception_weights: Optional[str] = None,
             inception_sha256: Optional[str] = None, log=print) -> dict:
  """Samples, computes FD (+ precision/recall, + Inception FID with `inception_weights`), writes JSON and
  TensorBoard; returns the result dict."""
  workdir = raw['workdir']
  if not workdir:
    raise ValueError('workdir is required')
  config = restore.load_config(workdir)
  check_supported(config)
  num = raw.get('num_samples')
  if isinstance(num, bool) or not isinstance(num, int) or not 2 <= num <= MAX_REAL:
    raise ValueError(f'num_samples must be an integer in [2, {MAX_REAL}] (the Fashion-MNIST test split holds '
                     f'{MAX_REAL} real images); got {num!r}')
  if inception_sha256 and not inception_weights:
    raise ValueError('inception_sha256 needs inception_weights')
  inception = None
  if inception_weights:  # sha256 checked before any sampling
    inception = inception_lib.load_inception_weights(inception_weights, inception_sha256 or None)
  sample_lib.ensure_model_registered(config)
  raw = dict(raw, out=os.path.join(os.path.abspath(workdir), 'eval', 'samples.npz'))
  settings = sample_lib.resolve_settings(raw, config)
  feature_fn = features_lib.load_feature_fn(features_path)  # checks the sha256 before any sampling
  feature_sha = features_lib.file_sha256(features_path)

  t0 = time.time()
  images, labels, record = sample_lib.generate(settings, config, log=log)
  sample_seconds = time.time() - t0
  features_lib.check_images(images)
  t1 = time.time()
  reals = real_images(config, num)
  fake = features_lib.batched_features(feature_fn, images)
  real = features_lib.batched_features(feature_fn, reals)
  result = dict(fd=fd.frechet_distance_features(real, fake))
  if compute_pr:
    result['precision'], result['recall'] = fd.precision_recall(real, fake, k=3)
  inception_net = None
  if inception is not None:
    params, inception_net = inception
    result['fid_inception'] = fd.frechet_distance_features(
        inception_lib.batched_inception_features(params, reals),
        inception_lib.batched_inception_features(params, images))
    inception_net = dict(inception_net, preprocess='tf', feature_dim=inception_lib.FEATURE_DIM)
  metric_seconds = time.time() - t1

  step = record['step']
  labels_list = record.pop('labels')
  record.pop('out', None)
  out = dict(
      result, step=step, num_samples=num, real_images=f'fashion_mnist {REAL_SPLIT} split, first {num}',
      params='ema', feature_net=dict(path=os.path.abspath(features_path), sha256=feature_sha,
                                     feature_dim=int(real.shape[1])),
      inception_net=inception_net,
      precision_recall_k=3 if compute_pr else None,
      labels=None if labels_list is None else 'round-robin 0..C-1' if labels_list == restore.default_labels(
          config, num) else labels_list,
      sampling=record, sample_seconds=round(sample_seconds, 2), metric_seconds=round(metric_seconds, 2))
  eval_dir = os.path.join(os.path.abspath(workdir), 'eval')
  os.makedirs(eval_dir, exist_ok=True)
  path = os.path.join(eval_dir, f'fd_{step}.json')
  with open(path, 'w') as f:
    json.dump(out, f, indent=2)
    f.write('\n')
  if save_samples:
    sample_lib.write_outputs(os.path.join(eval_dir, f'samples_{step}.npz'), images, labels, record)

  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = metric_writers.create_default_writer(workdir, just_logging=False)
  writer.write_scalars(step, {f'eval/{k}': v for k, v in result.items()})
  writer.flush()
  writer.close()
  numbers = ', '.join(f'{k} {v:.4f}' for k, v in result.items())
  log(f'step {step}: {numbers} ({num} samples vs {num} real test images; sampling {sample_seconds:.1f} s, '
      f'features+metrics {metric_seconds:.1f} s); wrote {path}')
  return out


def main(argv, flag_values: Optional[flags.FlagValues] = None):
  """CLI entry; flags parsed into a fresh FlagValues unless given."""
  fv = cli.parse(argv, define_flags, flag_values)
  raw = {n: fv[n].value for n in ('workdir', 'step', 'num_samples', 'batch_size', 'seed')}
  raw.update(cli.sampler_flag_values(fv))
  raw.update(labels=None, class_label=None)
  logging.info('evaluate flags: %s', raw)
  return evaluate(raw, compute_pr=fv.precision_recall, features_path=fv.features, save_samples=fv.save_samples,
                  inception_weights=fv.inception_weights, inception_sha256=fv.inception_sha256)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
