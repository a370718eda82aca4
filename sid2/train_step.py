"""One jitted, data-parallel diffusion train step for every model family.

`make_train_step` builds the step from plain ingredients -- a model apply function, a schedule, a loss
function, a parametrisation and an optax optimizer -- and knows none of their names. Data parallelism uses
`jax.jit` with `NamedSharding` over a 1-D `Mesh` named `data` (batch sharded, parameters replicated): the
modern replacement for `pmap`, which JAX keeps in maintenance mode. The same code runs on one CPU, a GPU host
or a multi-host TPU pod. `sid2.sharding` builds 2-D ('data', 'fsdp') meshes and sharded state layouts that
`jit_train_step` takes as `state_sharding`; the batch is split over all of the mesh's axes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sid2 import parametrization as param_lib

# Loss-vs-logSNR bins: edges every 2 units on [-20, 20], plus the two open ends (for notebooks, SPEC §0).
LOGSNR_BIN_EDGES = np.linspace(-20.0, 20.0, 21)
NUM_LOGSNR_BINS = len(LOGSNR_BIN_EDGES) + 1


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs (the data position is saved beside it by the trainer)."""
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_total: jax.Array   # updates skipped for a non-finite loss or gradient
  nonfinite_streak: jax.Array  # ... of which in a row up to now
  # Power-function EMAs (EDM2 §3), one params tree per `StepConfig.power_ema_gammas`; None when off.
  power_ema: Any = None


def create_train_state(params, optimizer, rng, num_power_emas: int = 0):
  """A fresh TrainState with EMA = params (copied, so donation of one never frees the other).

  num_power_emas > 0 adds that many power-function EMAs (`power_ema`, a tuple of params copies).
  """
  power = tuple(jax.tree.map(jnp.array, params) for _ in range(num_power_emas)) if num_power_emas else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.array, params), opt_state=optimizer.init(params),
                    rng=rng, nonfinite_total=jnp.zeros((), jnp.int32),
                    nonfinite_streak=jnp.zeros((), jnp.int32), power_ema=power)


# ---------------------------------------------------------------------------------------------------------
# Optimizer.

def make_learning_rate(learning_rate, warmup_steps=0, decay='constant', total_steps=0, end_factor=0.0):
  """Linear warmup to `learning_rate`, then constant, linear decay or cosine decay to end_factor*lr."""
  if decay not in ('constant', 'linear', 'cosine'):
    raise ValueError(f"optimizer.decay must be one of ('constant', 'linear', 'cosine'); got {decay!r}")
  warmup = optax.linear_schedule(0.0, learning_rate, max(int(warmup_steps), 1))
  if decay == 'constant':
    after = optax.constant_schedule(learning_rate)
  else:
    steps = max(int(total_steps) - int(warmup_steps), 1)
    if decay == 'linear':
      after = optax.linear_schedule(learning_rate, learning_rate * end_factor, steps)
    else:
      after = optax.cosine_decay_schedule(learning_rate, steps, alpha=end_factor)
  return optax.join_schedules([warmup, after], [int(warmup_steps)])


def make_optimizer(cfg, total_steps):
  """optax Adam(W) with SiD2's knobs: beta1, beta2, eps, weight decay, warmup, grad clipping (B.7)."""
  if cfg.name not in ('adam', 'adamw'):
    raise ValueError(f"optimizer.name must be one of ('adam', 'adamw'); got {cfg.name!r}")
  lr = make_learning_rate(cfg.learning_rate, cfg.warmup_steps, cfg.get('decay', 'constant'), total_steps,
                          cfg.get('end_factor', 0.0))
  parts = []
  if cfg.get('grad_clip', 0.0) and cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.adamw(lr, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay))
  return optax.chain(*parts), lr


# ---------------------------------------------------------------------------------------------------------
# Pieces of the step, each a small pure function.

