"""End-to-end training: checkpoints, resume, determinism, data parallel, multi-host, bad configs."""
import glob
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sid2 import config_lib, trainer, train_step as ts
from tests.train_utils import tiny_config, flat_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params_equal(a, b):
  fa, fb = flat_params(jax.device_get(a)), flat_params(jax.device_get(b))
  assert fa.keys() == fb.keys()
  return all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_end_to_end_and_resume(tmp_path):
  workdir = str(tmp_path / 'run')
  state = trainer.train_and_evaluate(tiny_config(), workdir)
  assert int(state.step) == 6
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints')))[:2] == ['3', '6']
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_6.png'))
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  lines = open(os.path.join(workdir, 'loss_vs_logsnr.jsonl')).read().splitlines()
  rec = json.loads(lines[-1])
  assert rec['step'] == 6 and sum(rec['count']) == 2 * 8  # two steps of batch 8 since the last log
  # A restarted run with more steps resumes at 6 and runs only the remaining 2.
  state2 = trainer.train_and_evaluate(tiny_config(total_steps=8), workdir)
  assert int(state2.step) == 8
  assert '8' in os.listdir(os.path.join(workdir, 'checkpoints'))
  from sid2 import restore
  params, step = restore.load_ema_params(workdir)
  assert step == 8 and _params_equal(params, state2.ema_params)
  assert restore.load_config(workdir).num_channels == 1


def _no_eval(**kw):
  return tiny_config(**{'sampler.num_samples': 0}, **kw)


def test_resume_is_bitwise_deterministic(tmp_path):
  straight = trainer.train_and_evaluate(_no_eval(), str(tmp_path / 'a'))
  half = trainer.train_and_evaluate(_no_eval(), str(tmp_path / 'b'), stop_after=3)
  assert int(half.step) == 3
  resumed = trainer.train_and_evaluate(_no_eval(), str(tmp_path / 'b'))
  assert int(resumed.step) == 6
  assert _params_equal(straight.params, resumed.params)
  assert _params_equal(straight.ema_params, resumed.ema_params)


def test_corrupt_latest_checkpoint_falls_back(tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(_no_eval(), workdir)
  # Corrupt every file of the latest checkpoint's state.
  for f in glob.glob(os.path.join(workdir, 'checkpoints', '6', 'state', '**', '*'), recursive=True):
    if os.path.isfile(f):
      with open(f, 'wb') as fh:
        fh.write(b'garbage')
  state = trainer.train_and_evaluate(_no_eval(total_steps=7), workdir)
  assert int(state.step) == 7  # restored step 3, trained 4 more


def _run_worker(args, env_extra, cwd):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, **env_extra)
  return subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'train_utils.py')] + args, cwd=cwd,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p, timeout=600):
  out, _ = p.communicate(timeout=timeout)
  assert p.returncode == 0, out[-4000:]
  return out


