"""Cost of one denoising step of the Spectral Diffusion UNets: parameters, MACs and throughput (the library of
`python -m experiments.spectral_cost`; `experiments.spectral_study` counts its arms' MACs with `macs_per_step`).

For a config (a module in configs/, optionally ':<arg>' for its get_config) `measure` builds the model twice,
with downsample='wavelet' (WG-Down / WG-Up) and 'plain' (strided conv / nearest + conv), everything else
equal. MACs per single denoising step of one example (supplement §4.1: "inference MACs in the diffusion
stage for a single time-step", decoder excluded) are XLA's count for the compiled forward pass,
`jax.jit(f).lower(...).compile().cost_analysis()['flops'] / 2` (JAX 0.10 returns a dict; multiply-add = 2
flops), with parameters as `jax.eval_shape` shapes (nothing allocated). XLA counts the taps of a 'SAME'
convolution that fall on the image only (not the zero padding) and counts element-wise work (norms,
activations, softmax) too; PyTorch counters such as the paper's flops-counter.pytorch count convolutions
with their padding and skip most element-wise work, so the numbers agree to a few percent, not exactly.
Throughput (supplement §4.1: denoising time steps run per second) is measured after a warm-up call, at
batch 1 and at a larger batch, on whatever backend JAX uses: steps/s = calls per second (x batch for
example-steps per second at the larger batch).
"""
from __future__ import annotations

import importlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from sid2 import models
from sid2 import plugins

TEXT_TOKENS = 77  # CLIP ViT-L/14 sequence length (Table 7).


def load_config(spec):
  """'name' or 'name:arg' -> the ConfigDict of configs/<name>.py."""
  name, _, arg = spec.partition(':')
  module = importlib.import_module(f'configs.{name}')
  return module.get_config(arg) if arg else module.get_config()


def with_downsample(model_config, downsample):
  """The same UNet sub-config with `downsample` ('wavelet' | 'plain'); projections for distillation off."""
  cfg = model_config.copy_and_resolve_references()
  cfg.name = 'wg_unet' if downsample == 'wavelet' else 'unet'
  cfg.downsample = downsample
  cfg.proj_taps = ()
  cfg.proj_channels = ()
  return cfg


def example_inputs(model, batch, res, channels):
  """Abstract (z, logsnr, labels) for one call of `model` on `batch` examples."""
  z = jax.ShapeDtypeStruct((batch, res, res, channels), jnp.float32)
  logsnr = jax.ShapeDtypeStruct((batch,), jnp.float32)
  f = model.fields()
  labels = None
  if f['conditioning'] == 'class':
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  elif f['conditioning'] == 'text':
    labels = jax.ShapeDtypeStruct((batch, TEXT_TOKENS, f['context_dim']), jnp.float32)
  return z, logsnr, labels


def forward_fn(model):
  def forward(params, z, logsnr, labels):
    return model.apply({'params': params}, z, logsnr, labels, train=False)
  return forward


def flops_of(compiled):
  """Total flops of a compiled computation from XLA's cost analysis (a dict, or a list of dicts)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    return float(sum(a.get('flops', 0.0) for a in analysis))
  return float(analysis['flops'])


def abstract_params(model, inputs):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)['params']


def macs_per_step(model, res, channels):
  """(parameter count, MACs of one forward pass of one example) with abstract parameters."""
  inputs = example_inputs(model, 1, res, channels)
  params = abstract_params(model, inputs)
  compiled = jax.jit(forward_fn(model)).lower(params, *inputs).compile()
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  return num_params, flops_of(compiled) / 2


def concrete(abstract, seed=0):
  """Arrays of the given shapes (small random values; integer leaves zero)."""
  rng = np.random.default_rng(seed)
  def fill(s):
    if jnp.issubdtype(s.dtype, jnp.integer):
      return jnp.zeros(s.shape, s.dtype)
    return jnp.asarray(0.02 * rng.standard_normal(s.shape), s.dtype)
  return jax.tree.map(fill, abstract)


def throughput(model, res, channels, batch, min_time=1.0, min_calls=3):
  """Denoising steps per second (calls of the jitted forward on `batch` examples), after a warm-up call."""
  inputs = example_inputs(model, batch, res, channels)
  params = concrete(abstract_params(model, inputs))
  args = [concrete(x) if x is not None else None for x in inputs]
  fn = jax.jit(forward_fn(model))
  jax.block_until_ready(fn(params, *args))
  calls, start = 0, time.perf_counter()
  while calls < min_calls or time.perf_counter() - start < min_time:
    jax.block_until_ready(fn(params, *args))
    calls += 1
  return calls / (time.perf_counter() - start)


def measure(spec, *, batch, skip_throughput, max_throughput_gmacs, min_time=2.0):
  """One row: for 'wavelet' and 'plain', params, GMACs and (optionally) throughput at batch 1 / `batch`."""
  config = load_config(spec)
  plugins.load_plugins(config)  # config.plugins = ('spectral',): the UNets
  res, channels = config.image_res, config.get('num_channels', 1)
  row = dict(config=spec, image_res=res, num_channels=channels, batch=batch)
  for downsample in ('wavelet', 'plain'):
    model = models.get_model(with_downsample(config.model, downsample), image_res=res,
                             num_channels=channels)
    num_params, macs = macs_per_step(model, res, channels)
    entry = dict(params_m=num_params / 1e6, gmacs=macs / 1e9)
    if not skip_throughput and macs / 1e9 <= max_throughput_gmacs:
      entry['steps_per_s_b1'] = throughput(model, res, channels, 1, min_time)
      entry[f'steps_per_s_b{batch}'] = throughput(model, res, channels, batch, min_time)
    row[downsample] = entry
  return row


def format_table(rows, batch):
  """A plain-text table of the rows."""
  head = (f'{"config":34s} {"latent":>9s} | {"params M":>17s} | {"GMACs/step":>17s} | '
          f'{"steps/s b=1":>17s} | {f"steps/s b={batch}":>17s}')
  sub = f'{"":34s} {"":>9s} | ' + ' | '.join(f'{"wavelet":>8s} {"plain":>8s}' for _ in range(4))
  lines = [head, sub, '-' * len(head)]
  fmt = lambda v, spec: format(v, spec) if v is not None else '       -'
  for r in rows:
    w, p = r['wavelet'], r['plain']
    cells = []
    for key, spec in (('params_m', '8.3f'), ('gmacs', '8.3f'), ('steps_per_s_b1', '8.2f'),
                      (f'steps_per_s_b{batch}', '8.2f')):
      cells.append(f'{fmt(w.get(key), spec)} {fmt(p.get(key), spec)}')
    latent = f'{r["image_res"]}x{r["image_res"]}x{r["num_channels"]}'
    lines.append(f'{r["config"]:34s} {latent:>9s} | ' + ' | '.join(cells))
  return '\n'.join(lines)
