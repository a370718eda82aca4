"""experiments.evaluate / experiments.reference_stats (issue 14): streamed FD against reference files, checks
before sampling, FD over training, and end-to-end scoring of a CIFAR-10-shaped (3-channel, tfds mock) and a
64x64 run with the Inception features (random weights: the real file cannot be fetched here)."""
import json
import os
import types

import numpy as np
import pytest

from experiments import evaluate
from experiments import reference_stats
from sid2 import generation
from sid2.eval import fd
from sid2.eval import stats as stats_lib
from tests.train_utils import tiny_config

SAMPLING = ['--num_steps=2', '--batch_size=4', '--guidance=0']


@pytest.fixture(autouse=True)
def no_tensorboard(monkeypatch):
  """clu's TensorBoard writer imports TensorFlow's summary ops: replaced by a recorder."""
  scalars = {}
  monkeypatch.setattr('sid2.eval.evaluation._write_scalars', lambda wd, step, v: scalars.update({step: v}))
  return scalars


@pytest.fixture(scope='module')
def fmnist_run(tmp_path_factory):
  from sid2 import trainer
  root = tmp_path_factory.mktemp('evaluate')
  workdir = str(root / 'run')
  trainer.train_and_evaluate(tiny_config(checkpoint_every=1, eval_every=1000), workdir, stop_after=2)
  ref = str(root / 'ref_test200.npz')
  cfg = tiny_config(**{'dataset.split': 'test'})
  try:
    reference_stats.run(cfg, features='fmnist', out=ref, num=200, batch_size=64, pr_cap=50, log=lambda s: None)
  except FileNotFoundError as e:
    pytest.skip(f'Fashion-MNIST not installed: {e}')
  return types.SimpleNamespace(root=root, workdir=workdir, ref=ref, config=cfg)


def test_reference_stats_equal_in_memory_stats_and_self_fd_is_zero(fmnist_run):
  from sid2 import data
  from sid2.eval import features
  ref = stats_lib.read_reference(fmnist_run.ref)
  meta = json.load(open(fmnist_run.ref + '.json'))
  assert ref['format'] == 'sid2' and ref['num'] == 200 and ref['feature_net'] == 'fmnist'
  assert ref['feature_sha256'] == features.file_sha256(features.DEFAULT_WEIGHTS) == meta['feature_net']['sha256']
  assert ref['sha256'] == meta['sha256'] and ref['pr_features'].shape == (50, 128)
  assert ref['mu'].dtype == np.float64 and ref['sigma'].dtype == np.float64
  # The same 200 images (the pipeline's first epoch order: a permutation of the split) held in memory.
  images, _ = data.load_fashion_mnist(None, 'test')
  order = data.epoch_permutation(0, 0, images.shape[0])[:200]
  feats = features.batched_features(features.load_feature_fn(), data.fit_fashion_resolution(images[order], 32))
  mu, sigma = fd.feature_stats(feats)
  np.testing.assert_allclose(ref['mu'], mu, rtol=0, atol=1e-5)
  np.testing.assert_allclose(ref['sigma'], sigma, rtol=0, atol=1e-5)
  assert fd.frechet_distance(ref['mu'], ref['sigma'], ref['mu'], ref['sigma']) == pytest.approx(0, abs=1e-9)
  assert fd.frechet_distance(ref['mu'], ref['sigma'], mu, sigma) < 1e-5


def test_evaluate_with_ref_all_steps_cached_and_plotted(fmnist_run, no_tensorboard):
  argv = ['evaluate', f'--workdir={fmnist_run.workdir}', '--num_samples=6', f'--ref={fmnist_run.ref}',
          '--all_steps', '--pr_cap=5'] + SAMPLING
  lines = []
  summary = evaluate.evaluate_all_steps(
      dict(workdir=fmnist_run.workdir, step=None, num_samples=6, batch_size=4, sampler=None, num_steps=2,
           clip_x=None, logvar_type=None, eta=None, guidance=0.0, guidance_interval=None, seed=0),
      ref=fmnist_run.ref, pr_cap=5, log=lines.append)
  assert [r['step'] for r in summary['rows']] == [1, 2] and all(r['fd'] > 0 for r in summary['rows'])
  eval_dir = os.path.join(fmnist_run.workdir, 'eval')
  assert os.path.getsize(os.path.join(eval_dir, 'fd_over_training.png')) > 0
  rec = json.load(open(os.path.join(eval_dir, 'fd_2.json')))
  ref_sha = stats_lib.file_sha256(fmnist_run.ref)
  assert rec['ref']['sha256'] == ref_sha and rec['ref']['feature_net_verified']
  assert rec['feature_net']['sha256'] == rec['ref']['feature_sha256'] and rec['seed'] == 0
  assert rec['num_samples'] == 6 and rec['sampling']['num_steps'] == 2 and rec['sampling']['sampler'] == 'ddpm'
  assert rec['precision_recall'] == dict(k=3, cap=5, num_samples=5, num_ref=5)
  assert 0 <= rec['precision'] <= 1 and 0 <= rec['recall'] <= 1 and rec['peak_rss_mib'] > 0
  assert no_tensorboard[2]['fd'] == rec['fd']
  assert sum('chunk 1/2' in l for l in lines) == 2  # both steps sampled
  # The CLI with the same settings samples nothing: every step is cached by step + settings.
  summary2 = evaluate.main(argv)
  assert summary2['rows'] == summary['rows']
  # Changing a setting (the seed) is a new cache entry.
  summary3 = evaluate.main(argv + ['--seed=1'])
  assert summary3['rows'][0]['fd'] != summary['rows'][0]['fd']
  cache = json.load(open(os.path.join(eval_dir, evaluate.evaluation.CACHE_NAME)))
  assert len(cache) == 4


