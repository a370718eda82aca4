"""Default: class-conditional U-ViT on Fashion-MNIST (32x32x1, Debian's embedded copy) on 2 CPU cores.

SiD2's recipe (`configs/fashion_mnist_sid2.py`) with what the recipe study (issue 18,
`experiments/recipe_study.py`) measured to give better samples per CPU-minute at this resolution.
  python -m experiments.train --config configs/fashion_mnist.py --workdir runs/fmnist
"""
from configs import fashion_mnist_sid2


def get_config():
  c = fashion_mnist_sid2.get_config()
  return c
