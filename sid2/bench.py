"""Measuring helpers shared by the benchmark commands (experiments.benchmark, .benchmark_sampler,
.benchmark_input): the machine's description, its float32 matmul peak, peak RSS, interleaved timing, and the
sampler-vs-network measurement (SPEC §6, §7).

`benchmark_sampler(config, N, S, channels, repeats)` times, after one warm-up (compilation) run each, in
`repeats` interleaved rounds (medians; fractions are medians of the per-round ratios), with
block_until_ready, the config's model with random parameters (throughput does not depend on their values):
  sampler      the trainer's jitted sampler (`sid2.restore.sample_fn` = `sample_fns.make_sample_fn`): N images,
               S steps, with the config's guidance (inside the guidance interval a step runs the network
               once on the batch [z; z] of 2N with [labels; null labels], outside once on N)
  network      the same network calls without the sampler: one jitted lax.scan per batch size that applies
               `model.apply` at the sampler's logSNRs as many times as the sampler does, each call's input
               being the previous call's output (so XLA can hoist nothing out of the loop that the sampler
               could not; with a constant logSNR it would fold the logSNR embedding away)
  dispatched   the same calls as separately dispatched jitted calls on identical inputs (adds per-call
               dispatch; closer to a Python-loop sampler)
  overhead     the sampler with a near-free network (x_hat = 0.5 z): the step arithmetic, the per-step
               noise draws and the loop (no guidance)
network_fraction = network / sampler (target >= 0.95); model evaluations/s counts one per example per
network pass (so a guided step counts 2N).

jax and the model code are imported inside the functions, so a command can import this module before
`sid2.runtime.configure` has set up the devices.
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import numpy as np


def peak_rss_mb() -> float:
  """This process's resident-set high-water mark in MB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_info() -> dict:
  """Host and accelerator description for a benchmark's JSON."""
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return dict(hostname=platform.node(), platform=platform.platform(), python=platform.python_version(),
              cpu_count=os.cpu_count(), load_average=list(os.getloadavg()), jax_version=jax.__version__,
              backend=jax.default_backend(), device=str(dev), device_kind=dev.device_kind,
              device_count=jax.device_count(), process_count=jax.process_count(),
              xla_flags=os.environ.get('XLA_FLAGS', ''))


def matmul_peak(sizes=(1024, 2048, 3072), repeats=5) -> float:
  """Best float32 matmul rate in multiply-adds/s over a few sizes (the machine's practical peak)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
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


def time_interleaved(fns: dict, repeats: int) -> dict:
  """{name: [wall seconds per round]}: one untimed warm-up call each, then `repeats` rounds that run every
  fn once in turn (each fn must block). Interleaving keeps slow drifts of a shared machine out of the
  ratios, which are taken per round."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return times


def guided_mask(config, num_steps):
  """[S] bools: which sampler steps evaluate the network on [z; z] (guidance on and lambda_t inside the
  interval; SPEC §7)."""
  from sid2 import samplers, sampling, schedules  # pylint: disable=g-import-not-at-top
  s = sampling.SamplerSettings.from_config(config.sampler)
  schedule = schedules.get_schedule(config.schedule, image_res=config.image_res)
  logsnr_t = np.asarray(samplers.logsnr_grid(schedule, num_steps))[:-1]
  if not config.model.get('num_classes', 0) or s.guidance == 0:
    return np.zeros(num_steps, bool)
  lo, hi = s.interval_bounds()
  return (logsnr_t > lo) & (logsnr_t < hi)


