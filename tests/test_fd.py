"""Fréchet distance, precision/recall and the committed feature net (sid2.eval; issue 7)."""
import json
import os

import numpy as np
import pytest
import scipy.linalg

from sid2.eval import fd
from sid2.eval import features as features_lib


def _random_cov(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def _scipy_fd(mu1, s1, mu2, s2):
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean)))


def test_fd_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(0).normal(size=(500, 16)) * 3 + 1
  assert abs(fd.frechet_distance_features(x, x)) < 1e-6


def test_diagonal_closed_form():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  s1, s2 = rng.uniform(0.5, 2, size=8), rng.uniform(0.5, 2, size=8)  # standard deviations
  want = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
  got = fd.frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
  assert got == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_non_diagonal_matches_scipy_sqrtm_and_is_symmetric():
  rng = np.random.default_rng(2)
  d = 12
  mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _random_cov(rng, d), _random_cov(rng, d)
  got = fd.frechet_distance(mu1, s1, mu2, s2)
  assert got == pytest.approx(_scipy_fd(mu1, s1, mu2, s2), rel=1e-8)
  assert got == pytest.approx(fd.frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
  assert got > 0


def test_one_dimensional_closed_form():
  assert fd.frechet_distance([1.0], [[4.0]], [-1.0], [[1.0]]) == pytest.approx(4.0 + 1.0)


def test_singular_covariances_are_handled():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(6, 2))
  s1 = a @ a.T  # rank 2
  s2 = np.zeros((6, 6))
  # With Σ2 = 0 the trace term vanishes: FD = tr Σ1.
  assert fd.frechet_distance(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(np.trace(s1), rel=1e-10)
  assert fd.frechet_distance(np.zeros(6), s1, np.zeros(6), s1) == pytest.approx(0.0, abs=1e-8)


def test_fd_from_samples_converges_to_closed_form():
  rng = np.random.default_rng(4)
  d = 4
  mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _random_cov(rng, d), _random_cov(rng, d)
  exact = fd.frechet_distance(mu1, s1, mu2, s2)
  errors = []
  for n in (200, 20_000):
    x1 = rng.multivariate_normal(mu1, s1, size=n)
    x2 = rng.multivariate_normal(mu2, s2, size=n)
    errors.append(abs(fd.frechet_distance_features(x1, x2) - exact))
  assert errors[1] < 0.05 * exact
  assert errors[1] < errors[0]


def test_non_negative_on_random_sets():
  rng = np.random.default_rng(5)
  for _ in range(5):
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(40, 5))
    assert fd.frechet_distance_features(x, y) >= 0


def test_feature_stats_matches_numpy():
  x = np.random.default_rng(6).normal(size=(100, 3))
  mu, sigma = fd.feature_stats(x)
  np.testing.assert_allclose(mu, x.mean(0))
  np.testing.assert_allclose(sigma, np.cov(x.T))


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='sigma2'):
    fd.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
  with pytest.raises(ValueError, match='features'):
    fd.feature_stats(np.zeros(5))
  with pytest.raises(ValueError, match='k must be'):
    fd.knn_radii(np.zeros((3, 2)), k=3)


def test_precision_recall():
  rng = np.random.default_rng(7)
  real = rng.normal(size=(1000, 2))
  same = rng.normal(size=(1000, 2))
  p, r = fd.precision_recall(real, same)
  assert p > 0.9 and r > 0.9
  # A collapsed generator (a narrow blob at the real mean): precise but without recall.
  collapsed = 0.05 * rng.normal(size=(1000, 2))
  p, r = fd.precision_recall(real, collapsed)
  assert p > 0.95 and r < 0.2
  # A generator far away from the data: neither.
  p, r = fd.precision_recall(real, same + 20.0)
  assert p == 0.0 and r == 0.0


def test_knn_radii_exact():
  x = np.array([[0.0], [1.0], [3.0], [7.0]])
  np.testing.assert_allclose(fd.knn_radii(x, k=1), [1.0, 1.0, 4.0, 16.0])
  np.testing.assert_allclose(fd.knn_radii(x, k=2), [9.0, 4.0, 9.0, 36.0])


# ---- the committed feature net ----

