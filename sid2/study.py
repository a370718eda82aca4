"""What every seeded study shares (experiments.recipe_study, experiments.sid2_study): a run is reused when its
fingerprint (config + scoring settings) is unchanged, a checkpoint is scored by FD / precision / recall with
the sid2.eval protocol, and arms are summarised by mean ± std over seeds with the sample count."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Callable, Optional, Sequence

import numpy as np


def unconditional(config, description: str):
  """`config` (a train ConfigDict, changed in place and returned) without class conditioning, described."""
  config.description = description
  config.model.num_classes = 0
  config.dataset.num_classes = 0
  config.cond_drop_prob = 0.0
  return config


def set_fields(config, overrides: dict, render=lambda value: value):
  """Sets each dotted field of `overrides` ('model.bias': 1.5) in `config` to `render(value)`."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = render(value)
  return config


def fingerprint(config, scoring: dict) -> str:
  """sha256 of a run's config and scoring settings (a rerun reuses a run only when both are unchanged)."""
  blob = json.dumps(dict(config=config.to_dict(), scoring=scoring), sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()


def reuse_or_run(workdir: str, fp: str, run_fn: Callable[[], dict], label: str, log=print, *,
                 indent: int = 1, describe: Optional[Callable[[dict], str]] = None) -> dict:
  """The stored <workdir>/result.json when its fingerprint is `fp`; otherwise (a fresh or changed run) clears
  the workdir, calls `run_fn()` and stores its result with the fingerprint (JSON with `indent`; a
  `fingerprint` key that `run_fn` already put in its result keeps its place). `describe(result)`, when given,
  is appended to the 'reusing' log line after ': '."""
  path = os.path.join(workdir, 'result.json')
  if os.path.isfile(path):
    with open(path) as f:
      prev = json.load(f)
    if prev.get('fingerprint') == fp:
      log(f'[{label}] reusing {path}' + (f': {describe(prev)}' if describe else ''))
      return prev
    log(f'[{label}] settings changed since {path}: retraining')
    shutil.rmtree(workdir)
  result = dict(run_fn(), fingerprint=fp)
  os.makedirs(workdir, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(result, f, indent=indent, default=str)
  return result


def score(workdir: str, step: Optional[int], *, num_samples: int, sample_steps: int, batch_size: int,
          seed: int, sampler: str = 'ddpm', guidance: float = 0.0, log=print) -> dict:
  """FD / precision / recall of checkpoint `step` against the first N test images (sid2.eval.evaluation)."""
  from sid2 import sampling  # pylint: disable=g-import-not-at-top
  from sid2.eval import evaluation  # pylint: disable=g-import-not-at-top
  raw = dict(dict.fromkeys(sampling.FLAG_NAMES), workdir=workdir, step=step, num_samples=num_samples,
             batch_size=min(batch_size, num_samples), sampler=sampler, num_steps=sample_steps,
             seed=seed, labels=None, class_label=None, **sampling.guidance_flags(guidance))
  rec = evaluation.evaluate(raw, compute_pr=True, log=log)
  return dict(step=int(rec['step']), fd=rec['fd'], precision=rec.get('precision'), recall=rec.get('recall'),
              sample_seconds=rec['sample_seconds'])


def aggregate(values: Sequence) -> Optional[dict]:
  """{mean, std (ddof 1; 0 for one value), n, values} of the non-None values; None when there are none."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not len(v):
    return None
  return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0, n=int(len(v)),
              values=[float(x) for x in v])


def fmt(d: Optional[dict], digits: int = 2) -> str:
  """'mean ± std (n=k)' of an `aggregate`, or '—'."""
  return '—' if d is None else f'{d["mean"]:.{digits}f} ± {d["std"]:.{digits}f} (n={d["n"]})'


def real_control(num_samples: int, batch_size: int = 500, log=print) -> dict:
  """FD / precision / recall of N real Fashion-MNIST training images against the first N test images: the
  floor a perfect model reaches at this N (the positive control of every FD table)."""
  from sid2 import data  # pylint: disable=g-import-not-at-top
  from sid2.eval import fd as fd_lib  # pylint: disable=g-import-not-at-top
  from sid2.eval import features as features_lib  # pylint: disable=g-import-not-at-top
  feature_fn = features_lib.load_feature_fn()
  train = data.fit_fashion_resolution(data.load_fashion_mnist(None, 'train')[0][:num_samples], 32)
  test = data.fit_fashion_resolution(data.load_fashion_mnist(None, 'test')[0][:num_samples], 32)
  fa = features_lib.batched_features(feature_fn, train, batch_size=batch_size)
  fb = features_lib.batched_features(feature_fn, test, batch_size=batch_size)
  p, r = fd_lib.precision_recall(fb, fa)
  out = dict(fd=float(fd_lib.frechet_distance_features(fa, fb)), precision=float(p), recall=float(r),
             num_samples=int(num_samples))
  log(f'control: real train vs test images at N={num_samples}: FD {out["fd"]:.2f}')
  return out
