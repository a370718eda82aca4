"""experiments.compare_weightings: validation before compute, and a tiny end-to-end run (SiD2 Fig. 13/14)."""
import json
import os

import pytest

from experiments import compare_weightings as cw
from tests.train_utils import tiny_config


def test_workdir_names_and_run_config():
  assert cw.workdir_name('sigmoid:-1:2.55:800') == 'sigmoid_-1_2.55_800'
  c = cw.run_config(tiny_config(), 'edm_monotonic', 30, 10)
  assert (c.loss_type, c.total_steps, c.checkpoint_every, c.keep_checkpoints) == ('edm_monotonic', 30, 10, 4)
  assert c.sampler.guidance == 0.0 and c.sampler.num_samples == 0


@pytest.mark.parametrize('kwargs,field', [
    (dict(loss_types=['sigmoid:2.55', 'not_a_loss']), 'loss_type'),
    (dict(loss_types=['elbo', 'elbo']), 'distinct'),
    (dict(eval_every=5, steps=4), 'eval_every'),
    (dict(num_samples=1), 'num_samples'),
])
def test_bad_settings_fail_before_training(tmp_path, kwargs, field):
  args = dict(loss_types=['sigmoid:2.55'], steps=4, eval_every=2, num_samples=8)
  args.update(kwargs)
  with pytest.raises(ValueError, match=field):
    cw.run(tiny_config(), args.pop('loss_types'), out=str(tmp_path), **args)
  assert not os.listdir(tmp_path)


def test_tiny_comparison_end_to_end_and_resume(tmp_path):
  base = tiny_config(**{'optimizer.warmup_steps': 1})
  lt = 'sigmoid:-1:2.55:800'  # the time-shifted bias: the step-dependent weighting path
  kwargs = dict(steps=2, eval_every=1, num_samples=8, batch_size=8, num_steps=2, out=str(tmp_path),
                compute_pr=False)
  result = cw.run(base, [lt], log=lambda *a: None, **kwargs)
  with open(tmp_path / 'compare_weightings.json') as f:
    assert json.load(f) == json.loads(json.dumps(result))
  assert os.path.getsize(tmp_path / 'compare_weightings.png') > 0
  evals = result['runs'][lt]['evals']
  assert [e['step'] for e in evals] == [1, 2] and all(e['fd'] > 0 for e in evals)
  workdir = result['runs'][lt]['workdir']
  assert sorted(os.listdir(os.path.join(workdir, 'eval'))) == ['fd_1.json', 'fd_2.json']
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['loss_type'] == lt and saved['sampler']['guidance'] == 0.0 and saved['total_steps'] == 2
  # A second call trains nothing and reuses the stored evaluations (same settings): no sampling.
  lines = []
  again = cw.run(base, [lt], log=lines.append, **kwargs)
  assert again['runs'][lt]['evals'] == evals
  assert not any('sampling' in str(line) for line in lines)
