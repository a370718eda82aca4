"""config.max_train_seconds / config.train_clock (sid2.train_clock, issue 18): the budget stops a run with a
checkpoint and a sample grid, survives resumption, and bad values fail before any compute."""
import json
import os

import pytest

from sid2 import config_lib, trainer, train_clock
from tests.train_utils import tiny_config


class FakeTime:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


def test_clock_carries_seconds_across_resumption(tmp_path, monkeypatch):
  wall, cpu = FakeTime(), FakeTime()
  monkeypatch.setitem(train_clock._NOW, 'wall', wall)
  monkeypatch.setitem(train_clock._NOW, 'process', cpu)
  cfg = tiny_config(max_train_seconds=10.0, train_clock='process')
  c = train_clock.TrainClock(str(tmp_path), cfg)
  c.resume(0)
  wall.t += 3.0
  cpu.t += 6.0
  assert c.seconds() == 6.0 and c.seconds('wall') == 3.0 and not c.exhausted()
  c.mark(3)
  cpu.t += 2.0
  c.mark(5)
  # A new invocation that restored checkpoint 3 continues from its seconds, not from 5's.
  again = train_clock.TrainClock(str(tmp_path), cfg)
  again.resume(3)
  assert again.seconds() == 6.0 and again.seconds('wall') == 3.0
  assert sorted(again.record['steps']) == ['3']
  cpu.t += 4.0
  assert again.exhausted()
  again.mark(4, stopped=True)
  rec = train_clock.read(str(tmp_path))
  assert rec['stopped_by_budget'] == 4 and rec['steps']['4'] == {'wall': 3.0, 'process': 10.0}
  assert rec['clock'] == 'process' and rec['budget'] == 10.0


def test_budget_stops_with_checkpoint_and_samples_and_resume_trains_nothing(tmp_path):
  workdir = str(tmp_path / 'run')
  # 1 µs: exhausted once the first step has run (the clock starts before compilation).
  cfg = tiny_config(max_train_seconds=1e-6, train_clock='wall', total_steps=6, checkpoint_every=3)
  state = trainer.train_and_evaluate(cfg, workdir)
  assert int(state.step) == 1
  assert '1' in os.listdir(os.path.join(workdir, 'checkpoints'))
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_1.png'))
  rec = train_clock.read(workdir)
  assert rec['stopped_by_budget'] == 1 and rec['steps']['1']['wall'] > 0 and rec['steps']['1']['process'] > 0
  again = trainer.train_and_evaluate(cfg, workdir)
  assert int(again.step) == 1
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['1']
  # A larger budget continues the run from the seconds already spent.
  more = trainer.train_and_evaluate(tiny_config(max_train_seconds=1e6, total_steps=6, checkpoint_every=3),
                                    workdir)
  assert int(more.step) == 6
  rec = train_clock.read(workdir)
  assert rec['steps']['6']['wall'] > rec['steps']['1']['wall'] and rec['stopped_by_budget'] is None


def test_without_budget_the_clock_is_recorded(tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(tiny_config(**{'sampler.num_samples': 0}), workdir)
  rec = train_clock.read(workdir)
  assert sorted(rec['steps'], key=int) == ['3', '6'] and rec['budget'] == 0 and rec['stopped_by_budget'] is None
  assert rec['steps']['6']['wall'] >= rec['steps']['3']['wall']


@pytest.mark.parametrize('field,value,match', [
    ('max_train_seconds', -1.0, 'max_train_seconds must be a number >= 0'),
    ('train_clock', 'cpu', "train_clock must be one of \\('wall', 'process'\\)"),
])
def test_bad_budget_fields_fail_validation(field, value, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(tiny_config(**{field: value}))
