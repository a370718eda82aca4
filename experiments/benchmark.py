"""Throughput benchmarks. Three suites (--suite):

  python -m experiments.benchmark                      # cpu: the default config, 1 device vs one per core
  python -m experiments.benchmark --suite models [--models default,large] [--steps 10] \
      [--sampler_model default] [--sampler_samples 8] [--sampler_steps 16]
  python -m experiments.benchmark --suite accelerator [--per_chip_batch 32] [--smoke]

cpu (default): for each of 1 device and one CPU device per core (`sid2.runtime`), two fresh processes with
one new compilation cache: the first compiles cold, the second reads the cache. Each times --steps jitted
train steps of the default config on uint8 batches put on the devices every step (as the trainer does) and
reports steps/s, images/s, cores used (process CPU time / wall over the timed steps), compile seconds (cold
and cached) and the fraction of the f32 matmul peak measured in the parent process. Time it on a quiet
machine: its ratios are the point.

accelerator: on whatever backend jax finds, for imagenet128_small, imagenet256_small and imagenet512_small
(--configs) at a per-chip batch that fits (--per_chip_batch, halved on out-of-memory): per-chip images/s,
achieved TFLOP/s (2 flops per multiply-add, the vendors' convention, from `sid2.flops`; XLA's own cost
analysis beside it) and MFU against the chip's published dense bf16 peak (`PEAK_TFLOPS`; unknown chips say
so), plus the config's sampler (DDPM, 512 steps, guidance on its logSNR interval) in images/s on one chip.
--smoke: the same code path in seconds on a CPU (models shrunk to a few channels, batch 1 per chip, 1 step,
a 2-step sampler); its numbers mean nothing.

models:
FLOPs follow SiD2 B.3 (a multiply-add = 1 flop, a training step = 3x forward; `sid2.flops.uvit_gflops`). The
peak is the best of several jitted float32 matmuls on the same machine in the same run, counted the same way
(n^3 multiply-adds for an n x n by n x n product), so the ratio is unit-consistent. (Vendor peaks such as a
TPU v5e's 197 TFLOP/s count 2 flops per multiply-add: halve them to compare.)

Models: `default` (configs/fashion_mnist.py), `large` (a transformer-dominated 32x32x3 U-ViT), or a SiD2
ImageNet paper config by file name, e.g. `imagenet128_small` (~1B parameters: for accelerators, with
--batch_size). Peak RSS is the process's high-water mark after each model (so it only grows).

One JSON per run (--json, default runs/benchmarks/<suite>_<time>.json) with the machine, the matmul peak, per
model images/s, achieved FLOP/s, fraction of peak, compile time and peak RSS, and the sampler measurement.
"""
from sid2 import runtime  # first, before jax: one CPU device per core, persistent compile cache
runtime.configure(__name__)  # (only when run as a program)
import importlib
import json
import os
import resource
import time

from absl import flags

from experiments import cli
from sid2 import bench


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  flags.DEFINE_enum('suite', 'cpu', ['cpu', 'models', 'accelerator', 'child'], 'What to measure (see the '
                    'module docstring); child: one process of the cpu suite (internal).', **d)
  flags.DEFINE_list('configs', list(ACCELERATOR_CONFIGS), 'accelerator suite: paper configs to time.', **d)
  flags.DEFINE_integer('per_chip_batch', 32, 'accelerator suite: first per-chip batch tried (halved on OOM).', **d)
  flags.DEFINE_bool('smoke', False, 'accelerator suite: tiny models, batch 1, 1 step (a CPU test of the path).', **d)
  flags.DEFINE_list('models', ['default', 'large'], 'Which models to time: default, large, or a paper config '
                    'name such as imagenet128_small.', **d)
  flags.DEFINE_integer('steps', 10, 'Timed train steps per model (after one warm-up step).', **d)
  flags.DEFINE_integer('batch_size', 0, 'Override the per-model batch size (0: keep).', **d)
  flags.DEFINE_string('json', '', 'Write the results as JSON here (default runs/benchmarks/<suite>_<time>.json).', **d)
  flags.DEFINE_alias('out', 'json', **d)
  flags.DEFINE_string('sampler_model', 'default', 'Model (as in --models) whose sampler to time; empty: skip.', **d)
  flags.DEFINE_integer('sampler_samples', 8, 'Images per sampler call.', **d)
  flags.DEFINE_integer('sampler_steps', 16, 'Sampler steps.', **d)
  flags.DEFINE_integer('sampler_repeats', 3, 'Timed sampler rounds (medians).', **d)


