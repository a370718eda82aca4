"""Default: class-conditional U-ViT on Fashion-MNIST (32x32x1, Debian's embedded copy) on 2 CPU cores.

SiD2's recipe (`configs/fashion_mnist_sid2.py`: sigmoid loss with the resolution-shifted bias, v-prediction,
cosine schedule at 32x32) in the U-ViT shape that the recipe study (issue 18, `experiments/recipe_study.py`,
README "Recipe study") measured to give far better samples per CPU-second at this resolution: three levels
32/64/128 and six transformer blocks of width 128 (2.7M parameters) instead of 48/96 with two of width 192;
and classifier-free guidance only on the logSNR interval (-3, 5) (SiD2's interval for its 512x512 runs), which
the same study's conditional evaluation measured better than guidance on every step (FD@1000 5.80 +- 0.41 vs
9.16 +- 0.43 over 3 sampling seeds, DDPM 128 steps, w = 1).
  python -m experiments.train --config configs/fashion_mnist.py --workdir runs/fmnist
"""
from configs import fashion_mnist_sid2


def get_config():
  c = fashion_mnist_sid2.get_config()
  c.description = 'U-ViT 32/64/128 + 6x128 transformer, Fashion-MNIST 32x32, sigmoid loss, class-conditional'
  c.model.channels = (32, 64, 128)
  c.model.enc_blocks = (1, 1, 1)
  c.model.dec_blocks = (1, 1, 1)
  c.model.transformer_channels = 128
  c.model.transformer_blocks = 6
  c.model.num_heads = 4
  c.sampler.guidance_interval = (-3.0, 5.0)
  return c
