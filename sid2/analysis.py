"""Loss versus logSNR of a trained model, or of any denoiser (SPEC §0, §2, §3, §4; SiD2 B.1, B.2).

At each logSNR lambda of a grid this evaluates the model on z = alpha x + sigma eps for a fixed batch of data
and a few noise draws, and reports, averaged over data and noise:

  loss             the training objective's per-example loss at t = t(lambda): exactly what
                   `sid2.losses.get_loss(config.loss_type, schedule)` computes, -dlambda/dt included (SPEC §3, §4)
  loss_per_logsnr  loss / (-dlambda/dt): the loss per unit of lambda. Since dt = dlambda / (-dlambda/dt), its
                   integral over the schedule's lambda range is the expected training loss E_t[loss]; for the
                   weighted losses it equals 1/2 w(lambda) eps_mse, independent of the schedule (SPEC §3)
  eps_mse, x_mse   the unweighted mean (eps - eps_hat)^2 and (x - x_hat)^2 (eps_mse = e^lambda x_mse, SPEC §2)
  weight           w(lambda) of the loss_type, where it has one (`sid2.weightings.get_weighting`)
  band_*           for `power:<b>[:<levels>]` losses, per Haar band s (SPEC §4): band_weight = sigmoid(lambda +
                   b_s), band_x_mse = ||s||^2 / #pixels (summing to x_mse, Parseval) and band_loss =
                   band_weight (-dlambda/dt) band_x_mse (summing to loss)

The same noise is used at every lambda (common random numbers), so curves are smooth in lambda. Outside the
schedule's range [lambda(1), lambda(0)] training never sees lambda: there loss, loss_per_logsnr, t and
-dlambda/dt are NaN, while the unweighted errors are still computed (the model takes lambda directly).

The core, `make_loss_vs_logsnr_fn`, takes any `apply_fn(params, z, logsnr, labels) -> output` (e.g. the exact
Gaussian denoiser of `sid2.oracles`); `loss_vs_logsnr` builds it from a config through the model registry.
"""
from __future__ import annotations

import collections
import functools
import json
import math
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sid2 import losses
from sid2 import models
from sid2 import parametrization as param_lib
from sid2 import restore
from sid2 import schedules
from sid2 import wavelets

# |lambda| slack when deciding whether a grid point lies inside the schedule's range (float32 round-off).
RANGE_TOL = 1e-3
BISECTION_STEPS = 60

Checkpoint = collections.namedtuple('Checkpoint', 'params config step')


# ---------------------------------------------------------------------------------------------------------
# Schedules: t(lambda) and the range of lambda.

def invert_schedule(schedule, logsnr, num_steps: int = BISECTION_STEPS):
  """t(lambda): the closed-form inverse where the schedule has one, else bisection on [0, 1] (SPEC §1).

  Every schedule is strictly decreasing in t (SPEC §0), so bisection converges to float32 precision; values
  outside [lambda(1), lambda(0)] end at the nearest end of [0, 1].
  """
  logsnr = jnp.asarray(logsnr, jnp.float32)
  if schedule.has_inverse:
    return schedule.inverse(logsnr)

  def halve(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    above = schedule(mid) > logsnr  # lambda(mid) still too large: t(lambda) lies to the right of mid
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, num_steps, halve, (jnp.zeros_like(logsnr), jnp.ones_like(logsnr)))
  return 0.5 * (lo + hi)


def logsnr_range_traced(schedule):
  """(lambda(1), lambda(0)): the range of logSNRs training samples, lowest first (SPEC §0), as jnp scalars."""
  ends = schedule(jnp.array([1.0, 0.0]))
  return ends[0], ends[1]


def logsnr_range(schedule):
  """(lambda(1), lambda(0)) as Python floats; see `logsnr_range_traced`."""
  lo, hi = logsnr_range_traced(schedule)
  return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------------
# The core: one jitted function of a batch of logSNRs.