FLOP_CONVENTION = 'multiply-add = 1 flop (SiD2 B.3); train step = 3 x forward'
ACCELERATOR_CONFIGS = ('imagenet128_small', 'imagenet256_small', 'imagenet512_small')
# Published dense (no sparsity) bf16 peaks per chip in TFLOP/s, 2 flops per multiply-add (vendor data sheets:
# NVIDIA H100/H200 SXM, A100; Google Cloud TPU v4, v5e, v5p, v6e (Trillium)). Keys are matched, in order,
# against jax's device_kind (lower case).
PEAK_TFLOPS = (('h200', 989.0), ('h100 pcie', 756.0), ('h100', 989.0), ('a100', 312.0),
               ('tpu v5 lite', 197.0), ('tpu v5e', 197.0), ('tpu v5p', 459.0), ('tpu v5', 459.0),
               ('tpu v6 lite', 918.0), ('tpu v6e', 918.0), ('tpu v4', 275.0))


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
  from sid2 import flops, losses, schedules, train_step as ts
  from sid2.models import build as model_build
  if batch_size:
    config.batch_size = batch_size
  mesh = ts.make_mesh()
  model = model_build.build_model(config, num_channels)
  schedule = schedules.get_schedule(config.schedule, image_res=config.image_res)
  optimizer, _ = ts.make_optimizer(config.optimizer, config.total_steps)
  step_cfg = ts.StepConfig(ema_decay=config.ema_decay, num_classes=config.model.num_classes,
                           cond_drop_prob=config.cond_drop_prob)
  step = ts.jit_train_step(ts.make_train_step(model_build.make_apply_fn(model), schedule,
                                              losses.get_loss(config.loss_type, schedule),
                                              config.parametrization, optimizer, step_cfg), mesh)
  params = model_build.init_params(model, config, num_channels, jax.random.PRNGKey(0))
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
  """`sid2.bench.benchmark_sampler` on a --models entry's config (random parameters)."""
  config, num_channels = get_model_config(name)
  result = bench.benchmark_sampler(config, num_samples, num_steps, num_channels, repeats)
  result.pop('runs', None)  # Per-round times; the medians and fractions stay.
  return dict(result, model_name=name)


def run(models, steps, sampler_model, sampler_samples, sampler_steps, sampler_repeats, batch_size=0,
        log=print):
  """All measurements of the module docstring; returns the JSON-able dict."""
  results = dict(machine=bench.machine_info(), flop_convention=FLOP_CONVENTION,
                 time=time.strftime('%Y-%m-%dT%H:%M:%S'))
  configs = [(name,) + get_model_config(name) for name in models]  # Fail on a bad name before any timing.
  if sampler_model:
    get_model_config(sampler_model)
  peak = bench.matmul_peak()
  results['matmul_peak_gflops_per_s'] = peak / 1e9
  m = results['machine']
  log(f'f32 matmul peak: {peak / 1e9:.1f} G multiply-adds/s on {m["device"]} x{m["device_count"]} '
      f'({m["cpu_count"]} CPUs, load average {m["load_average"][0]:.1f})')
  results['models'] = []
  for name, cfg, ch in configs:
    r = bench_model(name, cfg, ch, steps, batch_size)
    r['fraction_of_matmul_peak'] = r['achieved_gflops_per_s'] * 1e9 / peak
    r['peak_rss_mb'] = bench.peak_rss_mb()
    results['models'].append(r)
    log(f"{name:8s} params {r['params_m']:.2f}M  batch {r['batch_size']}  {r['images_per_s']:.1f} img/s  "
        f"{r['step_s'] * 1e3:.0f} ms/step  {r['achieved_gflops_per_s']:.1f} GFLOP/s "
        f"({100 * r['fraction_of_matmul_peak']:.0f}% of matmul peak)  compile {r['compile_s']:.1f}s  "
        f"peak RSS {r['peak_rss_mb']:.0f} MB")
  if sampler_model:
    s = bench_sampler(sampler_model, sampler_samples, sampler_steps, sampler_repeats)
    s['peak_rss_mb'] = bench.peak_rss_mb()
    results['sampler'] = s
  return results


# ---------------------------------------------------------------------------------------------------------
# The train step as the trainer runs it: uint8 batches put on the devices every step, scaled on device.

