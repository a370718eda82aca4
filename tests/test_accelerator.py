"""Accelerator paths on the CPU: bf16 compute keeps the loss of f32, the accelerator benchmark suite runs
end to end with --smoke, the peak table, and cuDNN attention refused off a GPU before any compute."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import benchmark
from sid2 import losses
from sid2 import models
from sid2 import schedules
from sid2 import train_step as ts
from sid2.models import build as model_build

# bf16 has an 8-bit mantissa (relative rounding 2^-9 = 0.2% per op); through a few layers and a mean over the
# batch the loss moves by well under 1%. Stated tolerance: 1% relative, and the bf16 loss must not equal f32.
BF16_LOSS_RTOL = 1e-2
TINY = dict(name='uvit', channels=(16, 32), enc_blocks=(1, 1), dec_blocks=(1, 1), transformer_channels=32,
            transformer_blocks=1, num_heads=2, num_classes=4, patching_size=2)


def _loss(dtype):
  model = models.get_model(ml_collections.ConfigDict(dict(TINY, dtype=dtype)), image_res=16, num_channels=3)
  schedule = schedules.get_schedule('cosine', image_res=16)
  params = model_build.init_params(model, ml_collections.ConfigDict(dict(image_res=16, model=dict(TINY))), 3,
                               jax.random.PRNGKey(0))
  # Non-zero output layers (they are zero-initialised) so that the network's bf16 rounding reaches the loss.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(p.size), p.shape), params)
  objective = ts.make_loss_fn(model_build.make_apply_fn(model), schedule, losses.get_loss('sigmoid:2', schedule),
                              'v', ts.StepConfig(num_classes=4, cond_drop_prob=0.0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 16, 16, 3), minval=-1, maxval=1)
  batch = dict(image=x, label=jnp.arange(16) % 4)
  return float(jax.jit(lambda p: objective(p, batch, jax.random.PRNGKey(2), 0)[0])(params))


def test_bf16_loss_matches_f32():
  f32, bf16 = _loss('float32'), _loss('bfloat16')
  assert np.isfinite(f32) and f32 > 0
  np.testing.assert_allclose(bf16, f32, rtol=BF16_LOSS_RTOL)
  assert bf16 != f32  # the bf16 path really computed in bf16


def test_peak_table():
  assert benchmark.peak_tflops('NVIDIA H100 80GB HBM3') == (989.0, 'h100')
  assert benchmark.peak_tflops('NVIDIA H100 PCIe')[0] == 756.0
  assert benchmark.peak_tflops('NVIDIA H200')[0] == 989.0
  assert benchmark.peak_tflops('NVIDIA A100-SXM4-80GB')[0] == 312.0
  assert benchmark.peak_tflops('TPU v5 lite')[0] == 197.0 and benchmark.peak_tflops('TPU v5p')[0] == 459.0
  assert benchmark.peak_tflops('TPU v6 lite')[0] == 918.0 and benchmark.peak_tflops('TPU v4')[0] == 275.0
  assert benchmark.peak_tflops('cpu') == (None, None)


def test_accelerator_suite_smoke_on_cpu():
  # One config end to end (the three differ only in resolution and patching: each builds, as checked here).
  for name in benchmark.ACCELERATOR_CONFIGS:
    config, _ = benchmark.get_model_config(name)
    benchmark.smoke_model(config)
    model_build.build_model(config, 3)
  lines = []
  out = benchmark.run_accelerator_suite(['imagenet128_small'], 32, 10, smoke=True, log=lines.append)
  assert [r['config'] for r in out['configs']] == ['imagenet128_small']
  assert out['peak_bf16_tflops'] is None and 'unknown chip' in out['peak_source']
  assert 'unknown (MFU not computed)' in lines[0] and 'SMOKE' in lines[0]
  for r in out['configs']:
    assert r['per_chip_batch'] == 1 and r['mfu'] is None and r['dtype'] == 'bfloat16'
    assert r['images_per_s_per_chip'] > 0 and r['tflops_per_chip'] > 0 and r['sampler_images_per_s'] > 0
    assert r['xla_tflops_per_chip'] > 0 and 'ddpm 2 steps, guidance 1.0' in r['sampler']


def test_cudnn_attention_needs_a_gpu():
  if jax.default_backend() == 'gpu':
    pytest.skip('on a GPU cuDNN attention is available')
  model = models.get_model(ml_collections.ConfigDict(dict(TINY, attention='cudnn')), image_res=16,
                           num_channels=3)
  with pytest.raises(ValueError, match="model.attention='cudnn' needs a CUDA GPU"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)),
                   jnp.zeros((1,), jnp.int32))