def band_names(levels: int):
  """Names of the bands of `haar_dwt(x, levels)` in `losses.haar_band_energies` order: level k's detail bands
  carry k - 1 'LL' prefixes, the final low band is 'LL' * levels (SPEC §4's LLLH ... naming)."""
  names = ['LL' * (k - 1) + b for k in range(1, levels + 1) for b in ('LH', 'HL', 'HH')]
  return names + ['LL' * levels]


def power_band_shifts(bias: float, levels: int):
  """b_s = log(2) l(s) - b of every band, in `band_names` order (SPEC §4); w_s = sigmoid(lambda + b_s)."""
  lows = wavelets.band_low_passes(levels)
  flat = [l for level in lows[:-1] for l in level] + [lows[-1]]
  return losses.power_band_shift(jnp.asarray(flat, jnp.float32), bias)


def power_band_weights(logsnr, bias: float, levels: int):
  """w_s / (-dlambda/dt) = sigmoid(lambda + b_s) for every band, [L, S] for logsnr [L] (SPEC §4)."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return jax.nn.sigmoid(logsnr[:, None] + power_band_shifts(bias, levels)[None])


def power_band_eps_weights(logsnr, bias: float, levels: int):
  """The eps-space weighting each band's error gets, [L, S]: w(lambda) = 2 e^-lambda sigmoid(lambda + b_s).

  Matching SPEC §4's term sigmoid(lambda + b_s) (-dlambda/dt) ||s||^2 against SPEC §3's general form
  1/2 w (-dlambda/dt) e^lambda ||x - x_hat||^2 band by band. Equivalently 2 e^{b_s} sigmoid(-b_s - lambda):
  band s is weighted like `sigmoid:<-b_s>` scaled by 2 e^{b_s}.
  """
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return 2.0 * jnp.exp(-logsnr)[:, None] * power_band_weights(logsnr, bias, levels)


def _tile(a, reps):
  """[B, ...] -> [reps * B, ...], the batch repeated reps times (example b of copy r at r * B + b)."""
  a = jnp.asarray(a)
  return jnp.broadcast_to(a, (reps,) + a.shape).reshape((reps * a.shape[0],) + a.shape[1:])


def _group_mean(v, groups):
  """[G * K] -> [G]: the mean of each consecutive group of K values."""
  return jnp.mean(v.reshape((groups, -1)), axis=1)


def make_loss_vs_logsnr_fn(apply_fn: Callable, schedule, loss_type: str, parametrization: str):
  """A jitted `fn(params, x, labels, eps, logsnrs, step) -> {name: [L] or [L, S]}` (see the module docstring).

  apply_fn(params, z, logsnr, labels) -> model output read in `parametrization` (SPEC §2); z is [M, ...] and
  logsnr [M] with M = L * N * B. x: data [B, ...]; labels: None or a pytree of [B, ...] arrays (tiled with the
  data); eps: noise [N, B, ...]; logsnrs: [L]; step: None (the final bias of a time-shifted sigmoid) or the
  training step. Each output is the mean over the N * B noisy examples of its lambda.
  """
  loss = losses.parse_loss(loss_type)  # validated once: its loss_fn, weighting and power bands
  param_lib.check(parametrization)
  loss_fn = loss.loss_fn(schedule)
  power, weighting = loss.power_bands, loss.weighting

  def fn(params, x, labels, eps, logsnrs, step):
    num_l, reps = logsnrs.shape[0], eps.shape[0] * eps.shape[1]
    xs = _tile(x, num_l * eps.shape[0])
    es = _tile(eps.reshape((reps,) + eps.shape[2:]), num_l)
    lam = jnp.repeat(logsnrs, reps)
    tiled_labels = jax.tree.map(lambda a: _tile(a, num_l * eps.shape[0]), labels)
    z = param_lib.diffuse(xs, es, lam)
    out = apply_fn(params, z, lam, tiled_labels).astype(jnp.float32)
    x_hat, eps_hat = param_lib.to_x_eps(out, z, lam, parametrization)

    lo, hi = logsnr_range_traced(schedule)
    in_range = (logsnrs >= lo - RANGE_TOL) & (logsnrs <= hi + RANGE_TOL)
    t = jnp.clip(invert_schedule(schedule, logsnrs), 0.0, 1.0)
    t_ex = jnp.repeat(t, reps)
    nan = jnp.full_like(logsnrs, jnp.nan)
    mask = lambda v: jnp.where(in_range.reshape(in_range.shape + (1,) * (v.ndim - 1)), v, jnp.nan)

    loss = _group_mean(loss_fn(xs, es, x_hat, eps_hat, t_ex, step), num_l)
    neg_dl = losses.neg_dlogsnr_dt(schedule, t)
    res = dict(
        logsnr=logsnrs, t=jnp.where(in_range, t, nan), in_range=in_range, loss=mask(loss),
        neg_dlogsnr_dt=mask(neg_dl), loss_per_logsnr=mask(loss / neg_dl),
        eps_mse=_group_mean(losses.mean_except_batch((es - eps_hat) ** 2), num_l),
        x_mse=_group_mean(losses.mean_except_batch((xs - x_hat) ** 2), num_l))
    if weighting is not None:
      res['weight'] = weighting(logsnrs, step)
    if power is not None:
      bias, levels = power
      energies, _ = losses.haar_band_energies(x_hat - xs, levels)
      band_x_mse = jnp.stack([_group_mean(e, num_l) for e in energies], axis=1) / x[0].size  # [L, S]
      band_weight = power_band_weights(logsnrs, bias, levels)
      res.update(band_weight=band_weight, band_x_mse=band_x_mse,
                 band_loss=mask(band_weight * neg_dl[:, None] * band_x_mse))
    return res

  return jax.jit(fn)


def run_over_logsnrs(fn, params, x, labels, eps, logsnrs, step=None, logsnr_batch: int = 8):
  """Applies `fn` (from `make_loss_vs_logsnr_fn`) to fixed-size chunks of `logsnrs` (the last one padded, so
  one compilation serves any grid) and concatenates the results as numpy arrays."""
  logsnrs = np.asarray(logsnrs, np.float32)
  n = logsnrs.shape[0]
  chunk = min(int(logsnr_batch), n)
  parts = []
  for start in range(0, n, chunk):
    part = logsnrs[start:start + chunk]
    padded = np.concatenate([part, np.full(chunk - part.shape[0], part[-1], np.float32)])
    out = jax.device_get(fn(params, x, labels, eps, jnp.asarray(padded), step))
    parts.append({k: np.asarray(v)[:part.shape[0]] for k, v in out.items()})
  return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


# ---------------------------------------------------------------------------------------------------------
# From a config (and a workdir).

def _check_positive_int(value, name):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{name} must be a positive integer; got {value!r}')
  return int(value)


def split_data(data):
  """(images [B, ..., H, W, C], batch dict) from an array or a batch dict with 'image' (+ 'label', 'text').

  Images are [B, H, W, C], or with more axes before H (video [B, T, H, W, C]) for models that take them.
  """
  batch = dict(data) if isinstance(data, dict) else dict(image=data)
  if 'image' not in batch:
    raise ValueError(f"data must be an image array [B, H, W, C] or a dict with 'image'; got keys "
                     f'{sorted(batch)}')
  x = jnp.asarray(batch['image'], jnp.float32)
  if x.ndim < 4 or x.shape[0] < 1:
    raise ValueError(f'data images must be [B, H, W, C] (or [B, T, H, W, C]) with B >= 1; got shape '
                     f'{tuple(x.shape)}')
  return x, batch


def conditioning(config, batch, null_labels: bool = False):
  """The model's conditioning for `batch`, as the train step builds it without dropout: text embeddings
  ({'text', 'keep'}), else class labels for a class-conditional model (`model.num_classes` > 0), else None.
  null_labels: the null condition (labels=None, which every registered model reads as the null class or
  context) -- the unconditional branch of classifier-free guidance."""
  num_classes = int(config.model.get('num_classes', 0) or 0) if 'model' in config else 0
  if null_labels:
    return None
  if 'text' in batch:
    text = jnp.asarray(batch['text'], jnp.float32)
    return dict(text=text, keep=jnp.ones((text.shape[0],), bool))
  if not num_classes:
    return None
  if 'label' not in batch:
    raise ValueError(f"the model is class-conditional (config field model.num_classes={num_classes}): data "
                     "needs 'label' (or pass null_labels=True)")
  labels = np.asarray(batch['label'])
  if labels.shape != (batch['image'].shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"data 'label' must be integers of shape [{batch['image'].shape[0]}]; got "
                     f'{labels.dtype} {labels.shape}')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"data 'label' must lie in [0, {num_classes}) (model.num_classes={num_classes})")
  return jnp.asarray(labels, jnp.int32)


def model_apply_fn(config, num_channels: int):
  """apply_fn(params, z, logsnr, labels) -> output of the config's registered model, in eval mode."""
  model = models.get_model(config.model, image_res=config.image_res, num_channels=num_channels)

  def apply_fn(params, z, logsnr, labels):
    return model.apply({'params': params}, z, logsnr, labels, train=False)
  return apply_fn


