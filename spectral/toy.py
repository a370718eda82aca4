"""The toy frequency experiment of Spectral Diffusion (supplement §4.3, main paper §4.2; SPEC §13).

Data: 40-sample signals x_i = cos(2πα(u_i + φ)) on the periodic grid u_i = i / 40 (supplement §4.3 samples
cos(2παu), u ∈ [0, 1]; the periodic grid and the random phase φ ~ U(0, 1) are ours: the grid puts a signal's
power exactly into DFT bins ±α, and the phase makes the data a distribution rather than a single vector;
`phase='fixed'` gives the literal φ = 0 signal). α is an integer in [1, 20) (below the Nyquist bin).

Model: an MLP 41 → M → 40 with tanh (the 40 noisy values concatenated with t ∈ [0, 1]), predicting ε,
trained with DDPM's plain ε-MSE on the linear-β schedule (SPEC §1, §3 `eps_mse`), Adam 1e-3, batch 1000.

For integer 1 ≤ α < P/2 on the periodic grid the data are x(ψ) = c cos ψ − s sin ψ with c_i = cos(2παu_i),
s_i = sin(2παu_i), c·c = s·s = P/2, c·s = 0 and ψ = 2παφ uniform. Hence two closed-form references (ours):
  - the Bayes-optimal denoiser: with z = a x + σ ε, log p(ψ | z) = κ cos(ψ − ψ₀) + const, κ = a r / σ²,
    r = ‖(z·c, z·s)‖, so the posterior is von Mises and x̂ = R(κ) (c cos ψ₀ − s sin ψ₀), R = I₁/I₀, with
    conditional error E[‖x − x̂‖² | z] = (P/2)(1 − R²);
  - the best linear (Wiener) denoiser (SPEC §10): the data covariance has two eigenvalues v = P/4, so its
    error per example is 2 v σ² / (a² v + σ²).
ε-space errors are e^λ times x-space errors (ε̂ = (z − a x̂)/σ). The metrics of generated signals (ours; SPEC
§13 asks for the error at the α-th Fourier bin): the amplitude in bins ±α relative to a unit cosine, the
fraction of energy outside them, and the squared distance to the nearest data signal.

Remark (checked in tests/test_toy.py): an MLP's initialisation and Adam are equivariant under permutations
of the 40 coordinates, and for α coprime with 40 the map i ↦ α i mod 40 turns the α = 1 data set into the
α data set. So for those α the experiment is the α = 1 experiment with the coordinates relabelled: any
frequency dependence of the results can only come from α sharing a factor with 40.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sid2 import parametrization as param_lib
from sid2 import samplers
from sid2 import schedules

NUM_POINTS = 40
PHASES = ('random', 'fixed')
SCHEDULE = 'linear_beta'


# ---------------------------------------------------------------------------------------------------------
# Data (supplement §4.3).

def check_alpha(alpha, num_points: int = NUM_POINTS) -> int:
  """ValueError unless alpha is an integer in [1, num_points / 2)."""
  if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or alpha != int(alpha) or not (
      1 <= alpha < num_points / 2):
    raise ValueError(f'alpha must be an integer in [1, {num_points // 2}) (below the Nyquist bin of '
                     f'{num_points} samples); got {alpha!r}')
  return int(alpha)


def check_phase(phase: str) -> str:
  if phase not in PHASES:
    raise ValueError(f'phase must be one of {PHASES}; got {phase!r}')
  return phase


def signal_grid(num_points: int = NUM_POINTS):
  """u_i = i / P, i = 0..P−1: the periodic grid on [0, 1) (supplement §4.3; periodic is ours)."""
  return jnp.arange(num_points, dtype=jnp.float32) / num_points


def basis(alpha, num_points: int = NUM_POINTS):
  """(c, s) with c_i = cos(2παu_i), s_i = sin(2παu_i) [P] each: x(ψ) = c cos ψ − s sin ψ."""
  arg = 2 * math.pi * jnp.asarray(alpha, jnp.float32) * signal_grid(num_points)
  return jnp.cos(arg), jnp.sin(arg)


def cosine_signals(rng, alpha, num: int, num_points: int = NUM_POINTS, phase: str = 'random'):
  """`num` signals cos(2πα(u_i + φ)) [num, P], φ ~ U(0, 1) or φ = 0 (supplement §4.3)."""
  check_phase(phase)
  u = signal_grid(num_points)
  phi = jax.random.uniform(rng, (num, 1)) if phase == 'random' else jnp.zeros((num, 1))
  return jnp.cos(2 * math.pi * jnp.asarray(alpha, jnp.float32) * (u[None, :] + phi))


# ---------------------------------------------------------------------------------------------------------
# Model and loss.

class ToyMLP(nn.Module):
  """MLP [z, t] (P + 1) → hidden (tanh) → P, predicting ε (supplement §4.3)."""
  hidden: int
  num_points: int = NUM_POINTS

  @nn.compact
  def __call__(self, z, t):
    h = jnp.concatenate([z, jnp.asarray(t, z.dtype)[..., None]], axis=-1)
    h = jnp.tanh(nn.Dense(self.hidden)(h))
    return nn.Dense(self.num_points)(h)


def num_params(hidden: int, num_points: int = NUM_POINTS) -> int:
  """(P + 1) M + M + M P + P parameters: 5,288 for M = 64, 84,008 for M = 1024 (SPEC §13)."""
  return (num_points + 1) * hidden + hidden + hidden * num_points + num_points


def init_params(rng, hidden: int, num_points: int = NUM_POINTS):
  return ToyMLP(hidden, num_points).init(rng, jnp.zeros((1, num_points)), jnp.zeros((1,)))['params']


def get_schedule():
  """DDPM's linear-β schedule as t ↦ λ (SPEC §1; Spectral Diffusion trains with it)."""
  return schedules.get_schedule(SCHEDULE)


