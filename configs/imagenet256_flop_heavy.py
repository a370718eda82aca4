"""SiD2 flop heavy, class-conditional ImageNet 256x256 (SiD2 B.6; shared settings and sources in
configs/imagenet_common.py).

Patching 1 (paper, B.6): the same parameters as the small model with every level at twice the
resolution (top level at 256^2, transformer on 16x16).

  python -m experiments.train --config configs/imagenet256_flop_heavy.py --workdir runs/sid2_in256_flop_heavy
"""
from configs import imagenet_common


def get_config():
  c = imagenet_common.imagenet_config(256, 'SiD2 U-ViT flop heavy, class-conditional ImageNet 256x256')
  c.model.patching_size = 1
  return c