@functools.lru_cache(maxsize=8)
def _cached_fn(key: str, num_channels: int, apply_fn: Optional[Callable]):
  """The jitted core for a config (keyed by its relevant fields), so repeated calls compile once."""
  config = ml_collections.ConfigDict(json.loads(key))
  schedule = schedules.get_schedule(config.schedule, image_res=config.image_res)
  fn = apply_fn if apply_fn is not None else model_apply_fn(config, num_channels)
  return make_loss_vs_logsnr_fn(fn, schedule, config.loss_type, config.parametrization)


def _config_key(config, with_model: bool) -> str:
  keep = {k: config.get(k) for k in ('image_res', 'schedule', 'loss_type', 'parametrization')}
  if with_model:
    keep['model'] = config.model.to_dict()
  return json.dumps(keep, sort_keys=True, default=str)


def validate_analysis_config(config, with_model: bool):
  """ValueError (naming the field) for a config that cannot define the analysis, before any compute."""
  for field in ('image_res', 'schedule', 'loss_type', 'parametrization'):
    if config.get(field, None) is None:
      raise ValueError(f'config field {field} is required for loss_vs_logsnr')
  schedules.get_schedule(config.schedule, image_res=config.image_res)
  losses.validate_loss_type(config.loss_type, config.image_res)
  param_lib.check(config.parametrization)
  if with_model:
    if 'model' not in config:
      raise ValueError('config field model is required (or pass apply_fn)')
    models.validate_model_config(config.model, config.image_res)


