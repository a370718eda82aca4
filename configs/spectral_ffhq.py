"""Spectral Diffusion on FFHQ / CelebA-HQ / LSUN-Bedroom 256x256 in f=4 VQ latents 64x64x3 (supplement
Table 2 for the optimisation, Table 4 for the WG-UNet; the three datasets differ only in the data).

  python -m experiments.train --config configs/spectral_ffhq.py[:<options>] --workdir runs/sd_ffhq
options (comma-separated): a variant -- student (default), lite, teacher, distill (spectral/configs.py) --
and a dataset -- ffhq (default), celebahq, lsun_bedroom. The latents are read from
`<dataset.data_dir>/<dataset>_256_vq_f4/train.npy` (spectral/latents.py); set --config.dataset.data_dir.

Readings (SPEC §13): skips pair Down_k's last feature with Up_k's WG-Up output; Table 4 is consistent as
printed (head width 32: 128/4, 192/6, 256/8). Teacher (ours): LDM-4 FFHQ's widths 224 x (1, 2, 3, 4), 2
ResBlocks per stage, attention at 32, 16, 8 and mid.
"""
from spectral import configs as sc

DATASETS = ('ffhq', 'celebahq', 'lsun_bedroom')


def get_config(arg=''):
  variant, rest = sc.parse_args(arg, DATASETS)
  if len(rest) > 1:
    raise ValueError(f'choose one dataset of {DATASETS}; got {sorted(rest)}')
  dataset = rest.pop() if rest else 'ffhq'
  student = sc.unet_config(
      'wg_unet', channels=(64, 128, 192, 256), blocks=(3, 3, 3, 3), heads=(0, 4, 6, 8), mid_heads=8,
      time_embedding='ddpm_timestep')
  teacher = sc.unet_config(
      'unet', channels=(224, 448, 672, 896), blocks=(2, 2, 2, 2), heads=(0, 14, 21, 28), mid_heads=28,
      time_embedding='ddpm_timestep')
  c = sc.table_config(
      description=f'Spectral Diffusion, {dataset} 256^2 (VQ-f4 latents 64x64x3), Tables 2 and 4',
      latent_res=64, latent_channels=3, dataset=f'{dataset}_256_vq_f4', batch_size=32 * 8,
      total_steps=150_000, learning_rate=5.12e-4, model=student)
  return sc.apply_variant(c, variant, teacher)
