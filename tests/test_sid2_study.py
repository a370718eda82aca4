"""experiments.sid2_study (issue 17): bad settings fail before training; each arm changes only what its claim
tests; the verdict rule; the smoke study trains, scores (a 64x64 arm included), writes its table and plot and
reuses finished runs."""
import json
import os

import pytest

from experiments import sid2_study as ss


def test_bad_settings_fail_before_any_training(tmp_path):
  out = tmp_path / 'bad'
  with pytest.raises(ValueError, match="unknown claim 'nope'"):
    ss.main(['x', f'--out={out}', '--claims=weighting,nope'])
  with pytest.raises(ValueError, match='--seeds must be distinct'):
    ss.main(['x', f'--out={out}', '--seeds=1,1'])
  with pytest.raises(ValueError, match='--points <= --steps'):
    ss.main(['x', f'--out={out}', '--steps=3', '--points=5'])
  with pytest.raises(ValueError, match="unknown arm 'x'"):
    ss.arm_config('x', 0, ss.SIZES['default'])
  assert not out.exists()


def _flat(config):
  d = config.to_dict()
  out = {k: v for k, v in d.items() if k != 'model'}
  out.update({f'model.{k}': v for k, v in d['model'].items()})
  return out


def test_each_arm_changes_only_what_its_claim_tests():
  from sid2 import config_lib
  size = ss.SIZES['default']
  base = _flat(ss.arm_config('sigmoid', 0, size))
  assert base['loss_type'] == 'sigmoid:2.55' and base['model.num_classes'] == 0 and base['image_res'] == 32
  ignore = {'description'}
  for arm, (_, overrides) in ss.ARMS.items():
    c = ss.arm_config(arm, 0, size)
    config_lib.validate_config(c)
    flat = _flat(c)
    changed = {k for k in flat if k not in ignore and flat[k] != base[k]}
    assert changed == {k for k, v in overrides.items() if base[k] != v} | (
        {'loss_type'} if arm == 'sigmoid_time_shifted' else set()), arm
  # C.2's bias rises from 4 below the final one over the first 20% of the steps.
  assert ss.arm_config('sigmoid_time_shifted', 0, size).loss_type == 'sigmoid:-1.45:2.55:120'
  # The 64x64 arms spend (nearly) the 32x32 model's compute: patch 4 keeps every feature map the same size.
  g32 = ss.forward_gflops(ss.arm_config('sigmoid', 0, size))
  for arm in ('res64_unshifted', 'res64_shifted', 'res64_shifted_b6'):
    assert abs(ss.forward_gflops(ss.arm_config(arm, 0, size)) / g32 - 1) < 0.1
  assert ss.BIAS_64 == 1.16 and ss.BIAS_64_B6 == 1.5
  # The curve arms are scored at evenly spaced kept checkpoints, the others at the end.
  assert ss.score_steps(600, 5, True) == [120, 240, 360, 480, 600] and ss.score_steps(600, 5, False) == [600]
  c = ss.arm_config('edm_monotonic', 0, size)
  assert c.keep_every == 120 and c.checkpoint_every == 120 and c.total_steps == 600


def test_verdict_rule():
  agg = lambda m, s, n=3: dict(mean=m, std=s, n=n)
  assert ss.verdict(agg(10, 1), agg(13, 1)) == 'reproduced'
  assert ss.verdict(agg(13, 1), agg(10, 1)) == 'reversed'
  assert ss.verdict(agg(10, 1), agg(11.5, 1)) == 'not distinguishable at this scale'
  assert ss.verdict(agg(10, 0, 1), agg(20, 0, 1)) == 'no verdict from one seed'
  assert ss.welch_t(agg(10, 1), agg(13, 1)) == pytest.approx(3 / (2 / 3) ** 0.5)


def test_smoke_study_end_to_end_and_reuse(tmp_path):
  out = str(tmp_path / 'study')
  summary = ss.main(['x', f'--out={out}', '--smoke'])
  arms = summary['table']['arms']
  assert set(arms) == set(ss.arms_of(('weighting', 'resolution')))
  # The weighting claim is a curve (FD at every kept checkpoint), the resolution claim is scored at the end.
  assert list(arms['sigmoid']['at']) == ['2', '4'] and list(arms['res64_shifted']['at']) == ['4']
  assert arms['res64_shifted']['image_res'] == 64
  for arm, row in arms.items():
    assert row['fd']['n'] == 1 and row['steps'] == 4
    rec = json.load(open(os.path.join(out, arm, 'seed0', 'result.json')))
    assert rec['steps'] == 4 and rec['wall_seconds'] > 0
  assert [v['verdict'] for v in summary['table']['verdicts']] == ['no verdict from one seed'] * 3
  assert summary['control']['fd'] < min(r['fd']['mean'] for r in arms.values())
  assert os.path.isfile(os.path.join(out, 'sid2_study.png'))
  assert json.load(open(os.path.join(out, 'sid2_study.json')))['markdown'] == summary['markdown']
  logs = []
  again = ss.run(out, ('weighting', 'resolution'), (0,), dict(ss.SIZES['smoke'], claims=None), log=logs.append)
  assert sum('reusing' in line for line in logs) == len(arms)
  assert again['table']['arms']['sigmoid']['fd'] == arms['sigmoid']['fd']
