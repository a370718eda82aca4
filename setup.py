"""Pixel-space diffusion in JAX/Flax: SiD2 (Simpler Diffusion) and Spectral Diffusion."""
import setuptools

setuptools.setup(
    name='sid2-spectral',
    version='0.1.0',
    description='SiD2 and Spectral Diffusion in JAX/Flax',
    packages=setuptools.find_packages(include=['sid2', 'sid2.*', 'spectral', 'spectral.*', 'configs',
                                               'experiments']),
    python_requires='>=3.10',
    install_requires=[
        'jax', 'flax', 'optax', 'orbax-checkpoint', 'ml-collections', 'clu', 'tensorflow-datasets',
        'safetensors', 'numpy', 'scipy', 'matplotlib', 'absl-py',
    ],
)