def test_committed_weights_match_sidecar_and_give_features():
  meta_path = features_lib.sidecar_path(features_lib.DEFAULT_WEIGHTS)
  with open(meta_path) as f:
    meta = json.load(f)
  assert os.path.getsize(features_lib.DEFAULT_WEIGHTS) < 2 * 1024 * 1024
  assert features_lib.file_sha256(features_lib.DEFAULT_WEIGHTS) == meta['sha256']
  assert meta['test_accuracy'] > 0.85
  fn = features_lib.load_feature_fn()
  x = np.random.default_rng(0).uniform(-1, 1, size=(4, 32, 32, 1)).astype(np.float32)
  f = np.asarray(fn(x))
  assert f.shape == (4, features_lib.FEATURE_DIM) and np.all(np.isfinite(f))
  with pytest.raises(ValueError, match='32, 32, 1'):
    fn(np.zeros((2, 28, 28, 1), np.float32))


def test_committed_weights_keep_their_key_format(tmp_path):
  """The committed file's '/'-joined keys ('Conv_0/kernel', ...) are sid2.export's format: loading unflattens
  them, and flattening the loaded params and saving them as train_features does rewrites the same bytes."""
  from safetensors.numpy import load_file, save_file
  from sid2 import export
  stored = load_file(features_lib.DEFAULT_WEIGHTS)
  assert any('/' in k for k in stored) and 'Conv_0/kernel' in stored
  params, _ = features_lib.load_params()
  flat = export.flatten_params(params)
  assert set(flat) == set(stored)
  for k, v in stored.items():
    assert flat[k].dtype == v.dtype and flat[k].tobytes() == v.tobytes(), k
  again = tmp_path / 'again.safetensors'
  save_file({k: np.asarray(v, np.float32) for k, v in flat.items()}, str(again))
  assert features_lib.file_sha256(str(again)) == features_lib.file_sha256(features_lib.DEFAULT_WEIGHTS)


def test_changed_weights_are_rejected(tmp_path):
  path = tmp_path / 'w.safetensors'
  path.write_bytes(open(features_lib.DEFAULT_WEIGHTS, 'rb').read() + b' ')
  with open(features_lib.sidecar_path(features_lib.DEFAULT_WEIGHTS)) as f:
    meta = json.load(f)
  (tmp_path / 'w.json').write_text(json.dumps(meta))
  with pytest.raises(ValueError, match='sha256'):
    features_lib.load_feature_fn(str(path))
  with pytest.raises(FileNotFoundError):
    features_lib.load_feature_fn(str(tmp_path / 'missing.safetensors'))


def test_evaluate_rejects_runs_the_feature_net_does_not_fit(tmp_path):
  from experiments import evaluate
  for name, edit in (('res48', dict(image_res=48)), ('rgb', dict(dataset=dict(name='cifar10'), num_channels=3))):
    workdir = tmp_path / name
    workdir.mkdir()
    config = dict(image_res=32, dataset=dict(name='fashion_mnist'), model=dict(name='uvit'))
    config.update(edit)
    (workdir / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match='32x32x1'):
      evaluate.evaluate(dict(workdir=str(workdir), num_samples=100))
  workdir = tmp_path / 'ok'
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps(dict(image_res=32, dataset=dict(name='fashion_mnist'),
                                                       model=dict(name='uvit'))))
  with pytest.raises(ValueError, match='num_samples'):
    evaluate.evaluate(dict(workdir=str(workdir), num_samples=1))


def test_fmnist_features_of_pixel_repeated_images_equal_the_originals():
  """At 64x64 the fmnist net box-averages 2x2 first: a 2-fold pixel repetition (how Fashion-MNIST is made
  64x64) gives exactly the features of the 32x32 images; non-square, RGB or non-multiple sides are refused."""
  from sid2 import data
  from sid2.eval import feature_nets
  net = feature_nets.load_feature_net('fmnist')
  images = data.load_eval_images(dict(name='fashion_mnist', split='test'), 32, 8)
  big = data.load_eval_images(dict(name='fashion_mnist', split='test'), 64, 8)
  np.testing.assert_array_equal(big, np.repeat(np.repeat(images, 2, axis=1), 2, axis=2))
  np.testing.assert_allclose(np.asarray(net.apply(net.params, big)), np.asarray(net.apply(net.params, images)),
                             rtol=1e-5, atol=1e-5)
  for shape in ((64, 64, 1), (128, 128, 1)):
    net.check_shape(shape, 'ok')
  for shape in ((48, 48, 1), (64, 32, 1), (64, 64, 3), (16, 16, 1)):
    with pytest.raises(ValueError, match='32k x 32k x 1'):
      net.check_shape(shape, 'images')