def test_data_parallel_8_devices_matches_1_device(tmp_path):
  one = _run_worker(['--workdir', str(tmp_path / 'one'), '--steps', '3', '--out', str(tmp_path / 'one.npz'),
                     '--devices', '1'], {}, str(tmp_path))
  _finish(one)
  eight = _run_worker(['--workdir', str(tmp_path / 'eight'), '--steps', '3', '--out',
                       str(tmp_path / 'eight.npz'), '--devices', '8'], {}, str(tmp_path))
  assert 'devices 8' in _finish(eight)
  a, b = np.load(tmp_path / 'one.npz'), np.load(tmp_path / 'eight.npz')
  for k in a.files:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path):
  port = _free_port()
  procs = [_run_worker(['--workdir', str(tmp_path / 'mh'), '--steps', '3', '--out', str(tmp_path / 'mh.npz'),
                        '--devices', '2', '--process_id', str(i), '--num_processes', '2',
                        '--coordinator', f'127.0.0.1:{port}'], {}, str(tmp_path)) for i in range(2)]
  outs = [_finish(p) for p in procs]
  assert 'devices 4 processes 2' in outs[0]
  single = _run_worker(['--workdir', str(tmp_path / 'single'), '--steps', '3', '--out',
                        str(tmp_path / 'single.npz'), '--devices', '1'], {}, str(tmp_path))
  _finish(single)
  a, b = np.load(tmp_path / 'single.npz'), np.load(tmp_path / 'mh.npz')
  for k in a.files:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize('field,value,match', [
    ('schedule', 'cosine_wrong', 'allowed'),
    ('loss_type', 'sigmoidal:3', 'allowed loss_type'),
    ('model.name', 'resnet', "allowed: .*'uvit'"),
    ('image_res', 30, 'divisible'),
    ('sampler.name', 'euler', 'ddpm'),
    ('parametrization', 'score', "'eps', 'x', 'v'"),
    ('batch_size', 0, 'batch_size'),
])
def test_bad_config_raises_before_compute(tmp_path, field, value, match):
  cfg = tiny_config(**{field: value})
  with pytest.raises(ValueError, match=match):
    trainer.train_and_evaluate(cfg, str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad' / 'checkpoints')


def test_unknown_field_is_named():
  cfg = tiny_config()
  with cfg.unlocked():
    cfg.learning_rate = 1e-3
  with pytest.raises(ValueError, match='unknown config field.*learning_rate'):
    config_lib.validate_config(cfg)
  cfg = tiny_config()
  cfg.model.unlocked()
  with cfg.model.unlocked():
    cfg.model.widht = 3
  with pytest.raises(ValueError, match='widht'):
    config_lib.validate_config(cfg)


def test_nonfinite_updates_are_skipped_then_stop(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'nan')
  trainer.train_and_evaluate(_no_eval(total_steps=3), workdir)
  from sid2 import data as data_lib
  real = data_lib.get_dataset

  def poisoned(*a, **k):
    ds = real(*a, **k)
    orig = ds.next_batch

    def next_batch(step):
      b = dict(orig(step))
      b['image'] = np.full(b['image'].shape, np.nan, np.float32)  # (uint8 pixels cannot hold a NaN)
      return b
    ds.next_batch = next_batch
    return ds
  monkeypatch.setattr(data_lib, 'get_dataset', poisoned)
  with pytest.raises(trainer.NonFiniteError, match='last good checkpoint is intact: step 3'):
    trainer.train_and_evaluate(_no_eval(total_steps=40, max_nonfinite_streak=4, checkpoint_every=100),
                               workdir)
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())[-1] == 3


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  import signal
  import time
  workdir = tmp_path / 'term'
  p = _run_worker(['--workdir', str(workdir), '--steps', '100000', '--checkpoint_every', '100000', '--out',
                   str(tmp_path / 'x.npz'), '--devices', '1'], {}, str(tmp_path))
  log = workdir / 'loss_vs_logsnr.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
    time.sleep(0.5)
  assert p.poll() is None, p.communicate()[0][-3000:]
  p.send_signal(signal.SIGTERM)
  out = _finish(p)
  steps = [int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < 100000, (steps, out[-2000:])


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
  """Multi-host preemption: SIGTERM to one process only; jax's preemption sync point (orbax's
  `reached_preemption`) makes both save the same step and exit cleanly."""
  import signal
  import time
  workdir = tmp_path / 'mh_term'
  port = _free_port()
  procs = [_run_worker(['--workdir', str(workdir), '--steps', '100000', '--checkpoint_every', '100000',
                        '--out', str(tmp_path / 'x.npz'), '--devices', '1', '--process_id', str(i),
                        '--num_processes', '2', '--coordinator', f'127.0.0.1:{port}'], {}, str(tmp_path))
           for i in range(2)]
  try:
    log = workdir / 'loss_vs_logsnr.jsonl'
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
      time.sleep(0.5)
    assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs if p.poll() is not None]
    procs[1].send_signal(signal.SIGTERM)
    outs = [_finish(p, timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert 'processes 2' in outs[0]
  steps = [int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < 100000, (steps, outs[0][-2000:], outs[1][-2000:])


def test_tfds_mock_dataset_trains(tmp_path):
  import tensorflow_datasets as tfds
  cfg = _no_eval(total_steps=2, checkpoint_every=2, **{'dataset.name': 'cifar10', 'model.num_classes': 10})
  with tfds.testing.mock_data(num_examples=32):
    state = trainer.train_and_evaluate(cfg, str(tmp_path / 'mock'))
  assert int(state.step) == 2
  assert state.params['conv_in']['kernel'].shape[-2] == 3 * 4  # 3 channels, space-to-depth of 2
