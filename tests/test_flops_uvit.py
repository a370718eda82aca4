"""U-ViT forward FLOPs from the B.3 formulas (sid2.flops.uvit_gflops) against XLA's cost analysis (SPEC §8)."""
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from sid2 import flops
from sid2 import models

# Widths >= 128 so that the elementwise work XLA also counts (norms, activations, softmax) stays < 1%.
CONFIGS = [
    (dict(name='uvit', channels=(128, 256), enc_blocks=(1, 2), dec_blocks=(2, 1), transformer_channels=256,
          transformer_blocks=2, num_heads=4), 32, 3),
    (dict(name='uvit', channels=(64, 128, 256), enc_blocks=(1, 1, 1), dec_blocks=(1, 1, 2),
          transformer_channels=256, transformer_blocks=1, num_heads=4, patching_size=2, drop_top_level=True,
          num_classes=10), 32, 3),
]


def xla_gflops(cfg, res, channels):
  """Forward GFLOPs per image as XLA counts them, halved (XLA counts a multiply-add as 2 flops)."""
  model = models.get_model(cfg, image_res=res, num_channels=channels)
  z = jax.ShapeDtypeStruct((1, res, res, channels), jnp.float32)
  logsnr = jax.ShapeDtypeStruct((1,), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), z, logsnr)
  cost = jax.jit(lambda v, z, l: model.apply(v, z, l)).lower(variables, z, logsnr).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX returns one dict per device.
    cost = cost[0]
  return cost['flops'] / 2 / 1e9


def test_b3_known_values():
  assert flops.transformer_gflops(16, 1024, 1) == pytest.approx(3.3554432)
  assert flops.resblock_gflops(64, 128, 2) == pytest.approx(2.415919104)


@pytest.mark.parametrize('fields,res,channels', CONFIGS)
def test_uvit_gflops_matches_xla(fields, res, channels):
  cfg = ml_collections.ConfigDict(fields)
  xla = xla_gflops(cfg, res, channels)
  exact = flops.uvit_gflops(cfg, res, num_channels=channels, count_padding=False)
  assert exact == pytest.approx(xla, rel=0.01)
  # B.3 counts the zero-padded border taps of every 3x3 conv too, so it can only be higher; at these small
  # sizes (32^2 and below) by up to (3s/(3s-2))^2 - 1 = 40% for the 8^2 maps.
  b3 = flops.uvit_gflops(cfg, res, num_channels=channels)
  assert xla < b3 < 1.4 * xla


def test_uvit_gflops_is_the_b3_sum():
  cfg = ml_collections.ConfigDict(CONFIGS[0][0])
  e = 4 * 128  # Conditioning width: 4 x the first level's width.
  expected = (flops.resblock_gflops(32, 128, 1 + 2) + flops.resblock_gflops(16, 256, 2 + 1)
              + flops.transformer_gflops(8, 256, 2)
              + 2 * 9 * 32 ** 2 * 3 * 128 / 1e9  # 3x3 input and output convs.
              + 2 * (32 ** 2 * 128 * 256 + 16 ** 2 * 256 * 256) / 1e9  # 2x2 down + up projections.
              + (128 * e + e * e) / 1e9  # logSNR MLP.
              + (3 * e * 2 * 128 + 3 * e * 2 * 256 + 2 * e * 4 * 256) / 1e9)  # Per-block scale/shift Denses.
  assert flops.uvit_gflops(cfg, 32) == pytest.approx(expected, rel=1e-12)


def test_drop_top_level_equals_the_smaller_config():
  full = dict(CONFIGS[1][0], patching_size=1)
  smaller = dict(full, channels=(128, 256), enc_blocks=(1, 1), dec_blocks=(1, 2), drop_top_level=False)
  assert flops.uvit_gflops(ml_collections.ConfigDict(full), 64) == pytest.approx(
      flops.uvit_gflops(ml_collections.ConfigDict(smaller), 64), rel=1e-12)


def test_patching_keeps_the_grids():
  # Same model on a 2x larger image with patching 2: identical grid sizes, only the first/last conv widen.
  cfg = dict(CONFIGS[0][0])
  base = flops.uvit_gflops(ml_collections.ConfigDict(cfg), 32)
  patched = flops.uvit_gflops(ml_collections.ConfigDict(dict(cfg, patching_size=2)), 64)
  assert patched - base == pytest.approx(2 * 9 * 32 ** 2 * (4 - 1) * 3 * 128 / 1e9, rel=1e-12)


def test_uvit_gflops_rejects_bad_resolution():
  with pytest.raises(ValueError, match='image_res=34'):
    flops.uvit_gflops(ml_collections.ConfigDict(CONFIGS[0][0]), 34)
