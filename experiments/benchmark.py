"""Training throughput benchmark: images/s, achieved FLOP/s vs a measured matmul peak, compile time, RSS;
plus the sampler's model evaluations/s and network-time fraction (`experiments.benchmark_sampler`).

  python -m experiments.benchmark [--models default,large] [--steps 10] [--json PATH] \
      [--sampler_model default] [--sampler_samples 8] [--sampler_steps 16]

FLOPs follow SiD2 B.3 (a multiply-add = 1 flop, a training step = 3x forward; `sid2.flops.uvit_gflops`). The
peak is the best of several jitted float32 matmuls on the same machine in the same run, counted the same way
(n^3 multiply-adds for an n x n by n x n product), so the ratio is unit-consistent. (Vendor peaks such as a
TPU v5e's 197 TFLOP/s count 2 flops per multiply-add: halve them to compare.)

Models: `default` (configs/fashion_mnist.py), `large` (a transformer-dominated 32x32x3 U-ViT), or a SiD2
ImageNet paper config by file name, e.g. `imagenet128_small` (~1B parameters: for accelerators, with
--batch_size). Peak RSS is the process's high-water mark after each model (so it only grows).

One JSON per run (--json, default runs/benchmarks/train_<time>.json) with the machine, the matmul peak, per
model images/s, achieved FLOP/s, fraction of peak, compile time and peak RSS, and the sampler measurement.
"""
from sid2 import runtime  # first, before jax: one CPU device per core, persistent compile cache
runtime.configure(__name__)  # (only when run as a program)
import importlib
import json
import os
import platform
import resource
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (defined only when run as a program, so other modules can import this one)."""
  flags.DEFINE_list('models', ['default', 'large'], 'Which models to time: default, large, or a paper config '
                    'name such as imagenet128_small.')
  flags.DEFINE_integer('steps', 10, 'Timed train steps per model (after one warm-up step).')
  flags.DEFINE_integer('batch_size', 0, 'Override the per-model batch size (0: keep).')
  flags.DEFINE_string('json', '', 'Write the results as JSON here (default runs/benchmarks/train_<time>.json).')
  flags.DEFINE_alias('out', 'json')
  flags.DEFINE_string('sampler_model', 'default', 'Model (as in --models) whose sampler to time; empty: skip.')
  flags.DEFINE_integer('sampler_samples', 8, 'Images per sampler call.')
  flags.DEFINE_integer('sampler_steps', 16, 'Sampler steps.')
  flags.DEFINE_integer('sampler_repeats', 3, 'Timed sampler rounds (medians).')


FLOP_CONVENTION = 'multiply-add = 1 flop (SiD2 B.3); train step = 3 x forward'


def peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_info():
  """Host and accelerator description for the JSON."""
  import jax
  dev = jax.devices()[0]
  return dict(hostname=platform.node(), platform=platform.platform(), python=platform.python_version(),
              cpu_count=os.cpu_count(), load_average=list(os.getloadavg()), jax_version=jax.__version__,
              backend=jax.default_backend(), device=str(dev), device_kind=dev.device_kind,
              device_count=jax.device_count(), process_count=jax.process_count(),
              xla_flags=os.environ.get('XLA_FLAGS', ''))


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


def get_model_config(name):
  """(config, num_channels) of a --models entry: a built-in name or a configs/imagenet*.py file name."""
  configs = model_configs()
  if name in configs:
    return configs[name]
  if name.startswith('imagenet') and os.path.exists(os.path.join('configs', name + '.py')):
    return importlib.import_module(f'configs.{name}').get_config(), 3
  raise ValueError(f'--models: unknown model {name!r}; allowed: {sorted(configs)} or a configs/imagenet*.py '
                   'file name (e.g. imagenet128_small)')


def bench_model(name, config, num_channels, steps, batch_size=0):
  """Times `steps` jitted train steps of `config`'s model on random data (batch_size > 0 overrides)."""
  import jax
  import numpy as np
  from sid2 import flops, losses, schedules, trainer, train_step as ts
  if batch_size:
    config.batch_size = batch_size
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
                               label=rng.integers(0, max(config.model.num_classes, 1), (b,)).astype(np.int32)),
                          mesh)
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
              forward_gflops_per_image=fwd_gflops, train_gflops_per_image=flops.train_gflops(fwd_gflops),
              step_s=dt, images_per_s=b / dt, achieved_gflops_per_s=flops.train_gflops(fwd_gflops) * b / dt,
              compile_s=compile_s, steps=steps, loss=float(m['loss']))


def bench_sampler(name, num_samples, num_steps, repeats):
  """`experiments.benchmark_sampler.benchmark` on a --models entry's config (random parameters)."""
  from experiments import benchmark_sampler
  config, num_channels = get_model_config(name)
  result = benchmark_sampler.benchmark(config, num_samples, num_steps, num_channels, repeats)
  result.pop('runs', None)  # Per-round times; the medians and fractions stay.
  return dict(result, model_name=name)


def run(models, steps, sampler_model, sampler_samples, sampler_steps, sampler_repeats, batch_size=0,
        log=print):
  """All measurements of the module docstring; returns the JSON-able dict."""
  results = dict(machine=machine_info(), flop_convention=FLOP_CONVENTION,
                 time=time.strftime('%Y-%m-%dT%H:%M:%S'))
  configs = [(name,) + get_model_config(name) for name in models]  # Fail on a bad name before any timing.
  if sampler_model:
    get_model_config(sampler_model)
  peak = matmul_peak()
  results['matmul_peak_gflops_per_s'] = peak / 1e9
  m = results['machine']
  log(f'f32 matmul peak: {peak / 1e9:.1f} G multiply-adds/s on {m["device"]} x{m["device_count"]} '
      f'({m["cpu_count"]} CPUs, load average {m["load_average"][0]:.1f})')
  results['models'] = []
  for name, cfg, ch in configs:
    r = bench_model(name, cfg, ch, steps, batch_size)
    r['fraction_of_matmul_peak'] = r['achieved_gflops_per_s'] * 1e9 / peak
    r['peak_rss_mb'] = peak_rss_mb()
    results['models'].append(r)
    log(f"{name:8s} params {r['params_m']:.2f}M  batch {r['batch_size']}  {r['images_per_s']:.1f} img/s  "
        f"{r['step_s'] * 1e3:.0f} ms/step  {r['achieved_gflops_per_s']:.1f} GFLOP/s "
        f"({100 * r['fraction_of_matmul_peak']:.0f}% of matmul peak)  compile {r['compile_s']:.1f}s  "
        f"peak RSS {r['peak_rss_mb']:.0f} MB")
  if sampler_model:
    s = bench_sampler(sampler_model, sampler_samples, sampler_steps, sampler_repeats)
    s['peak_rss_mb'] = peak_rss_mb()
    results['sampler'] = s
  return results


def main(argv):
  del argv
  for name in ('steps', 'sampler_samples', 'sampler_steps', 'sampler_repeats'):
    if FLAGS[name].value < 1:
      raise ValueError(f'--{name} must be a positive integer; got {FLAGS[name].value}')
  results = run(FLAGS.models, FLAGS.steps, FLAGS.sampler_model, FLAGS.sampler_samples, FLAGS.sampler_steps,
                FLAGS.sampler_repeats, FLAGS.batch_size)
  print(json.dumps(results, indent=1))
  path = FLAGS.json or os.path.join('runs', 'benchmarks', f'train_{time.strftime("%Y%m%d_%H%M%S")}.json')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(results, f, indent=1)
  print('wrote', path)


if __name__ == '__main__':
  define_flags()
  app.run(main)
