"""SiD2 flop heavy, class-conditional ImageNet 512x512 (SiD2 B.6; shared settings and sources in
configs/imagenet_common.py).

Patching 2 (recon, see imagenet_common): the same parameters as the small model with every level at
twice the resolution (top level at 256^2, transformer on 16x16); 654 GFLOPs forward against
Table 5's 653.

  python -m experiments.train --config configs/imagenet512_flop_heavy.py --workdir runs/sid2_in512_flop_heavy
"""
from configs import imagenet_common


def get_config():
  c = imagenet_common.imagenet_config(512, 'SiD2 U-ViT flop heavy, class-conditional ImageNet 512x512')
  c.model.patching_size = 2
  return c