def loss_vs_logsnr(params: Any, config, data, logsnrs, *, num_noise: int = 4, rng=None,
                   null_labels: bool = False, step: Optional[int] = None, apply_fn: Optional[Callable] = None,
                   logsnr_batch: int = 8) -> dict:
  """Per-logSNR mean losses of a model on `data` (see the module docstring for the keys; numpy arrays).

  params: the model's parameters (e.g. EMA params from `load_checkpoint`), passed to apply_fn.
  config: the training config (`image_res`, `schedule`, `loss_type`, `parametrization`, `model`).
  data: images [B, H, W, C] in [-1, 1], or a batch dict with 'image' and the conditioning ('label' for a
    class-conditional model, or 'text').
  logsnrs: 1-D grid of lambda values.  num_noise: noise draws per image.  rng: PRNG key (default key 0).
  null_labels: evaluate the unconditional (null-class) prediction of a conditional model.
  step: training step for a time-shifted sigmoid bias (SiD2 C.2); None: its final bias.
  apply_fn: `apply_fn(params, z, logsnr, labels) -> output` in place of the config's registered model (then
    `config.model` is only read for `num_classes`).
  logsnr_batch: logSNRs per jitted call (the model sees logsnr_batch * num_noise * B examples at once).
  """
  validate_analysis_config(config, with_model=apply_fn is None)
  num_noise = _check_positive_int(num_noise, 'num_noise')
  logsnr_batch = _check_positive_int(logsnr_batch, 'logsnr_batch')
  grid = np.asarray(logsnrs, np.float64)
  if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
    raise ValueError(f'logsnrs must be a non-empty 1-D array of finite values; got shape {grid.shape}')
  if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0):
    raise ValueError(f'step must be None or an integer >= 0; got {step!r}')
  x, batch = split_data(data)
  if x.shape[-3] != config.image_res or x.shape[-2] != config.image_res:
    raise ValueError(f'data images are {x.shape[-3]}x{x.shape[-2]} but config field image_res='
                     f'{config.image_res}')
  labels = conditioning(config, batch, null_labels)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  eps = jax.random.normal(rng, (num_noise,) + x.shape, jnp.float32)
  key = (_config_key(config, apply_fn is None), int(x.shape[-1]), apply_fn)
  try:
    fn = _cached_fn(*key)
  except TypeError:  # an unhashable apply_fn: build (and compile) afresh
    fn = _cached_fn.__wrapped__(*key)
  step_arg = None if step is None else jnp.int32(step)
  res = run_over_logsnrs(fn, params, x, labels, eps, grid, step_arg, logsnr_batch)
  if 'band_loss' in res:
    res['band_names'] = band_names(losses.parse_loss(config.loss_type).power_bands[1])
  return res


