"""Spectral Diffusion on LSUN-Church 256x256 in f=8 KL latents 32x32x4 (supplement Table 2 for the
optimisation, Table 5 for the WG-UNet).

  python -m experiments.train --config configs/spectral_lsun_church.py[:<variant>] --workdir runs/sd_church
variant: student (default), lite, teacher, distill (spectral/configs.py). Latents from
`<dataset.data_dir>/lsun_church_256_kl_f8/train.npy` (with latents.json holding LDM's scale_factor 0.18215).

Readings (SPEC §13): Table 5's Down1 "head = 32" is read as 2 heads (64 channels, head width 32 as
everywhere else, and as its mirror Up1). Five stages take 32x32 down to a 1x1 mid stage; Down5/Up5 have no
attention, as printed. Teacher (ours): LDM-8 LSUN-Church's widths 192 x (1, 2, 2, 4, 4), 2 ResBlocks per
stage, attention at 32, 16, 8 and mid.
"""
from spectral import configs as sc


def get_config(arg=''):
  variant, _ = sc.parse_args(arg)
  student = sc.unet_config(
      'wg_unet', channels=(64, 128, 128, 256, 256), blocks=(2, 2, 2, 2, 2), heads=(2, 4, 4, 8, 0),
      mid_heads=8, time_embedding='ddpm_timestep')
  teacher = sc.unet_config(
      'unet', channels=(192, 384, 384, 768, 768), blocks=(2, 2, 2, 2, 2), heads=(6, 12, 12, 0, 0),
      mid_heads=24, time_embedding='ddpm_timestep')
  c = sc.table_config(
      description='Spectral Diffusion, LSUN-Church 256^2 (KL-f8 latents 32x32x4), Tables 2 and 5',
      latent_res=32, latent_channels=4, dataset='lsun_church_256_kl_f8', batch_size=64 * 8,
      total_steps=150_000, learning_rate=5.12e-4, model=student)
  return sc.apply_variant(c, variant, teacher)
