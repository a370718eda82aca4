"""FLOP estimates (SiD2 B.3, SPEC §8): a multiply-add counts as one flop; a training step is 3x forward."""
from __future__ import annotations

TRAIN_FACTOR = 3  # SPEC §8: training step = 3 x forward pass.


def transformer_gflops(size, num_channels, blocks):
  """GFLOPs of `blocks` transformer blocks on a size x size token grid (SPEC §8, SiD2 B.3).

  Linears: q, k, v, attention-out (4 C^2) and the MLP in/out with 4x expansion (8 C^2) per token; attention:
  the two token-token products (QK^T and AV), size^4 * C each.
  """
  linears = 12 * num_channels ** 2 * blocks * size ** 2
  attn = 2 * size ** 4 * blocks * num_channels
  return (linears + attn) / 1e9


def resblock_gflops(size, num_channels, blocks):
  """GFLOPs of `blocks` ResBlocks (two 3x3 convs, C -> C) at size x size (SPEC §8, SiD2 B.3)."""
  return 2 * 3 ** 2 * blocks * num_channels ** 2 * size ** 2 / 1e9


def train_gflops(forward_gflops):
  """Training-step GFLOPs = 3 x forward (SPEC §8)."""
  return TRAIN_FACTOR * forward_gflops
