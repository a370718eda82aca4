"""Ancestral (DDPM), DDIM and adjusted-DDIM (aDDIM) samplers over a logSNR schedule (SPEC §6, §11, §12).

A sampler runs `num_steps` steps on a uniform t grid t_0 = t_start > t_1 > ... > t_N = t_end, starting from
z ~ N(0, I) at t_start. Step i goes from t = t_i to s = t_{i+1}: it evaluates x_hat = x_pred_fn(z_t, lambda_t)
once, optionally clips it, and forms z_s. The last step returns x_hat (at t_{N-1}) instead of z_s, with no
noise added (SPEC §6), so N steps cost exactly N evaluations of x_pred_fn.

Entry points
- `sample(x_pred_fn, rng, shape, schedule, *, sampler, num_steps, ...)`: jitted; one compiled loop per
  (shape, num_steps, sampler, clip_x, stochastic?) and per x_pred_fn *code*. Everything numeric is traced:
  the logSNR grid (so schedule, t_start, t_end), eta, the logvar interpolation, and every array leaf of a
  pytree x_pred_fn. `x_pred_fn` may be a plain function `(z [B, ...], logsnr [B]) -> x_hat` (its closed-over
  values are compile-time constants: a new closure means a new trace) or a `jax.tree_util.Partial`, whose
  bound arguments are pytree leaves and so traced (e.g. guidance strength and interval from
  `sid2.guidance`, or model parameters).
- `sample_with_params(apply_fn, params, rng, shape, schedule, **kw)`: the same with
  `apply_fn(params, z, logsnr) -> x_hat`; params are traced, so new parameters (a new checkpoint, an EMA
  copy) reuse the compiled sampler as long as `apply_fn` is the same object and the shapes agree.
- `sample_loop_fn(shape, schedule, *, sampler, num_steps, ...)`: the pure, un-jitted loop
  `loop(x_pred_fn, rng, z_init=None) -> x` for callers that jit or `jax.export` it themselves, e.g.
  `jax.jit(lambda params, rng: loop(functools.partial(model_apply, params), rng))`.

The per-step updates `ddpm_step`, `ddim_step`, `addim_step` are pure functions of arrays, usable alone.
Each sampler name is a `register_sampler` entry of `SAMPLERS` (its step and whether it draws noise); the scan
looks the step up by name at trace time, so a new sampler is one decorated function.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from sid2 import registry
from sid2 import schedules

CLIP_X = ('none', 'static')
LOGVAR_TYPES = ("'small'", "'large'", "'<f>' with f in [0, 1]")
_LOGVAR_ALIASES = {'small': 0.0, 'large': 1.0}


def _bcast(a, like):
  """Broadcasts a per-example array [B] against a batch [B, ...]."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (jnp.ndim(like) - a.ndim))


def as_traceable_fn(fn):
  """Returns `fn` as a pytree callable (`jax.tree_util.Partial`) so it can be passed into a jitted function.

  A `Partial` is returned unchanged (its bound arguments stay traced leaves); any other callable becomes a
  leafless `Partial(fn)`, keyed in jit's cache by the identity of `fn`.
  """
  if isinstance(fn, Partial):
    return fn
  if not callable(fn):
    raise ValueError(f'expected a callable, got {type(fn).__name__}')
  return Partial(fn)


# ---------------------------------------------------------------------------------------------------------
# Validation (before any compute).