def eps_mse(params, model: ToyMLP, x, t, eps, schedule):
  """mean ‖ε − ε̂(z_t, t)‖² with z_t = α_t x + σ_t ε (SPEC §3 `eps_mse`, DDPM's 'simple' loss)."""
  z = param_lib.diffuse(x, eps, schedule(t))
  return jnp.mean((model.apply({'params': params}, z, t) - eps) ** 2)


def eps_mse_loss(params, model: ToyMLP, x, rng, schedule):
  """`eps_mse` with t ~ U(0, 1) per example and ε ~ N(0, I) drawn from rng (SPEC §3)."""
  t_rng, e_rng = jax.random.split(rng)
  t = jax.random.uniform(t_rng, (x.shape[0],))
  eps = jax.random.normal(e_rng, x.shape)
  return eps_mse(params, model, x, t, eps, schedule)


def make_optimizer(learning_rate: float = 1e-3):
  """Adam with a constant learning rate (supplement §4.3: 1e-3)."""
  return optax.adam(learning_rate)


@functools.partial(jax.jit, static_argnames=('hidden', 'num_points', 'batch', 'iterations', 'phase',
                                             'learning_rate'))
def train_chunk(params, opt_state, rng, alphas, *, hidden: int, num_points: int, batch: int, iterations: int,
                phase: str, learning_rate: float):
  """`iterations` Adam steps for every α at once (vmapped; params/opt_state lead with the α axis).

  Returns (params, opt_state, losses [iterations, A]). rng [A, 2]: one key per α for this chunk.
  """
  model = ToyMLP(hidden, num_points)
  schedule = get_schedule()
  opt = make_optimizer(learning_rate)

  def one_alpha(p, o, key, alpha):
    def step(carry, k):
      p, o = carry
      d_rng, l_rng = jax.random.split(k)
      x = cosine_signals(d_rng, alpha, batch, num_points, phase)
      loss, grads = jax.value_and_grad(eps_mse_loss)(p, model, x, l_rng, schedule)
      updates, o = opt.update(grads, o, p)
      return (optax.apply_updates(p, updates), o), loss
    (p, o), losses = jax.lax.scan(step, (p, o), jax.random.split(key, iterations))
    return p, o, losses

  params, opt_state, losses = jax.vmap(one_alpha)(params, opt_state, rng, alphas)
  return params, opt_state, losses.T


def init_state(rng, alphas: Sequence[int], hidden: int, num_points: int = NUM_POINTS,
               learning_rate: float = 1e-3):
  """(params, opt_state) stacked over α, each α with its own initialisation from `rng`."""
  keys = jax.random.split(rng, len(alphas))
  params = jax.vmap(lambda k: init_params(k, hidden, num_points))(keys)
  return params, jax.vmap(make_optimizer(learning_rate).init)(params)


