"""Loss weightings w(lambda) in eps-space (SPEC §3, §3a, §11; Kingma & Gao arXiv 2303.00848; SiD2 B.1, C.2).

The general weighted loss is L = 1/2 w(lambda_t) (-dlambda/dt) ||eps - eps_hat||^2 (SPEC §3). A weighting is
a callable `w(logsnr, step=None)`; `step` only matters for the time-shifted sigmoid (C.2).

loss_type strings:
  sigmoid:<b>                        w = sigmoid(b - lambda)                          (SPEC §3)
  sigmoid:<b_start>:<b_end>:<t_b>    same with b(step) moving linearly b_start -> b_end over t_b steps (C.2)
  edm                                EDM's weighting in this form                    (SPEC §11)
  edm_monotonic                      EDM's weighting made monotone                    (SPEC §11)
  elbo                               w = 1                                            (SPEC §3)
  min_snr:<gamma>                    min-SNR-γ (Hang et al. 2023) in this form: w = sech(λ/2) min(1, γ e^-λ)
`eps_mse` (no -dlambda/dt factor) and `power:<b>` (per Haar band) are losses without a single w(lambda);
see `sid2.losses`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp

from sid2 import registry

# EDM (Karras et al. 2022) in logSNR form, SPEC §11: log sigma ~ N(-1.2, 1.2^2) <=> lambda ~ N(2.4, 2.4^2).
EDM_MEAN = 2.4
EDM_STD = 2.4
EDM_SIGMA_DATA2 = 0.25  # sigma_data = 0.5


def sigmoid_weight(logsnr, bias):
  """w(lambda) = sigmoid(b - lambda) (SPEC §3)."""
  return jax.nn.sigmoid(bias - logsnr)


def time_shifted_bias(step, b_start, b_end, t_b):
  """b(step) = b_start + (b_end - b_start) min(step / t_b, 1) (SiD2 C.2, SPEC §3)."""
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / float(t_b), 1.0)
  return b_start + (b_end - b_start) * frac


def bias_for_resolution(bias, ref_res, res):
  """Moves a sigmoid bias from ref_res to res: -2 log(res / ref_res), about 1.4 per 2x (SiD2 B.6, SPEC §3)."""
  return bias - 2.0 * math.log(res / ref_res)


def edm_weight(logsnr):
  """w_EDM(lambda) = N(lambda; 2.4, 2.4^2) (e^-lambda + 0.25) / 0.25 (SPEC §11)."""
  z = (logsnr - EDM_MEAN) / EDM_STD
  density = jnp.exp(-0.5 * z ** 2) / (EDM_STD * math.sqrt(2 * math.pi))
  return density * (jnp.exp(-logsnr) + EDM_SIGMA_DATA2) / EDM_SIGMA_DATA2


def _edm_argmax():
  """lambda* where d/dlambda log w_EDM = 0: -(l - 2.4)/2.4^2 = e^-l / (e^-l + 0.25) (SPEC §11), by bisection."""
  def g(l):
    return -(l - EDM_MEAN) / EDM_STD ** 2 - math.exp(-l) / (math.exp(-l) + EDM_SIGMA_DATA2)
  lo, hi = -20.0, 2.4  # g(lo) > 0 > g(hi)
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if g(mid) > 0:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


EDM_LOGSNR_ARGMAX = _edm_argmax()  # about -3.3078


def edm_monotonic_weight(logsnr):
  """w(lambda) = w_EDM(max(lambda, lambda*)): flat at the peak below lambda* (SPEC §11)."""
  return edm_weight(jnp.maximum(logsnr, EDM_LOGSNR_ARGMAX))


def elbo_weight(logsnr):
  """w = 1: the ELBO (SPEC §3)."""
  return jnp.ones_like(logsnr)


def min_snr_weight(logsnr, gamma):
  """w(lambda) = sech(lambda/2) min(1, gamma e^-lambda): min-SNR-gamma (Kingma & Gao 2303.00848 Table 1).

  With the cosine schedule, 1/2 w (-dlambda/dt) = pi min(1, gamma / SNR): the uniform-t eps-MSE weighted as
  min-SNR-gamma prescribes (x- and v-prediction losses with weight min(SNR, gamma) / SNR or / (SNR + 1) alike).
  """
  return jnp.minimum(1.0, gamma * jnp.exp(-logsnr)) / jnp.cosh(0.5 * logsnr)


@dataclasses.dataclass(frozen=True)
class MinSNRWeighting:
  """min-SNR-gamma, gamma > 0 (`min_snr:<gamma>`)."""
  gamma: float

  def __call__(self, logsnr, step=None):
    del step
    return min_snr_weight(logsnr, self.gamma)


def parse_min_snr(loss_type: str) -> MinSNRWeighting:
  """'min_snr:<gamma>' -> MinSNRWeighting; gamma a number > 0."""
  parts = loss_type.split(':')[1:]
  if len(parts) != 1:
    raise ValueError(f'loss_type {loss_type!r}: expected min_snr:<gamma>, e.g. min_snr:5')
  (gamma,) = _parse_floats(loss_type, parts, 'gamma')
  if not gamma > 0:
    raise ValueError(f'loss_type {loss_type!r}: gamma must be > 0')
  return MinSNRWeighting(gamma)


@dataclasses.dataclass(frozen=True)
class SigmoidWeighting:
  """sigmoid(b - lambda) with a fixed bias, or the time-shifted bias of SiD2 C.2 when t_b > 0."""
  b_start: float
  b_end: float
  t_b: int = 0

  def bias(self, step=None):
    """The bias at `step` (C.2); the end value when step is None or the bias is fixed."""
    if self.t_b <= 0 or step is None:
      return jnp.float32(self.b_end)
    return time_shifted_bias(step, self.b_start, self.b_end, self.t_b)

  def __call__(self, logsnr, step=None):
    return sigmoid_weight(logsnr, self.bias(step))


@dataclasses.dataclass(frozen=True)
class FixedWeighting:
  """A step-independent weighting w(lambda)."""
  name: str
  fn: object

  def __call__(self, logsnr, step=None):
    del step
    return self.fn(logsnr)


def _parse_floats(loss_type, parts, what):
  try:
    return [float(p) for p in parts]
  except ValueError:
    raise ValueError(f'loss_type {loss_type!r}: could not parse {what} as numbers') from None


def parse_sigmoid(loss_type: str) -> SigmoidWeighting:
  """'sigmoid:<b>' or 'sigmoid:<b_start>:<b_end>:<t_b>' -> SigmoidWeighting (SPEC §3, C.2)."""
  parts = loss_type.split(':')[1:]
  if len(parts) == 1:
    (b,) = _parse_floats(loss_type, parts, 'the bias')
    return SigmoidWeighting(b, b, 0)
  if len(parts) == 3:
    b_start, b_end, t_b = _parse_floats(loss_type, parts, 'b_start:b_end:t_b')
    if t_b <= 0 or t_b != int(t_b):
      raise ValueError(f'loss_type {loss_type!r}: t_b must be a positive integer number of steps')
    return SigmoidWeighting(b_start, b_end, int(t_b))
  raise ValueError(f'loss_type {loss_type!r}: expected sigmoid:<b> or sigmoid:<b_start>:<b_end>:<t_b>')


# Registry: `loss_type` -> the weighting object (a callable w(logsnr, step=None)). A new weighting is one
# decorated function `@register_weighting('name')` of logsnr; `sid2.losses` then accepts it as a loss_type.
WEIGHTINGS = registry.Registry('weighting', field='loss_type')


def register_weighting(name: str):
  """Decorator registering a step-independent w(logsnr) (eps-space, SPEC §3) under `name`."""
  def decorate(fn):
    WEIGHTINGS.register(name, FixedWeighting(name, fn))
    return fn
  return decorate


for _name, _fn in (('edm', edm_weight), ('edm_monotonic', edm_monotonic_weight), ('elbo', elbo_weight)):
  register_weighting(_name)(_fn)
WEIGHTINGS.register_pattern(r'sigmoid:.*', ('sigmoid:<b>', 'sigmoid:<b_start>:<b_end>:<t_b>'),
                            lambda name, match: parse_sigmoid(name))
WEIGHTINGS.register_pattern(r'min_snr:.*', ('min_snr:<gamma>',), lambda name, match: parse_min_snr(name))
WEIGHTING_NAMES = WEIGHTINGS.names()


def get_weighting(loss_type: str):
  """The eps-space weighting w(lambda[, step]) of a loss_type (SPEC §3, §12)."""
  if not isinstance(loss_type, str):
    raise ValueError(f'loss_type must be a string, one of {WEIGHTINGS.names()}; got {loss_type!r}')
  if loss_type == 'eps_mse' or loss_type.startswith('power:'):  # losses of sid2.losses without one w
    raise ValueError(f'loss_type {loss_type!r} has no single eps-space weighting w(lambda); '
                     f'use sid2.losses.get_loss (weightings exist for: {", ".join(WEIGHTINGS.names())})')
  return WEIGHTINGS.get(loss_type)


def maybe_step(weighting: Optional[object]) -> bool:
  """Whether a weighting depends on the training step (the time-shifted sigmoid)."""
  return isinstance(weighting, SigmoidWeighting) and weighting.t_b > 0