def cpu_seconds():
  """User + system CPU seconds of this process (all threads)."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def time_train_step(config, num_channels, steps, warmup=1):
  """Compiles and times `steps` train steps of `config` (global batch config.batch_size over all devices).

  Returns step_s, images/s, compile seconds (lower + compile of the step, from the persistent cache when
  it holds the program), XLA's flop count of the compiled step, cores used over the timed steps and the loss.
  """
  import jax
  import numpy as np
  from sid2 import host_input, losses, runtime, schedules, train_step as ts
  from sid2.models import build as model_build
  mesh = ts.make_mesh()
  model = model_build.build_model(config, num_channels)
  schedule = schedules.get_schedule(config.schedule, image_res=config.image_res)
  optimizer, _ = ts.make_optimizer(config.optimizer, config.total_steps)
  step_cfg = ts.StepConfig(ema_decay=config.ema_decay, num_classes=config.model.get('num_classes', 0),
                           cond_drop_prob=config.cond_drop_prob, low_discrepancy=config.low_discrepancy)
  step = ts.jit_train_step(host_input.scale_images_on_device(ts.make_train_step(
      model_build.make_apply_fn(model), schedule, losses.get_loss(config.loss_type, schedule),
      config.parametrization, optimizer, step_cfg)), mesh)
  init = lambda r: ts.create_train_state(model_build.init_params(model, config, num_channels, r), optimizer, r)
  state = jax.jit(init, out_shardings=ts.replicated(mesh))(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  res, b = config.image_res, config.batch_size
  host = [dict(image=rng.integers(0, 256, (b, res, res, num_channels)).astype(np.uint8),
               label=rng.integers(0, max(config.model.get('num_classes', 0), 1), (b,)).astype(np.int32))
          for _ in range(2)]
  batch = ts.global_batch(host[0], mesh)
  before = runtime.compile_stats()
  t = time.perf_counter()
  compiled = step.lower(state, batch, None).compile()
  compile_s = time.perf_counter() - t
  after = runtime.compile_stats()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float((cost or {}).get('flops', float('nan')))
  for i in range(warmup):
    state, m = compiled(state, ts.global_batch(host[i % 2], mesh), None)
  jax.block_until_ready(m)
  t, c = time.perf_counter(), cpu_seconds()
  for i in range(steps):
    state, m = compiled(state, ts.global_batch(host[i % 2], mesh), None)
  jax.block_until_ready(m)
  wall, cpu = time.perf_counter() - t, cpu_seconds() - c
  return dict(batch_size=b, devices=jax.device_count(), step_s=wall / steps, steps_per_s=steps / wall,
              images_per_s=b * steps / wall, compile_s=compile_s,
              cache_hit=after['cache_hits'] > before['cache_hits'], xla_flops_per_step=xla_flops,
              cores_used=cpu / wall, loss=float(m['loss']), steps=steps,
              params_m=sum(x.size for x in jax.tree.leaves(state.params)) / 1e6)


# ---------------------------------------------------------------------------------------------------------
# cpu suite: parent + child processes.

def child_env(environ=None):
  """The environment of a child process: the CPU, and the device count left to --cpu_devices."""
  from sid2 import runtime
  env = dict(os.environ if environ is None else environ)
  for k in ('JAX_NUM_CPU_DEVICES', 'JAX_COMPILATION_CACHE_DIR', runtime.DEVICES_ENV, runtime.CACHE_ENV,
            runtime.FORCED_ENV):
    env.pop(k, None)
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split() if runtime.FORCE_FLAG not in f)
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def run_child(devices, cache_dir, model, steps, json_path):
  import subprocess
  import sys
  cmd = [sys.executable, '-m', 'experiments.benchmark', '--suite=child', f'--cpu_devices={devices}',
         f'--compilation_cache={cache_dir}', f'--models={model}', f'--steps={steps}', f'--json={json_path}']
  proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f'benchmark child ({devices} devices) failed:\n{proc.stderr[-3000:]}')
  with open(json_path) as f:
    return json.load(f)


def child_main(model, steps, json_path):
  import jax
  from sid2 import flops
  config, channels = get_model_config(model)
  if config.batch_size % jax.device_count():
    raise ValueError(f'batch_size {config.batch_size} of {model!r} is not divisible by {jax.device_count()} '
                     'devices; choose --cpu_devices=N accordingly')
  r = time_train_step(config, channels, steps)
  fwd = flops.uvit_gflops(config.model, config.image_res, num_channels=channels)
  r.update(model=model, forward_gflops_per_image=fwd, device_kind=jax.devices()[0].device_kind,
           achieved_gflops_per_s=flops.train_gflops(fwd) * r['images_per_s'])
  with open(json_path, 'w') as f:
    json.dump(r, f, indent=1)


def run_cpu_suite(model, steps, log=print):
  """1 device vs one per core, each cold then cached (module docstring)."""
  import tempfile
  from sid2 import runtime
  cores = runtime.core_count()
  peak = bench.matmul_peak()
  out = dict(machine=bench.machine_info(), cores=cores, matmul_peak_gflops_per_s=peak / 1e9,
             flop_convention=FLOP_CONVENTION, model=model, runs=[])
  log(f'f32 matmul peak {peak / 1e9:.1f} G multiply-adds/s; {cores} cores; load average '
      f'{os.getloadavg()[0]:.1f} (time this on a quiet machine)')
  with tempfile.TemporaryDirectory() as tmp:
    for devices in sorted({1, cores}):
      cache = os.path.join(tmp, f'cache_{devices}')
      cold = run_child(devices, cache, model, steps, os.path.join(tmp, f'{devices}_cold.json'))
      cached = run_child(devices, cache, model, steps, os.path.join(tmp, f'{devices}_cached.json'))
      r = dict(devices=devices, steps_per_s=max(cold['steps_per_s'], cached['steps_per_s']),
               images_per_s=max(cold['images_per_s'], cached['images_per_s']),
               cores_used=cached['cores_used'], compile_cold_s=cold['compile_s'],
               compile_cached_s=cached['compile_s'], cached_run_hit_cache=cached['cache_hit'],
               achieved_gflops_per_s=max(cold['achieved_gflops_per_s'], cached['achieved_gflops_per_s']),
               loss_cold=cold['loss'], loss_cached=cached['loss'], batch_size=cold['batch_size'])
      r['fraction_of_matmul_peak'] = r['achieved_gflops_per_s'] * 1e9 / peak
      out['runs'].append(r)
      log(f'{devices:3d} device(s): {r["steps_per_s"]:.2f} steps/s ({r["images_per_s"]:.0f} images/s, batch '
          f'{r["batch_size"]}), cores used {r["cores_used"]:.2f}/{cores}, compile cold {r["compile_cold_s"]:.1f}s '
          f'cached {r["compile_cached_s"]:.1f}s (hit: {r["cached_run_hit_cache"]}), '
          f'{100 * r["fraction_of_matmul_peak"]:.0f}% of the matmul peak')
  if len(out['runs']) == 2:
    out['speedup'] = out['runs'][1]['steps_per_s'] / out['runs'][0]['steps_per_s']
    log(f'one device per core vs one device: {out["speedup"]:.2f}x steps/s')
  return out


# ---------------------------------------------------------------------------------------------------------
# accelerator suite.

def peak_tflops(device_kind):
  """(published dense bf16 TFLOP/s, matched key) for a jax device_kind, or (None, None) if unknown."""
  kind = str(device_kind).lower()
  for key, value in PEAK_TFLOPS:
    if key in kind:
      return value, key
  return None, None


def smoke_model(config):
  """The config with its U-ViT shrunk to a few channels and one block per level (same levels, patching)."""
  m = config.model
  n = len(m.channels)
  m.channels = tuple(8 * (i + 1) for i in range(n))
  m.enc_blocks, m.dec_blocks = (1,) * n, (1,) * n
  m.transformer_channels, m.transformer_blocks, m.num_heads, m.emb_channels = 32, 1, 2, 32
  return config


def time_sampler(config, num_samples, num_channels=3):
  """Seconds of one call of the config's sampler (after a compiling call) on the first device."""
  import jax
  import jax.numpy as jnp
  from sid2 import sample_fns
  from sid2.models import build as model_build
  model = model_build.build_model(config, num_channels)
  params = jax.jit(lambda r: model_build.init_params(model, config, num_channels, r))(jax.random.PRNGKey(0))
  sample = sample_fns.make_sample_fn(model, config, num_samples, num_channels)
  labels = jnp.arange(num_samples, dtype=jnp.int32) % max(config.model.get('num_classes', 0), 1)
  args = sample_fns.guidance_args(config)
  sample(params, jax.random.PRNGKey(1), labels, *args).block_until_ready()
  t = time.perf_counter()
  sample(params, jax.random.PRNGKey(2), labels, *args).block_until_ready()
  return time.perf_counter() - t


