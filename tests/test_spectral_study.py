"""experiments.spectral_study (issue 12): bad settings fail before any training, naming what differs, and
`--smoke` runs every stage (autoencoder, pixel and latent arms, a pinned teacher, scoring, JSON + PNG table)
and a rerun reuses the finished runs."""
import json
import os

import pytest

from experiments import spectral_study as study


def test_bad_settings_fail_before_training(tmp_path):
  out = str(tmp_path / 'study')
  with pytest.raises(ValueError, match="unknown arm 'wg_bogus'"):
    study.run(out, size_name='smoke', arms=('wg_bogus',))
  with pytest.raises(ValueError, match='--arms: unknown'):
    study.parse_list('teacher,nope', study.ARMS, 'arms')
  with pytest.raises(ValueError, match="unknown space 'voxel'"):
    study.run(out, size_name='smoke', spaces=('voxel',))
  with pytest.raises(ValueError, match='--size'):
    study.run(out, size_name='huge')
  assert not os.path.exists(out)  # nothing was trained or written
  # A teacher whose schedule or resolution differs from the student's.
  student = study.arm_config('pixel', 'wg_distill', 0, study.SIZES['smoke'])
  teacher = study.arm_config('pixel', 'teacher', 0, study.SIZES['smoke'])
  teacher.schedule = 'cosine'
  with pytest.raises(ValueError, match='schedule'):
    study.check_teacher_compatible(student, teacher)
  teacher = study.arm_config('latent', 'teacher', 0, study.SIZES['smoke'])
  with pytest.raises(ValueError, match='image_res'):
    study.check_teacher_compatible(student, teacher)


def test_iso_mac_arm_has_the_plain_baselines_macs():
  """wg_iso spends the MACs that WG sampling saved on a full-resolution ResBlock: within 10% of lite's."""
  import spectral  # noqa: F401
  size = study.SIZES['small']
  cost = {a: study.arm_cost(study.arm_config('pixel', a, 0, size), 1)[1] for a in ('lite', 'wg', 'wg_iso')}
  assert cost['wg'] < 0.85 * cost['lite']
  assert abs(cost['wg_iso'] / cost['lite'] - 1) < 0.1, cost


def test_smoke_runs_end_to_end_and_reuses(tmp_path):
  out = str(tmp_path / 'smoke')
  study.main(['spectral_study', '--out', out, '--smoke'])
  with open(os.path.join(out, 'study.json')) as f:
    summary = json.load(f)
  assert set(summary['table']) == {'pixel', 'latent'}
  for space in ('pixel', 'latent'):
    for arm in ('teacher', 'wg_distill'):
      row = summary['table'][space][arm]
      assert row['fd']['n'] == 1 and row['fd']['mean'] > 0
  assert os.path.isfile(os.path.join(out, 'study.png'))
  with open(os.path.join(out, 'latent', 'wg_distill', 'seed0', 'result.json')) as f:
    rec = json.load(f)
  assert rec['teacher']['step'] == study.SIZES['smoke']['steps'] and len(rec['teacher']['sha256']) == 64
  assert rec['config']['distill']['teacher_sha256'] == rec['teacher']['sha256']
  assert rec['autoencoder_sha256'] == summary['autoencoder_sha256']
  logs = []
  study.run(out, size_name='smoke', log=logs.append)
  assert sum('reusing' in line for line in logs) == 4
  # Latents from another autoencoder: refused before training.
  lat = os.path.join(out, 'autoencoder', 'latents', 'latents.json')
  with open(lat) as f:
    meta = json.load(f)
  meta['autoencoder']['sha256'] = 'b' * 64
  with open(lat, 'w') as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match='b' * 64):
    study.run(out, size_name='smoke', spaces=('latent',))


def test_result_files_keep_the_old_format_and_old_files_are_reused(tmp_path, monkeypatch):
  """The shared sid2.study.reuse_or_run writes result.json byte-identically to the study's former own
  reuse-or-run block (JSON indent 2, `fingerprint` after `seed`), and a file in that format is reused."""
  import numpy as np
  out = str(tmp_path / 'study')
  size = study.SIZES['smoke']
  config = study.arm_config('pixel', 'teacher', 0, size)
  fake = dict(fd=12.5, precision=0.5, recall=0.25, eps_mse={}, eps_mse_high_mean=0.1, eps_mse_low_mean=0.2,
              sample_seconds=1.0, step=3)
  monkeypatch.setattr(study, 'train_run', lambda config, workdir, log: os.makedirs(workdir) or 7.04)
  monkeypatch.setattr(study, 'arm_cost', lambda config, num_channels: (1000, 2e9))
  monkeypatch.setattr(study, 'score_run',
                      lambda *a: (dict(fake), np.zeros((4, 32, 32, 1), np.float32)))
  study.run(out, size_name='smoke', spaces=('pixel',), arms=('teacher',), log=lambda s: None)
  path = os.path.join(out, 'pixel', 'teacher', 'seed0', 'result.json')
  # What the former block wrote: score_run's keys, then these, in this order, with indent=2.
  old = dict(fake, space='pixel', arm='teacher', seed=0, fingerprint=study.fingerprint(config),
             train_seconds=7.0, params=1000, macs=2e9, size='smoke', teacher=None, autoencoder_sha256=None,
             config=json.loads(config.to_json_best_effort()))
  with open(path) as f:
    assert f.read() == json.dumps(old, indent=2, default=str)
  # A file written in the old format is reused (nothing is trained), and left as it was.
  old['fd'] = 11.0
  with open(path, 'w') as f:
    json.dump(old, f, indent=2, default=str)
  before = open(path).read()
  monkeypatch.setattr(study, 'train_run', lambda *a: pytest.fail('a finished run was retrained'))
  logs = []
  summary = study.run(out, size_name='smoke', spaces=('pixel',), arms=('teacher',), log=logs.append)
  assert f'[pixel/teacher/seed0] reusing {path}: FD 11.00' in logs
  assert summary['table']['pixel']['teacher']['fd']['mean'] == 11.0
  assert open(path).read() == before
