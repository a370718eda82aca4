"""experiments.recipe_study (issue 18): bad settings fail before training; the smoke study trains every recipe
for its time budget, scores it at the budget and at the fixed step, writes the table and reuses finished runs."""
import json
import os

import pytest

from experiments import recipe_study as rs


def test_bad_settings_fail_before_any_training(tmp_path):
  out = tmp_path / 'bad'
  with pytest.raises(ValueError, match="unknown recipe 'nope'"):
    rs.main(['x', f'--out={out}', '--recipes=sid2_default,nope'])
  with pytest.raises(ValueError, match='--budget must be > 0'):
    rs.main(['x', f'--out={out}', '--budget=0'])
  with pytest.raises(ValueError, match='--seeds must be distinct'):
    rs.main(['x', f'--out={out}', '--seeds=1,1'])
  assert not out.exists()


def test_every_recipe_is_a_valid_budgeted_unconditional_config():
  from sid2 import config_lib
  for name in rs.RECIPES:
    c = rs.recipe_config(name, 0, budget=60.0, clock='process', fixed_step=400)
    config_lib.validate_config(c)
    assert c.model.num_classes == 0 and c.max_train_seconds == 60.0 and c.keep_every == 400


def test_smoke_study_end_to_end_and_reuse(tmp_path):
  out = str(tmp_path / 'study')
  summary = rs.main(['x', f'--out={out}', '--smoke'])
  table = summary['table']
  assert set(table) == {'sid2_default', 'reference_recipe'}
  for name, row in table.items():
    assert row['budget_fd']['n'] == 2 and row['fixed_fd']['n'] == 2
    assert row['steps_reached']['mean'] >= 1
    for seed in (0, 1):
      rec = json.load(open(os.path.join(out, name, f'seed{seed}', 'result.json')))
      assert rec['stopped_by_budget'] == rec['steps_reached']  # the budget, not the step cap, ended it
      assert rec['fixed_score']['step'] == 1
  # The control: real train images vs real test images score far better than 2-step samples of a tiny model.
  assert summary['control']['fd'] < min(r['budget_fd']['mean'] for r in table.values())
  assert os.path.isfile(os.path.join(out, 'recipe_study.png'))
  assert 'control: real train vs test images' in summary['markdown']
  logs = []
  again = rs.run(
      out, ['sid2_default', 'reference_recipe'], [0, 1], budget=4.0, clock='wall', fixed_step=1, num_samples=8,
      sample_steps=2, batch_size=8, smoke=True, log=logs.append)
  assert sum('reusing' in line for line in logs) == 4
  assert again['table']['sid2_default']['budget_fd'] == table['sid2_default']['budget_fd']


def test_default_config_is_sid2_recipe_in_the_winning_shape():
  """configs/fashion_mnist.py = configs/fashion_mnist_sid2.py with the uvit_small shape and guidance on the
  logSNR interval (-3, 5), nothing else."""
  from configs import fashion_mnist, fashion_mnist_sid2
  default, sid2 = fashion_mnist.get_config().to_dict(), fashion_mnist_sid2.get_config().to_dict()
  assert tuple(default['sampler'].pop('guidance_interval')) == (-3.0, 5.0)
  sid2['sampler'].pop('guidance_interval')
  changed = {f'model.{k}' for k in default['model'] if default['model'][k] != sid2['model'][k]}
  changed |= {k for k in default if k not in ('model', 'description') and default[k] != sid2[k]}
  assert changed == {k for k, v in rs.UVIT_SMALL.items() if sid2['model'][k.split('.')[1]] != v}
  for k, v in rs.UVIT_SMALL.items():
    assert tuple(default['model'][k.split('.')[1]]) == v if isinstance(v, tuple) else default['model'][k.split('.')[1]] == v
