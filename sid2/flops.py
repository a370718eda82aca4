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


def uvit_gflops(model_config, image_res, *, num_channels=3, count_padding=True):
  """Forward GFLOPs (multiply-add = 1) of one image through the SiD2 U-ViT (`sid2.models.uvit`, SPEC §8).

  Sums the B.3 terms, `resblock_gflops` per level x (enc + dec blocks) and `transformer_gflops` at the core,
  plus the layers B.3 leaves out: input/output 3x3 convs, 2x2 down/up-sampling projections (s^2 C_l C_{l+1}
  each), and the per-example conditioning Denses (logSNR MLP, per-block scale/shift). Elementwise work
  (norms, activations, softmax) is not counted.
  count_padding=True counts every 3x3 conv as 9 s^2 C_in C_out, as B.3 does. count_padding=False counts
  only taps that hit the image, (3s - 2)^2 C_in C_out per conv, which is what XLA's cost analysis counts
  (zero 'SAME' padding is not multiplied); at small s the two differ (e.g. 4% at s = 32).
  """
  from sid2.models import uvit  # pylint: disable=g-import-not-at-top  (flax only when needed)
  f = uvit.resolve_uvit_config(model_config)
  uvit.check_resolution(f, image_res)
  levels = uvit.used_levels(f['channels'], f['drop_top_level'])
  chans, c_t, p = f['channels'], f['transformer_channels'], f['patching_size']
  e = uvit.emb_width(f)

  def conv3(size, c_in, c_out):
    taps = 9 * size ** 2 if count_padding else (3 * size - 2) ** 2
    return taps * c_in * c_out

  size = image_res // p
  c0 = chans[levels[0]]
  gflops = 2 * conv3(size, num_channels * p * p, c0) / 1e9  # conv_in and conv_out.
  gflops += (c0 * e + e * e) / 1e9  # logSNR features -> Dense(E) -> Dense(E).
  for i in levels:
    blocks = f['enc_blocks'][i] + f['dec_blocks'][i]
    if count_padding:
      gflops += resblock_gflops(size, chans[i], blocks)
    else:
      gflops += 2 * blocks * conv3(size, chans[i], chans[i]) / 1e9
    gflops += blocks * e * 2 * chans[i] / 1e9  # scale/shift Dense per ResBlock.
    c_next = chans[i + 1] if i + 1 < len(chans) else c_t
    gflops += 2 * size ** 2 * chans[i] * c_next / 1e9  # Downsample + Upsample.
    size //= 2
  gflops += transformer_gflops(size, c_t, f['transformer_blocks'])
  gflops += f['transformer_blocks'] * e * 4 * c_t / 1e9  # adaLN Dense per transformer block.
  return gflops
