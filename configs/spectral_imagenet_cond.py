"""Class-conditional Spectral Diffusion on ImageNet 256x256 in f=4 VQ latents 64x64x3 (supplement Table 3
for the optimisation, Table 6 for the WG-UNet).

  python -m experiments.train --config configs/spectral_imagenet_cond.py[:<variant>] --workdir runs/sd_in
variant: student (default), lite, teacher, distill (spectral/configs.py). Latents and labels from
`<dataset.data_dir>/imagenet_256_vq_f4/train.npy` and `train_labels.npy`.

Readings (SPEC §13): Table 6's second "Up3" (16x16, 128 channels) is Up2. The class enters as
nn.Embed(1000 + 1 null class, 512), a 1-token sequence for the cross-attention of every attention stage
("Cond: 512 x 1"); the null class is trained with probability cond_drop_prob for guidance. Table 3's
guidance "w = 3.0" is read as LDM's scale s (eps = eps_u + s (eps_c - eps_u)), i.e. sid2's guidance
w = s - 1 = 2.0 (SPEC §11 convention). Teacher (ours): LDM-4 cin256's widths 192 x (1, 2, 3, 5), 2 ResBlocks
per stage, attention with cross-attention at 32, 16, 8 and mid.
"""
from spectral import configs as sc


def get_config(arg=''):
  variant, _ = sc.parse_args(arg)
  cond = dict(conditioning='class', num_classes=1000, context_dim=512, time_embedding='ddpm_timestep')
  student = sc.unet_config(
      'wg_unet', channels=(64, 128, 192, 256), blocks=(3, 3, 3, 3), heads=(0, 4, 6, 8), mid_heads=8, **cond)
  teacher = sc.unet_config(
      'unet', channels=(192, 384, 576, 960), blocks=(2, 2, 2, 2), heads=(0, 12, 18, 30), mid_heads=30,
      **cond)
  c = sc.table_config(
      description='Spectral Diffusion, class-conditional ImageNet 256^2 (VQ-f4 latents 64x64x3), Tables 3 '
                  'and 6',
      latent_res=64, latent_channels=3, dataset='imagenet_256_vq_f4', batch_size=32 * 8,
      total_steps=300_000, learning_rate=5.12e-4, model=student, conditioning='class', num_classes=1000,
      guidance=2.0)
  return sc.apply_variant(c, variant, teacher)
