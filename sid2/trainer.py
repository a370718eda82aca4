"""The training loop: data -> jitted data-parallel step -> metrics, samples, checkpoints (flat, readable).

`train_and_evaluate(config, workdir)` is what `python -m experiments.train` runs. Workdir layout (SPEC §12):
  checkpoints/          orbax checkpoints (state + data position), the last `keep_checkpoints`, plus every
                        multiple of `keep_every` (permanent snapshots, for FID-over-training and post-hoc EMA)
  events.out.tfevents*  TensorBoard scalars, loss-vs-logSNR and sample images (clu metric writers)
  samples/step_<N>.png  the sample grid at every eval
  loss_vs_logsnr.jsonl  per-logSNR-bin mean weighted loss and eps-MSE at every log step (for notebooks)
  config.json           the resolved config
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers

from sid2 import aux_losses
from sid2 import checkpoint as ckpt_lib
from sid2 import config_lib
from sid2 import data as data_lib
from sid2 import host_input
from sid2 import losses
from sid2 import sample_fns
from sid2 import sampling
from sid2 import schedules
from sid2 import sharding as sharding_lib
from sid2 import train_clock as clock_lib
from sid2 import train_step as ts
from sid2.images import save_image_grid, image_grid
from sid2.models import build as model_build


class NonFiniteError(RuntimeError):
  """Raised when too many updates in a row had a non-finite loss or gradient."""


def write_loss_vs_logsnr(path, step, sums, mse_sums, counts):
  """Appends one JSON line: bin edges, mean weighted loss and eps-MSE per logSNR bin."""
  with np.errstate(invalid='ignore', divide='ignore'):
    rec = dict(step=int(step), bin_edges=ts.LOGSNR_BIN_EDGES.tolist(), count=counts.astype(int).tolist(),
               loss=np.where(counts > 0, sums / counts, np.nan).tolist(),
               eps_mse=np.where(counts > 0, mse_sums / counts, np.nan).tolist())
  with open(path, 'a') as f:
    f.write(json.dumps(rec, allow_nan=True) + '\n')


class _Preemption:
  """Sets a flag on SIGTERM so the loop saves a checkpoint and exits cleanly (single-process runs).

  install=False leaves SIGTERM alone: in a multi-process run jax's preemption service catches it, and every
  process stops at the same step when `Checkpointer.reached_preemption` says so (a per-process flag would stop
  one host alone, mid-collective).
  """

  def __init__(self, install: bool = True):
    self.requested = False
    self._old = None
    self._install = install

  def __enter__(self):
    if not self._install:
      return self
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and exiting')
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _progress_line(step, total, loss, steps_per_s, elapsed, clock=None):
  """One progress line; with a time budget (`clock`: a TrainClock) the bar and the ETA follow the budget."""
  eta = (total - step) / steps_per_s if steps_per_s > 0 else float('nan')
  fmt = lambda s: time.strftime('%H:%M:%S', time.gmtime(s)) if math.isfinite(s) else '--:--:--'
  bar_w = 24
  frac = step / max(total, 1)
  budget = ''
  if clock is not None and clock.budget > 0:
    spent = clock.seconds()
    frac = max(frac, spent / clock.budget)
    budget = f'  budget {spent:.0f}/{clock.budget:.0f} s ({clock.clock})'
  filled = min(bar_w, int(bar_w * frac))
  return (f'[{"#" * filled}{"." * (bar_w - filled)}] step {step}/{total}  loss {loss:.5f}  '
          f'{steps_per_s:.2f} steps/s  elapsed {fmt(elapsed)}  ETA {fmt(eta)}{budget}')


# ---------------------------------------------------------------------------------------------------------
# The loop.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, stop_after: Optional[int] = None):
  """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns the final TrainState.

  stop_after: end the run (with a checkpoint) after this many steps in this invocation (tests, debugging).
  """
  config_lib.validate_config(config, num_devices=jax.device_count())
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  clock = clock_lib.TrainClock(workdir, config, write=is_main)  # config.max_train_seconds counts from here
  os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
  mesh = sharding_lib.make_mesh(config.get('mesh', None))  # without config.mesh: the 1-D `data` mesh
  ds = data_lib.get_dataset(config.dataset, image_res=config.image_res, global_batch_size=config.batch_size,
                            seed=config.seed, process_index=jax.process_index(),
                            process_count=jax.process_count(), uint8_images=True)  # scaled on device
  if is_main:
    saved = ml_collections.ConfigDict(config.to_dict())
    saved.num_channels = ds.num_channels  # so a workdir restores without its dataset
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(saved.to_json_best_effort(indent=2))
  model = model_build.build_model(config, ds.num_channels)
  model_build.check_data_frames(model, config, ds)  # videos [T, H, W, C] for video models, else images
  model_build.check_data_classes(config, ds)
  schedule = schedules.get_schedule(config.schedule, image_res=config.image_res)
  loss_fn = losses.parse_loss(config.loss_type).loss_fn(schedule)
  optimizer, lr_fn = ts.make_optimizer(config.optimizer, config.total_steps)
  step_cfg = ts.StepConfig(ema_decay=config.ema_decay, num_classes=config.model.get('num_classes', 0),
                           cond_drop_prob=config.cond_drop_prob, low_discrepancy=config.low_discrepancy,
                           grad_accum_steps=config.get('grad_accum_steps', 1),
                           power_ema_gammas=power_ema_gammas(config))
  aux_apply_fn, aux_loss_fn, frozen = aux_losses.build_aux_loss(config, model, ds.num_channels)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng, sample_rng = jax.random.split(rng, 3)
  init_state = lambda r: ts.create_train_state(model_build.init_params(model, config, ds.num_channels, r), optimizer,
                                               state_rng, num_power_emas=len(step_cfg.power_ema_gammas))
  # Shardings from shapes alone: the state is created already split (a model too big for one device never
  # exists whole), and checkpoints restore into the same layout (`abstract_like` keeps the shardings).
  state_sharding = sharding_lib.state_shardings(jax.eval_shape(init_state, init_rng), mesh,
                                                config.get('mesh', None))
  train_step = ts.jit_train_step(host_input.scale_images_on_device(
      ts.make_train_step(aux_apply_fn or model_build.make_apply_fn(model), schedule, loss_fn, config.parametrization,
                         optimizer, step_cfg, aux_loss_fn)), mesh, state_sharding=state_sharding)
  frozen = jax.device_put(frozen, ts.replicated(mesh)) if frozen is not None else None
  state = jax.jit(init_state, out_shardings=state_sharding)(init_rng)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints,
                               keep_every=config.get('keep_every', 0))
  restored = ckpt.restore_latest(ckpt_lib.abstract_like(state))
  if restored is not None:
    start_step, state, data_state = restored
    ds.set_state(data_state)
    logging.info('resumed from checkpoint at step %d', start_step)
  start_step = int(state.step)
  clock.resume(start_step)

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  if is_main and config.get('logging', None) is not None and config.logging.get('wandb', False):
    from sid2 import wandb_writer  # pylint: disable=g-import-not-at-top
    writer = wandb_writer.with_wandb(writer, config, workdir)
  profile, tracing = tuple(config.get('profile_steps', ())), False  # (start, stop) steps of a profiler trace
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str))})
  logging.info('model %s: %.2fM parameters, %d devices, %d processes, mesh %s, %.1f MiB of state per device',
               config.model.name, num_params / 1e6, jax.device_count(), jax.process_count(), dict(mesh.shape),
               sharding_lib.bytes_per_device(state) / 2 ** 20)

  num_samples = sampling.SamplerSettings.from_config(config.sampler).num_samples
  # Text-conditioned data: samples are conditioned on the first dataset rows' embeddings.
  sample_text = ds.extra_rows('text', num_samples) if getattr(ds, 'has_extra', lambda k: False)('text') \
      and num_samples > 0 else None
  sample_fn = sample_fns.make_sample_fn(model, config, num_samples, ds.num_channels,
                             embedding_labels=sample_text is not None) if num_samples > 0 else None
  sample_labels = jnp.arange(num_samples, dtype=jnp.int32) % max(step_cfg.num_classes, 1)
  if sample_text is not None:
    sample_labels = jnp.asarray(sample_text)

  def evaluate(step):
    if num_samples <= 0:
      return
    images = np.asarray(jax.device_get(
        sample_fn(state.ema_params, sample_rng, sample_labels, *sample_fns.guidance_args(config))))
    if is_main:
      save_image_grid(images, os.path.join(workdir, 'samples', f'step_{step}.png'))
      writer.write_images(step, {'samples': image_grid(images)[None]})

  position = dict(data=ds.get_state())  # the dataset position after the last batch the loop took

  def save(step, stopped=False):
    ckpt.save(step, state, position['data'])
    clock.mark(step, stopped=stopped)

  # The budget is checked every step on one process; across processes at log steps, by process 0's clock
  # (all processes must leave the loop at the same step).
  check_every = 1 if jax.process_count() == 1 else config.log_every

  def out_of_time(done):
    if clock.budget <= 0 or done % check_every:
      return False
    if jax.process_count() == 1:
      return clock.exhausted()
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(multihost_utils.broadcast_one_to_all(np.bool_(clock.exhausted())))

  acc = None
  last_time, last_step, t0 = time.time(), start_step, time.time()
  pending = None  # metrics of the previous step, read one step late so the host never stalls the device
  end_step = config.total_steps if stop_after is None else min(config.total_steps, start_step + stop_after)
  if start_step > 0 and clock.record['stopped_by_budget'] == start_step and clock.exhausted():
    logging.warning('max_train_seconds=%g was reached at step %d: nothing left to train', clock.budget,
                    start_step)
    end_step = start_step
  # The next batches are read and copied to the devices on a thread while the step runs (sid2.host_input).
  fetch = lambda s: (ts.global_batch(ds.next_batch(s), mesh), ds.get_state())
  # SIGTERM: on one process our flag; on several, the step all processes agree on (ckpt.reached_preemption).
  preemption = _Preemption(install=jax.process_count() == 1)
  with preemption as preempt, host_input.Prefetcher(fetch, start_step, end_step,
                                                    config.get('prefetch_batches', 2)) as prefetch:
    for step in range(start_step, end_step):
      if profile and step == profile[0] and is_main:
        jax.profiler.start_trace(os.path.join(workdir, 'profile'))  # TensorBoard's profile plugin reads it
        tracing = True
      batch, position['data'] = prefetch.get(step)
      state, metrics = train_step(state, batch, frozen)
      if tracing and step + 1 == profile[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        tracing = False
      if pending is not None:
        acc = _absorb(acc, *pending, config.max_nonfinite_streak, ckpt)
      pending = (step + 1, metrics)
      done = step + 1
      if done % config.log_every == 0 or done == end_step:
        acc = _absorb(acc, *pending, config.max_nonfinite_streak, ckpt)
        pending = None
        now = time.time()
        rate = (done - last_step) / max(now - last_time, 1e-9)
        last_time, last_step = now, done
        scalars = {k: float(v / acc['n']) for k, v in acc.items()
                   if k not in ARRAY_METRICS + COUNTERS + ('n',)}
        scalars.update(steps_per_sec=rate, learning_rate=float(lr_fn(done)), train_seconds=clock.seconds(),
                       images_per_sec=rate * config.batch_size, nonfinite_total=float(acc['nonfinite_total']))
        counts = acc['bin_count']
        for i in np.nonzero(counts)[0]:
          lo = ts.LOGSNR_BIN_EDGES[i - 1] if i > 0 else -np.inf
          scalars[f'loss_vs_logsnr/bin_{i:02d}_from_{lo:+.0f}'] = float(acc['bin_loss_sum'][i] / counts[i])
        writer.write_scalars(done, scalars)
        if is_main:
          write_loss_vs_logsnr(os.path.join(workdir, 'loss_vs_logsnr.jsonl'), done, acc['bin_loss_sum'],
                               acc['bin_eps_mse_sum'], counts)
          print(_progress_line(done, config.total_steps, scalars['loss'], rate, now - t0, clock), flush=True)
        acc = None
      if done % config.checkpoint_every == 0 or done == config.total_steps:
        save(done)
      if done % config.eval_every == 0 or done == config.total_steps:
        evaluate(done)
      if preempt.requested or ckpt.reached_preemption(done):
        save(done)
        break
      if out_of_time(done):
        logging.warning('max_train_seconds=%g reached on the %s clock at step %d: saving and stopping',
                        clock.budget, clock.clock, done)
        if done % config.checkpoint_every and done != config.total_steps:
          save(done, stopped=True)
        else:
          clock.mark(done, stopped=True)
        if done % config.eval_every and done != config.total_steps:
          evaluate(done)
        break
    else:
      if stop_after is not None and end_step > start_step:
        save(end_step)
  if tracing:
    jax.profiler.stop_trace()  # the run ended inside the profiled range
  writer.flush()
  ckpt.close()
  return state


def power_ema_gammas(config) -> tuple:
  """Exponents of the power-function EMAs tracked in the state: one per `config.posthoc_ema.sigma_rels`."""
  cfg = config.get('posthoc_ema', None)
  if cfg is None:
    return ()
  from sid2 import posthoc_ema  # pylint: disable=g-import-not-at-top
  return tuple(posthoc_ema.gamma_from_sigma_rel(s) for s in cfg.sigma_rels)


def _absorb(acc, step, metrics, max_streak, ckpt):
  """Accumulates one step's metrics and stops the run after `max_streak` non-finite updates in a row."""
  acc = _accumulate(acc, metrics)
  if acc['nonfinite_streak'] >= max_streak:
    ckpt.wait()
    raise NonFiniteError(
        f'{acc["nonfinite_streak"]} updates in a row had a non-finite loss or gradient (last at step {step}); '
        f'stopping. The last good checkpoint is intact: step {ckpt.latest_step()} in {ckpt.directory}.')
  return acc


ARRAY_METRICS = ('bin_loss_sum', 'bin_eps_mse_sum', 'bin_count')
COUNTERS = ('nonfinite_streak', 'nonfinite_total')


def _accumulate(acc, metrics):
  """Host-side running sums of a step's metrics (fetched here, one step after they were produced)."""
  m = jax.device_get(metrics)
  acc = dict(n=0) if acc is None else acc
  acc['n'] += 1
  for k, v in m.items():
    if k in ARRAY_METRICS:
      acc[k] = acc.get(k, 0.0) + np.nan_to_num(np.asarray(v, np.float64))
    elif k in COUNTERS:
      acc[k] = int(v)
    else:
      acc[k] = acc.get(k, 0.0) + (float(v) if np.isfinite(v) else 0.0)
  return acc
