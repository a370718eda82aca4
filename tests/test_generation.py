"""sid2.generation (per-sample keys, sharded chunks over devices and processes) and streaming statistics.

The 8-device and 2-process runs are this file run as a script in subprocesses (`--worker`), so the pytest
process keeps its single CPU device; they restore the same tiny workdir and must give the 1-device samples.
"""
import argparse
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, BATCH = 6, 4
RAW = dict(num_samples=N, batch_size=BATCH, sampler='ddpm', num_steps=4, clip_x=None, logvar_type=None,
           eta=None, guidance=1.0, guidance_interval='-3,5', seed=5, labels=None, class_label=None, step=None)


def _settings(workdir, out):
  from sid2 import generation
  from sid2 import restore
  config = restore.load_config(workdir)
  return generation.resolve_settings(dict(RAW, workdir=workdir, out=out), config), config


def _worker(args):
  import jax
  jax.config.update('jax_num_cpu_devices', args.devices)
  if args.num_processes > 1:
    jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id)
  from sid2 import generation
  from sid2.eval import feature_nets
  from sid2.eval import streaming
  settings, config = _settings(args.workdir, os.path.join(args.out, 'x.npz'))
  images, labels, record, indices = generation.generate(settings, config, log=lambda s: None)
  p = jax.process_index()
  net = feature_nets.load_feature_net('fmnist')
  gen = generation.prepare(settings, config, log=lambda s: None)
  writer = generation.ShardWriter(npz_dir=os.path.join(args.out, 'shards'), process_index=p)
  acc, subset = streaming.sample_stats(gen, net, pr_cap=N, writer=writer, log=lambda s: None)
  np.savez(os.path.join(args.out, f'p{p}.npz'), indices=indices, images=images, mean=acc.mean,
           cov=acc.covariance(), num=acc.num, subset=subset, devices=record['devices'],
           processes=record['processes'], chunk=record['chunk_size'])


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  from sid2 import trainer
  from tests.train_utils import tiny_config
  d = str(tmp_path_factory.mktemp('generation') / 'run')
  trainer.train_and_evaluate(tiny_config(checkpoint_every=1, eval_every=1000), d, stop_after=1)
  return d


@pytest.fixture(scope='module')
def single(workdir):
  """The 1-device samples, their fmnist features and streamed statistics (in this process)."""
  from sid2 import generation
  from sid2.eval import feature_nets
  from sid2.eval import streaming
  settings, config = _settings(workdir, os.path.join(os.path.dirname(workdir), 'x.npz'))
  images, labels, record, indices = generation.generate(settings, config, log=lambda s: None)
  net = feature_nets.load_feature_net('fmnist')
  fn, params = feature_nets.feature_fn(net, generation.data_mesh())
  feats = feature_nets.features_of(fn, params, generation.data_mesh(), images, 8)
  gen = generation.prepare(settings, config, log=lambda s: None)
  acc, subset = streaming.sample_stats(gen, net, pr_cap=N, log=lambda s: None)
  return dict(images=images, labels=labels, record=record, indices=indices, feats=feats, acc=acc,
              subset=subset, settings=settings, config=config)


def _spawn(args, tmp):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return subprocess.Popen([sys.executable, os.path.abspath(__file__), '--worker'] + args, cwd=tmp, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p):
  out, _ = p.communicate(timeout=600)
  assert p.returncode == 0, out[-4000:]


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_single_device_samples_use_per_sample_keys(single, workdir):
  from sid2 import restore
  import jax
  import jax.numpy as jnp
  assert single['images'].shape == (N, 32, 32, 1) and single['indices'].tolist() == list(range(N))
  assert single['labels'].tolist() == list(range(N)) and single['record']['chunk_size'] == BATCH
  params, _ = restore.load_ema_params(workdir)
  config = restore.override_sampler(single['config'], num_steps=4)
  fn = restore.sample_fn(config, 1, 1)
  i = 5
  x = fn(params, jax.random.fold_in(jax.random.PRNGKey(5), i), jnp.asarray([i], jnp.int32), jnp.float32(1.0),
         jnp.float32(-3.0), jnp.float32(5.0))
  np.testing.assert_allclose(np.clip(np.asarray(x)[0], -1, 1), single['images'][i], atol=1e-5)


def test_streamed_stats_equal_in_memory(single):
  from sid2.eval import fd
  mu, cov = fd.feature_stats(single['feats'])
  np.testing.assert_allclose(single['acc'].mean, mu, rtol=0, atol=1e-10)
  np.testing.assert_allclose(single['acc'].covariance(), cov, rtol=0, atol=1e-10)
  np.testing.assert_array_equal(single['subset'], single['feats'].astype(np.float32))


