"""Pixel-space diffusion in JAX/Flax: SiD2 (Simpler Diffusion) and Spectral Diffusion.

Extras (README "GPU and TPU"): `.[cuda]` / `.[tpu]` install jax's CUDA 12 / TPU plugins at the jax version
pinned in requirements.txt; `.[export]` is what loading an export directory needs on a machine without this
project (sid2/export.py's RUNTIME_REQUIREMENTS: jax's deserializer imports flatbuffers, which jax does not
install).
"""
import os
import re

import setuptools


def _pinned_jax():
  """The jax version pinned in requirements.txt (the accelerator plugins must match it)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'requirements.txt')
  with open(path) as f:
    match = re.search(r'^jax==([\w.]+)\s*$', f.read(), re.M)
  if not match:
    raise ValueError(f'{path}: no "jax==<version>" line')
  return match.group(1)


JAX_VERSION = _pinned_jax()

setuptools.setup(
    name='sid2-spectral',
    version='0.1.0',
    description='SiD2 and Spectral Diffusion in JAX/Flax',
    packages=setuptools.find_packages(include=['sid2', 'sid2.*', 'spectral', 'spectral.*', 'configs',
                                               'experiments']),
    python_requires='>=3.10',
    install_requires=[
        'jax', 'flax', 'optax', 'orbax-checkpoint', 'ml-collections', 'clu', 'tensorflow-datasets',
        'safetensors', 'numpy', 'scipy', 'matplotlib', 'absl-py', 'flatbuffers',
    ],
    extras_require={
        'cuda': [f'jax[cuda12]=={JAX_VERSION}'],
        'tpu': [f'jax[tpu]=={JAX_VERSION}'],
        'export': ['jax', 'jaxlib', 'numpy', 'safetensors', 'ml-collections', 'flatbuffers'],
    },
)
