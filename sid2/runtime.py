"""Process set-up shared by the entry points that train or sample: one CPU device per core, a persistent
compilation cache. Each entry point's first line (before anything imports jax):

  from sid2 import runtime; runtime.configure(__name__)  # no-op unless run as a program

1. CPU data parallelism. When the backend will be the CPU (JAX_PLATFORMS is 'cpu', or unset with no GPU/TPU
   plugin installed) and the user has not chosen a device count (XLA_FLAGS without
   --xla_force_host_platform_device_count, JAX_NUM_CPU_DEVICES unset), XLA is told to expose one host device
   per core the process may run on (`os.sched_getaffinity`), so the trainer's data-parallel step keeps every
   core busy (XLA:CPU leaves cores idle on small convolutions and elementwise ops otherwise). The flag has to
   be in XLA_FLAGS before jax creates its CPU backend. Choose the count with `--cpu_devices=N` or
   SID2_CPU_DEVICES=N (1 turns it off; 'auto', the default, is one per core). The global batch must divide
   by the device count; `config_lib.validate_config` names this switch when it does not.
2. Persistent compilation cache (jax's, keyed by the program, the jax/XLA versions and flags; entries are
   written atomically, so concurrent processes share it safely). Default directory
   $XDG_CACHE_HOME/sid2/jax_cache (~/.cache/sid2/jax_cache); `--compilation_cache=DIR` or
   SID2_COMPILATION_CACHE=DIR moves it, 'off' (or 0/none/false) disables it, and a JAX_COMPILATION_CACHE_DIR
   the user set is left alone. Programs that compile in under a second are not cached (jax's default,
   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS changes it).

The two flags are read from (and removed from) sys.argv here, before absl parses it. `compile_stats()` counts
compilations, cache hits and compile seconds in this process (jax monitoring events) for logs and benchmarks.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from typing import Optional

DEVICES_ENV = 'SID2_CPU_DEVICES'
CACHE_ENV = 'SID2_COMPILATION_CACHE'
FORCED_ENV = 'SID2_FORCED_CPU_DEVICES'  # set by `configure` when it chose the device count (for error hints)
DEVICES_FLAG = '--cpu_devices'
CACHE_FLAG = '--compilation_cache'
OFF = ('0', 'off', 'none', 'false', 'no', '')
FORCE_FLAG = '--xla_force_host_platform_device_count'
# Accelerator plugins whose presence means the default backend may not be the CPU (checked without importing).
ACCELERATOR_MODULES = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin', 'jax_rocm7_plugin',
                       'libtpu', 'jax_plugins')

_STATE = {}
_STATS = dict(compile_requests=0, cache_hits=0, backend_compiles=0, backend_compile_s=0.0)
_LOCK = threading.Lock()


def default_cache_dir(environ=None) -> str:
  """$XDG_CACHE_HOME/sid2/jax_cache, or ~/.cache/sid2/jax_cache."""
  environ = os.environ if environ is None else environ
  base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'sid2', 'jax_cache')


def _pop_flag(argv: list, name: str) -> Optional[str]:
  """Removes `name=value` / `name value` from argv (in place) and returns the last value, else None."""
  value, out, i = None, [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(name + '='):
      value = arg[len(name) + 1:]
    elif arg == name and i + 1 < len(argv):
      value, i = argv[i + 1], i + 1
    else:
      out.append(arg)
    i += 1
  argv[:] = out
  return value


def core_count() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def cpu_backend_expected(environ=None) -> bool:
  """True when jax's default backend will be the CPU (decided before jax is imported)."""
  environ = os.environ if environ is None else environ
  platforms = environ.get('JAX_PLATFORMS', '').strip().lower()
  if platforms:
    return all(p.strip() == 'cpu' for p in platforms.split(','))
  return not any(importlib.util.find_spec(m) is not None for m in ACCELERATOR_MODULES)


def parse_device_count(value: str, cores: int) -> int:
  """'auto' -> cores; a positive int -> itself; anything else a ValueError naming the switch."""
  value = str(value).strip().lower()
  if value in ('auto', ''):
    return cores
  try:
    n = int(value)
  except ValueError:
    n = 0
  if n < 1:
    raise ValueError(f"{DEVICES_FLAG} / {DEVICES_ENV} must be 'auto' or a positive integer; got {value!r}")
  return n


