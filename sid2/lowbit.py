"""Low-bit analysis: exact expected eps-loss of the optimal denoiser on n-bit data (SiD2 App. A; SPEC §9).

Data: x uniform over the K = 2^n values x_k = linspace(-1, 1, K) (spacing Delta = 2 / (K - 1)). The optimal
denoiser is the posterior mean under the Gaussian mixture p(z | x) = N(alpha x, sigma^2), and
E||eps - eps_hat||^2 = e^lambda E(x - x_hat)^2 (SPEC §9).

How it is computed (our derivation, checked in tests/test_lowbit.py). Standardise z by sigma: y = z / sigma =
a_x + eps with a_k = x_k e^{lambda/2} (alpha / sigma = e^{lambda/2}). Since eps - eps_hat = (alpha/sigma)(x_hat - x),
  E||eps - eps_hat||^2 = E_y Var(a | y) = integral p(y) Var(a | y) dy,  p(y) = (1/K) sum_k N(y; a_k, 1),
one integral over y instead of K integrals over eps. The a_k are equally spaced by r = Delta e^{lambda/2}:
  * r >= 1: cells [a_k, a_{k+1}] (plus B cells of width r beyond each end). Inside a cell the integrand is
    peaked at the midpoint with width ~1/r (the posterior switches from k to k+1 there), height ~e^{-r^2/8}.
    Each cell gets Gauss-Legendre nodes after a sinh map that clusters them at the midpoint (width ~gamma/r
    per unit of the map variable) and truncates the cell to |offset| <= kappa / r, beyond which the
    integrand has fallen by e^{-kappa/2}.
  * r < 1: the same number of equal cells spans [a_0 - L, a_{K-1} + L]; the integrand varies on scales >= 1.
Both cases share one static node layout (cell width w = max(r, ((K-1) r + 2L) / n_cells)), so the function
is jit-safe: eager calls loop over fixed-size chunks of one compiled function (one compile per bits), traced
calls (inside jit / vmap) run `lax.map` over the chunks. Everything is accumulated in log space with offsets taken from a
reference data point next to each cell, so float32 stays accurate when the loss is e^{-1000} or smaller.

Departure from SPEC §9's suggestion of Gauss-Hermite over eps: at large lambda the denoiser switches between
neighbouring values over ~e^{-lambda/2}/Delta in eps at |eps| ~ e^{lambda/2} Delta/2, which a Gauss-Hermite
rule of moderate size does not resolve; the cell rule above does, and it agrees with float64 scipy quadrature,
a 4x finer rule, Monte Carlo and the closed-form area 2 n log 2 (tests/test_lowbit.py).
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Figure 12 (SiD2 App. A): sigmoid bias 1 (best at 128^2, SiD2 B.6) plus 2 log 128 to move from 128 x 128
# pixels to a single univariate "pixel" (shift rule of simple diffusion / SPEC §1: 2 log of the resolution
# ratio): 1 + 2 log 128 = 10.704 (the paper's 10.7).
FIGURE12_BIAS = 1.0 + 2.0 * math.log(128.0)
# The precision mixture of Figure 12 (SiD2 App. A).
MIXTURE_BITS = (8, 7, 6, 5)
MIXTURE_PROPORTIONS = (1.0, 4.0, 4.0, 6.0)
# Work and memory per logsnr value grow as 4^bits (cells x components): ~9 MB per intermediate at 8 bits,
# ~140 MB at 10 bits (the default batch size drops to 1 above 8 bits).
MAX_BITS = 10

_TAIL = 10.0        # L: integrate y over [a_0 - L, a_{K-1} + L]; the tail mass beyond is < N(10)-ish.
_TAIL_CELLS = 10    # B: cells of width r beyond each end when r >= 1 (B r >= L).
_KAPPA = 70.0       # cell truncation |offset| <= kappa / r: integrand down by e^{-35} relative to its peak.
_GAMMA = 6.0        # central node scale gamma / r per unit of the map variable.
DEFAULT_NODES_PER_CELL = 32


def _check_bits(bits, name='bits'):
  if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= int(bits) <= MAX_BITS:
    raise ValueError(f'{name} must be an integer in [1, {MAX_BITS}]; got {bits!r}')
  return int(bits)


def _check_nodes(nodes_per_cell):
  if (isinstance(nodes_per_cell, bool) or not isinstance(nodes_per_cell, numbers.Integral)
      or not 4 <= int(nodes_per_cell) <= 1024):
    raise ValueError(f'nodes_per_cell must be an integer in [4, 1024]; got {nodes_per_cell!r}')
  return int(nodes_per_cell)


def data_values(bits):
  """The 2^n equally likely data values linspace(-1, 1, 2^n) (SPEC §9)."""
  bits = _check_bits(bits)
  return np.linspace(-1.0, 1.0, 2 ** bits)


def data_variance(bits):
  """Var(x) = (2^n + 1) / (3 (2^n - 1)) for x uniform on linspace(-1, 1, 2^n) (SPEC §9)."""
  k = 2 ** _check_bits(bits)
  return (k + 1) / (3.0 * (k - 1))


def elbo_area(bits):
  """Closed form of integral E||eps - eps_hat||^2 dlambda over R: 2 H(x) = 2 n log 2 nats (I-MMSE; ours).

  With snr = e^lambda, d I(x; z) / d snr = mmse / 2 (Guo, Shamai, Verdu 2005) and I -> H(x) = n log 2, so
  the area under each Figure 11 curve is 2 n log 2 (SiD2 App. A eq. 8 with w = 1 is the discrete ELBO).
  """
  return 2.0 * _check_bits(bits) * math.log(2.0)


def posterior_mean(z, logsnr, bits):
  """Optimal denoiser x_hat(z) = sum_k x_k softmax_k(-(z - alpha x_k)^2 / 2 sigma^2) (SPEC §9)."""
  xs = jnp.asarray(data_values(bits), jnp.result_type(float))
  z = jnp.asarray(z, xs.dtype)
  logsnr = jnp.asarray(logsnr, xs.dtype)
  alpha, sigma = jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))
  logits = -jnp.square(z[..., None] - alpha[..., None] * xs) / (2.0 * jnp.square(sigma[..., None]))
  return jnp.sum(jax.nn.softmax(logits, axis=-1) * xs, axis=-1)


def _log_loss_one(logsnr, *, bits, gl_x, gl_logw):
  """log E||eps - eps_hat||^2 at one scalar logsnr by the cell quadrature in the module docstring (SPEC §9)."""
  dtype = gl_x.dtype
  num = 2 ** bits
  n_cells = num - 1 + 2 * _TAIL_CELLS
  log_r = math.log(2.0 / (num - 1)) + 0.5 * logsnr   # spacing of a_k = x_k e^{lambda/2}
  r = jnp.exp(log_r)
  # Cell width (y units): r when r >= 1 (cells between data points), else n_cells equal cells over the range.
  w_small = ((num - 1) * r + 2.0 * _TAIL) / n_cells
  aligned = r >= w_small
  w = jnp.where(aligned, r, w_small)
  # Cell centres in index units tau (y = r (tau - (K - 1) / 2)); exact half-integers when aligned.
  c = jnp.arange(n_cells, dtype=dtype) + 0.5 - n_cells / 2.0
  tau_c = jnp.where(aligned, c, c * (w / r)) + (num - 1) / 2.0
  k_ref = jnp.clip(jnp.floor(tau_c), 0, num - 1)
  tau_off = tau_c - k_ref                        # = 1/2 in every interior aligned cell
  g = r * tau_off                                # cell centre minus a_{k_ref}, in y units
  # Nodes: offset d = D sinh(beta v) / sinh(beta), v Gauss-Legendre on [-1, 1]; sinh(beta)/beta ~ D r / gamma.
  half = jnp.minimum(0.5 * w, _KAPPA / r)
  ratio = jnp.maximum(half * r / _GAMMA, 1e-6)
  asinh = lambda u: jnp.log(u + jnp.sqrt(u * u + 1.0))   # u > 0; cheaper to compile than jnp.arcsinh
  beta = asinh(ratio)
  for _ in range(3):                             # fixed point of sinh(beta) / beta = ratio (any beta is valid)
    beta = asinh(ratio * beta)
  beta = jnp.maximum(beta, 1e-3)
  e_pos, e_neg = jnp.expm1(beta * gl_x), jnp.expm1(-beta * gl_x)
  scale = half / (0.5 * (jnp.expm1(beta) - jnp.expm1(-beta)))  # half / sinh(beta)
  d = scale * 0.5 * (e_pos - e_neg)                              # [G] offsets D sinh(beta v) / sinh(beta)
  log_jac = jnp.log(scale * beta * (1.0 + 0.5 * (e_pos + e_neg)))  # log dd/dv = log(scale beta cosh(beta v))
  # log N(y - a_{k_ref}) with y - a_{k_ref} = g + d, expanded so the d-dependence keeps its precision.
  g_ = g[:, None]
  log_phi = -0.5 * jnp.square(g_) - g_ * d - 0.5 * jnp.square(d) - 0.5 * math.log(2.0 * math.pi)
  # Component logits relative to k_ref: log N(y - a_k) - log N(y - a_{k_ref}) = r n d + r^2 n (tau_off - n/2).
  n = jnp.arange(num, dtype=dtype)[None, :] - k_ref[:, None]           # [C, K]
  quad = (r * r) * n * (tau_off[:, None] - 0.5 * n)                    # [C, K]
  logits = r * n[:, None, :] * d[None, :, None] + quad[:, None, :]     # [C, G, K]
  log_mix = jax.nn.logsumexp(logits, axis=-1)                          # [C, G]
  post = jnp.exp(logits - log_mix[..., None])
  mean_n = jnp.sum(post * n[:, None, :], axis=-1, keepdims=True)
  var_n = jnp.sum(post * jnp.square(n[:, None, :] - mean_n), axis=-1)  # Var(a|y) = r^2 Var(n|y)
  log_integrand = 2.0 * log_r - math.log(num) + log_phi + log_mix + jnp.log(var_n)
  return jax.nn.logsumexp(log_integrand + log_jac + gl_logw)


def log_expected_eps_loss(logsnr, bits, *, nodes_per_cell=DEFAULT_NODES_PER_CELL, batch_size=None):
  """log E||eps - eps_hat_lambda||^2 for n-bit uniform data and the optimal denoiser (SPEC §9).

  Finite wherever the loss is positive, including far below float range (e.g. 1-bit data at lambda = 20).
  `logsnr`: scalar or array (any shape); the result has its shape. Deterministic quadrature, jit-safe.
  `batch_size`: logsnr values evaluated together (memory knob; None: 4 up to 8 bits, else 1).
  `nodes_per_cell`: Gauss-Legendre nodes per cell (accuracy knob). The default agrees with 160 nodes and with
  float64 scipy quadrature to ~1e-6 relative (float32 rounding; tests/test_lowbit.py).
  """
  bits = _check_bits(bits)
  nodes = _check_nodes(nodes_per_cell)
  if batch_size is None:
    batch_size = 4 if bits <= 8 else 1
  if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
    raise ValueError(f'batch_size must be a positive integer or None; got {batch_size!r}')
  dtype = jnp.result_type(float)
  traced = isinstance(logsnr, jax.core.Tracer)
  logsnr = jnp.asarray(logsnr, dtype) if traced else np.asarray(logsnr, dtype)
  shape, flat = logsnr.shape, logsnr.reshape(-1)
  size = flat.shape[0]
  if size == 0:
    return jnp.zeros(shape, dtype)
  batch = int(batch_size)  # pad to whole chunks: one compiled shape whatever the number of values
  pad = (-size) % batch
  if traced:  # inside jit / vmap: one scan over chunks
    chunks = jnp.concatenate([flat, jnp.zeros((pad,), dtype)]).reshape(-1, batch)
    out = jax.lax.map(functools.partial(_log_loss_chunk, bits=bits, nodes=nodes), chunks)
  else:       # eager: one compiled chunk function per (bits, nodes, batch), whatever the number of values
    chunks = np.concatenate([flat, np.zeros((pad,), dtype)]).reshape(-1, batch)
    out = jnp.stack([_log_loss_chunk(jnp.asarray(c), bits=bits, nodes=nodes) for c in chunks])
  return out.reshape(-1)[:size].reshape(shape)


@functools.partial(jax.jit, static_argnames=('bits', 'nodes'))
def _log_loss_chunk(logsnr, *, bits, nodes):
  """`_log_loss_one` over a 1-D chunk of logsnr values (SPEC §9)."""
  gl_x, gl_w = np.polynomial.legendre.leggauss(nodes)
  fn = functools.partial(_log_loss_one, bits=bits, gl_x=jnp.asarray(gl_x, logsnr.dtype),
                         gl_logw=jnp.asarray(np.log(gl_w), logsnr.dtype))
  return jax.vmap(fn)(logsnr)


def expected_eps_loss(logsnr, bits, *, nodes_per_cell=DEFAULT_NODES_PER_CELL, batch_size=None):
  """E_x E_eps ||eps - eps_hat_lambda||^2 = e^lambda E(x - x_hat)^2, n-bit data, optimal denoiser (SPEC §9).

  Exact up to quadrature error (deterministic, no Monte Carlo). Underflows to 0 in float32 once the loss is
  below ~1e-45; use `log_expected_eps_loss` there.
  """
  return jnp.exp(log_expected_eps_loss(logsnr, bits, nodes_per_cell=nodes_per_cell, batch_size=batch_size))


def mixture_weights(bits_list, proportions):
  """Validated (bits_list, proportions normalised to sum 1) of a precision mixture (SPEC §9)."""
  if isinstance(bits_list, (str, bytes)) or not isinstance(bits_list, Sequence) or not bits_list:
    raise ValueError(f'bits_list must be a non-empty sequence of integers; got {bits_list!r}')
  bits_list = [_check_bits(b, 'bits_list entry') for b in bits_list]
  if isinstance(proportions, (str, bytes)) or not isinstance(proportions, Sequence):
    raise ValueError(f'proportions must be a sequence of numbers; got {proportions!r}')
  if len(proportions) != len(bits_list):
    raise ValueError(f'proportions must have one entry per bits_list entry ({len(bits_list)}); '
                     f'got {len(proportions)}')
  props = np.asarray(proportions, np.float64)
  if not np.all(np.isfinite(props)) or np.any(props < 0) or props.sum() <= 0:
    raise ValueError(f'proportions must be finite, >= 0, with a positive sum; got {proportions!r}')
  return bits_list, props / props.sum()


def expected_eps_loss_mixture(logsnr, bits_list=MIXTURE_BITS, proportions=MIXTURE_PROPORTIONS, **kwargs):
  """sum_i pi_i E||eps - eps_hat||^2 over data of bits_list[i], pi = normalised proportions (SPEC §9).

  SiD2 Figure 12 uses [8, 7, 6, 5] bits with proportions [1, 4, 4, 6]. Keyword arguments go to
  `expected_eps_loss`.
  """
  bits_list, props = mixture_weights(bits_list, proportions)
  curves = [expected_eps_loss(logsnr, b, **kwargs) for b in bits_list]
  return sum(float(p) * cur for p, cur in zip(props, curves))


def sigmoid_weighted(logsnr, loss, bias=FIGURE12_BIAS):
  """sigmoid(b - lambda) * loss, SiD2 App. A's weighted loss (SPEC §3, §9); b = 10.7 in Figure 12."""
  return jax.nn.sigmoid(bias - jnp.asarray(logsnr)) * loss
