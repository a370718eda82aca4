"""Sample quality of a trained workdir: Fréchet distance and k-NN precision/recall, streamed (issues 7, 14).

  python -m experiments.evaluate --workdir runs/fmnist --num_samples 50000 [--batch_size 500] [--step N]
      [--features fmnist | --features inception --inception_weights pt_inception-2015-12-05-6726825d.pth]
      [--ref ref.npz] [--sampler ddpm --num_steps 128 --guidance 1.0 --guidance_interval=-3,5 --seed 0]
      [--save_samples] [--save_pngs] [--all_steps] [--guide_workdir G [--guide_step S] --guidance w]

Samples come from the EMA parameters of the latest (or --step) checkpoint, drawn by `sid2.generation`
exactly as `experiments.sample` draws them (sample i from the key fold_in(PRNGKey(seed), i), round-robin
class labels for conditional models; autoguided by --guide_workdir as there), in chunks of --batch_size
sharded over all devices. Each chunk is quantized to 8-bit pixels, passed through the feature net and folded
into float64 running statistics (`sid2.eval.streaming`): memory does not grow with --num_samples. FD uses all N samples; precision/recall
(k = 3) use the features of the first --pr_cap samples and reference images (a capped subset).

Features (--features): 'fmnist', the shipped Fashion-MNIST classifier (32x32x1 runs only), or 'inception',
the FID Inception-v3 pool3 from --inception_weights (never downloaded, sha256-checked; any resolution, 1 or
3 channels, resized as the TF FID graph does). Reference (--ref): a file of `experiments.reference_stats`
(its feature-net sha256 must match), an ADM reference batch (mu, sigma, arr_0) or a plain mu/sigma .npz
(Inception only; their net cannot be verified from the file, which the result records). Without --ref the
reference is streamed from the run's own dataset, split --ref_split, its first min(N, split size) examples
in the data pipeline's order (for Fashion-MNIST: the test split, as before).

Every check (feature-net file, reference file and its feature net, image shape) runs before any sampling.
Writes `<workdir>/eval/fd_<step>.json` (FD, precision/recall, seed, sampler settings, N, reference file and
feature-net sha256, timing, peak RSS) and TensorBoard scalars eval/fd, eval/precision, eval/recall.
--save_samples writes ADM-compatible uint8 shards `<workdir>/eval/samples_<step>/samples_p<process>_<k>.npz`
(arr_0 [n, H, W, C] uint8, labels, indices); --save_pngs one PNG per sample beside them.

--all_steps scores every checkpoint step in `<workdir>/checkpoints` (rolling and permanent snapshots), each
once: results are cached in `<workdir>/eval/fd_over_training.cache.json` by step and settings, and FD over
training is written to `<workdir>/eval/fd_over_training.{json,png}` (SiD2 Figures 13-14). With a guide, give
--guide_step: the cache keys the guide by workdir and step, so an unset step (its latest checkpoint when scored)
of a guide run that is still training would reuse scores made with an older guide.
FD values are comparable only for the same feature net (sha256), reference and N; FD is biased upwards at
small N.
"""
from __future__ import annotations
from sid2 import runtime  # first, before jax: one CPU device per core, persistent compile cache
runtime.configure(__name__)  # (only when run as a program)

from typing import Optional

from absl import flags
from absl import logging

from experiments import cli
from sid2 import restore
from sid2 import sampling
from sid2.eval import evaluation
from sid2.eval import feature_nets
from sid2.eval import features as features_lib
from sid2.eval import streaming

REAL_SPLIT = evaluation.REAL_SPLIT
real_images = features_lib.fashion_mnist_test_images  # kept for callers (tests)
SAMPLING_NAMES = ('workdir', 'step', 'num_samples', 'batch_size') + sampling.FLAG_NAMES + (
    sampling.GUIDE_FLAG_NAMES) + ('seed',)


