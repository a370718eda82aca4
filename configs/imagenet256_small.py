"""SiD2 small, class-conditional ImageNet 256x256 (SiD2 B.6; shared settings and sources in
configs/imagenet_common.py).

Patching 2 (recon): the 128-channel top level runs at 128^2, the transformer on 8x8.

  python -m experiments.train --config configs/imagenet256_small.py --workdir runs/sid2_in256_small
"""
from configs import imagenet_common


def get_config():
  c = imagenet_common.imagenet_config(256, 'SiD2 U-ViT small, class-conditional ImageNet 256x256')
  c.model.patching_size = 2
  return c
