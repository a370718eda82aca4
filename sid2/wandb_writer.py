"""An optional Weights & Biases metric writer beside TensorBoard (config `logging.wandb=True`).

Used only when the config asks for it and the `wandb` package is importable; without the package the run
logs a warning and continues with TensorBoard alone (wandb is never a requirement). `logging.wandb_mode`
('online', 'offline', 'disabled') is passed to `wandb.init`; offline runs write under `<workdir>/wandb`.
"""
from __future__ import annotations

import importlib
import logging

import numpy as np
from clu import metric_writers


class WandbWriter(metric_writers.MetricWriter):
  """clu MetricWriter that forwards scalars, images and hparams to a wandb run."""

  def __init__(self, wandb, run):
    self._wandb = wandb
    self._run = run

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self._run.log({k: np.asarray(v).item() for k, v in values.items() if np.asarray(v).size == 1}, step=step)

  def write_scalars(self, step, scalars):
    self._run.log({k: float(v) for k, v in scalars.items()}, step=step)

  def write_images(self, step, images):
    self._run.log({k: [self._wandb.Image(np.asarray(im)) for im in np.asarray(v)] for k, v in images.items()},
                  step=step)

  def write_videos(self, step, videos):
    del step, videos  # not forwarded

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    self._run.log(dict(texts), step=step)

  def write_histograms(self, step, arrays, num_buckets=None):
    del num_buckets
    self._run.log({k: self._wandb.Histogram(np.asarray(v)) for k, v in arrays.items()}, step=step)

  def write_hparams(self, hparams):
    self._run.config.update(dict(hparams), allow_val_change=True)

  def flush(self):
    pass

  def close(self):
    self._run.finish()


def with_wandb(writer, config, workdir):
  """`writer` plus a WandbWriter (clu MultiWriter), or `writer` alone when wandb is not installed."""
  try:
    wandb = importlib.import_module('wandb')
  except ImportError:
    logging.warning('config field logging.wandb=True but the wandb package is not installed; '
                    'logging to TensorBoard only')
    return writer
  cfg = config.logging
  run = wandb.init(project=cfg.get('wandb_project', None) or 'sid2', entity=cfg.get('wandb_entity', None) or None,
                   name=cfg.get('wandb_name', None) or None, mode=cfg.get('wandb_mode', 'online'), dir=workdir,
                   config=config.to_dict(), resume='allow')
  return metric_writers.MultiWriter([writer, WandbWriter(wandb, run)])