def define_flags(fv: flags.FlagValues):
  """This command's flags on `fv`."""
  d = dict(flag_values=fv)
  cli.define_checkpoint_flags(fv)  # --workdir, --step
  flags.DEFINE_integer('num_samples', 10_000, 'Generated images (and at most this many reference images '
                       'when no --ref is given).', **d)
  flags.DEFINE_integer('batch_size', 500, 'Samples per jitted sampling call (over all devices).', **d)
  cli.define_sampler_flags(fv)  # --sampler, --num_steps, --clip_x, ... (sid2.sampling)
  cli.define_guide_flags(fv)  # --guide_workdir, --guide_step: autoguidance (as in experiments.sample)
  flags.DEFINE_integer('seed', 0, 'Sampling seed.', **d)
  flags.DEFINE_bool('precision_recall', True, 'Also compute k-NN precision/recall (k = 3).', **d)
  flags.DEFINE_integer('pr_cap', streaming.DEFAULT_PR_CAP, 'Samples (and reference images) whose features '
                       'are kept for precision/recall.', **d)
  flags.DEFINE_string('features', 'fmnist', f'Feature net: one of {feature_nets.NAMES}.', **d)
  flags.DEFINE_string('fmnist_weights', None, 'Fashion-MNIST feature-net safetensors (default: the shipped '
                      'sid2/eval/weights/fmnist_classifier.safetensors).', **d)
  flags.DEFINE_string('inception_weights', None, 'Inception-v3 FID weight file (.pth, or .safetensors/.npz '
                      'from `python -m experiments.convert_inception`), for --features inception.', **d)
  flags.DEFINE_string('inception_sha256', None, 'Assert this sha256 for --inception_weights instead of the '
                      'standard file\'s.', **d)
  flags.DEFINE_string('ref', None, 'Reference statistics .npz (experiments.reference_stats, ADM reference '
                      'batch or plain mu/sigma); default: streamed from the run\'s dataset.', **d)
  flags.DEFINE_string('ref_split', REAL_SPLIT, 'Dataset split of the default reference (without --ref).', **d)
  flags.DEFINE_bool('save_samples', False, 'Also write ADM-format uint8 .npz shards of the samples.', **d)
  flags.DEFINE_bool('save_pngs', False, 'Also write one PNG per sample.', **d)
  flags.DEFINE_bool('all_steps', False, 'Score every checkpoint step (cached) and plot FD over training.', **d)


def _config(raw: dict):
  if not raw.get('workdir'):
    raise ValueError('workdir is required')
  config = restore.load_config(raw['workdir'])
  cli.ensure_model_registered(config)  # imports spectral for its models
  return config


def evaluate(raw: dict, **kwargs) -> dict:
  """`sid2.eval.evaluation.evaluate` with the workdir's model registered (keyword arguments: the flags)."""
  return evaluation.evaluate(raw, config=_config(raw), **kwargs)


def evaluate_all_steps(raw: dict, **kwargs) -> dict:
  """`sid2.eval.evaluation.evaluate_all_steps` with the workdir's model registered."""
  return evaluation.evaluate_all_steps(raw, config=_config(raw), **kwargs)


def main(argv, flag_values: Optional[flags.FlagValues] = None):
  """CLI entry; flags parsed into a fresh FlagValues unless given."""
  fv = cli.parse(argv, define_flags, flag_values)
  raw = {n: fv[n].value for n in SAMPLING_NAMES}
  raw.update(labels=None, class_label=None)
  logging.info('evaluate flags: %s', raw)
  kwargs = dict(compute_pr=fv.precision_recall, features=fv.features, ref=fv.ref, ref_split=fv.ref_split,
                pr_cap=fv.pr_cap, fmnist_weights=fv.fmnist_weights, inception_weights=fv.inception_weights,
                inception_sha256=fv.inception_sha256, save_samples=fv.save_samples, save_pngs=fv.save_pngs)
  if fv.all_steps and fv.step is not None:
    raise ValueError('give at most one of --step and --all_steps')
  return (evaluate_all_steps if fv.all_steps else evaluate)(raw, **kwargs)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
