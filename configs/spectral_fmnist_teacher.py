"""Teacher for the Fashion-MNIST distillation: a wider plain UNet (widths 20/32/48 against the
slim student's 16/32/32: 1.9x its multiply-adds, 2x its parameters, still fast on 2 CPU cores) on
Fashion-MNIST 32x32x1 with the same objective, schedule and conditioning as the student.

  python -m experiments.train --config configs/spectral_fmnist_teacher.py --workdir runs/sd_fmnist_teacher
"""
from configs import spectral_fmnist_student as student
from spectral import configs as sc

TEACHER = dict(student.SLIM, channels=(20, 32, 48), heads=(0, 0, 2), mid_heads=2)


def get_config():
  return student.fmnist_config('Teacher (wider plain UNet), Fashion-MNIST 32x32',
                               sc.unet_config('unet', **TEACHER))
