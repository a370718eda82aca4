"""SiD2 small, class-conditional ImageNet 128x128 (SiD2 B.6; shared settings and sources in
configs/imagenet_common.py).

Patching 1 (recon): the 128-channel top level runs at 128^2, the transformer on 8x8.

  python -m experiments.train --config configs/imagenet128_small.py --workdir runs/sid2_in128_small
"""
from configs import imagenet_common


def get_config():
  c = imagenet_common.imagenet_config(128, 'SiD2 U-ViT small, class-conditional ImageNet 128x128')
  c.model.patching_size = 1
  return c
