"""The slim WG-UNet student with spectrum-aware distillation (SPEC §13) from the Fashion-MNIST teacher:
L = L_diffusion + 0.1 L_spatial + 0.1 L_freq at `output` and `feat-up1` (Π: 16 -> 20 channels there).

  python -m experiments.train --config configs/spectral_fmnist_teacher.py --workdir runs/sd_fmnist_teacher
  python -m experiments.train --config configs/spectral_fmnist_distill.py --workdir runs/sd_fmnist_distill \
      --config.teacher_workdir=runs/sd_fmnist_teacher

`--config=configs/spectral_fmnist_distill.py:positive` is the positive control (issue 12): distil the
teacher's `output` only, spatial term only, λs = 1, λf = 0 (plain output matching, which must beat no
distillation if the teacher is better than the student; if it does not, the pipeline is at fault, not the
spectral terms). `:raw` keeps the first reading's unnormalised frequency weights (distill.weight_norm='none').
Pin the teacher with --config.distill.teacher_step=<N> --config.distill.teacher_sha256=<sha>.
"""
from configs import spectral_fmnist_student as student
from configs import spectral_fmnist_teacher as teacher
from spectral import configs as sc

OPTIONS = ('positive', 'raw')


def get_config(arg=''):
  options = {t.strip() for t in (arg or '').split(',') if t.strip()}
  unknown = sorted(options - set(OPTIONS))
  if unknown:
    raise ValueError(f'unknown config option(s) {unknown}; allowed: {OPTIONS}')
  c = student.fmnist_config('Spectral Diffusion student (slim WG-UNet) distilled from the plain teacher, '
                            'Fashion-MNIST 32x32',
                            sc.unet_config('wg_unet', proj_taps=('feat-up1',),
                                           proj_channels=(teacher.TEACHER['channels'][0],), **student.SLIM))
  c.distill = sc.distill_config()
  if 'raw' in options:
    c.distill.weight_norm = 'none'
  if 'positive' in options:
    c.distill = sc.distill_config(**POSITIVE_CONTROL)
    c.description += ' -- positive control (output only, spatial only, λs = 1)'
  c.teacher_workdir = 'runs/sd_fmnist_teacher'
  return c


POSITIVE_CONTROL = dict(taps=('output',), lambda_spatial=1.0, lambda_freq=0.0)
