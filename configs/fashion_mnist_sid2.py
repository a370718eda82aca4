"""SiD2's recipe on Fashion-MNIST (32x32x1, Debian's embedded copy): class-conditional U-ViT, the sigmoid loss
with the resolution-shifted bias, v-prediction (SiD2 B.1, B.6). The base of `configs/fashion_mnist.py` (the
default, which changes only what issue 18's recipe study measured to be better per CPU-minute) and of the
recipe study's arms.
  python -m experiments.train --config configs/fashion_mnist_sid2.py --workdir runs/fmnist_sid2
"""
import ml_collections

from sid2 import weightings


def get_config():
  c = ml_collections.ConfigDict()
  c.description = 'SiD2 U-ViT, Fashion-MNIST 32x32, sigmoid loss, class-conditional'
  c.seed = 0
  c.batch_size = 64
  c.total_steps = 2400
  c.log_every = 50
  c.eval_every = 400
  c.checkpoint_every = 400
  c.keep_checkpoints = 3
  c.max_nonfinite_streak = 20

  c.image_res = 32
  c.dataset = ml_collections.ConfigDict(dict(name='fashion_mnist', split='train', data_dir='',
                                             shuffle_buffer=10_000, num_classes=10))
  # SiD2 B.1 schedule; at 32x32 with noise_res_low = 32 it is the plain cosine schedule.
  c.schedule = 'cosine_interpolated'
  # Sigmoid bias moved from -3 at 512^2 by 2 log 2 per halving of the resolution (SiD2 B.6): about 2.5 here.
  c.loss_type = f'sigmoid:{weightings.bias_for_resolution(-3.0, 512, 32):.2f}'
  c.parametrization = 'v'
  c.low_discrepancy = True
  c.cond_drop_prob = 0.1
  c.ema_decay = 0.999

  # Patching 2 keeps the convolutions at 16x16 and below: XLA:CPU's conv weight-gradients dominate otherwise.
  c.model = ml_collections.ConfigDict(dict(
      name='uvit', channels=(48, 96), enc_blocks=(1, 1), dec_blocks=(1, 1), transformer_channels=192,
      transformer_blocks=2, num_heads=4, patching_size=2, drop_top_level=False, dropout=0.0,
      dropout_from_level=1, num_classes=10, emb_channels=0, attention='xla', dtype='float32',
      param_dtype='float32'))
  c.optimizer = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=2e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, warmup_steps=200,
      grad_clip=1.0, decay='cosine', end_factor=0.1))
  c.sampler = ml_collections.ConfigDict(dict(
      name='ddpm', num_steps=128, clip_x='static', logvar_type='0.3', eta=0.0, guidance=1.0,
      guidance_interval=(-100.0, 100.0), num_samples=64))
  return c
