"""Orthonormal 2-D Haar wavelet transform for NHWC arrays (SPEC §5, §13; SiD2 B.2).

One level maps x [B, H, W, C] to four bands (LL, LH, HL, HH) of shape [B, H/2, W/2, C]. For a 2x2 block
[[a, b], [c, d]] (rows first, then columns, SPEC §5/§13):
  LL = (a + b + c + d) / 2, LH = (a + b - c - d) / 2, HL = (a - b + c - d) / 2, HH = (a - b - c + d) / 2.
The transform is orthonormal: exactly invertible and energy preserving.
"""
from __future__ import annotations

import jax.numpy as jnp

BAND_NAMES = ('LL', 'LH', 'HL', 'HH')


def _check_even(x):
  if x.ndim != 4:
    raise ValueError(f'Haar transform expects NHWC arrays; got shape {x.shape}')
  if x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(f'Haar transform needs even height and width; got shape {x.shape}')


def haar_dwt_level(x):
  """One Haar level: x [B,H,W,C] -> (LL, LH, HL, HH), each [B,H/2,W/2,C] (SPEC §5)."""
  _check_even(x)
  a = x[:, 0::2, 0::2]
  b = x[:, 0::2, 1::2]
  c = x[:, 1::2, 0::2]
  d = x[:, 1::2, 1::2]
  return ((a + b + c + d) * 0.5, (a + b - c - d) * 0.5,
          (a - b + c - d) * 0.5, (a - b - c + d) * 0.5)


def haar_idwt_level(ll, lh, hl, hh):
  """Inverse of `haar_dwt_level` (SPEC §5): four [B,h,w,C] bands -> [B,2h,2w,C]."""
  a = (ll + lh + hl + hh) * 0.5
  b = (ll + lh - hl - hh) * 0.5
  c = (ll - lh + hl - hh) * 0.5
  d = (ll - lh - hl + hh) * 0.5
  top = jnp.stack([a, b], axis=3)      # [B,h,w,2,C]: columns 0/1 of even rows
  bottom = jnp.stack([c, d], axis=3)
  out = jnp.stack([top, bottom], axis=2)  # [B,h,2,w,2,C]
  bsz, h, _, w, _, ch = out.shape
  return out.reshape(bsz, 2 * h, 2 * w, ch)


def haar_dwt(x, levels=1):
  """L-level Haar DWT (SPEC §5, §12): returns [(LH, HL, HH) of level 1, ..., of level L, LL_L].

  Level k's detail bands have resolution H / 2^k; each level transforms the previous low band.
  """
  if levels < 1:
    raise ValueError(f'levels must be >= 1; got {levels}')
  details = []
  low = x
  for _ in range(levels):
    low, lh, hl, hh = haar_dwt_level(low)
    details.append((lh, hl, hh))
  return details + [low]


def haar_idwt(bands):
  """Inverse of `haar_dwt` (SPEC §5, §12)."""
  *details, low = bands
  for lh, hl, hh in reversed(details):
    low = haar_idwt_level(low, lh, hl, hh)
  return low


def band_low_passes(levels):
  """l(s) for the bands of `haar_dwt(x, levels)` in the same nesting (SPEC §4).

  Level k (1-based) detail bands: LH and HL have 2(k-1)+1 low passes, HH has 2(k-1); the final LL has 2L.
  """
  out = [(2 * (k - 1) + 1, 2 * (k - 1) + 1, 2 * (k - 1)) for k in range(1, levels + 1)]
  return out + [2 * levels]
