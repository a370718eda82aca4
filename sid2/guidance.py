"""Classifier-free guidance, guidance intervals and autoguidance as x_pred_fn wrappers (SPEC §7, §11).

Convention (SPEC §11, SiD2): x_hat = x_c + w (x_c - x_u) = (1 + w) x_c - w x_u; w = 0 is no guidance
(EDM's / Kynkaanniemi et al.'s g is 1 + w). Combining on x_hat or on eps_hat is the same at fixed z_t.
Interval (SiD2 B.4): guidance applies only where the logSNR of the current z_t lies in the open interval
(lo, hi); elsewhere the conditional prediction is used alone. `interval=None` is constant guidance
(lo = -inf, hi = +inf). An interval with lo >= hi is empty (never guides).

Every wrapper returns a `jax.tree_util.Partial` whose strength and interval are array leaves: passed to
`sid2.samplers.sample` they are traced, so changing w or the interval does not recompile the sampler. The
wrapped functions may be plain callables (their closed-over values are compile-time constants) or
`Partial`s themselves (their bound arrays, e.g. model parameters, stay traced too).

Where no example of the batch is inside the interval (or w == 0) the negative prediction is skipped
(`lax.cond`), so intervals also save compute; the result is then bitwise the conditional prediction.
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from sid2.samplers import as_traceable_fn


def _bcast(a, like):
  """Broadcasts a per-example array [B] against a batch [B, ...]."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (jnp.ndim(like) - a.ndim))


def guide(x_cond, x_neg, guidance):
  """x_hat = x_c + w (x_c - x_neg) (SPEC §11: SiD2's guidance w; w = 0 returns x_c)."""
  return x_cond + guidance * (x_cond - x_neg)


def in_interval(logsnr, lo, hi):
  """Whether guidance applies: lo < lambda_t < hi, per example (SPEC §7; SiD2 B.4)."""
  return (logsnr > lo) & (logsnr < hi)


def _strength_and_interval(guidance, interval):
  """Validates concrete values and returns (w, lo, hi) as float32 arrays (traced leaves downstream)."""
  if isinstance(guidance, numbers.Real) and not isinstance(guidance, bool):
    if not math.isfinite(guidance):
      raise ValueError(f'guidance must be a finite number (w = 0: no guidance); got {guidance!r}')
  elif not (isinstance(guidance, (jax.Array,)) and jnp.ndim(guidance) == 0):
    raise ValueError(f'guidance must be a finite scalar (w = 0: no guidance); got {guidance!r}')
  if interval is None:
    lo, hi = -jnp.inf, jnp.inf
  else:
    try:
      lo, hi = interval
    except (TypeError, ValueError):
      raise ValueError('interval must be None (constant guidance) or a pair (lo, hi) of logSNRs; '
                       f'got {interval!r}') from None
    for name, v in (('interval[0]', lo), ('interval[1]', hi)):
      if isinstance(v, bool) or not (isinstance(v, numbers.Real) or
                                     (isinstance(v, jax.Array) and jnp.ndim(v) == 0)):
        raise ValueError(f'{name} must be a scalar logSNR (+-inf allowed); got {v!r}')
  return jnp.float32(guidance), jnp.float32(lo), jnp.float32(hi)


def _guided_x_pred(cond_fn, neg_fn, guidance, lo, hi, z, logsnr):
  """x_hat at (z, logsnr): guided where lo < lambda < hi, conditional elsewhere (SPEC §7, §11)."""
  x_c = cond_fn(z, logsnr)
  inside = in_interval(logsnr, lo, hi)

  def with_guidance(_):
    x_g = guide(x_c, neg_fn(z, logsnr), guidance).astype(x_c.dtype)
    return jnp.where(_bcast(inside, x_c), x_g, x_c)

  return jax.lax.cond(jnp.any(inside) & (guidance != 0), with_guidance, lambda _: x_c, None)


def guided_x_pred_fn(cond_fn, uncond_fn, guidance, interval=None):
  """Classifier-free guidance x_pred_fn(z, logsnr) = x_c + w (x_c - x_u) inside `interval` (SPEC §7, §11).

  cond_fn, uncond_fn: (z [B, ...], logsnr [B]) -> x_hat. guidance: w (SiD2 convention, 0 = none).
  interval: None (constant guidance) or (lo, hi) in logSNR, e.g. (-3, 5) at 512^2 (SiD2 B.4).
  """
  w, lo, hi = _strength_and_interval(guidance, interval)
  return Partial(_guided_x_pred, as_traceable_fn(cond_fn), as_traceable_fn(uncond_fn), w, lo, hi)


def autoguided_x_pred_fn(good_fn, bad_fn, guidance, interval=None):
  """Autoguidance (SPEC §7; SiD2 B.5): the negative prediction comes from a worse model, not an unconditional one.

  x_hat = x_good + w (x_good - x_bad) inside `interval`; `bad_fn` is e.g. an earlier checkpoint or a
  smaller config evaluated with the same conditioning. Same mechanics as `guided_x_pred_fn`.
  """
  return guided_x_pred_fn(good_fn, bad_fn, guidance, interval)


def _class_guided_x_pred(apply_x_fn, labels, null_label, guidance, lo, hi, z, logsnr):
  """Cond and uncond in one call on the batch concatenated with itself (labels, then null labels)."""
  inside = in_interval(logsnr, lo, hi)
  nulls = jnp.broadcast_to(jnp.asarray(null_label, labels.dtype), labels.shape)

  def with_guidance(_):
    x_both = apply_x_fn(jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]),
                        jnp.concatenate([labels, nulls]))
    x_c, x_u = jnp.split(x_both, 2)
    return jnp.where(_bcast(inside, x_c), guide(x_c, x_u, guidance).astype(x_c.dtype), x_c)

  def cond_only(_):
    return apply_x_fn(z, logsnr, labels)

  return jax.lax.cond(jnp.any(inside) & (guidance != 0), with_guidance, cond_only, None)


def class_guided_x_pred_fn(apply_x_fn, labels, null_label, guidance, interval=None):
  """Classifier-free guidance for a class-conditional model in one batched call (SPEC §7, §11).

  apply_x_fn(z [B', ...], logsnr [B'], labels [B', ...]) -> x_hat. Inside the interval it is called once on
  [z; z] with [labels; null labels] (batch 2B) and split; outside (or w == 0) once on the B conditional
  examples only. labels: [B] ints (or [B, ...] embeddings); null_label: the "no class" label (a scalar, or
  one row broadcast over the batch). labels, null_label, w and the interval are traced leaves.
  """
  w, lo, hi = _strength_and_interval(guidance, interval)
  labels = jnp.asarray(labels)
  if labels.ndim < 1:
    raise ValueError(f'labels must have a batch axis [B, ...]; got shape {labels.shape}')
  null_label = jnp.asarray(null_label, labels.dtype)
  try:
    jnp.broadcast_shapes(null_label.shape, labels.shape)
  except ValueError:
    raise ValueError(f'null_label of shape {null_label.shape} does not broadcast to labels {labels.shape}') \
        from None
  return Partial(_class_guided_x_pred, as_traceable_fn(apply_x_fn), labels, null_label, w, lo, hi)