@pytest.mark.parametrize('layout', ['8_devices', '2_processes'])
def test_sharded_sampling_matches_one_device(single, workdir, tmp_path, layout):
  if layout == '8_devices':
    _finish(_spawn(['--workdir', workdir, '--out', str(tmp_path), '--devices', '8'], str(tmp_path)))
    parts = [np.load(tmp_path / 'p0.npz')]
    assert int(parts[0]['devices']) == 8 and int(parts[0]['chunk']) == 8
  else:
    port = _free_port()
    procs = [_spawn(['--workdir', workdir, '--out', str(tmp_path), '--devices', '2', '--process_id', str(i),
                     '--num_processes', '2', '--coordinator', f'127.0.0.1:{port}'], str(tmp_path))
             for i in range(2)]
    for p in procs:
      _finish(p)
    parts = [np.load(tmp_path / f'p{i}.npz') for i in range(2)]
    assert int(parts[0]['devices']) == 4 and int(parts[0]['processes']) == 2
    # Each process drew only its own samples: disjoint index sets covering 0..N-1.
    assert not set(parts[0]['indices']) & set(parts[1]['indices'])
    assert all(len(p['indices']) for p in parts)
  indices = np.concatenate([p['indices'] for p in parts])
  images = np.concatenate([p['images'] for p in parts])[np.argsort(indices)]
  assert sorted(indices.tolist()) == list(range(N))
  np.testing.assert_allclose(images, single['images'], rtol=0, atol=1e-5)
  for p in parts:  # identical merged statistics on every process, equal to the in-memory ones of their features
    feats = p['subset'].astype(np.float64)
    assert int(p['num']) == N and feats.shape == (N, 128)
    np.testing.assert_allclose(p['mean'], feats.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(p['mean'], single['acc'].mean, rtol=0, atol=1e-4)
    np.testing.assert_allclose(p['cov'], single['acc'].covariance(), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(p['mean'], parts[0]['mean'])
  # The ADM-format shards load with plain numpy and hold every sample once, as uint8.
  shards = sorted((tmp_path / 'shards').iterdir())
  arrays = [np.load(s, allow_pickle=False) for s in shards]
  idx = np.concatenate([a['indices'] for a in arrays])
  arr = np.concatenate([a['arr_0'] for a in arrays])[np.argsort(idx)]
  assert sorted(idx.tolist()) == list(range(N)) and arr.dtype == np.uint8 and arr.shape == (N, 32, 32, 1)
  want = np.clip(np.round((single['images'] + 1) * 127.5), 0, 255)
  assert np.abs(arr.astype(np.int32) - want).max() <= 1
  assert np.concatenate([a['labels'] for a in arrays])[np.argsort(idx)].tolist() == list(range(N))


def test_chan_merge_is_exact_in_any_order():
  from sid2.eval import stats
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1000, 7)) * rng.uniform(0.1, 10, size=7) + 1e3  # large offset: tests stability
  want_mu, want_cov = x.mean(0), np.cov(x, rowvar=False)
  for cuts in ([1000], [1, 999], [3, 500, 497], list(np.diff([0, 10, 11, 400, 1000]))):
    acc, start = stats.StreamingStats(7), 0
    for c in cuts:
      acc.update(x[start:start + c])
      start += c
    np.testing.assert_allclose(acc.mean, want_mu, rtol=1e-13)
    np.testing.assert_allclose(acc.covariance(), want_cov, rtol=1e-10, atol=1e-10)
  a, b = stats.StreamingStats(7).update(x[:300]), stats.StreamingStats(7).update(x[300:])
  merged = stats.StreamingStats(7).merge(b.num, b.mean, b.m2).merge(a.num, a.mean, a.m2)
  np.testing.assert_allclose(merged.covariance(), want_cov, rtol=1e-10, atol=1e-10)
  with pytest.raises(ValueError, match=r'\[n, 7\]'):
    acc.update(np.zeros((2, 3)))
  with pytest.raises(ValueError, match='at least 2'):
    stats.StreamingStats(3).update(np.zeros((1, 3))).covariance()


if __name__ == '__main__':
  ap = argparse.ArgumentParser()
  ap.add_argument('--worker', action='store_true')
  ap.add_argument('--workdir')
  ap.add_argument('--out')
  ap.add_argument('--devices', type=int, default=1)
  ap.add_argument('--process_id', type=int, default=0)
  ap.add_argument('--num_processes', type=int, default=1)
  ap.add_argument('--coordinator', default='')
  sys.path.insert(0, ROOT)
  _worker(ap.parse_args())
