"""Text-conditional Spectral Diffusion on LAION-400M 256x256 in f=8 KL latents 32x32x4 (supplement Table 3
for the optimisation, Table 7 for the WG-UNet).

  python -m experiments.train --config configs/spectral_text_laion.py[:<variant>] --workdir runs/sd_laion
variant: student (default), lite, teacher, distill (spectral/configs.py).

The text enters as CLIP ViT-L/14 token embeddings [B, 77, 768] passed to the model as `labels`
(conditioning='text'; None means a learned 1-token null context, the unconditional branch for guidance).
Computing them needs the text encoder, which is not part of this repository; sid2's train step feeds class
indices only, so training this config needs the data pipeline to deliver the embeddings (see the report).

Readings (SPEC §13): Table 7's mid-stage second ResBlock "channel = 256" is read as 512 (it sits between
512-wide stages); its second "Up3" (8x8, 256 channels) is Up2. Table 3's guidance "w = 2.0" is read as LDM's
scale s, i.e. sid2's w = s - 1 = 1.0 (SPEC §11). LAION runs 64 x 32 = 2048 per batch at lr 4.096e-3.
Teacher (ours): Stable-Diffusion-v1-like widths 320 x (1, 2, 4, 4), 2 ResBlocks per stage, attention with
cross-attention at 32, 16, 8 and mid, head width 32.
"""
from spectral import configs as sc


def get_config(arg=''):
  variant, _ = sc.parse_args(arg)
  cond = dict(conditioning='text', num_classes=0, context_dim=768, time_embedding='ddpm_timestep')
  student = sc.unet_config(
      'wg_unet', channels=(128, 256, 512, 512), blocks=(2, 2, 2, 2), heads=(4, 8, 16, 0), mid_heads=16,
      mid_channels=512, **cond)
  teacher = sc.unet_config(
      'unet', channels=(320, 640, 1280, 1280), blocks=(2, 2, 2, 2), heads=(10, 20, 40, 0), mid_heads=40,
      **cond)
  c = sc.table_config(
      description='Spectral Diffusion, text-conditional LAION 256^2 (KL-f8 latents 32x32x4), Tables 3 and 7',
      latent_res=32, latent_channels=4, dataset='laion400m_256_kl_f8', batch_size=64 * 32,
      total_steps=300_000, learning_rate=4.096e-3, model=student, conditioning='text', guidance=1.0)
  return sc.apply_variant(c, variant, teacher)
