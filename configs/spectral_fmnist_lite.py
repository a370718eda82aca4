"""Lite-LDM-style baseline on Fashion-MNIST 32x32x1: the slim student's widths with plain down/up-sampling
(3x3 stride-2 conv / nearest + 3x3 conv), no gates, no distillation (SPEC §13).

  python -m experiments.train --config configs/spectral_fmnist_lite.py --workdir runs/sd_fmnist_lite
"""
from configs import spectral_fmnist_student as student
from spectral import configs as sc


def get_config():
  return student.fmnist_config('Lite-LDM baseline (slim plain UNet), Fashion-MNIST 32x32',
                               sc.unet_config('unet', **student.SLIM))
