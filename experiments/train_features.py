"""Trains the Fashion-MNIST feature classifier used for Fréchet distances (issue 7; `sid2.eval.features`).

  python -m experiments.train_features --out sid2/eval/weights/fmnist_classifier.safetensors

Reads the offline Fashion-MNIST (Debian package, `sid2.data`), padded to 32x32x1 in [-1, 1]; Adam, cross
entropy, a couple of epochs on CPU. Writes the weights as safetensors and, beside them, `<name>.json` with
the file's sha256, the test accuracy, the training settings and reference Fréchet distances between real
image sets (test half vs test half, test vs train). Deterministic for a given seed and JAX version.
"""
from __future__ import annotations

import json
import os
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import cli
from sid2 import data
from sid2 import export
from sid2.eval import fd
from sid2.eval import features as features_lib


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  d = dict(flag_values=fv)
  flags.DEFINE_string('out', features_lib.DEFAULT_WEIGHTS, 'Output .safetensors path.', **d)
  flags.DEFINE_integer('epochs', 2, 'Passes over the 60k training images.', **d)
  flags.DEFINE_integer('batch_size', 128, 'Batch size.', **d)
  flags.DEFINE_float('learning_rate', 2e-3, 'Adam learning rate (cosine-decayed to 0).', **d)
  flags.DEFINE_integer('seed', 0, 'Seed for the initialisation and the data order.', **d)
  flags.DEFINE_string('data_dir', None, 'Fashion-MNIST IDX folder (default: the Debian package location).', **d)


def make_train_step(model, tx):
  """Jitted Adam step on mean softmax cross entropy."""

  @jax.jit
  def step(params, opt_state, images, labels):
    def loss_fn(p):
      logits = model.apply({'params': p}, images)[1]
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def run(out: str, epochs: int, batch_size: int, learning_rate: float, seed: int, data_dir=None, log=print):
  """Trains, evaluates and writes `out` + its JSON sidecar; returns the sidecar dict."""
  if not out.endswith('.safetensors'):
    raise ValueError(f'out must end in .safetensors; got {out!r}')
  for name, v in (('epochs', epochs), ('batch_size', batch_size)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f'{name} must be a positive integer; got {v!r}')
  if not learning_rate > 0:
    raise ValueError(f'learning_rate must be > 0; got {learning_rate!r}')
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  t_start = time.time()
  ds_cfg = dict(name='fashion_mnist', split='train', data_dir=data_dir)
  ds = data.get_dataset(ds_cfg, image_res=32, global_batch_size=batch_size, seed=seed, process_index=0,
                        process_count=1)
  steps = epochs * (ds.num_examples // batch_size)
  model = features_lib.FeatureClassifier()
  params = features_lib.init_params(jax.random.PRNGKey(seed))
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  opt_state = tx.init(params)
  train_step = make_train_step(model, tx)
  log(f'training {sum(p.size for p in jax.tree.leaves(params))} parameters for {steps} steps')
  for k in range(steps):
    batch = ds.next_batch(k)
    params, opt_state, loss = train_step(params, opt_state, jnp.asarray(batch['image']),
                                         jnp.asarray(batch['label']))
    if k % 100 == 0 or k == steps - 1:
      log(f'  step {k}: loss {float(loss):.4f} ({time.time() - t_start:.0f} s)')
  train_seconds = time.time() - t_start

  test_u8, test_labels = data.load_fashion_mnist(data_dir, 'test')
  test = data.fit_fashion_resolution(test_u8, 32)
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))
  feats, correct = [], 0
  for s in range(0, test.shape[0], 500):
    f, logits = apply(params, jnp.asarray(test[s:s + 500]))
    feats.append(np.asarray(f, np.float64))
    correct += int((np.asarray(logits).argmax(-1) == test_labels[s:s + 500]).sum())
  test_feats = np.concatenate(feats)
  accuracy = correct / test.shape[0]
  train_u8, _ = data.load_fashion_mnist(data_dir, 'train')
  train = data.fit_fashion_resolution(train_u8[:test.shape[0]], 32)
  train_feats = np.concatenate([np.asarray(apply(params, jnp.asarray(train[s:s + 500]))[0], np.float64)
                                for s in range(0, train.shape[0], 500)])
  half = test.shape[0] // 2
  reference = dict(
      fd_test_half_vs_half=fd.frechet_distance_features(test_feats[:half], test_feats[half:]),
      fd_test_vs_train_first_10k=fd.frechet_distance_features(test_feats, train_feats))

  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  save_file({k: np.asarray(v, np.float32) for k, v in export.flatten_params(params).items()}, out)
  meta = dict(
      sha256=features_lib.file_sha256(out), test_accuracy=accuracy, feature_dim=features_lib.FEATURE_DIM,
      image_shape=list(features_lib.IMAGE_SHAPE), pixel_range=[-1.0, 1.0],
      data='Fashion-MNIST (Debian dataset-fashion-mnist), 28x28 zero-padded to 32x32 (sid2.data)',
      epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed, steps=steps,
      num_params=int(sum(p.size for p in jax.tree.leaves(params))), train_seconds=round(train_seconds, 1),
      jax_version=jax.__version__, reference_fd=reference)
  with open(features_lib.sidecar_path(out), 'w') as f:
    json.dump(meta, f, indent=2)
    f.write('\n')
  log(f'test accuracy {accuracy:.4f}; reference FDs {reference}; wrote {out} '
      f'({os.path.getsize(out)} bytes) and {features_lib.sidecar_path(out)}')
  return meta


def main(argv, flag_values=None):
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  run(fv.out, fv.epochs, fv.batch_size, fv.learning_rate, fv.seed, fv.data_dir)


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
