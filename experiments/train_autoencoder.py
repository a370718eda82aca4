"""Trains the small KL autoencoder (spectral.autoencoder, f = 4: 32x32x1 -> 8x8x4) on Fashion-MNIST and
encodes the train and test splits to a `latents:<dir>` dataset (issue 12; Spectral Diffusion's LDM setting).

  python -m experiments.train_autoencoder --out runs/ae_fmnist [--steps 1000]

Writes <out>/autoencoder.safetensors (+ .json: config, step, sha256, held-out reconstruction MSE and that of
the trivial baseline, a 4x4 block average upsampled back) and <out>/latents/{train,test}.safetensors with
latents.json (scale_factor = 1 / std of the training latents, shift = their mean, the autoencoder's sha256).
Train a diffusion model on them with dataset.name='latents:<out>/latents', image_res=8, num_channels=4, and
dataset.autoencoder_sha256=<sha> to refuse latents from another autoencoder. A few minutes on 2 CPU cores.
The training and encoding are `spectral.autoencoder_train.run`.
"""
from __future__ import annotations

from absl import flags

from experiments import cli


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  flags.DEFINE_string('out', None, 'Output folder.', **d)
  flags.DEFINE_integer('steps', 1000, 'Adam steps.', **d)
  flags.DEFINE_integer('batch_size', 64, 'Batch size.', **d)
  flags.DEFINE_float('learning_rate', 2e-3, 'Peak learning rate (warmup, cosine decay).', **d)
  flags.DEFINE_float('kl_weight', 1e-3, 'β of the KL term (per latent element, against the per-pixel MSE).', **d)
  flags.DEFINE_integer('seed', 0, 'Seed.', **d)
  flags.DEFINE_integer('num_train', 60000, 'Training images encoded (and trained on).', **d)
  flags.DEFINE_integer('num_test', 10000, 'Test images encoded.', **d)
  flags.mark_flags_as_required(['out'], **d)
  flags.DEFINE_string('data_dir', None, 'Fashion-MNIST IDX folder (default: the Debian package location).', **d)


def main(argv, flag_values=None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  from spectral import autoencoder_train  # pylint: disable=g-import-not-at-top
  autoencoder_train.run(fv.out, steps=fv.steps, batch_size=fv.batch_size, learning_rate=fv.learning_rate,
                        kl_weight=fv.kl_weight, seed=fv.seed, num_train=fv.num_train, num_test=fv.num_test,
                        data_dir=fv.data_dir)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
