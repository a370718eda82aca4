"""Slim wavelet-gated UNet (Spectral Diffusion's student, no distillation) on Fashion-MNIST 32x32x1, fast on
2 CPU cores; the Tables 2-3 objective (linear-β schedule, ε-prediction, ε-MSE), class-conditional through
cross-attention as in Table 6.

  python -m experiments.train --config configs/spectral_fmnist_student.py --workdir runs/sd_fmnist_student
"""
import ml_collections

from spectral import configs as sc

# Shared by the Fashion-MNIST student, lite and distill configs (three stages: 32 -> 16 -> 8 -> mid at 4;
# attention at 8x8 and mid only: at 16x16 it cost as much as the convolutions there).
SLIM = dict(channels=(16, 32, 32), blocks=(1, 1, 1), heads=(0, 0, 1), mid_heads=1,
            conditioning='class', num_classes=10, context_dim=32, time_embedding='logsnr')


def fmnist_config(description, model):
  """Fashion-MNIST 32x32 training around `model`, with the Tables 2-3 objective at a small scale."""
  c = ml_collections.ConfigDict()
  c.plugins = ('spectral',)  # sid2.plugins: the entry points import spectral (models, distillation)
  c.description = description
  c.seed = 0
  c.batch_size = 64
  c.total_steps = 4000
  c.log_every = 50
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.max_nonfinite_streak = 20
  c.image_res = 32
  c.num_channels = 1
  c.dataset = ml_collections.ConfigDict(dict(name='fashion_mnist', split='train', data_dir='',
                                             shuffle_buffer=10_000, num_classes=10))
  c.schedule = 'linear_beta'
  c.loss_type = 'eps_mse'
  c.parametrization = 'eps'
  c.low_discrepancy = True
  c.cond_drop_prob = 0.1
  c.ema_decay = 0.999
  c.model = model
  c.optimizer = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, warmup_steps=200,
      grad_clip=1.0, decay='linear', end_factor=0.0))
  c.sampler = ml_collections.ConfigDict(dict(
      name='ddim', num_steps=100, clip_x='static', logvar_type='0.3', eta=0.0, guidance=1.0,
      guidance_interval=(-100.0, 100.0), num_samples=64))
  return c


def get_config():
  return fmnist_config('Spectral Diffusion student (slim WG-UNet), Fashion-MNIST 32x32, no distillation',
                       sc.unet_config('wg_unet', **SLIM))