def train(rng, alphas: Sequence[int], hidden: int, *, iterations: int = 10_000, batch: int = 1000,
          learning_rate: float = 1e-3, phase: str = 'random', num_points: int = NUM_POINTS,
          chunk: int = 1000, log=None):
  """Trains one MLP per α (supplement §4.3 defaults); returns (params stacked over α, losses [iters, A]).

  Runs `chunk` iterations per jitted call (one compilation; `log(done, losses)` after each chunk).
  """
  alphas = [check_alpha(a, num_points) for a in alphas]
  check_phase(phase)
  for name, v in (('hidden', hidden), ('iterations', iterations), ('batch', batch), ('chunk', chunk)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f'{name} must be a positive integer; got {v!r}')
  init_rng, train_rng = jax.random.split(rng)
  params, opt_state = init_state(init_rng, alphas, hidden, num_points, learning_rate)
  alpha_arr = jnp.asarray(alphas, jnp.float32)
  history, done = [], 0
  while done < iterations:
    n = min(chunk, iterations - done)
    keys = jax.random.split(jax.random.fold_in(train_rng, done), len(alphas))
    params, opt_state, losses = train_chunk(params, opt_state, keys, alpha_arr, hidden=hidden,
                                            num_points=num_points, batch=batch, iterations=n, phase=phase,
                                            learning_rate=learning_rate)
    history.append(np.asarray(losses))
    done += n
    if log is not None:
      log(done, history[-1])
  return params, np.concatenate(history)


def unstack(params, index: int):
  """The parameters of the index-th α from a stacked pytree."""
  return jax.tree.map(lambda a: a[index], params)


# ---------------------------------------------------------------------------------------------------------
# Closed-form references (ours, see the module docstring; SPEC §10 for the Wiener part).

def bayes_denoiser(z, logsnr, alpha, phase: str = 'random'):
  """(x̂ = E[x | z] [B, P], E[‖x − x̂‖² | z] [B]) for z = a x + σ ε: von Mises posterior of the phase."""
  check_phase(phase)
  a, sigma = schedules.alpha_sigma(jnp.asarray(logsnr, jnp.float32))
  c, s = basis(alpha, z.shape[-1])
  if phase == 'fixed':
    return jnp.broadcast_to(c, z.shape), jnp.zeros(z.shape[:1])
  half = z.shape[-1] / 2
  # log p(ψ|z) = (a/σ²)(z·c cos ψ − z·s sin ψ) + const = κ cos(ψ − ψ₀).
  p, q = z @ c, -(z @ s)
  r = jnp.sqrt(p ** 2 + q ** 2)
  kappa = a * r / sigma ** 2
  ratio = jax.scipy.special.i1e(kappa) / jax.scipy.special.i0e(kappa)  # I₁/I₀, overflow-free
  cos0, sin0 = p / jnp.maximum(r, 1e-30), q / jnp.maximum(r, 1e-30)
  x_hat = ratio[:, None] * (cos0[:, None] * c - sin0[:, None] * s)
  return x_hat, half * (1.0 - ratio ** 2)


def wiener_x_error(logsnr, num_points: int = NUM_POINTS, phase: str = 'random'):
  """Per-coordinate x-error of the best linear denoiser: 2 v σ²/(a² v + σ²)/P, v = P/4 (SPEC §10)."""
  check_phase(phase)
  logsnr = jnp.asarray(logsnr, jnp.float32)
  if phase == 'fixed':
    return jnp.zeros_like(logsnr)
  a2, s2 = schedules.alpha2(logsnr), schedules.sigma2(logsnr)
  v = num_points / 4
  return 2 * v * s2 / (a2 * v + s2) / num_points


def x_to_eps_error(x_error, logsnr):
  """ε-space error = e^λ × x-space error, since ε − ε̂ = (a/σ)(x̂ − x) (SPEC §2)."""
  return jnp.exp(jnp.asarray(logsnr, jnp.float32)) * x_error


# ---------------------------------------------------------------------------------------------------------
# Evaluation.

def model_eps(params, hidden: int, z, t, num_points: int = NUM_POINTS):
  return ToyMLP(hidden, num_points).apply({'params': params}, z, t)


