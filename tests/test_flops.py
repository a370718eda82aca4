"""B.3 FLOP formulas on known inputs (SPEC §8)."""
import pytest

from sid2 import flops


def test_known_values():
  assert flops.transformer_gflops(16, 1024, 1) == pytest.approx(3.3554432)
  assert flops.resblock_gflops(64, 128, 2) == pytest.approx(2.415919104)
  assert flops.train_gflops(2.0) == 6.0


def test_scaling():
  # Linears scale with C^2 size^2, attention with size^4 C.
  base = flops.transformer_gflops(8, 64, 1)
  assert flops.transformer_gflops(8, 64, 3) == pytest.approx(3 * base)
  assert flops.resblock_gflops(32, 64, 1) == pytest.approx(4 * flops.resblock_gflops(16, 64, 1))
