"""Device meshes and parameter sharding: data parallelism plus ZeRO-3 style FSDP (the config field `mesh`).

A run without `config.mesh` uses a 1-D mesh named `data`: the batch is split over all devices and every
device holds the whole TrainState (`sid2.train_step.make_mesh`). With

  config.mesh = ConfigDict(dict(data=-1, fsdp=4, rules='fsdp', min_shard_size=2**14))

the devices form a 2-D mesh with axes ('data', 'fsdp') and data * fsdp = number of devices (-1: the rest).
The batch is split over both axes jointly (for activations both are data-parallel). With rules='fsdp' each
large parameter is split over `fsdp` along one dimension (`param_spec`), and so are its EMA copy and its
Adam moments (same shapes, same rule), so every device holds about 1/fsdp of the state. Under `jax.jit` XLA
all-gathers a weight where it is used and reduce-scatters its gradient (ZeRO-3). The update is the same
computation as the replicated one: only where the numbers live changes (floats may differ in summation
order). rules='replicated' keeps every leaf whole (plain data parallelism over the 2-D mesh).

Device order: the mesh is `jax.devices()` reshaped to (data, fsdp), so an fsdp group is `fsdp` consecutive
devices: on one host as long as fsdp <= the devices per host (fast links for the per-layer all-gathers), and
each process's devices hold a contiguous block of the global batch.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sid2 import train_step as ts

MESH_AXES = ('data', 'fsdp')
RULES = ('replicated', 'fsdp')
# Fields of config.mesh and their defaults. min_shard_size counts elements: smaller leaves (biases, norm
# scales, embeddings of the logSNR) stay replicated, their all-gathers would cost more than they save.
MESH_DEFAULTS = dict(data=-1, fsdp=1, rules='fsdp', min_shard_size=2 ** 14)


def _as_dict(mesh_config):
  if hasattr(mesh_config, 'to_dict'):
    return mesh_config.to_dict()
  return dict(mesh_config)


def _is_int(v):
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def resolve_mesh_config(mesh_config, num_devices: int) -> dict:
  """config.mesh with defaults filled in and -1 resolved: {data, fsdp, rules, min_shard_size}.

  Raises ValueError naming the field and the allowed values: unknown fields, sizes that are not -1 or >= 1,
  data * fsdp != num_devices, an unknown rules name, a negative min_shard_size.
  """
  cfg = _as_dict(mesh_config)
  unknown = sorted(set(cfg) - set(MESH_DEFAULTS))
  if unknown:
    raise ValueError(f'unknown config field(s) {", ".join("mesh." + k for k in unknown)}; allowed fields of '
                     f'mesh.: {", ".join(sorted(MESH_DEFAULTS))}')
  f = dict(MESH_DEFAULTS, **cfg)
  for name in MESH_AXES:
    if not _is_int(f[name]) or not (f[name] == -1 or f[name] >= 1):
      raise ValueError(f'config field mesh.{name} must be an int >= 1 or -1 (the remaining devices); '
                       f'got {f[name]!r}')
    f[name] = int(f[name])
  if f['data'] == -1 and f['fsdp'] == -1:
    raise ValueError('config fields mesh.data and mesh.fsdp: at most one may be -1 (the remaining devices); '
                     'got both')
  for name, other in (('data', 'fsdp'), ('fsdp', 'data')):
    if f[name] == -1:
      if num_devices % f[other]:
        raise ValueError(f'config field mesh.{other}={f[other]} must divide the number of devices '
                         f'({num_devices}) when mesh.{name}=-1')
      f[name] = num_devices // f[other]
  if f['data'] * f['fsdp'] != num_devices:
    raise ValueError(f'config fields mesh.data * mesh.fsdp = {f["data"]} * {f["fsdp"]} = '
                     f'{f["data"] * f["fsdp"]} must equal the number of devices ({num_devices}); '
                     'set one of them to -1 for the rest')
  if f['rules'] not in RULES:
    raise ValueError(f'config field mesh.rules must be one of {RULES}; got {f["rules"]!r}')
  if not _is_int(f['min_shard_size']) or f['min_shard_size'] < 0:
    raise ValueError(f'config field mesh.min_shard_size must be an int >= 0 (elements); '
                     f'got {f["min_shard_size"]!r}')
  return f


def make_mesh(mesh_config=None, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """The run's mesh: 2-D ('data', 'fsdp') from config.mesh, or without one the 1-D `data` mesh."""
  devices = jax.devices() if devices is None else list(devices)
  if mesh_config is None:
    return ts.make_mesh(devices)
  f = resolve_mesh_config(mesh_config, len(devices))
  return Mesh(np.asarray(devices).reshape(f['data'], f['fsdp']), MESH_AXES)


def _fsdp_size(mesh) -> int:
  """Size of the mesh's `fsdp` axis (1 when it has none); `mesh` is a Mesh, AbstractMesh or {name: size}."""
  shape = mesh if isinstance(mesh, dict) else dict(mesh.shape)
  return int(shape.get('fsdp', 1))


def fsdp_dim(shape: Sequence[int], fsdp_size: int, min_shard_size: int) -> Optional[int]:
  """The dimension to split a leaf of `shape` over `fsdp_size` devices, or None to keep it whole.

  The largest dimension divisible by fsdp_size (the last of equals); None for fsdp_size 1, for leaves of
  fewer than min_shard_size elements, and when no dimension divides.
  """
  if fsdp_size <= 1 or math.prod(shape) < max(min_shard_size, 1):
    return None
  candidates = [(d, i) for i, d in enumerate(shape) if d > 0 and d % fsdp_size == 0]
  return max(candidates)[1] if candidates else None


def param_spec(shape: Sequence[int], mesh, rules: str = 'fsdp',
               min_shard_size: int = MESH_DEFAULTS['min_shard_size']) -> P:
  """PartitionSpec of one leaf: P() (replicated) or 'fsdp' on the dimension `fsdp_dim` picks."""
  if rules not in RULES:
    raise ValueError(f'mesh.rules must be one of {RULES}; got {rules!r}')
  dim = None if rules == 'replicated' else fsdp_dim(tuple(shape), _fsdp_size(mesh), min_shard_size)
  if dim is None:
    return P()
  return P(*([None] * dim), 'fsdp')


def state_specs(abstract_state, mesh, rules: str = 'fsdp',
                min_shard_size: int = MESH_DEFAULTS['min_shard_size']):
  """A PartitionSpec per leaf of a TrainState (or any pytree of arrays / ShapeDtypeStructs).

  The rule reads only a leaf's shape, so EMA params and the Adam moments mu / nu (same shapes as the params)
  get exactly their parameter's spec, and scalars (step, Adam count, counters) and the RNG key stay
  replicated.
  """
  return jax.tree.map(lambda x: param_spec(np.shape(x), mesh, rules, min_shard_size), abstract_state)


def state_shardings(abstract_state, mesh: Mesh, mesh_config=None):
  """NamedShardings for every leaf of `abstract_state` on `mesh` under config.mesh (None: all replicated)."""
  if mesh_config is None:
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract_state)
  f = resolve_mesh_config(mesh_config, mesh.size)
  specs = state_specs(abstract_state, mesh, f['rules'], f['min_shard_size'])
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def bytes_per_device(tree) -> int:
  """Bytes the first device holds of a pytree of jax.Arrays (what sharding saves, for logs)."""
  device = jax.local_devices()[0]
  total = 0
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      if shard.device == device:
        total += shard.data.size * shard.data.dtype.itemsize
  return total
