"""The slim WG-UNet student with spectrum-aware distillation (SPEC §13) from the Fashion-MNIST teacher:
L = L_diffusion + 0.1 L_spatial + 0.1 L_freq at `output` and `feat-up1` (Π: 16 -> 20 channels there).

  python -m experiments.train --config configs/spectral_fmnist_teacher.py --workdir runs/sd_fmnist_teacher
  python -m experiments.train --config configs/spectral_fmnist_distill.py --workdir runs/sd_fmnist_distill \
      --config.teacher_workdir=runs/sd_fmnist_teacher
"""
from configs import spectral_fmnist_student as student
from configs import spectral_fmnist_teacher as teacher
from spectral import configs as sc


def get_config():
  c = student.fmnist_config('Spectral Diffusion student (slim WG-UNet) distilled from the plain teacher, '
                            'Fashion-MNIST 32x32',
                            sc.unet_config('wg_unet', proj_taps=('feat-up1',),
                                           proj_channels=(teacher.TEACHER['channels'][0],), **student.SLIM))
  c.distill = sc.distill_config()
  c.teacher_workdir = 'runs/sd_fmnist_teacher'
  return c
