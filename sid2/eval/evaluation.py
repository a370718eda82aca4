"""Streamed FD / precision-recall evaluation of a workdir's checkpoints (issue 14); the library behind
`experiments.evaluate` (read its docstring for the protocol) and `experiments.compare_weightings`.

`Context` checks everything once, before any sampling (feature-net file, reference file and its feature net,
image shape), `score` samples one checkpoint and streams its features (`sid2.eval.streaming`),
`evaluate_all_steps` scores every checkpoint step once (cached by step and settings) and plots FD over
training. The model must be registered (commands import `spectral` first where needed).
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from typing import Optional

from sid2 import generation
from sid2 import restore
from sid2 import sampling
from sid2.eval import feature_nets
from sid2.eval import stats as stats_lib
from sid2.eval import streaming

REAL_SPLIT = 'test'
CACHE_NAME = 'fd_over_training.cache.json'


def _num_channels(config) -> Optional[int]:
  return config.get('num_channels', None) or restore.KNOWN_CHANNELS.get(config.get('dataset', {}).get('name'))


def _check_ref(ref: dict, net: 'feature_nets.FeatureNet') -> None:
  """ValueError naming the reference file and the expected feature net when they do not belong together."""
  path = ref['path']
  if ref['feature_net'] != net.name:
    raise ValueError(f'reference file {path} holds {ref["feature_net"]} statistics ({ref["format"]} format), '
                     f'but features={net.name!r} was asked for: make the reference with `python -m '
                     f'experiments.reference_stats --features {net.name}`')
  if ref['format'] == 'sid2' and ref['feature_sha256'] != net.sha256:
    raise ValueError(f'reference file {path} was made with the {ref["feature_net"]} feature net of sha256 '
                     f'{ref["feature_sha256"]}, but {net.path} has sha256 {net.sha256}: its FD would compare '
                     'different feature spaces')
  if ref['mu'].shape != (net.dim,):
    raise ValueError(f'reference file {path} has {ref["mu"].shape[0]}-d statistics; features={net.name!r} '
                     f'gives {net.dim}-d features')


class Context:
  """Everything checked and prepared once per command: config, feature net, reference statistics."""

  def __init__(self, raw: dict, *, features: str = 'fmnist', ref: Optional[str] = None,
               ref_split: str = REAL_SPLIT, compute_pr: bool = True, pr_cap: int = streaming.DEFAULT_PR_CAP,
               fmnist_weights: Optional[str] = None, inception_weights: Optional[str] = None,
               inception_sha256: Optional[str] = None, config=None, log=print):
    workdir = raw.get('workdir')
    if not workdir:
      raise ValueError('workdir is required')
    self.raw, self.log, self.compute_pr = dict(raw), log, compute_pr
    self.config = restore.load_config(workdir) if config is None else config
    num = raw.get('num_samples')
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
      raise ValueError(f'num_samples must be an integer >= 2; got {num!r}')
    self.pr_cap = generation.positive_int(pr_cap, 'pr_cap')
    if inception_sha256 and not inception_weights:
      raise ValueError('inception_sha256 needs inception_weights')
    res, channels = self.config.get('image_res', None), _num_channels(self.config)
    fmnist_ok = isinstance(res, int) and feature_nets.fmnist_shape_ok(res, res, channels or 1)
    if features == 'fmnist' and not fmnist_ok:  # before loading anything
      raise ValueError(f'features=fmnist takes only 32x32x1 (Fashion-MNIST-like) runs, or 32k x 32k x 1 ones '
                       f'(box-averaged to 32x32; the shipped feature net '
                       f'sid2/eval/weights/fmnist_classifier.safetensors is trained at 32x32); this run has '
                       f'image_res={res!r}, num_channels={channels!r} (dataset.name='
                       f'{self.config.get("dataset", {}).get("name", None)!r}); use --features inception')
    self.net = feature_nets.load_feature_net(features, fmnist_weights=fmnist_weights,
                                             inception_weights=inception_weights,
                                             inception_sha256=inception_sha256)
    if channels:
      self.net.check_shape((res, res, channels), f'workdir {workdir} (config.json)')
    restore.check_model_registered(self.config)
    self.ref_path = ref
    self.ref_split = ref_split
    import jax  # pylint: disable=g-import-not-at-top
    self.mesh = generation.data_mesh()  # sampling: all devices of all processes
    # Reference features: this process's devices (every process computes the same statistics, no gather).
    self.local_mesh = generation.data_mesh(jax.local_devices())
    if ref:
      self.ref = stats_lib.read_reference(ref)
      _check_ref(self.ref, self.net)
    else:
      self.ref = None  # streamed on first use (after the sampling settings are checked)
    self.ref_feats = None

  def reference(self, batch_size: int) -> dict:
    """The reference statistics (read, or streamed from the run's dataset once)."""
    if self.ref is None:
      dataset = dict(self.config.dataset.to_dict(), split=self.ref_split)
      self.log(f'reference: streaming {dataset["name"]} split {self.ref_split!r} (at most '
               f'{self.raw["num_samples"]} images) through {self.net.name}')
      acc, pr_features, shape = streaming.dataset_stats(dataset, int(self.config.image_res), self.net,
                                                        mesh=self.local_mesh, batch_size=batch_size,
                                                        num=self.raw['num_samples'], pr_cap=self.pr_cap,
                                                        log=self.log)
      self.ref = dict(format='streamed', path=None, sha256=None, mu=acc.mean, sigma=acc.covariance(),
                      num=acc.num, feature_net=self.net.name, feature_sha256=self.net.sha256,
                      preprocess=self.net.preprocess, pr_features=pr_features, images=None,
                      source=f'{dataset["name"]} split {self.ref_split!r}, first {acc.num} examples of the '
                             f'data pipeline (image {shape[0]}x{shape[1]}x{shape[2]})')
    if self.compute_pr and self.ref_feats is None:
      self.ref_feats = streaming.reference_features(self.ref, self.net, self.local_mesh, pr_cap=self.pr_cap,
                                                     batch_size=batch_size)
    return self.ref

  def ref_info(self) -> dict:
    r = self.ref
    return dict(path=None if r['path'] is None else os.path.abspath(r['path']), sha256=r['sha256'],
                format=r['format'], num=r['num'], source=r['source'], feature_net=r['feature_net'],
                feature_sha256=r['feature_sha256'], preprocess=r['preprocess'],
                feature_net_verified=r['format'] in ('sid2', 'streamed'))

  def settings(self, step, **overrides) -> dict:
    """Resolved sampling settings of `step`; `overrides` replace raw values (e.g. seed, guidance, guide_step
    for `experiments.autoguide_table`, which scores several settings against one reference)."""
    raw = dict(self.raw, **overrides)
    raw.update(step=step, out=os.path.join(os.path.abspath(raw['workdir']), 'eval', 'samples.npz'))
    raw.setdefault('labels', None)
    raw.setdefault('class_label', None)
    return generation.resolve_settings(raw, self.config)


def cache_key(settings: dict, ctx: Context) -> str:
  """sha256 of everything a score depends on: step, sampling settings, feature net, reference, PR settings."""
  keep = {k: v for k, v in settings.items() if k not in ('out', 'workdir', 'params_sha256')}
  ref = ctx.ref_path and stats_lib.file_sha256(ctx.ref_path)
  blob = json.dumps(dict(settings=keep, net=ctx.net.sha256, ref=ref or f'streamed:{ctx.ref_split}',
                         pr=ctx.compute_pr and ctx.pr_cap), sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()


def score(ctx: Context, step: Optional[int] = None, *, save_samples: bool = False, save_pngs: bool = False,
          write: bool = True, overrides: Optional[dict] = None) -> dict:
  """Samples one checkpoint, streams its features and returns (and writes) the result dict. overrides:
  raw sampling values replacing the context's (`Context.settings`)."""
  import jax  # pylint: disable=g-import-not-at-top
  log = ctx.log
  settings = ctx.settings(step, **(overrides or {}))  # sampling settings validated before any compute
  ref = ctx.reference(settings['batch_size'])
  t0 = time.time()
  gen = generation.prepare(settings, ctx.config, mesh=ctx.mesh, log=log)
  res = int(ctx.config.image_res)
  ctx.net.check_shape((res, res, gen.num_channels), f'workdir {settings["workdir"]} (its checkpoint)')
  eval_dir = os.path.join(os.path.abspath(settings['workdir']), 'eval')
  sample_dir = os.path.join(eval_dir, f'samples_{gen.step}')
  writer = generation.ShardWriter(sample_dir if save_samples else None, sample_dir if save_pngs else None,
                                  jax.process_index())
  acc, sample_feats = streaming.sample_stats(gen, ctx.net, pr_cap=ctx.pr_cap, writer=writer, log=log)
  seconds = time.time() - t0
  result = streaming.scores(ref, acc, sample_feats, ctx.ref_feats, ctx.compute_pr)
  record = gen.record()
  labels_list = record.pop('labels')
  record.pop('out', None)
  out = dict(
      result, step=gen.step, num_samples=acc.num, seed=settings['seed'], params='ema',
      features=ctx.net.name, feature_net=ctx.net.info(), ref=ctx.ref_info(),
      real_images=ref['source'],
      precision_recall=dict(k=streaming.PR_K, cap=ctx.pr_cap, num_samples=int(len(sample_feats)),
                            num_ref=None if ctx.ref_feats is None else int(len(ctx.ref_feats)))
      if ctx.compute_pr else None,
      labels=None if labels_list is None else 'round-robin 0..C-1' if labels_list == restore.default_labels(
          ctx.config, settings['num_samples']) else labels_list,
      sampling=record, sample_seconds=round(seconds, 2),
      samples_dir=sample_dir if (save_samples or save_pngs) else None,
      peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
  if write and jax.process_index() == 0:
    os.makedirs(eval_dir, exist_ok=True)
    path = os.path.join(eval_dir, f'fd_{gen.step}.json')
    with open(path, 'w') as f:
      json.dump(out, f, indent=2)
      f.write('\n')
    _write_scalars(settings['workdir'], gen.step, {k: v for k, v in result.items() if v is not None})
  numbers = ', '.join(f'{k} {v:.4f}' for k, v in result.items() if v is not None)
  log(f'step {gen.step}: {numbers} ({acc.num} samples vs {ref["num"]} reference images, {ctx.net.name} '
      f'features; {seconds:.1f} s; peak RSS {out["peak_rss_mib"]} MiB)')
  return out


def _write_scalars(workdir, step, values):
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = metric_writers.create_default_writer(workdir, just_logging=False)
  writer.write_scalars(step, {f'eval/{k}': v for k, v in values.items()})
  writer.flush()
  writer.close()


def evaluate(raw: dict, *, compute_pr: bool = True, features: str = 'fmnist', ref: Optional[str] = None,
             ref_split: str = REAL_SPLIT, pr_cap: int = streaming.DEFAULT_PR_CAP,
             fmnist_weights: Optional[str] = None, inception_weights: Optional[str] = None,
             inception_sha256: Optional[str] = None, save_samples: bool = False, save_pngs: bool = False,
             config=None, log=print) -> dict:
  """Scores the checkpoint raw['step'] (None: the latest); see the module docstring."""
  ctx = Context(raw, features=features, ref=ref, ref_split=ref_split, compute_pr=compute_pr, pr_cap=pr_cap,
                fmnist_weights=fmnist_weights, inception_weights=inception_weights,
                inception_sha256=inception_sha256, config=config, log=log)
  return score(ctx, raw.get('step'), save_samples=save_samples, save_pngs=save_pngs)


def evaluate_all_steps(raw: dict, **kwargs) -> dict:
  """Scores every checkpoint step once (cached by step + settings) and writes FD over training (JSON, PNG)."""
  log = kwargs.get('log', print)
  ctx = Context(raw, **{k: v for k, v in kwargs.items() if k not in ('save_samples', 'save_pngs')})
  workdir = os.path.abspath(raw['workdir'])
  steps = restore.checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'no checkpoints in {restore.checkpoint_dir(workdir)}')
  eval_dir = os.path.join(workdir, 'eval')
  cache_path = os.path.join(eval_dir, CACHE_NAME)
  cache = {}
  if os.path.isfile(cache_path):
    with open(cache_path) as f:
      cache = json.load(f)
  rows = []
  for step in steps:
    key = cache_key(ctx.settings(step), ctx)
    if key in cache:
      log(f'step {step}: cached (fd {cache[key]["fd"]:.4f})')
    else:
      cache[key] = score(ctx, step, save_samples=kwargs.get('save_samples', False),
                         save_pngs=kwargs.get('save_pngs', False))
      os.makedirs(eval_dir, exist_ok=True)
      with open(cache_path + '.tmp', 'w') as f:
        json.dump(cache, f, indent=1)
      os.replace(cache_path + '.tmp', cache_path)
    r = cache[key]
    rows.append(dict(step=step, fd=r['fd'], precision=r.get('precision'), recall=r.get('recall')))
  first = cache[cache_key(ctx.settings(steps[0]), ctx)]
  summary = dict(workdir=workdir, features=ctx.net.name, feature_net=first['feature_net'], ref=first['ref'],
                 num_samples=first['num_samples'], seed=first['seed'],
                 sampling={k: first['sampling'].get(k)
                           for k in sampling.FLAG_NAMES + (sampling.GUIDE_RECORD_KEY,)},
                 rows=rows)
  with open(os.path.join(eval_dir, 'fd_over_training.json'), 'w') as f:
    json.dump(summary, f, indent=2)
    f.write('\n')
  plot_over_training(summary, os.path.join(eval_dir, 'fd_over_training.png'))
  log(f'wrote {os.path.join(eval_dir, "fd_over_training.json")} and .png ({len(rows)} steps)')
  return summary


def plot_over_training(summary: dict, path: str) -> None:
  """FD (log scale) against the training step, the form of SiD2's Figures 13-14."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = summary['rows']
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([r['step'] for r in rows], [r['fd'] for r in rows], 'o-')
  s = summary['sampling']
  how = 'autoguidance' if s.get(sampling.GUIDE_RECORD_KEY) else 'guidance'
  ax.set(xlabel='training step', ylabel=f"FD ({summary['features']}, N = {summary['num_samples']})",
         yscale='log', title=f"{os.path.basename(summary['workdir'])}: "
                             f'{sampling.SamplerSettings.from_record(s).describe(how)}')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
