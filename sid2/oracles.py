"""Oracles: exact optimal denoisers for Gaussian and mixture-of-Gaussian data, in closed form (SPEC §6, §11).

Used by the sampler and guidance tests and for analysis (any of them can be the `apply_fn` of
`sid2.analysis.make_loss_vs_logsnr_fn`): with these the only error left in a sample is the sampler's.

Conventions (SPEC §0): z = alpha x + sigma eps, alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda).
Data arrays are [B, ...]; per-example logSNRs are [B]; the data parameters (mean, var) broadcast against one
example, z.shape[1:]. A "variance" is always the per-dimension variance s^2 (not a standard deviation).

The `*_x_pred_fn` builders return `jax.tree_util.Partial` objects: plain callables `x_pred_fn(z, logsnr)` whose
data parameters are pytree leaves, so a jitted sampler traces them as values (new means/variances do not
recompile it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from sid2 import schedules


def _bcast(a, like):
  """Broadcasts a per-example array [B] against a batch [B, ...]."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (jnp.ndim(like) - a.ndim))


def _check_var(var, name='var'):
  """Rejects non-positive variances before any compute (concrete arrays only)."""
  try:
    bad = bool(jnp.any(jnp.asarray(var) <= 0))
  except jax.errors.ConcretizationTypeError:
    return
  if bad:
    raise ValueError(f'{name} must be a positive per-dimension variance s^2 > 0')


# ---------------------------------------------------------------------------------------------------------
# One Gaussian x ~ N(mu, diag(s^2)).

def gaussian_marginal(logsnr, mean, var):
  """z_t ~ N(alpha mu, alpha^2 s^2 + sigma^2) per dim (SPEC §0); returns (mean, variance), [*logsnr, *event]."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  mean, var = jnp.asarray(mean, jnp.float32), jnp.asarray(var, jnp.float32)
  lam = logsnr.reshape(logsnr.shape + (1,) * max(mean.ndim, var.ndim))
  a2, s2 = schedules.alpha2(lam), schedules.sigma2(lam)
  return jnp.sqrt(a2) * mean, a2 * var + s2


@jax.jit
def gaussian_posterior_mean(z, logsnr, mean, var):
  """E[x|z] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (z - alpha mu) for x ~ N(mu, diag s^2) (SPEC §6)."""
  alpha, sigma = schedules.alpha_sigma(logsnr)
  alpha, sigma = _bcast(alpha, z), _bcast(sigma, z)
  mean, var = jnp.asarray(mean, z.dtype), jnp.asarray(var, z.dtype)
  gain = alpha * var / (alpha ** 2 * var + sigma ** 2)
  return mean + gain * (z - alpha * mean)


@jax.jit
def gaussian_posterior_variance(logsnr, var):
  """Var[x|z] = s^2 sigma^2 / (alpha^2 s^2 + sigma^2) per dim, shape [B, *var.shape] (SPEC §6)."""
  var = jnp.asarray(var, jnp.float32)
  a2, s2 = schedules.alpha2(logsnr), schedules.sigma2(logsnr)
  a2, s2 = a2.reshape(a2.shape + (1,) * var.ndim), s2.reshape(s2.shape + (1,) * var.ndim)
  return var * s2 / (a2 * var + s2)


@jax.jit
def gaussian_ode_flow(z_t, logsnr_t, logsnr_s, mean, var):
  """Exact probability-flow ODE map z_t -> z_s for Gaussian data (VP, per dimension).

  The ODE transports N(alpha_t mu, V_t) to N(alpha_s mu, V_s), V = alpha^2 s^2 + sigma^2, and is linear in z:
  z_s = alpha_s mu + sqrt(V_s / V_t) (z_t - alpha_t mu). (DDIM with the exact denoiser is its first-order
  discretisation: per step it contracts by (alpha_s alpha_t s^2 + sigma_s sigma_t) / V_t <= sqrt(V_s / V_t),
  Cauchy-Schwarz, so DDIM converges to this map only as the step count grows.)
  """
  mean, var = jnp.asarray(mean, z_t.dtype), jnp.asarray(var, z_t.dtype)
  a2_t, s2_t = schedules.alpha2(_bcast(logsnr_t, z_t)), schedules.sigma2(_bcast(logsnr_t, z_t))
  a2_s, s2_s = schedules.alpha2(_bcast(logsnr_s, z_t)), schedules.sigma2(_bcast(logsnr_s, z_t))
  v_t, v_s = a2_t * var + s2_t, a2_s * var + s2_s
  return jnp.sqrt(a2_s) * mean + jnp.sqrt(v_s / v_t) * (z_t - jnp.sqrt(a2_t) * mean)


def _gaussian_x_pred(mean, var, z, logsnr):
  return gaussian_posterior_mean(z, logsnr, mean, var)


def _gaussian_var_pred(var, logsnr):
  return gaussian_posterior_variance(logsnr, var)


def gaussian_x_pred_fn(mean, var):
  """x_pred_fn(z, logsnr) = E[x|z] for x ~ N(mean, diag var); mean/var are traced pytree leaves (SPEC §6)."""
  _check_var(var)
  return Partial(_gaussian_x_pred, jnp.asarray(mean, jnp.float32), jnp.asarray(var, jnp.float32))


def gaussian_posterior_variance_fn(var):
  """logsnr -> Var[x|z] per dim, the exact aDDIM variance v_t for Gaussian data (SPEC §11)."""
  _check_var(var)
  return Partial(_gaussian_var_pred, jnp.asarray(var, jnp.float32))


# ---------------------------------------------------------------------------------------------------------
# Mixture of Gaussians x ~ sum_k w_k N(mu_k, diag s_k^2).

def _mixture_params(weights, means, variances):
  """Normalised log weights [K], means [K, ...], variances [K, ...] broadcast to the means' shape."""
  weights = jnp.asarray(weights, jnp.float32)
  means = jnp.asarray(means, jnp.float32)
  variances = jnp.asarray(variances, jnp.float32)
  if weights.ndim != 1 or means.ndim < 1 or means.shape[0] != weights.shape[0]:
    raise ValueError('weights must be [K] and means [K, ...] with the same K; got '
                     f'{weights.shape} and {means.shape}')
  if variances.ndim == 1:  # isotropic: one variance per component
    if variances.shape[0] != weights.shape[0]:
      raise ValueError(f'variances must be [K] (isotropic) or [K, ...] (diagonal); got {variances.shape}')
    variances = variances.reshape((-1,) + (1,) * (means.ndim - 1))
  variances = jnp.broadcast_to(variances, means.shape)
  return jnp.log(weights / jnp.sum(weights)), means, variances