def benchmark_sampler(config, num_samples: int, num_steps: int, num_channels: int, repeats: int = 3,
                      log=print) -> dict:
  """Runs the four measurements of the module docstring; returns a dict of results."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sid2 import restore, samplers, sample_fns, sampling, schedules  # pylint: disable=g-import-not-at-top
  config = restore.override_sampler(config, num_steps=num_steps)
  n, res = num_samples, config.image_res
  num_classes = int(config.model.get('num_classes', 0) or 0)
  from sid2.models import build as model_build  # pylint: disable=g-import-not-at-top
  model = model_build.build_model(config, num_channels)
  params = jax.jit(lambda r: model_build.init_params(model, config, num_channels, r))(jax.random.PRNGKey(0))
  num_params = sum(x.size for x in jax.tree.leaves(params))
  n_guided = int(np.sum(guided_mask(config, num_steps)))
  n_plain = num_steps - n_guided
  evals = n_guided * 2 * n + n_plain * n

  # 1. The full sampler.
  sample = restore.sample_fn(config, n, num_channels)
  labels = jnp.arange(n, dtype=jnp.int32) % max(num_classes, 1)
  g_args = sample_fns.guidance_args(config)
  rng = jax.random.PRNGKey(1)
  run_sampler = lambda: sample(params, rng, labels, *g_args).block_until_ready()

  # 2. The same network calls in jitted scans (one per batch size), chained through their outputs.
  def apply(p, z, logsnr, lab):
    return model.apply({'params': p}, z, logsnr, lab if num_classes else None, train=False)

  schedule = schedules.get_schedule(config.schedule, image_res=res)
  grid = samplers.logsnr_grid(schedule, num_steps)[:-1]  # lambda_t of each step, as in the sampler

  def net_scan(p, z, lab, logsnrs):
    def body(z, logsnr):
      return apply(p, z, jnp.full((z.shape[0],), logsnr), lab).astype(z.dtype), None
    return jax.lax.scan(body, z, logsnrs)[0]

  net_scan = jax.jit(net_scan)
  z1 = jax.random.normal(jax.random.PRNGKey(2), (n, res, res, num_channels), jnp.float32)
  z2 = jnp.concatenate([z1, z1])
  lab2 = jnp.concatenate([labels, jnp.full_like(labels, num_classes)])
  guided = np.asarray(guided_mask(config, num_steps))
  calls = [(z2, lab2, grid[guided]), (z1, labels, grid[~guided])]
  calls = [c for c in calls if c[2].shape[0] > 0]

  def run_network():
    outs = [net_scan(params, z, lab, logsnrs) for z, lab, logsnrs in calls]
    jax.block_until_ready(outs)

  # 3. The same calls dispatched one by one on identical inputs.
  apply_jit = jax.jit(apply)
  logsnr1 = jnp.zeros((n,), jnp.float32)
  logsnr2 = jnp.zeros((2 * n,), jnp.float32)

  def run_dispatched():
    outs = [apply_jit(params, z2, logsnr2, lab2) for _ in range(n_guided)]
    outs += [apply_jit(params, z1, logsnr1, labels) for _ in range(n_plain)]
    jax.block_until_ready(outs)

  # 4. The sampler around a near-free network: what the sampler itself costs.
  s = sampling.SamplerSettings.from_config(config.sampler)  # num_steps already overridden above
  loop = samplers.sample_loop_fn((n, res, res, num_channels), schedule, **s.loop_kwargs())
  cheap = jax.jit(lambda r: loop(lambda z, logsnr: 0.5 * z, r))
  runs = time_interleaved(dict(sampler=run_sampler, network=run_network, dispatched=run_dispatched,
                               overhead=lambda: cheap(rng).block_until_ready()), repeats)
  med = {k: statistics.median(v) for k, v in runs.items()}
  ratio = lambda k: statistics.median([a / b for a, b in zip(runs[k], runs['sampler'])])
  t_sampler, t_network, t_dispatched, t_overhead = (med[k] for k in ('sampler', 'network', 'dispatched',
                                                                      'overhead'))

  result = dict(
      device=str(jax.devices()[0].device_kind), platform=jax.default_backend(), jax_version=jax.__version__,
      model=config.model.name, num_params=int(num_params), image_shape=[res, res, num_channels],
      sampler=s.name, num_samples=n, num_steps=num_steps, guidance=float(g_args[0]),
      guidance_interval=[float(g_args[1]), float(g_args[2])], guided_steps=n_guided,
      model_evaluations=evals, repeats=repeats,
      sampler_seconds=t_sampler, network_seconds=t_network, dispatched_network_seconds=t_dispatched,
      sampler_only_seconds=t_overhead, runs=runs,
      model_evaluations_per_second=evals / t_sampler, images_per_second=n / t_sampler,
      steps_per_second=num_steps / t_sampler, network_fraction=ratio('network'),
      dispatched_network_fraction=ratio('dispatched'), sampler_only_fraction=ratio('overhead'))
  log(f'{result["model"]} ({num_params / 1e6:.2f}M params) on {result["device"]} ({result["platform"]}): '
      f'{n} images x {num_steps} {s.name} steps, {n_guided} guided (batch {2 * n}), {n_plain} unguided')
  log(f'  sampler            {t_sampler:8.3f} s   {evals / t_sampler:10.1f} model evals/s   '
      f'{n / t_sampler:.2f} images/s')
  log(f'  network (scan)     {t_network:8.3f} s   network fraction {ratio("network"):6.1%}')
  log(f'  network (dispatch) {t_dispatched:8.3f} s   fraction {ratio("dispatched"):6.1%}')
  log(f'  sampler, free net  {t_overhead:8.3f} s   fraction {ratio("overhead"):6.1%}')
  return result