def plan_devices(requested: Optional[str], environ=None, cores: Optional[int] = None,
                 jax_imported: bool = False):
  """(device count to force or None, reason): the decision of point 1 of the module docstring."""
  environ = os.environ if environ is None else environ
  cores = core_count() if cores is None else cores
  if requested is None:
    requested = environ.get(DEVICES_ENV, 'auto')
  n = parse_device_count(requested, cores)
  if FORCE_FLAG in environ.get('XLA_FLAGS', '') or environ.get('JAX_NUM_CPU_DEVICES'):
    return None, 'the user set the CPU device count (XLA_FLAGS / JAX_NUM_CPU_DEVICES)'
  if not cpu_backend_expected(environ):
    return None, 'the backend is not the CPU'
  if jax_imported:
    return None, 'jax was imported before sid2.runtime.configure'
  if n <= 1:
    return None, f'one CPU device ({cores} cores, {DEVICES_ENV}/{DEVICES_FLAG}={requested})'
  return n, f'{n} CPU devices ({cores} cores)'


def plan_cache(requested: Optional[str], environ=None):
  """(cache directory or None, reason): point 2 of the module docstring."""
  environ = os.environ if environ is None else environ
  if requested is None:
    requested = environ.get(CACHE_ENV)
  if requested is not None:
    if requested.strip().lower() in OFF:
      return None, 'disabled'
    return os.path.abspath(os.path.expanduser(requested)), 'requested'
  if environ.get('JAX_COMPILATION_CACHE_DIR'):
    return None, 'JAX_COMPILATION_CACHE_DIR set by the user (jax uses it)'
  return default_cache_dir(environ), 'default'


def _count_event(event, **kwargs):
  del kwargs
  with _LOCK:
    if event == '/jax/compilation_cache/compile_requests_use_cache':
      _STATS['compile_requests'] += 1
    elif event == '/jax/compilation_cache/cache_hits':
      _STATS['cache_hits'] += 1


def _count_duration(event, duration, **kwargs):
  del kwargs
  if event == '/jax/core/compile/backend_compile_duration':
    with _LOCK:
      _STATS['backend_compiles'] += 1
      _STATS['backend_compile_s'] += float(duration)


def install_compile_counters():
  """Counts compilations and persistent-cache hits of this process (idempotent)."""
  if _STATE.get('counters'):
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.monitoring.register_event_listener(_count_event)
  jax.monitoring.register_event_duration_secs_listener(_count_duration)
  _STATE['counters'] = True


def compile_stats() -> dict:
  """{compile_requests, cache_hits, backend_compiles, backend_compile_s} since `install_compile_counters`."""
  with _LOCK:
    return dict(_STATS)


def configure(name: str = '__main__', argv: Optional[list] = None, environ=None) -> dict:
  """Sets up CPU devices and the compilation cache for a program (see the module docstring).

  name: the caller's __name__; anything but '__main__' is a no-op (importing an entry point from tests or
  notebooks changes nothing). argv: default sys.argv (the two flags are removed from it). Returns
  {'cpu_devices', 'devices_reason', 'cache_dir', 'cache_reason'}; also kept for `summary()`.
  """
  if name != '__main__':
    return {}
  if 'devices_reason' in _STATE:  # configured already (e.g. a program that runs another's main)
    return summary()
  argv = sys.argv if argv is None else argv
  environ = os.environ if environ is None else environ
  devices_req, cache_req = _pop_flag(argv, DEVICES_FLAG), _pop_flag(argv, CACHE_FLAG)
  jax_imported = 'jax' in sys.modules
  n, devices_reason = plan_devices(devices_req, environ, jax_imported=jax_imported)
  if n is not None:
    environ['XLA_FLAGS'] = f'{environ.get("XLA_FLAGS", "")} {FORCE_FLAG}={n}'.strip()
    environ[FORCED_ENV] = str(n)
  cache_dir, cache_reason = plan_cache(cache_req, environ)
  import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  if cache_dir is not None:
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update('jax_compilation_cache_dir', cache_dir)
  elif cache_reason == 'disabled':
    jax.config.update('jax_enable_compilation_cache', False)
  install_compile_counters()
  _STATE.update(cpu_devices=n, devices_reason=devices_reason, cache_dir=cache_dir, cache_reason=cache_reason)
  logging.info('sid2.runtime: %s; compilation cache: %s (%s)', devices_reason, cache_dir, cache_reason)
  return summary()


def summary() -> dict:
  """What `configure` decided in this process ({} if it was not called as a program)."""
  return {k: _STATE[k] for k in ('cpu_devices', 'devices_reason', 'cache_dir', 'cache_reason') if k in _STATE}


def device_count_hint(num_devices: int) -> str:
  """A sentence for batch-divisibility errors when `configure` chose the device count, else ''."""
  if os.environ.get(FORCED_ENV) and int(os.environ[FORCED_ENV]) == num_devices:
    return (f' ({num_devices} CPU devices, one per core, chosen by sid2.runtime: pick a count that divides '
            f'the batch with {DEVICES_FLAG}=N or {DEVICES_ENV}=N, 1 for a single device)')
  return ''