def test_streamed_fd_equals_in_memory_fd(fmnist_run):
  """FD of the streamed run == FD of the same samples' features computed in memory (closed-form route)."""
  from sid2 import restore
  from sid2.eval import features
  out = evaluate.evaluate(dict(workdir=fmnist_run.workdir, step=1, num_samples=6, batch_size=4, sampler=None,
                               num_steps=2, clip_x=None, logvar_type=None, eta=None, guidance=0.0,
                               guidance_interval=None, seed=3), ref=fmnist_run.ref, compute_pr=False,
                          log=lambda s: None)
  config = restore.load_config(fmnist_run.workdir)
  settings = generation.resolve_settings(dict(workdir=fmnist_run.workdir, step=1, num_samples=6, batch_size=4,
                                              num_steps=2, guidance=0.0, seed=3, out='x.npz'), config)
  images, _, _, _ = generation.generate(settings, config, log=lambda s: None)
  feats = features.batched_features(features.load_feature_fn(), generation.to_uint8(images) / 127.5 - 1.0)
  ref = stats_lib.read_reference(fmnist_run.ref)
  want = fd.frechet_distance(ref['mu'], ref['sigma'], *fd.feature_stats(feats))
  assert out['fd'] == pytest.approx(want, rel=1e-5)


def test_bad_inputs_fail_before_sampling(fmnist_run, tmp_path, monkeypatch):
  monkeypatch.setattr(generation, 'prepare', lambda *a, **k: (_ for _ in ()).throw(AssertionError('sampled')))
  base = ['evaluate', f'--workdir={fmnist_run.workdir}', '--num_samples=4'] + SAMPLING
  # A reference file made with another feature net (same name, other weights).
  acc = stats_lib.StreamingStats(128).update(np.random.default_rng(0).normal(size=(10, 128)))
  other = str(tmp_path / 'other.npz')
  stats_lib.write_reference(other, acc, feature_net='fmnist', feature_sha256='0' * 64, preprocess='x',
                            source='test')
  with pytest.raises(ValueError, match=rf'{other}.*sha256 0000.*has sha256'):
    evaluate.main(base + [f'--ref={other}'])
  # An Inception reference (ADM batch) for the fmnist features.
  adm = str(tmp_path / 'adm.npz')
  np.savez(adm, mu=np.zeros(2048), sigma=np.eye(2048), arr_0=np.zeros((2, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match=rf'{adm} holds inception statistics.*--features fmnist'):
    evaluate.main(base + [f'--ref={adm}'])
  with pytest.raises(FileNotFoundError, match='missing.npz'):
    evaluate.main(base + [f'--ref={tmp_path / "missing.npz"}'])
  # Inception without weights, with a missing weights file.
  with pytest.raises(ValueError, match='needs inception_weights'):
    evaluate.main(base + ['--features=inception'])
  with pytest.raises(FileNotFoundError, match='nope.pth not found'):
    evaluate.main(base + ['--features=inception', f'--inception_weights={tmp_path / "nope.pth"}'])
  with pytest.raises(ValueError, match='features must be one of'):
    evaluate.main(base + ['--features=vgg'])
  # A resolution the fmnist features cannot take.
  wd = tmp_path / 'res48'
  wd.mkdir()
  config = json.load(open(os.path.join(fmnist_run.workdir, 'config.json')))
  config['image_res'] = 48
  (wd / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r'features=fmnist takes only 32x32x1.*image_res=48'):
    evaluate.main(['evaluate', f'--workdir={wd}', '--num_samples=4'])
  with pytest.raises(ValueError, match='num_samples must be an integer >= 2'):
    evaluate.main(base[:2] + ['--num_samples=1'])


def test_reading_adm_and_plain_reference_files(tmp_path):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(50, 4))
  mu, sigma = fd.feature_stats(a)
  plain = str(tmp_path / 'plain.npz')
  np.savez(plain, mu=mu, sigma=sigma)
  r = stats_lib.read_reference(plain)
  assert r['format'] == 'plain' and r['feature_net'] == 'inception' and r['pr_features'] is None
  np.testing.assert_array_equal(r['sigma'], sigma)
  adm = str(tmp_path / 'adm.npz')
  images = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
  np.savez(adm, mu=mu, sigma=sigma, mu_s=mu, sigma_s=sigma, arr_0=images)
  r = stats_lib.read_reference(adm)
  assert r['format'] == 'adm' and r['num'] == 3 and np.array_equal(r['images'], images)
  bad = str(tmp_path / 'bad.npz')
  np.savez(bad, mu=mu, sigma=sigma[:2])
  with pytest.raises(ValueError, match=r'bad.npz: mu must be \[D\] and sigma \[D, D\]'):
    stats_lib.read_reference(bad)
  np.savez(bad, m=mu)
  with pytest.raises(ValueError, match='must hold mu and sigma'):
    stats_lib.read_reference(bad)


# ---------------------------------------------------------------------------------------------------------
# Inception features, RGB / other resolutions, end to end.

@pytest.fixture(scope='module')
def inception_file(tmp_path_factory):
  from sid2.eval import inception as inc
  from tests.test_inception import random_state
  path = str(tmp_path_factory.mktemp('inception') / 'random_inception.npz')
  np.savez(path, **random_state(0))
  return path, inc.file_sha256(path)


@pytest.mark.parametrize('image_res', [32, 64])
def test_rgb_run_scored_end_to_end_with_inception(tmp_path, inception_file, image_res):
  """A CIFAR-10-shaped run (tfds mock cifar10, 3 channels) at 32x32 and at 64x64: reference statistics from
  the dataset, then evaluate against them with the Inception features."""
  import tensorflow_datasets as tfds
  from sid2 import trainer
  path, digest = inception_file
  cfg = tiny_config(total_steps=1, checkpoint_every=1, eval_every=1000, image_res=image_res,
                    **{'dataset.name': 'cifar10', 'model.num_classes': 10, 'sampler.num_samples': 0})
  workdir = str(tmp_path / 'run')
  ref = str(tmp_path / 'ref.npz')
  with tfds.testing.mock_data(num_examples=16):
    trainer.train_and_evaluate(cfg, workdir)
    rec = reference_stats.run(cfg, features='inception', out=ref, num=8, batch_size=4, pr_cap=8,
                              inception_weights=path, inception_sha256=digest, log=lambda s: None)
  assert rec['num'] == 8 and rec['feature_net']['sha256'] == digest
  assert f'{image_res}x{image_res}x3' in rec['source']
  r = stats_lib.read_reference(ref)
  assert r['mu'].shape == (2048,) and r['pr_features'].shape == (8, 2048)
  out = evaluate.main(['evaluate', f'--workdir={workdir}', '--num_samples=4', '--features=inception',
                       f'--inception_weights={path}', f'--inception_sha256={digest}', f'--ref={ref}',
                       '--save_samples'] + SAMPLING)
  assert np.isfinite(out['fd']) and out['fd'] > 0 and out['num_samples'] == 4
  assert out['features'] == 'inception' and out['feature_net']['sha256'] == digest
  assert out['ref']['sha256'] == r['sha256'] and out['sampling']['image_shape'] == [image_res, image_res, 3]
  assert 0 <= out['precision'] <= 1 and out['precision_recall']['num_ref'] == 8
  shards = sorted(os.listdir(out['samples_dir']))
  arr = np.concatenate([np.load(os.path.join(out['samples_dir'], s))['arr_0'] for s in shards])
  assert arr.shape == (4, image_res, image_res, 3) and arr.dtype == np.uint8


def test_image_folder_run_trains_and_is_scored_with_inception(tmp_path, inception_file):
  """Issue 16: a folder of PNGs (own data) trains and is scored end to end against statistics streamed from
  the same folder."""
  from sid2 import trainer
  from tests.test_image_folder import _write_pngs
  path, digest = inception_file
  root = _write_pngs(str(tmp_path / 'imgs'), per_class=4)
  cfg = tiny_config(total_steps=1, checkpoint_every=1, eval_every=1000, image_res=32,
                    **{'dataset.name': f'folder:{root}', 'dataset.num_classes': 2, 'model.num_classes': 2,
                       'sampler.num_samples': 0})
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(cfg, workdir)
  ref = str(tmp_path / 'ref.npz')
  rec = reference_stats.run(cfg, features='inception', out=ref, num=8, batch_size=4, pr_cap=8, split='train',
                            inception_weights=path, inception_sha256=digest, log=lambda s: None)
  assert rec['num'] == 8 and '32x32x3' in rec['source']
  out = evaluate.main(['evaluate', f'--workdir={workdir}', '--num_samples=4', '--features=inception',
                       f'--inception_weights={path}', f'--inception_sha256={digest}', f'--ref={ref}'] + SAMPLING)
  assert np.isfinite(out['fd']) and out['fd'] > 0 and out['sampling']['image_shape'] == [32, 32, 3]
