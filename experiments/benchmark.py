"""Training throughput benchmark: images/s, achieved FLOP/s vs a measured matmul peak, compile time, RSS.

  python -m experiments.benchmark [--models default,large] [--steps 10] [--out runs/benchmark.json]

FLOPs follow SiD2 B.3 (a multiply-add = 1 flop, a training step = 3x forward; `sid2.flops.uvit_gflops`). The
peak is the best of several jitted float32 matmuls on the same machine in the same run, counted the same way
(n^3 multiply-adds for an n x n by n x n product), so the ratio is unit-consistent.
"""
import json
import os
import resource
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['default', 'large'], 'Which models to time: default, large.')
flags.DEFINE_integer('steps', 10, 'Timed train steps per model (after one warm-up step).')
flags.DEFINE_integer('batch_size', 0, 'Override the per-model batch size (0: keep).')
flags.DEFINE_string('out', '', 'Write the results as JSON here.')


def peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_peak(sizes=(1024, 2048, 3072), repeats=5):
  """Best float32 matmul rate in multiply-adds/s over a few sizes (the machine's practical peak)."""
  import jax
  import jax.numpy as jnp
  best = 0.0
  for n in sizes:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    for _ in range(repeats):
      t = time.perf_counter()
      f(a).block_until_ready()
      best = max(best, n ** 3 / (time.perf_counter() - t))
  return best


def model_configs():
  """The default Fashion-MNIST config and a larger U-ViT (32x32x3): one ResBlock level, 8x8 transformer."""
  from configs import fashion_mnist
  default = fashion_mnist.get_config()
  large = fashion_mnist.get_config()
  large.batch_size = 32
  large.model.channels = (128,)
  large.model.enc_blocks = (1,)
  large.model.dec_blocks = (1,)
  large.model.transformer_channels = 768
  large.model.transformer_blocks = 8
  large.model.num_heads = 12
  large.model.patching_size = 2
  return {'default': (default, 1), 'large': (large, 3)}


def bench_model(name, config, num_channels, steps):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from sid2 import flops, losses, schedules, trainer, train_step as ts
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  mesh = ts.make_mesh()
  model = trainer.build_model(config, num_channels)
  schedule = schedules.get_schedule(config.schedule, image_res=config.image_res)
  optimizer, _ = ts.make_optimizer(config.optimizer, config.total_steps)
  step_cfg = ts.StepConfig(ema_decay=config.ema_decay, num_classes=config.model.num_classes,
                           cond_drop_prob=config.cond_drop_prob)
  step = ts.jit_train_step(ts.make_train_step(trainer.make_apply_fn(model), schedule,
                                              losses.get_loss(config.loss_type, schedule),
                                              config.parametrization, optimizer, step_cfg), mesh)
  params = trainer.init_params(model, config, num_channels, jax.random.PRNGKey(0))
  state = jax.device_put(ts.create_train_state(params, optimizer, jax.random.PRNGKey(1)), ts.replicated(mesh))
  rng = np.random.default_rng(0)
  res, b = config.image_res, config.batch_size
  batch = ts.global_batch(dict(image=rng.uniform(-1, 1, (b, res, res, num_channels)).astype(np.float32),
                               label=rng.integers(0, 10, (b,)).astype(np.int32)), mesh)
  t = time.perf_counter()
  compiled = step.lower(state, batch, None).compile()
  compile_s = time.perf_counter() - t
  state, m = compiled(state, batch, None)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch, None)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / steps
  fwd_gflops = flops.uvit_gflops(config.model, res, num_channels=num_channels)
  return dict(model=name, batch_size=b, image_res=res, num_channels=num_channels,
              params_m=sum(x.size for x in jax.tree.leaves(params)) / 1e6,
              forward_gflops_per_image=fwd_gflops, step_s=dt, images_per_s=b / dt,
              achieved_gflops_per_s=flops.train_gflops(fwd_gflops) * b / dt, compile_s=compile_s,
              loss=float(m['loss']))


def main(argv):
  del argv
  import jax
  results = dict(device=str(jax.devices()[0]), device_count=jax.device_count())
  peak = matmul_peak()
  results['matmul_peak_gflops_per_s'] = peak / 1e9
  print(f'f32 matmul peak: {peak / 1e9:.1f} G multiply-adds/s on {results["device"]} '
        f'x{results["device_count"]}')
  configs = model_configs()
  results['models'] = []
  for name in FLAGS.models:
    if name not in configs:
      raise ValueError(f'--models: unknown model {name!r}; allowed: {sorted(configs)}')
    cfg, ch = configs[name]
    r = bench_model(name, cfg, ch, FLAGS.steps)
    r['fraction_of_matmul_peak'] = r['achieved_gflops_per_s'] * 1e9 / peak
    r['peak_rss_mb'] = peak_rss_mb()
    results['models'].append(r)
    print(f"{name:8s} params {r['params_m']:.2f}M  batch {r['batch_size']}  {r['images_per_s']:.1f} img/s  "
          f"{r['step_s'] * 1e3:.0f} ms/step  {r['achieved_gflops_per_s']:.1f} GFLOP/s "
          f"({100 * r['fraction_of_matmul_peak']:.0f}% of matmul peak)  compile {r['compile_s']:.1f}s  "
          f"peak RSS {r['peak_rss_mb']:.0f} MB")
  print(json.dumps(results, indent=1))
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  app.run(main)
