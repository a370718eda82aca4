"""Class-conditional SiD2 U-ViT on CIFAR-10 (32x32x3) through tensorflow-datasets.

Needs the tfds `cifar10` data prepared in the tfds data dir (nothing is downloaded at run time).
  python -m experiments.train --config configs/cifar10.py --workdir runs/cifar10
"""
import ml_collections

from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.description = 'SiD2 U-ViT, CIFAR-10 32x32, sigmoid loss, class-conditional'
  c.batch_size = 128
  c.total_steps = 200_000
  c.eval_every = 5_000
  c.checkpoint_every = 5_000
  c.log_every = 100
  c.ema_decay = 0.9999
  c.dataset = ml_collections.ConfigDict(dict(name='cifar10', split='train', data_dir='',
                                             shuffle_buffer=50_000, num_classes=10))
  c.model.channels = (128, 256)
  c.model.enc_blocks = (2, 2)
  c.model.dec_blocks = (2, 2)
  c.model.transformer_channels = 512
  c.model.transformer_blocks = 6
  c.model.num_heads = 8
  c.model.patching_size = 1
  c.model.dropout = 0.1
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 1_000
  c.optimizer.decay = 'constant'
  c.sampler.num_steps = 256
  c.sampler.guidance = 0.5
  return c
