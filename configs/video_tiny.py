"""Tiny class-conditional video U-ViT on synthetic bouncing shapes (8 frames of 16x16x3), for tests and demos.

Trains a few steps on CPU in well under a minute:
  python -m experiments.train --config configs/video_tiny.py --workdir /tmp/video_tiny
Sample grids (`samples/step_<N>.png`) show one video per row, its frames side by side.
The number of frames is set once, by `num_frames`; the model's and the dataset's fields refer to it.
"""
import ml_collections

from sid2 import weightings


def get_config():
  c = ml_collections.ConfigDict()
  c.description = 'SiD2 video U-ViT (uvit_video), synthetic bouncing shapes 8x16x16x3, class-conditional'
  c.seed = 0
  c.batch_size = 8
  c.total_steps = 20
  c.log_every = 5
  c.eval_every = 20
  c.checkpoint_every = 10
  c.keep_checkpoints = 2
  c.max_nonfinite_streak = 20

  c.image_res = 16
  c.num_frames = 8
  c.dataset = ml_collections.ConfigDict(dict(name='synthetic_video', split='train', num_classes=4,
                                             num_channels=3))
  c.dataset.num_frames = c.get_ref('num_frames')
  c.schedule = 'cosine_interpolated'
  c.loss_type = f'sigmoid:{weightings.bias_for_resolution(-3.0, 512, 16):.2f}'
  c.parametrization = 'v'
  c.low_discrepancy = True
  c.cond_drop_prob = 0.1
  c.ema_decay = 0.999

  # Two conv levels (16^2, 8^2), the second also halving time: the transformer sees 4 x 4 x 4 tokens.
  c.model = ml_collections.ConfigDict(dict(
      name='uvit_video', channels=(16, 32), enc_blocks=(1, 1), dec_blocks=(1, 1), transformer_channels=48,
      transformer_blocks=1, num_heads=2, patching_size=1, drop_top_level=False, dropout=0.0,
      dropout_from_level=1, num_classes=4, emb_channels=0, attention='xla', dtype='float32',
      param_dtype='float32', temporal_kernel_size=3, temporal_downsample=(False, True)))
  c.model.num_frames = c.get_ref('num_frames')
  c.optimizer = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, warmup_steps=5,
      grad_clip=1.0, decay='constant', end_factor=1.0))
  c.sampler = ml_collections.ConfigDict(dict(
      name='ddpm', num_steps=16, clip_x='static', logvar_type='0.3', eta=0.0, guidance=1.0,
      guidance_interval=(-100.0, 100.0), num_samples=4))
  return c