@functools.partial(jax.jit, static_argnames=('hidden', 'num', 'phase', 'num_points'))
def denoising_errors(params, rng, alpha, t_values, *, hidden: int, num: int, phase: str = 'random',
                     num_points: int = NUM_POINTS):
  """Per-t errors on `num` fresh signals (same noise for every model): dict of [T] arrays.

  eps_mse: the model's mean (ε − ε̂)²; bayes_eps_mse: the Bayes-optimal denoiser's (closed form, exact
  expectation over x given z); wiener_eps_mse: the best linear denoiser's. x-space errors alongside.
  """
  schedule = get_schedule()
  d_rng, e_rng = jax.random.split(rng)

  def at(t):
    x = cosine_signals(d_rng, alpha, num, num_points, phase)
    eps = jax.random.normal(e_rng, x.shape)
    logsnr = schedule(t)
    z = param_lib.diffuse(x, eps, jnp.full((num,), logsnr))
    eps_hat = model_eps(params, hidden, z, jnp.full((num,), t), num_points)
    _, bayes_err = bayes_denoiser(z, logsnr, alpha, phase)
    bayes_x = jnp.mean(bayes_err) / num_points
    wiener_x = wiener_x_error(logsnr, num_points, phase)
    model_eps_mse = jnp.mean((eps_hat - eps) ** 2)
    return dict(logsnr=logsnr, eps_mse=model_eps_mse, bayes_eps_mse=x_to_eps_error(bayes_x, logsnr),
                wiener_eps_mse=x_to_eps_error(wiener_x, logsnr), x_mse=model_eps_mse * jnp.exp(-logsnr),
                bayes_x_mse=bayes_x, wiener_x_mse=wiener_x)

  return jax.lax.map(at, jnp.asarray(t_values, jnp.float32))


def x_pred_fn(hidden: int, num_points: int = NUM_POINTS):
  """apply_fn(params, z, logsnr) → x̂ for `sid2.samplers.sample_with_params` (t from the schedule inverse)."""
  return _X_PRED_FNS.setdefault((hidden, num_points), functools.partial(_x_pred, hidden, num_points))


_X_PRED_FNS: Dict = {}


def _x_pred(hidden, num_points, params, z, logsnr):
  t = get_schedule().inverse(logsnr)
  return param_lib.to_x_eps(model_eps(params, hidden, z, t, num_points), z, logsnr, 'eps')[0]


def generate(params, hidden: int, rng, num: int, *, num_steps: int = 1000, num_points: int = NUM_POINTS,
             logvar_type='small', clip_x: str = 'static'):
  """`num` signals [num, P] by DDPM ancestral sampling (SPEC §6) with the trained ε-MLP.

  clip_x='static' clips x̂ to [−1, 1] as DDPM's reference sampler does: unclipped, the ε-MLP's small
  errors at high noise (x̂ error = e^{−λ/2} × ε̂ error) add up over the steps to amplitudes of ~30.
  """
  return samplers.sample_with_params(x_pred_fn(hidden, num_points), params, rng, (num, num_points),
                                     get_schedule(), sampler='ddpm', num_steps=num_steps,
                                     logvar_type=logvar_type, clip_x=clip_x)


def nearest_signal(signals, alpha, phase: str = 'random') -> np.ndarray:
  """The data signal nearest to each of `signals` [N, P]: x(ψ*) with ψ* = atan2(−g·s, g·c) (random phase)."""
  check_phase(phase)
  g = np.asarray(signals, np.float64)
  c, s = (np.asarray(v, np.float64) for v in basis(alpha, g.shape[-1]))
  if phase == 'fixed':
    return np.broadcast_to(c, g.shape).copy()
  psi = np.arctan2(-(g @ s), g @ c)
  return np.cos(psi)[:, None] * c - np.sin(psi)[:, None] * s


def signal_metrics(signals, alpha, phase: str = 'random') -> dict:
  """Errors of generated signals [N, P] against the data cos(2πα(u + φ)) (ours; SPEC §13).

  bin_amplitude: mean 2|X(α)|/P (a unit cosine gives 1); bin_amplitude_error: mean |2|X(α)|/P − 1|;
  leakage: mean fraction of a signal's energy outside the DFT bins ±α; manifold_mse: mean per-coordinate
  squared distance to the nearest data signal; phase_concentration: length of the mean unit phasor of
  X(α) over the samples (≈ 0 for uniform random phases, 1 for one phase).
  """
  check_phase(phase)
  g = np.asarray(signals, np.float64)
  p = g.shape[-1]
  alpha = check_alpha(alpha, p)
  spec = np.fft.fft(g, axis=-1)
  amp = 2 * np.abs(spec[:, alpha]) / p
  energy = np.sum(np.abs(spec) ** 2, axis=-1)
  in_bins = np.abs(spec[:, alpha]) ** 2 + np.abs(spec[:, p - alpha]) ** 2
  dist = np.sum((g - nearest_signal(g, alpha, phase)) ** 2, -1)
  phasor = spec[:, alpha] / np.maximum(np.abs(spec[:, alpha]), 1e-30)
  return dict(bin_amplitude=float(amp.mean()), bin_amplitude_error=float(np.abs(amp - 1).mean()),
              leakage=float(np.mean(1 - in_bins / np.maximum(energy, 1e-30))),
              manifold_mse=float(np.mean(dist) / p),
              phase_concentration=float(np.abs(phasor.mean())))
