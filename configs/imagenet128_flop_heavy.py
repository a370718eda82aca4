"""SiD2 flop heavy, class-conditional ImageNet 128x128 (SiD2 B.6; shared settings and sources in
configs/imagenet_common.py).

Patching 1 with the top level (128 channels) removed (paper, B.6: "for 128^2 resolutions the
top-level layer (128 channels) is entirely removed"): the 256-channel level runs at 128^2 and the
transformer on 16x16, as in the 256^2 and 512^2 flop-heavy models.

  python -m experiments.train --config configs/imagenet128_flop_heavy.py --workdir runs/sid2_in128_flop_heavy
"""
from configs import imagenet_common


def get_config():
  c = imagenet_common.imagenet_config(128, 'SiD2 U-ViT flop heavy, class-conditional ImageNet 128x128')
  c.model.patching_size = 1
  c.model.drop_top_level = True
  return c