def sample_t(rng, batch_size, low_discrepancy=False):
  """t ~ U(0, 1) per example; low-discrepancy: t_i = (u + i / B) mod 1 with one shared u (VDM)."""
  if low_discrepancy:
    u = jax.random.uniform(rng, ())
    return jnp.mod(u + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
  return jax.random.uniform(rng, (batch_size,))


def drop_labels(rng, labels, null_label, drop_prob):
  """Replaces labels by the null class with probability drop_prob (classifier-free guidance training)."""
  keep = jax.random.uniform(rng, labels.shape) >= drop_prob
  return jnp.where(keep, labels, null_label)


def logsnr_bin_stats(logsnr, values):
  """Per-bin sums and counts of `values` over LOGSNR_BIN_EDGES (for loss-vs-logSNR curves)."""
  idx = jnp.searchsorted(jnp.asarray(LOGSNR_BIN_EDGES, jnp.float32), logsnr)
  sums = jax.ops.segment_sum(values, idx, num_segments=NUM_LOGSNR_BINS)
  counts = jax.ops.segment_sum(jnp.ones_like(values), idx, num_segments=NUM_LOGSNR_BINS)
  return sums, counts


def ema_update(ema, params, decay):
  """ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def ema_decay_at(step, decay):
  """min(decay, (1 + step) / (10 + step)): the EMA forgets the random init quickly early in training."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def power_ema_beta(num_updates, gamma):
  """beta_gamma(t) = (1 - 1/t)^(gamma + 1) after the t-th update (EDM2 §3, power-function EMA).

  The average after t updates then weighs update s by (s^(g+1) - (s-1)^(g+1)) / t^(g+1): exactly the profile
  (g + 1) tau^g / t^(g+1) on [0, t] with the parameters constant on (s - 1, s] (what `sid2.posthoc_ema` uses).
  """
  t = jnp.asarray(num_updates, jnp.float32)
  return (1.0 - 1.0 / t) ** (gamma + 1.0)


def split_micro_batches(x, k):
  """[B, ...] -> [k, B / k, ...] with example j k + i in micro-batch i: each device's contiguous block of the
  batch (B / devices rows, a multiple of k) holds whole groups of k, so every micro-batch stays local."""
  return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


def tree_all_finite(tree):
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def tree_select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The numbers of the step that are not functions."""
  ema_decay: float = 0.9999
  num_classes: int = 0        # 0: unconditional; else labels in [0, num_classes), null class = num_classes
  cond_drop_prob: float = 0.1
  low_discrepancy: bool = False
  grad_accum_steps: int = 1   # micro-batches per update (lax.scan inside the step; same update as one batch)
  power_ema_gammas: tuple = ()  # exponents of the power-function EMAs in TrainState.power_ema (EDM2 §3)


def make_loss_fn(apply_fn, schedule, loss_fn, parametrization, step_cfg: StepConfig, aux_loss_fn=None):
  """(params, batch, rng, step, frozen) -> (scalar loss, aux): the diffusion objective of a batch (SPEC §3).

  With `aux_loss_fn`, apply_fn returns (output, features) and the per-example loss gets
  `aux_loss_fn(frozen, features, inputs) -> (per-example [B], {name: scalar})` added, where `inputs` holds
  x, z, logsnr, t, labels, out, x_hat, eps_hat and `frozen` is a pytree of arrays that are not trained
  (e.g. a distillation teacher's parameters).
  """
  param_lib.check(parametrization)
  objective_given = make_noised_objective(apply_fn, schedule, loss_fn, parametrization, step_cfg, aux_loss_fn)

  def objective(params, batch, rng, step, frozen=None):
    noise, rng_model = draw_noise(rng, batch['image'].shape, batch['image'].dtype, step_cfg)
    return objective_given(params, batch, noise, rng_model, step, frozen)
  return objective


def draw_noise(rng, x_shape, dtype, step_cfg: StepConfig):
  """The per-example randomness of a batch's objective: ({t, eps, drop_u}, the model's dropout key).

  Drawn for the whole batch at once, so that gradient accumulation can hand each micro-batch its rows.
  """
  rng_t, rng_eps, rng_drop, rng_model = jax.random.split(rng, 4)
  noise = dict(t=sample_t(rng_t, x_shape[0], step_cfg.low_discrepancy),
               eps=jax.random.normal(rng_eps, x_shape, dtype),
               drop_u=jax.random.uniform(rng_drop, (x_shape[0],)))
  return noise, rng_model


def make_noised_objective(apply_fn, schedule, loss_fn, parametrization, step_cfg: StepConfig, aux_loss_fn=None):
  """(params, batch, noise, rng_model, step, frozen) -> (loss, aux): `make_loss_fn`'s objective with the
  per-example randomness given (`draw_noise`)."""

  def objective(params, batch, noise, rng_model, step, frozen=None):
    x = batch['image']
    t, eps = noise['t'], noise['eps']
    logsnr = schedule(t)
    z = param_lib.diffuse(x, eps, logsnr)
    labels = None
    keep = noise['drop_u'] >= step_cfg.cond_drop_prob  # same draw as drop_labels' (CFG label dropout)
    if 'text' in batch:  # Text embeddings [B, S, D]: the model swaps dropped rows for its null context.
      labels = dict(text=batch['text'], keep=keep)
    elif step_cfg.num_classes > 0:
      labels = jnp.where(keep, batch['label'], step_cfg.num_classes)
    out = apply_fn(params, z, logsnr, labels, True, rng_model)
    features = None
    if aux_loss_fn is not None:
      out, features = out
    out = out.astype(jnp.float32)
    x_hat, eps_hat = param_lib.to_x_eps(out, z, logsnr, parametrization)
    per_example = loss_fn(x, eps, x_hat, eps_hat, t, step)
    eps_mse = jnp.mean((eps - eps_hat) ** 2, axis=tuple(range(1, x.ndim)))
    aux = dict(per_example=per_example, eps_mse=eps_mse, logsnr=logsnr, extra={})
    if aux_loss_fn is not None:
      inputs = dict(x=x, z=z, logsnr=logsnr, t=t, labels=labels, out=out, x_hat=x_hat, eps_hat=eps_hat)
      extra, aux['extra'] = aux_loss_fn(frozen, features, inputs)
      aux['diffusion_loss'] = jnp.mean(per_example)
      per_example = per_example + extra
    return jnp.mean(per_example), aux
  return objective


def make_train_step(apply_fn: Callable, schedule: Callable, loss_fn: Callable, parametrization: str,
                    optimizer: optax.GradientTransformation, step_cfg: StepConfig, aux_loss_fn=None):
  """The un-jitted train step `(state, batch, frozen=None) -> (state, metrics)`; see `jit_train_step`.

  apply_fn(params, z, logsnr, labels, train, rng) -> model output; loss_fn as from `sid2.losses.get_loss`.
  A non-finite loss or gradient skips the update (params, EMA and optimizer state unchanged), counts it
  in `nonfinite_total` and `nonfinite_streak`; the trainer stops after too long a streak.
  aux_loss_fn: an extra per-example loss on model features (see `make_loss_fn`), e.g. distillation.
  """
  objective = make_loss_fn(apply_fn, schedule, loss_fn, parametrization, step_cfg, aux_loss_fn)
  accumulated = make_accumulated_grad_fn(apply_fn, schedule, loss_fn, parametrization, step_cfg, aux_loss_fn)

  def train_step(state: TrainState, batch, frozen=None):
    rng = jax.random.fold_in(state.rng, state.step)
    if step_cfg.grad_accum_steps > 1:
      (loss, aux), grads = accumulated(state.params, batch, rng, state.step, frozen)
    else:
      (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch, rng, state.step,
                                                                        frozen)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    new_ema = ema_update(state.ema_params, new_params, ema_decay_at(state.step, step_cfg.ema_decay))
    ok = jnp.isfinite(loss) & tree_all_finite(grads)
    power_ema = state.power_ema
    if power_ema is not None:
      new_power = tuple(ema_update(e, new_params, power_ema_beta(state.step + 1, g))
                        for e, g in zip(power_ema, step_cfg.power_ema_gammas))
      power_ema = tree_select(ok, new_power, power_ema)
    new_state = state.replace(
        power_ema=power_ema,
        step=state.step + 1,
        params=tree_select(ok, new_params, state.params),
        ema_params=tree_select(ok, new_ema, state.ema_params),
        opt_state=tree_select(ok, new_opt_state, state.opt_state),
        nonfinite_total=state.nonfinite_total + (~ok).astype(jnp.int32),
        nonfinite_streak=jnp.where(ok, 0, state.nonfinite_streak + 1))
    bin_loss, bin_count = logsnr_bin_stats(aux['logsnr'], aux['per_example'])
    bin_mse, _ = logsnr_bin_stats(aux['logsnr'], aux['eps_mse'])
    metrics = dict(loss=loss, eps_mse=jnp.mean(aux['eps_mse']), grad_norm=optax.tree.norm(grads),
                   update_ok=ok.astype(jnp.float32), bin_loss_sum=bin_loss, bin_eps_mse_sum=bin_mse,
                   bin_count=bin_count, nonfinite_streak=new_state.nonfinite_streak,
                   nonfinite_total=new_state.nonfinite_total)
    if aux_loss_fn is not None:
      metrics['diffusion_loss'] = aux['diffusion_loss']
      metrics.update({f'aux/{k}': v for k, v in aux['extra'].items()})
    return new_state, metrics
  return train_step


def make_accumulated_grad_fn(apply_fn, schedule, loss_fn, parametrization, step_cfg: StepConfig,
                             aux_loss_fn=None):
  """(params, batch, rng, step, frozen) -> ((loss, aux), grads) over `grad_accum_steps` micro-batches.

  The noise is drawn for the whole batch (`draw_noise`) and split with the batch, and the micro-batch
  gradients of the mean loss are averaged in a lax.scan: the update equals the one-batch update up to float
  summation order (only model dropout, if any, draws per micro-batch). Activations are kept for one
  micro-batch at a time. Per-example aux entries come back for the whole batch (micro-batch-major order).
  """
  k = step_cfg.grad_accum_steps
  objective = make_noised_objective(apply_fn, schedule, loss_fn, parametrization, step_cfg, aux_loss_fn)
  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def accumulated(params, batch, rng, step, frozen=None):
    x = batch['image']
    if x.shape[0] % k:
      raise ValueError(f'config field grad_accum_steps={k} must divide the batch ({x.shape[0]})')
    noise, rng_model = draw_noise(rng, x.shape, x.dtype, step_cfg)
    micro = jax.tree.map(lambda a: split_micro_batches(a, k), (batch, noise))

    def body(grad_sum, inputs):
      (b, n), i = inputs
      (loss, aux), grads = grad_fn(params, b, n, jax.random.fold_in(rng_model, i), step, frozen)
      return jax.tree.map(jnp.add, grad_sum, grads), (loss, aux)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grad_sum, (losses, auxs) = jax.lax.scan(body, zeros, (micro, jnp.arange(k)))
    grads = jax.tree.map(lambda g: g / k, grad_sum)
    aux = {key: auxs[key].reshape((-1,) + auxs[key].shape[2:])
           for key in ('per_example', 'eps_mse', 'logsnr')}
    aux['extra'] = jax.tree.map(lambda v: jnp.mean(v, axis=0), auxs['extra'])
    if 'diffusion_loss' in auxs:
      aux['diffusion_loss'] = jnp.mean(auxs['diffusion_loss'])
    return (jnp.mean(losses), aux), grads
  return accumulated


# ---------------------------------------------------------------------------------------------------------
# Sharding.

def make_mesh(devices=None):
  """A 1-D mesh over all (global) devices with the axis name `data`."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ('data',))


def replicated(mesh):
  return NamedSharding(mesh, P())


def data_axes(mesh):
  """The axes the batch is split over: all of the mesh's (no tensor parallelism; FSDP's axis splits the
  batch too, only the parameters are split differently)."""
  return tuple(mesh.axis_names)


def batch_sharded(mesh):
  axes = data_axes(mesh)
  return NamedSharding(mesh, P(axes[0] if len(axes) == 1 else axes))


def jit_train_step(train_step, mesh, donate=True, state_sharding=None):
  """jit with the batch split over `data_axes(mesh)`, frozen arrays and metrics replicated.

  state_sharding: a NamedSharding or a TrainState-shaped pytree of them (`sid2.sharding.state_shardings`)
  for the state in and out; default replicated.
  """
  rep, data = replicated(mesh), batch_sharded(mesh)
  state = rep if state_sharding is None else state_sharding
  return jax.jit(train_step, in_shardings=(state, data, rep), out_shardings=(state, rep),
                 donate_argnums=(0,) if donate else ())


def global_batch(local_batch, mesh):
  """Assembles the global batch from this process's part (multi-host: one slice per process)."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)),
                      local_batch)