def _mixture_components(z, logsnr, weights, means, variances):
  """Responsibilities r_k(z) [B, K] and per-component posterior means and variances [B, K, ...]."""
  log_w, means, variances = _mixture_params(weights, means, variances)
  a2, s2 = schedules.alpha2(logsnr), schedules.sigma2(logsnr)
  nd = z.ndim  # z: [B, ...]; components are inserted at axis 1.
  a2 = a2.reshape(a2.shape + (1,) * nd)
  s2 = s2.reshape(s2.shape + (1,) * nd)
  alpha = jnp.sqrt(a2)
  zk = z[:, None]
  m, v = means[None], variances[None]
  marg_var = a2 * v + s2  # Var[z | k] per dim
  resid = zk - alpha * m
  log_lik = -0.5 * jnp.sum(resid ** 2 / marg_var + jnp.log(2 * jnp.pi * marg_var),
                           axis=tuple(range(2, nd + 1)))
  resp = jax.nn.softmax(log_w[None] + log_lik, axis=1)  # [B, K]
  post_mean = m + alpha * v / marg_var * resid
  post_var = v * s2 / marg_var
  return resp, post_mean, post_var


@jax.jit
def mixture_posterior_mean(z, logsnr, weights, means, variances):
  """E[x|z] = sum_k softmax_k(log w_k + log N(z; alpha mu_k, alpha^2 s_k^2 + sigma^2)) E[x|z,k] (SPEC §9 form)."""
  resp, post_mean, _ = _mixture_components(z, logsnr, weights, means, variances)
  return jnp.sum(_bcast(resp, post_mean) * post_mean, axis=1)


@jax.jit
def mixture_posterior_variance(z, logsnr, weights, means, variances):
  """Var[x|z] per dim by the law of total variance: sum_k r_k (v_k + m_k^2) - (sum_k r_k m_k)^2."""
  resp, post_mean, post_var = _mixture_components(z, logsnr, weights, means, variances)
  r = _bcast(resp, post_mean)
  mean = jnp.sum(r * post_mean, axis=1)
  return jnp.sum(r * (post_var + post_mean ** 2), axis=1) - mean ** 2


def _mixture_x_pred(weights, means, variances, z, logsnr):
  return mixture_posterior_mean(z, logsnr, weights, means, variances)


def mixture_x_pred_fn(weights, means, variances):
  """x_pred_fn(z, logsnr) = E[x|z] for a Gaussian mixture; parameters are traced pytree leaves."""
  log_w, means, variances = _mixture_params(weights, means, variances)
  _check_var(variances, 'variances')
  return Partial(_mixture_x_pred, jnp.exp(log_w), means, variances)

