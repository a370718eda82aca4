"""Test-wide settings: CPU only, a quick XLA compile mode and a persistent compilation cache.

The tests' models are tiny, so XLA's compile time dominates; optimisation level 0 cuts it about 3x and the
cache lets tests (and their subprocesses) share identical programs. Set before JAX is imported.
"""
import os
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'sid2-test-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