@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Validated sampler settings (SPEC §6, §11)."""
  sampler: str
  num_steps: int
  clip_x: str
  logvar_frac: float
  eta: float
  t_start: float
  t_end: float

  @property
  def stochastic(self) -> bool:
    """Whether steps draw noise (the registered sampler's `stochastic(eta)`): DDPM always, DDIM when eta > 0."""
    return SAMPLERS.get(self.sampler).stochastic(self.eta)


def parse_logvar_type(logvar_type) -> float:
  """'small' -> 0, 'large' -> 1, '<f>' -> f in [0, 1] (SPEC §11)."""
  if isinstance(logvar_type, str) and logvar_type in _LOGVAR_ALIASES:
    return _LOGVAR_ALIASES[logvar_type]
  try:
    frac = float(logvar_type)
  except (TypeError, ValueError):
    frac = float('nan')
  if isinstance(logvar_type, bool) or not 0.0 <= frac <= 1.0:
    raise ValueError(f'logvar_type must be one of {", ".join(LOGVAR_TYPES)}; got {logvar_type!r}')
  return frac


def _finite_number(value, field, lo=-math.inf, hi=math.inf):
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not lo <= float(value) <= hi:
    raise ValueError(f'{field} must be a real number in [{lo}, {hi}]; got {value!r}')
  return float(value)


def validate_sampler_args(*, sampler, num_steps, clip_x='none', logvar_type='0.3', eta=0.0, t_start=1.0,
                          t_end=0.0) -> SamplerConfig:
  """Checks every sampler setting and returns a hashable `SamplerConfig`; raises ValueError naming the field."""
  if not isinstance(sampler, str) or sampler not in SAMPLERS.entries:
    raise ValueError(f'sampler must be one of {SAMPLERS.names()}; got {sampler!r}')
  if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
    raise ValueError(f'num_steps must be a positive integer; got {num_steps!r}')
  if clip_x not in CLIP_X:
    raise ValueError(f'clip_x must be one of {CLIP_X}; got {clip_x!r}')
  frac = parse_logvar_type(logvar_type)
  eta = _finite_number(eta, 'eta', 0.0, 1.0)
  t_start = _finite_number(t_start, 't_start', 0.0, 1.0)
  t_end = _finite_number(t_end, 't_end', 0.0, 1.0)
  if not t_end < t_start:
    raise ValueError(f't_end must be smaller than t_start (t runs from noise to data); got '
                     f't_start={t_start}, t_end={t_end}')
  return SamplerConfig(sampler, int(num_steps), clip_x, frac, eta, t_start, t_end)


def _validate_shape(shape):
  try:
    shape = tuple(int(d) for d in shape)
  except TypeError:
    raise ValueError(f'shape must be a tuple of positive ints [B, ...]; got {shape!r}') from None
  if not shape or any(d < 1 for d in shape):
    raise ValueError(f'shape must be a non-empty tuple of positive ints [B, ...]; got {shape!r}')
  return shape


def _validate_addim_variance(addim_variance):
  """None -> the paper's default; a non-negative number -> constant; a callable logsnr -> v_t (SPEC §11)."""
  if addim_variance is None:
    return Partial(addim_default_variance)
  if isinstance(addim_variance, numbers.Real) and not isinstance(addim_variance, bool):
    if not addim_variance >= 0:
      raise ValueError(f'addim_variance must be None, a number >= 0 or a callable; got {addim_variance!r}')
    return Partial(_constant_variance, jnp.float32(addim_variance))
  if callable(addim_variance):
    return as_traceable_fn(addim_variance)
  raise ValueError(f'addim_variance must be None, a number >= 0 or a callable logsnr -> v_t; '
                   f'got {type(addim_variance).__name__}')


# ---------------------------------------------------------------------------------------------------------
# Time grid.

def logsnr_grid(schedule, num_steps, t_start=1.0, t_end=0.0):
  """lambda at the uniform grid t_i = t_start + (t_end - t_start) i / N, i = 0..N, shape [N + 1] (SPEC §6)."""
  t = jnp.linspace(t_start, t_end, num_steps + 1, dtype=jnp.float32)
  return jnp.asarray(schedule(t), jnp.float32)


# ---------------------------------------------------------------------------------------------------------
# One step t -> s < t (lambda_s > lambda_t). logsnr_t, logsnr_s: [B]; z_t, x_hat, noise: [B, ...].

def clip_static(x_hat):
  """Static clipping x_hat <- clip(x_hat, -1, 1) (SPEC §6); eps_hat is then recomputed from it by the steps."""
  return jnp.clip(x_hat, -1.0, 1.0)


def transition_variances(logsnr_t, logsnr_s):
  """(log sigma^2_{t|s}, log posterior sigma~^2) (SPEC §6).

  sigma^2_{t|s} = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 = sigma_t^2 (1 - e^{lambda_t - lambda_s});
  sigma~^2 = sigma^2_{t|s} sigma_s^2 / sigma_t^2. Logs via softplus/expm1 for accuracy at small steps.
  """
  log_one_minus = jnp.log(-jnp.expm1(logsnr_t - logsnr_s))
  log_sigma2_t = -jax.nn.softplus(logsnr_t)  # log sigmoid(-lambda)
  log_sigma2_s = -jax.nn.softplus(logsnr_s)
  log_var_ts = log_sigma2_t + log_one_minus
  log_var_post = log_sigma2_s + log_one_minus
  return log_var_ts, log_var_post


def ddpm_step(z_t, x_hat, logsnr_t, logsnr_s, noise, logvar_frac=0.3):
  """Ancestral step z_s = mu + exp(logvar / 2) n (SPEC §6, §11).

  mu = (alpha_{t|s} sigma_s^2 / sigma_t^2) z_t + (alpha_s sigma^2_{t|s} / sigma_t^2) x_hat,
  logvar = f log sigma^2_{t|s} + (1 - f) log sigma~^2 (f = 0 'small', f = 1 'large').
  """
  alpha_t, sigma_t = schedules.alpha_sigma(logsnr_t)
  alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
  log_var_ts, log_var_post = transition_variances(logsnr_t, logsnr_s)
  alpha_ts = alpha_t / alpha_s
  var_ts = jnp.exp(log_var_ts)
  coef_z = alpha_ts * sigma_s ** 2 / sigma_t ** 2
  coef_x = alpha_s * var_ts / sigma_t ** 2
  mu = _bcast(coef_z, z_t) * z_t + _bcast(coef_x, z_t) * x_hat
  logvar = logvar_frac * log_var_ts + (1.0 - logvar_frac) * log_var_post
  return mu + _bcast(jnp.exp(0.5 * logvar), z_t) * noise


def ddim_step(z_t, x_hat, logsnr_t, logsnr_s, noise=None, eta=0.0):
  """DDIM z_s = alpha_s x_hat + sqrt(sigma_s^2 - sigma_eta^2) eps_hat + sigma_eta n (SPEC §6, §11).

  eps_hat = (z_t - alpha_t x_hat) / sigma_t, sigma_eta^2 = eta^2 sigma~^2; eta = 0 is deterministic and
  `noise` may be None.
  """
  alpha_t, sigma_t = schedules.alpha_sigma(logsnr_t)
  alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
  eps_hat = (z_t - _bcast(alpha_t, z_t) * x_hat) / _bcast(sigma_t, z_t)
  if noise is None:
    return _bcast(alpha_s, z_t) * x_hat + _bcast(sigma_s, z_t) * eps_hat
  _, log_var_post = transition_variances(logsnr_t, logsnr_s)
  var_eta = eta ** 2 * jnp.exp(log_var_post)
  coef_eps = jnp.sqrt(jnp.maximum(sigma_s ** 2 - var_eta, 0.0))
  return (_bcast(alpha_s, z_t) * x_hat + _bcast(coef_eps, z_t) * eps_hat
          + _bcast(jnp.sqrt(var_eta), z_t) * noise)


def addim_step(z_t, x_hat, logsnr_t, logsnr_s, x_var):
  """Adjusted DDIM (Heek, Hoogeboom, Salimans 2024, arXiv 2403.06807, §3.2 eq. 14, Algorithm 3; SPEC §11).

  eps_hat = (z_t - alpha_t x_hat) / sigma_t; Var[z_s|z_t] = (alpha_s - alpha_t sigma_s / sigma_t)^2 Var[x|z_t]
  (their eq. 13) with Var[x|z_t] ~ x_var (per example [B] or per dimension [B, ...]);
  z_s = alpha_s x_hat + sqrt(sigma_s^2 + tr(Var[z_s|z_t]) / ||eps_hat||^2) eps_hat, norms per example.
  (Algorithm 3 writes the trace as d * z_var for a per-dimension z_var; a per-dimension x_var is summed.)
  """
  alpha_t, sigma_t = schedules.alpha_sigma(logsnr_t)
  alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
  eps_hat = (z_t - _bcast(alpha_t, z_t) * x_hat) / _bcast(sigma_t, z_t)
  x_var = jnp.asarray(x_var, z_t.dtype)
  if x_var.ndim == 1:
    x_var = _bcast(x_var, z_t)
  z_var = _bcast((alpha_s - alpha_t * sigma_s / sigma_t) ** 2, z_t) * x_var
  axes = tuple(range(1, z_t.ndim))
  trace = jnp.sum(jnp.broadcast_to(z_var, z_t.shape), axis=axes)
  eps_norm2 = jnp.sum(eps_hat ** 2, axis=axes)
  coef_eps = jnp.sqrt(sigma_s ** 2 + trace / jnp.maximum(eps_norm2, 1e-12))
  return _bcast(alpha_s, z_t) * x_hat + _bcast(coef_eps, z_t) * eps_hat


def addim_default_variance(logsnr):
  """v_t = 0.1 / (2 + alpha_t^2 / sigma_t^2) = 0.1 / (2 + e^lambda) (arXiv 2403.06807 Algorithm 3; SPEC §11)."""
  return 0.1 / (2.0 + jnp.exp(logsnr))


def _constant_variance(value, logsnr):
  return jnp.full(jnp.shape(logsnr), value, jnp.float32)


def _interp_variance(logsnrs, values, logsnr):
  return jnp.interp(logsnr, logsnrs, values)


def addim_variance_from_measurements(logsnrs, mse, eta=0.75):
  """v_t = eta * mean (x - x_hat(z_t))^2 measured on data at the given logSNRs (Algorithm 3; SPEC §11).

  `mse[i]` is the per-dimension mean squared x-error of the model at `logsnrs[i]`; in between the variance
  is interpolated linearly in lambda (constant beyond the ends). eta = 0.75 as in arXiv 2403.06807 §3.2.
  Returns a traced callable logsnr -> v_t for `sample(..., addim_variance=...)`.
  """
  logsnrs = jnp.asarray(logsnrs, jnp.float32)
  mse = jnp.asarray(mse, jnp.float32)
  if logsnrs.ndim != 1 or logsnrs.shape != mse.shape or logsnrs.shape[0] < 1:
    raise ValueError(f'logsnrs and mse must be 1-D of equal length; got {logsnrs.shape}, {mse.shape}')
  eta = _finite_number(eta, 'eta', 0.0, math.inf)
  order = jnp.argsort(logsnrs)
  return Partial(_interp_variance, logsnrs[order], eta * mse[order])


# ---------------------------------------------------------------------------------------------------------
# The sampler registry: `sampler` names -> one step z_t -> z_s. A new sampler is one decorated function here
# (or in any module that imports this one); `sample`, `sampling.SamplerSettings`, config validation and the
# command-line help pick it up by name.

@dataclasses.dataclass(frozen=True)
class SamplerKind:
  """A registered sampler: `step(z_t, x_hat, logsnr_t, logsnr_s, noise, *, eta, logvar_frac, addim_variance)`
  -> z_s, and `stochastic(eta)` -> whether its steps draw noise (noise is None otherwise)."""
  name: str
  step: Callable[..., Any]
  stochastic: Callable[[float], bool]


SAMPLERS = registry.Registry('sampler')


def register_sampler(name: str, *, stochastic):
  """Decorator registering a step function under `name`; `stochastic`: a bool or a callable eta -> bool."""
  is_stochastic = stochastic if callable(stochastic) else (lambda eta, value=bool(stochastic): value)

  def decorate(step):
    SAMPLERS.register(name, SamplerKind(name, step, is_stochastic))
    return step
  return decorate


@register_sampler('ddpm', stochastic=True)
def _ddpm(z_t, x_hat, logsnr_t, logsnr_s, noise, *, eta, logvar_frac, addim_variance):
  del eta, addim_variance
  return ddpm_step(z_t, x_hat, logsnr_t, logsnr_s, noise, logvar_frac)


@register_sampler('ddim', stochastic=lambda eta: eta > 0)
def _ddim(z_t, x_hat, logsnr_t, logsnr_s, noise, *, eta, logvar_frac, addim_variance):
  del logvar_frac, addim_variance
  return ddim_step(z_t, x_hat, logsnr_t, logsnr_s, noise, eta)


@register_sampler('addim', stochastic=False)
def _addim(z_t, x_hat, logsnr_t, logsnr_s, noise, *, eta, logvar_frac, addim_variance):
  del noise, eta, logvar_frac
  return addim_step(z_t, x_hat, logsnr_t, logsnr_s, addim_variance(logsnr_t))


# ---------------------------------------------------------------------------------------------------------
# The loop.

def _initial_noise(rng, shape, z_init):
  """(z at t_start, key for the steps): z ~ N(0, I) from one half of rng unless z_init is given."""
  init_rng, loop_rng = jax.random.split(rng)
  if z_init is None:
    return jax.random.normal(init_rng, shape, jnp.float32), loop_rng
  return jnp.asarray(z_init, jnp.float32), loop_rng


def _sample_loop(x_pred_fn, z, loop_rng, logsnrs, eta, logvar_frac, addim_variance, *, sampler, clip_x,
                 stochastic):
  """Runs the N = len(logsnrs) - 1 steps from z as one lax.scan (SPEC §6). Pure; traced once per setting."""
  num_steps = logsnrs.shape[0] - 1
  shape = z.shape
  batch = shape[0]

  def body(z_t, i):
    logsnr_t = jnp.full((batch,), logsnrs[i])
    logsnr_s = jnp.full((batch,), logsnrs[i + 1])
    x_hat = jnp.asarray(x_pred_fn(z_t, logsnr_t)).astype(z_t.dtype)
    if clip_x == 'static':
      x_hat = clip_static(x_hat)
    noise = jax.random.normal(jax.random.fold_in(loop_rng, i), shape, z_t.dtype) if stochastic else None
    z_s = SAMPLERS.get(sampler).step(z_t, x_hat, logsnr_t, logsnr_s, noise, eta=eta, logvar_frac=logvar_frac,
                                     addim_variance=addim_variance)
    # The last step returns x_hat at its t, without noise (SPEC §6).
    return jnp.where(i == num_steps - 1, x_hat, z_s), None

  x, _ = jax.lax.scan(body, z, jnp.arange(num_steps))
  return x


_sample_loop_jit = jax.jit(_sample_loop, static_argnames=('sampler', 'clip_x', 'stochastic'))


def _check_x_pred_fn(x_pred_fn):
  if not callable(x_pred_fn):
    raise ValueError(f'x_pred_fn must be a callable (z, logsnr) -> x_hat; got {type(x_pred_fn).__name__}')


def _check_z_init(z_init, shape):
  if z_init is not None and tuple(jnp.shape(z_init)) != shape:
    raise ValueError(f'z_init must have shape {shape}; got {tuple(jnp.shape(z_init))}')


def _prepare(shape, schedule, addim_variance, kwargs):
  """Validates everything but x_pred_fn / z_init; returns (SamplerConfig, shape tuple, aDDIM variance fn)."""
  if not callable(schedule):
    raise ValueError('schedule must be a callable t -> logsnr, e.g. sid2.schedules.get_schedule(name)')
  cfg = validate_sampler_args(**kwargs)
  return cfg, _validate_shape(shape), _validate_addim_variance(addim_variance)


def sample(x_pred_fn: Callable[..., Any], rng, shape, schedule, *, sampler: str, num_steps: int,
           clip_x: str = 'none', logvar_type='0.3', eta: float = 0.0, t_start: float = 1.0,
           t_end: float = 0.0, addim_variance=None, z_init: Optional[jax.Array] = None):
  """Draws samples x [*shape] with `x_pred_fn(z, logsnr) -> x_hat` (SPEC §6, §11, §12). Jitted and cached.

  sampler: 'ddpm' (ancestral, `logvar_type` 'small' | 'large' | '<f>'), 'ddim' (`eta` in [0, 1]; the
  other samplers ignore it) or
  'addim' (`addim_variance`: None for 0.1 / (2 + e^lambda), a number, or a callable logsnr -> v_t, e.g.
  `addim_variance_from_measurements` or an exact posterior variance). clip_x: 'none' | 'static'.
  t_start > t_end in [0, 1]: the uniform t grid. z_init: optional start z (default N(0, I) from rng).
  Every setting is validated (ValueError naming the field and its allowed values) before any compute.
  """
  _check_x_pred_fn(x_pred_fn)
  cfg, shape, var_fn = _prepare(shape, schedule, addim_variance,
                                dict(sampler=sampler, num_steps=num_steps, clip_x=clip_x,
                                     logvar_type=logvar_type, eta=eta, t_start=t_start, t_end=t_end))
  _check_z_init(z_init, shape)
  logsnrs = logsnr_grid(schedule, cfg.num_steps, cfg.t_start, cfg.t_end)
  # The start noise is drawn outside the jitted loop (its compiled kernel is shared by all samplers).
  z, loop_rng = _initial_noise(rng, shape, z_init)
  return _sample_loop_jit(as_traceable_fn(x_pred_fn), z, loop_rng, logsnrs, jnp.float32(cfg.eta),
                          jnp.float32(cfg.logvar_frac), var_fn, sampler=cfg.sampler, clip_x=cfg.clip_x,
                          stochastic=cfg.stochastic)


def sample_with_params(apply_fn: Callable[..., Any], params, rng, shape, schedule, **kwargs):
  """`sample` with `apply_fn(params, z, logsnr) -> x_hat`; params are traced (no recompile for new values).

  Keep `apply_fn` the same object between calls (e.g. a module-level function or one bound method) and only
  the parameter values change: the compiled sampler is reused. Keyword arguments are those of `sample`.
  """
  if not callable(apply_fn):
    raise ValueError(f'apply_fn must be a callable (params, z, logsnr) -> x_hat; got {type(apply_fn).__name__}')
  return sample(Partial(_apply_with_params, as_traceable_fn(apply_fn), params), rng, shape, schedule,
                **kwargs)


def _apply_with_params(apply_fn, params, z, logsnr):
  return apply_fn(params, z, logsnr)


def sample_loop_fn(shape, schedule, *, sampler: str, num_steps: int, clip_x: str = 'none',
                   logvar_type='0.3', eta: float = 0.0, t_start: float = 1.0, t_end: float = 0.0,
                   addim_variance=None):
  """The pure, un-jitted sampler `loop(x_pred_fn, rng, z_init=None) -> x` for callers to jit/export (SPEC §12).

  All settings are validated here, once. The returned function traces `schedule` at the grid inside, so it
  can be wrapped in `jax.jit` or `jax.export` with model parameters as an argument, e.g.
    loop = sample_loop_fn((8, 64, 64, 3), get_schedule('cosine'), sampler='ddpm', num_steps=256)
    fn = jax.jit(lambda params, rng: loop(lambda z, l: model.apply(params, z, l), rng))
  """
  cfg, shape, var_fn = _prepare(shape, schedule, addim_variance,
                                dict(sampler=sampler, num_steps=num_steps, clip_x=clip_x,
                                     logvar_type=logvar_type, eta=eta, t_start=t_start, t_end=t_end))

  def loop(x_pred_fn, rng, z_init=None):
    """Samples [*shape] (pure; wrap in jax.jit / jax.export). Same random stream as `sample`."""
    _check_x_pred_fn(x_pred_fn)
    _check_z_init(z_init, shape)
    logsnrs = logsnr_grid(schedule, cfg.num_steps, cfg.t_start, cfg.t_end)
    z, loop_rng = _initial_noise(rng, shape, z_init)
    return _sample_loop(x_pred_fn, z, loop_rng, logsnrs, jnp.float32(cfg.eta), jnp.float32(cfg.logvar_frac),
                        var_fn, sampler=cfg.sampler, clip_x=cfg.clip_x, stochastic=cfg.stochastic)

  return loop