def _is_oom(e):
  return 'RESOURCE_EXHAUSTED' in str(e) or 'out of memory' in str(e).lower()


def run_accelerator_suite(names, per_chip_batch, steps, smoke=False, log=print):
  """The accelerator suite of the module docstring; returns the JSON-able dict."""
  import jax
  from sid2 import flops
  dev = jax.devices()[0]
  peak, key = peak_tflops(dev.device_kind)
  n_dev = jax.device_count()
  out = dict(machine=bench.machine_info(), device_kind=dev.device_kind, chips=n_dev, peak_bf16_tflops=peak,
             peak_source=key or f'unknown chip {dev.device_kind!r}: no published peak in PEAK_TFLOPS',
             smoke=smoke, flop_convention='2 flops per multiply-add (vendor peaks); sid2.flops x 2',
             configs=[])
  log(f'{n_dev} x {dev.device_kind} ({jax.default_backend()}); bf16 peak per chip: '
      f'{f"{peak:.0f} TFLOP/s" if peak else "unknown (MFU not computed)"}' + ('  [SMOKE: numbers mean nothing]'
                                                                              if smoke else ''))
  for name in names:
    config, channels = get_model_config(name)
    if smoke:
      smoke_model(config)
    b = 1 if smoke else per_chip_batch
    while True:
      config.batch_size = b * n_dev
      try:
        r = time_train_step(config, channels, 1 if smoke else steps)
        break
      except Exception as e:  # pylint: disable=broad-except
        if not _is_oom(e) or b == 1:
          raise
        log(f'{name}: per-chip batch {b} does not fit; trying {b // 2}')
        b //= 2
    macs = flops.train_gflops(flops.uvit_gflops(config.model, config.image_res, num_channels=channels))
    tflops = 2 * macs * r['images_per_s'] / n_dev / 1e3
    xla_tflops = r['xla_flops_per_step'] / r['step_s'] / 1e12  # the compiled (per-device) program's flops
    row = dict(config=name, per_chip_batch=b, images_per_s_per_chip=r['images_per_s'] / n_dev,
               step_s=r['step_s'], tflops_per_chip=tflops, xla_tflops_per_chip=xla_tflops,
               mfu=tflops / peak if peak else None, compile_s=r['compile_s'], params_m=r['params_m'],
               dtype=config.model.dtype, train_gmacs_per_image=macs)
    num_samples = 1 if smoke else b
    if smoke:
      config.sampler.num_steps = 2
    t = time_sampler(config, num_samples, channels)
    row.update(sampler=f'{config.sampler.name} {config.sampler.num_steps} steps, guidance '
                       f'{config.sampler.guidance} on {tuple(config.sampler.guidance_interval)}',
               sampler_batch=num_samples, sampler_images_per_s=num_samples / t)
    out['configs'].append(row)
    mfu = f'{100 * row["mfu"]:.1f}%' if row['mfu'] is not None else 'unknown peak'
    log(f'{name:18s} batch/chip {b:3d}  {row["images_per_s_per_chip"]:8.2f} img/s/chip  '
        f'{tflops:7.2f} TFLOP/s/chip (XLA {xla_tflops:7.2f})  MFU {mfu}  compile {r["compile_s"]:.0f}s  '
        f'sampler {row["sampler_images_per_s"]:.3f} img/s ({row["sampler"]})')
  return out


def main(argv, flag_values=None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  for name in ('steps', 'sampler_samples', 'sampler_steps', 'sampler_repeats', 'per_chip_batch'):
    if fv[name].value < 1:
      raise ValueError(f'--{name} must be a positive integer; got {fv[name].value}')
  if fv.suite == 'child':
    child_main(fv.models[0], fv.steps, fv.json)
    return
  if fv.suite == 'cpu':
    results = run_cpu_suite(fv.models[0] if fv['models'].present else 'default', fv.steps)
  elif fv.suite == 'accelerator':
    for name in fv.configs:
      get_model_config(name)  # a bad name fails before any compile
    results = run_accelerator_suite(fv.configs, fv.per_chip_batch, fv.steps, fv.smoke)
  else:
    results = run(fv.models, fv.steps, fv.sampler_model, fv.sampler_samples, fv.sampler_steps,
                  fv.sampler_repeats, fv.batch_size)
  print(json.dumps(results, indent=1))
  stamp = time.strftime('%Y%m%d_%H%M%S')
  path = fv.json or os.path.join('runs', 'benchmarks', f'{fv.suite}_{stamp}.json')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(results, f, indent=1)
  print('wrote', path)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