def load_checkpoint(workdir: str, step: Optional[int] = None) -> Checkpoint:
  """(EMA params, config, step) of a training workdir's latest (or the given) checkpoint (`sid2.restore`)."""
  config = restore.load_config(workdir)
  params, step = restore.load_ema_params(workdir, step, config=config)
  return Checkpoint(params, config, step)


def eval_batch(config, num_images: int, split: Optional[str] = None, seed: int = 0) -> dict:
  """A fixed batch {'image', 'label'[, 'text']} of `num_images` examples of the config's dataset (split:
  default the config's `dataset.split`), shuffled deterministically by seed (`sid2.data.get_dataset`)."""
  from sid2 import data as data_lib  # imported late: it pulls in tensorflow for tfds datasets only
  num_images = _check_positive_int(num_images, 'num_images')
  dataset = ml_collections.ConfigDict(config.dataset.to_dict())
  if split is not None:
    dataset.split = split
  ds = data_lib.get_dataset(dataset, image_res=config.image_res, global_batch_size=num_images, seed=seed,
                            process_index=0, process_count=1)
  return ds.next_batch(0)


def read_training_curve(path: str, last: int = 10) -> Optional[dict]:
  """The trainer's `loss_vs_logsnr.jsonl` averaged over its `last` records (count-weighted per bin).

  Returns {'logsnr': bin centres, 'loss', 'eps_mse', 'count', 'steps': (first, last)} for the bins between
  two consecutive edges that saw any example (the two open end bins are left out), or None when the file
  does not exist or is empty. The trainer's values are the training loss with the live (not EMA) params.
  """
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  if not records:
    return None
  records = records[-_check_positive_int(last, 'last'):]
  edges = np.asarray(records[-1]['bin_edges'], np.float64)
  count = sum(np.asarray(r['count'], np.float64) for r in records)
  totals = {k: sum(np.nan_to_num(np.asarray(r[k], np.float64)) * np.asarray(r['count'], np.float64)
                   for r in records) for k in ('loss', 'eps_mse')}
  inner = slice(1, len(edges))  # bins 1..len(edges)-1 lie between two edges; 0 and the last are open
  seen = count[inner] > 0
  centres = 0.5 * (edges[:-1] + edges[1:])
  out = {k: (v[inner] / np.maximum(count[inner], 1))[seen] for k, v in totals.items()}
  out.update(logsnr=centres[seen], count=count[inner][seen], steps=(records[0]['step'], records[-1]['step']))
  return out


def integrate_over_logsnr(logsnrs, values) -> float:
  """Trapezoid integral of values(lambda) over the finite entries (e.g. loss_per_logsnr -> E_t[loss])."""
  logsnrs, values = np.asarray(logsnrs, np.float64), np.asarray(values, np.float64)
  ok = np.isfinite(values)
  if ok.sum() < 2:
    return math.nan
  return float(np.trapezoid(values[ok], logsnrs[ok]))
