"""Reference statistics of a dataset split for Fréchet distances (issue 14).

  python -m experiments.reference_stats --config configs/cifar10.py --features inception \
      --inception_weights pt_inception-2015-12-05-6726825d.pth --out refs/cifar10_train_inception.npz \
      [--split train] [--num 50000] [--batch_size 500] [--pr_cap 10000] [--config.image_res=32]

Streams every example of `--split` (default: config.dataset.split) of the config's dataset (Fashion-MNIST,
any tfds image dataset or a registered dataset; images at config.image_res, 1 or 3 channels, prepared
exactly as for training: resized and center-cropped, in [-1, 1]) through the feature net on all local
devices, accumulating mean and covariance in float64 (`sid2.eval.stats`), never holding the split. Writes
`--out` (.npz: mu, sigma, num, feature_net, feature_sha256, preprocess, source, and pr_features, the
features of the first --pr_cap images for precision/recall) and `<out>.json` (the same without arrays,
plus the file's sha256). `experiments.evaluate --ref` reads these files, ADM's reference batches and plain
mu/sigma files.
"""
from __future__ import annotations

import json
import os
import resource
import time
from typing import Optional

from absl import flags
from ml_collections import config_flags

from experiments import cli
from sid2 import generation
from sid2.eval import feature_nets
from sid2.eval import stats as stats_lib
from sid2.eval import streaming


def define_flags(fv: flags.FlagValues):
  d = dict(flag_values=fv)
  config_flags.DEFINE_config_file('config', None, 'Config file with get_config() (its dataset and image_res).',
                                  lock_config=False, **d)
  flags.DEFINE_enum('features', 'inception', list(feature_nets.NAMES), 'Feature net.', **d)
  flags.DEFINE_string('out', None, 'Output .npz file.', **d)
  flags.DEFINE_string('split', None, 'Dataset split (default: config.dataset.split).', **d)
  flags.DEFINE_integer('num', None, 'At most this many examples (default: the whole split).', **d)
  flags.DEFINE_integer('batch_size', 500, 'Images per feature call (rounded up to the device count).', **d)
  flags.DEFINE_integer('pr_cap', streaming.DEFAULT_PR_CAP, 'Features kept for precision/recall.', **d)
  flags.DEFINE_string('fmnist_weights', None, 'Fashion-MNIST feature-net safetensors (default: shipped).', **d)
  flags.DEFINE_string('inception_weights', None, 'FID Inception-v3 weight file (.pth/.safetensors/.npz).', **d)
  flags.DEFINE_string('inception_sha256', None, "Assert this sha256 for --inception_weights instead of the "
                      "standard file's.", **d)


def run(config, *, features: str, out: str, split: Optional[str] = None, num: Optional[int] = None,
        batch_size: int = 500, pr_cap: int = streaming.DEFAULT_PR_CAP, fmnist_weights=None,
        inception_weights=None, inception_sha256=None, log=print) -> dict:
  """Computes and writes the reference statistics; returns the JSON record."""
  if config is None:
    raise ValueError('config is required (a config file with get_config(): its dataset and image_res)')
  if not out or not out.endswith('.npz'):
    raise ValueError(f'out must be a file name ending in .npz; got {out!r}')
  generation.positive_int(batch_size, 'batch_size')
  generation.positive_int(pr_cap, 'pr_cap')
  if num is not None:
    generation.positive_int(num, 'num')
  net = feature_nets.load_feature_net(features, fmnist_weights=fmnist_weights,
                                      inception_weights=inception_weights, inception_sha256=inception_sha256)
  dataset = dict(config.dataset.to_dict() if hasattr(config.dataset, 'to_dict') else config.dataset)
  if split:
    dataset['split'] = split
  res = int(config.image_res)
  if net.name == 'fmnist' and res != 32:
    net.check_shape((res, res, 1), f'config image_res={res}')
  t0 = time.time()
  acc, pr_features, shape = streaming.dataset_stats(dataset, res, net, batch_size=batch_size, num=num,
                                                    pr_cap=pr_cap, log=log)
  source = (f"{dataset.get('name')} split {dataset.get('split', 'train')!r}, {acc.num} images at "
            f'{shape[0]}x{shape[1]}x{shape[2]} (sid2.data: resized, center-cropped)')
  digest = stats_lib.write_reference(out, acc, feature_net=net.name, feature_sha256=net.sha256,
                                     preprocess=net.preprocess, source=source, pr_features=pr_features)
  record = dict(path=os.path.abspath(out), sha256=digest, num=acc.num, feature_net=net.info(), source=source,
                dataset=dataset, image_res=res, pr_features=int(pr_features.shape[0]),
                seconds=round(time.time() - t0, 1),
                peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
  with open(out + '.json', 'w') as f:
    json.dump(record, f, indent=2, default=str)
    f.write('\n')
  log(f'wrote {out} ({acc.num} images, {net.name} features, sha256 {digest}; {record["seconds"]} s, peak RSS '
      f'{record["peak_rss_mib"]} MiB)')
  return record


def main(argv, flag_values: Optional[flags.FlagValues] = None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  return run(fv.config, features=fv.features, out=fv.out, split=fv.split, num=fv.num, batch_size=fv.batch_size,
             pr_cap=fv.pr_cap, fmnist_weights=fv.fmnist_weights, inception_weights=fv.inception_weights,
             inception_sha256=fv.inception_sha256)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
