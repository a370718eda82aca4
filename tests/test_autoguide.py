"""Autoguidance from the command line (SiD2 B.5): --guide_workdir / --guide_step of experiments.sample, evaluate,
export and experiments.autoguide_table.

A tiny class-conditional run (2 training steps, a checkpoint at each) is the model; its step-1 checkpoint and
a 1-step run of a narrower config are the guides. Closed forms: a guide equal to the model changes nothing
(x_good - x_bad = 0); w = 0 is the unguided sampler; and with ONE sampler step the sample is the clipped x
prediction at the initial noise, so autoguided = good + w (good - bad) where good / bad are the unguided
one-step samples of the model / the guide from the same keys.
"""
import json
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import autoguide_table
from experiments import evaluate as evaluate_cli
from experiments import export as export_cli
from experiments import sample as sample_cli
from sid2 import export as export_lib
from sid2 import generation
from sid2 import restore
from sid2 import sample_fns
from sid2 import sampling
from sid2 import trainer
from tests.train_utils import tiny_config

STEPS = '4'


@pytest.fixture(autouse=True)
def no_tensorboard(monkeypatch):
  """clu's TensorBoard writer imports TensorFlow's summary ops: replaced by a no-op."""
  monkeypatch.setattr('sid2.eval.evaluation._write_scalars', lambda wd, step, v: None)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp('autoguide')
  workdir = str(root / 'run')
  trainer.train_and_evaluate(tiny_config(checkpoint_every=1, eval_every=1000), workdir, stop_after=2)
  assert restore.checkpoint_steps(workdir) == [1, 2]
  small = str(root / 'small')  # "a run of a smaller config": narrower transformer, other parameter shapes
  trainer.train_and_evaluate(tiny_config(checkpoint_every=1, eval_every=1000,
                                         **{'model.transformer_channels': 16}), small, stop_after=1)
  return types.SimpleNamespace(root=root, workdir=workdir, small=small)


def _sample(run, name, *flags, seed=1, num=4, steps=STEPS):
  out = str(run.root / f'{name}.npz')
  images, _, record = sample_cli.main(['sample', '--workdir', run.workdir, '--num_samples', str(num),
                                       '--batch_size', '4', '--num_steps', steps, '--seed', str(seed),
                                       '--out', out] + list(flags))
  return images, record


def _copy_workdir(run, name, edit):
  dst = run.root / name
  dst.mkdir()
  config = json.load(open(os.path.join(run.workdir, 'config.json')))
  edit(config)
  json.dump(config, open(dst / 'config.json', 'w'))
  shutil.copytree(os.path.join(run.workdir, 'checkpoints'), dst / 'checkpoints')
  return str(dst)


def _sha(workdir, step):
  return export_lib.params_sha256(restore.load_ema_params(workdir, step)[0])


# ---------------------------------------------------------------------------------------------------------
# (a) guide == the model: the unguided samples for every w.

def test_guide_equal_to_the_model_gives_the_unguided_samples(run):
  unguided, rec0 = _sample(run, 'unguided', '--guidance', '0')
  assert 'guide' not in rec0  # unguided records are unchanged
  for w, interval in ((2.0, 'none'), (-0.7, '-3,5'), (5.0, '-100,100')):
    guided, rec = _sample(run, 'self_guided', '--guide_workdir', run.workdir, '--guide_step', '2',
                          '--guidance', str(w), f'--guidance_interval={interval}')
    np.testing.assert_array_equal(guided, unguided)  # bitwise: x_good - x_bad = 0 exactly
    assert rec['guide'] == dict(workdir=os.path.abspath(run.workdir), step=2, params_sha256=rec0['params_sha256'])
    assert rec['guidance'] == w
  # Another checkpoint as the guide at the same w does change the samples (the equality is not vacuous).
  other, _ = _sample(run, 'other_guided', '--guide_workdir', run.workdir, '--guide_step', '1',
                     '--guidance', '2.0')
  assert np.abs(other - unguided).max() > 1e-3


# ---------------------------------------------------------------------------------------------------------
# (b) another checkpoint or a smaller run as the guide.

def test_w0_is_unguided_and_one_step_samples_follow_the_closed_form(run):
  for guide in ([run.workdir, '--guide_step', '1'], [run.small]):
    unguided, _ = _sample(run, 'unguided4', '--guidance', '0')
    same, _ = _sample(run, 'w0', '--guide_workdir', *guide, '--guidance', '0')
    np.testing.assert_array_equal(same, unguided)  # w = 0 skips the guide (lax.cond): bitwise
    guided, rec = _sample(run, 'w1', '--guide_workdir', *guide, '--guidance', '1')
    assert np.abs(guided - unguided).max() > 1e-3
    assert rec['guide']['step'] == 1 and rec['guide']['workdir'] == os.path.abspath(guide[0])

  # One step, no clipping: the sample is x_hat(z_T) = x_good + w (x_good - x_bad).
  one = ('--clip_x', 'none', '--guidance_interval=none')
  good, rec = _sample(run, 'good1', '--guidance', '0', *one, steps='1')
  assert np.abs(good).max() < 0.9  # the final clip to [-1, 1] does not act
  for guide_workdir, guide_step in ((run.workdir, 1), (run.small, 1)):
    bad, _, _ = sample_cli.main(['sample', '--workdir', guide_workdir, '--step', str(guide_step),
                                 '--num_samples', '4', '--batch_size', '4', '--num_steps', '1', '--seed', '1',
                                 '--guidance', '0', *one, '--out', str(run.root / 'bad1.npz')])
    assert np.abs(good - bad).max() > 1e-3  # the guide predicts something else
    for w in (0.5, 3.0):
      guided, _ = _sample(run, 'guided1', '--guide_workdir', guide_workdir, '--guide_step', str(guide_step),
                          '--guidance', str(w), *one, steps='1')
      np.testing.assert_allclose(guided, good + w * (good - bad), rtol=0, atol=2e-6)


def test_smaller_guide_is_outside_the_interval_only_where_asked(run):
  """An interval containing no sampler logSNR is unguided; one containing all of them equals 'none'."""
  unguided, _ = _sample(run, 'u', '--guidance', '0')
  empty, _ = _sample(run, 'empty', '--guide_workdir', run.small, '--guidance', '2', '--guidance_interval=50,60')
  np.testing.assert_array_equal(empty, unguided)
  everywhere, _ = _sample(run, 'all', '--guide_workdir', run.small, '--guidance', '2',
                          '--guidance_interval=-1000,1000')
  constant, _ = _sample(run, 'const', '--guide_workdir', run.small, '--guidance', '2', '--guidance_interval=none')
  np.testing.assert_array_equal(everywhere, constant)
  assert np.abs(constant - unguided).max() > 1e-4


class _AffineModel:
  """A stand-in network in x-parametrisation: x_hat = a z + b[label] (b[0] without labels)."""

  def apply(self, variables, z, logsnr, labels, train=False):
    del logsnr, train
    p = variables['params']
    shift = p['b'][0] if labels is None else p['b'][labels].reshape((-1,) + (1,) * (z.ndim - 1))
    return p['a'] * z + shift


def test_trainer_autoguided_sampler_closed_form_with_the_same_labels():
  """One step, no clipping: the sample is (1 + w) x_good(z_T) - w x_bad(z_T), the bad model given the same
  labels (a label-dependent shift per model makes a wrong or missing conditioning visible)."""
  config = tiny_config(parametrization='x', **{'sampler.num_steps': 1, 'sampler.clip_x': 'none'})
  model, n, labels = _AffineModel(), 3, jnp.asarray([2, 0, 7], jnp.int32)
  fn = sample_fns.make_autoguided_sample_fn(model, model, config, config, n, 1)
  good = dict(a=jnp.float32(0.5), b=jnp.arange(10, dtype=jnp.float32) / 10)
  bad = dict(a=jnp.float32(-0.25), b=jnp.arange(10, dtype=jnp.float32) ** 2 / 50)
  identity = dict(a=jnp.float32(1.0), b=jnp.zeros(10, jnp.float32))
  key = jax.random.PRNGKey(3)
  args = lambda w, lo=-jnp.inf, hi=jnp.inf: (key, labels, jnp.float32(w), jnp.float32(lo), jnp.float32(hi))
  z = np.asarray(fn((identity, identity), *args(0.0)))  # x_hat = z: the initial noise itself
  assert z.shape == (n, 32, 32, 1) and 0.5 < z.std() < 2
  shift = lambda p: np.asarray(p['b'])[np.asarray(labels)][:, None, None, None]
  x_good = 0.5 * z + shift(good)
  x_bad = -0.25 * z + shift(bad)
  for w in (0.0, 0.5, 2.0):
    np.testing.assert_allclose(fn((good, bad), *args(w)), x_good + w * (x_good - x_bad), rtol=0, atol=1e-5)
  # The first (and only) logSNR is about -10 at t = 1: outside (-3, 5), so no guidance there.
  np.testing.assert_allclose(fn((good, bad), *args(2.0, -3.0, 5.0)), x_good, rtol=0, atol=1e-6)
  # Unconditional: both models without labels.
  uncond = tiny_config(parametrization='x', **{'sampler.num_steps': 1, 'sampler.clip_x': 'none',
                                               'model.num_classes': 0})
  fn_u = sample_fns.make_autoguided_sample_fn(model, model, uncond, uncond, n, 1)
  x_good_u, x_bad_u = 0.5 * z + 0.0, -0.25 * z + 0.0  # b[0] = 0 for both
  np.testing.assert_allclose(fn_u((good, bad), *args(1.5)), x_good_u + 1.5 * (x_good_u - x_bad_u), rtol=0,
                             atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# (c) a guide of another task fails before anything is restored or sampled, naming each field.

def _no_compute(monkeypatch):
  def no_compute(*args, **kwargs):
    raise AssertionError('compute reached')
  for name in ('load', 'sample_fn', 'autoguided_sample_fn', '_cached_autoguided_sample_fn', '_cached_sample_fn'):
    monkeypatch.setattr(restore, name, no_compute)


@pytest.mark.parametrize('edit, messages', [
    (lambda c: c.update(image_res=16), ['image_res: model 32, guide 16']),
    (lambda c: c['model'].update(num_classes=0), ['model.num_classes: model 10, guide 0']),
    (lambda c: c.update(parametrization='eps'), ["parametrization: model 'v', guide 'eps'"]),
    (lambda c: c.update(schedule='cosine_shifted_64'), ["schedule: model 'cosine_interpolated', guide "
                                                       "'cosine_shifted_64'"]),
    (lambda c: c.update(num_channels=3, image_res=64), ['image_res: model 32, guide 64',
                                                         'num_channels: model 1, guide 3']),
])
def test_mismatched_guide_is_refused_before_sampling(run, monkeypatch, edit, messages):
  bad = _copy_workdir(run, f'bad_{len(os.listdir(run.root))}', edit)
  _no_compute(monkeypatch)
  commands = [
      lambda: sample_cli.main(['sample', '--workdir', run.workdir, '--out', str(run.root / 'x.png'),
                               '--guide_workdir', bad, '--guidance', '1']),
      lambda: evaluate_cli.main(['evaluate', '--workdir', run.workdir, '--num_samples', '4',
                                 '--guide_workdir', bad, '--guidance', '1']),
      lambda: export_cli.main(['export', '--workdir', run.workdir, '--out', str(run.root / 'x_export'),
                               '--guide_workdir', bad, '--platforms', 'cpu']),
  ]
  for command in commands:
    with pytest.raises(ValueError) as e:
      command()
    text = str(e.value)
    assert 'does not fit the model' in text and bad in text
    for m in messages:
      assert m in text
  assert not os.path.exists(run.root / 'x_export')


def test_check_guide_names_every_difference_including_restored_channels(run):
  config = restore.load_config(run.workdir)
  assert restore.guide_mismatches(config, config) == []
  assert restore.guide_mismatches(config, restore.load_config(run.small)) == []  # narrower, same task
  other = json.loads(config.to_json())
  other.update(image_res=16, parametrization='x')
  other['model']['num_classes'] = 3
  import ml_collections
  other = ml_collections.ConfigDict(other)
  assert restore.guide_mismatches(config, other) == [('image_res', 32, 16), ('parametrization', 'v', 'x'),
                                                     ('model.num_classes', 10, 3)]
  with pytest.raises(ValueError, match=r'num_channels: model 1, guide 3'):
    restore.check_guide(config, config, 1, 3)  # the channels found when the checkpoints are restored


@pytest.mark.parametrize('flags, message', [
    (['--guide_step', '1'], 'guide_step needs guide_workdir'),
    (['--guide_workdir', 'GUIDE'], 'give guidance w explicitly'),
    (['--guide_workdir', 'GUIDE', '--guide_step', '7', '--guidance', '1'], r'guide_step=7 is not a checkpoint.*'
                                                                         r'\[1, 2\]'),
    (['--guide_workdir', 'GUIDE', '--guide_step', '-1', '--guidance', '1'], 'guide_step must be a non-negative'),
])
def test_bad_guide_flags_fail_before_any_compute(run, monkeypatch, flags, message):
  _no_compute(monkeypatch)
  flags = [run.workdir if f == 'GUIDE' else f for f in flags]
  with pytest.raises(ValueError, match=message):
    sample_cli.main(['sample', '--workdir', run.workdir, '--out', str(run.root / 'bad.png')] + flags)
  with pytest.raises(FileNotFoundError, match='config.json'):
    sample_cli.main(['sample', '--workdir', run.workdir, '--out', str(run.root / 'bad.png'), '--guidance', '1',
                     '--guide_workdir', str(run.root / 'nowhere')])


# ---------------------------------------------------------------------------------------------------------
# (d) the settings JSON records the guide; --settings reproduces and checks its parameters.

def test_settings_round_trip_and_a_changed_guide_is_refused(run, monkeypatch):
  out = str(run.root / 'guided.npz')
  images, _, record = sample_cli.main(
      ['sample', '--workdir', run.workdir, '--num_samples', '5', '--batch_size', '4', '--num_steps', STEPS,
       '--guide_workdir', run.small, '--guidance', '1.5', '--guidance_interval=-3,5', '--seed', '4',
       '--out', out])
  logged = json.load(open(out + '.json'))
  assert logged == record
  assert logged['guide'] == dict(workdir=os.path.abspath(run.small), step=1, params_sha256=_sha(run.small, 1))
  assert logged['guidance'] == 1.5 and logged['guidance_interval'] == [-3.0, 5.0]
  again, _, again_record = sample_cli.main(['sample', '--settings', out + '.json',
                                            '--out', str(run.root / 'again.npz')])
  np.testing.assert_array_equal(again, images)  # bitwise
  assert again_record['guide'] == logged['guide']
  with pytest.raises(ValueError, match='only --out and --workdir'):
    sample_cli.main(['sample', '--settings', out + '.json', '--out', str(run.root / 'x.npz'),
                     '--guide_workdir', run.workdir])

  def no_sampling(*args, **kwargs):
    raise AssertionError('sampling reached')
  monkeypatch.setattr(generation.Generator, 'chunk', no_sampling)
  for change in (dict(params_sha256='0' * 64),                                        # a tampered digest
                 dict(workdir=os.path.abspath(run.workdir), step=1)):                 # another guide, old digest
    tampered = dict(logged, guide=dict(logged['guide'], **change))
    path = run.root / 'tampered.json'
    path.write_text(json.dumps(tampered))
    with pytest.raises(ValueError, match=r"the guide's parameters .* are not those recorded"):
      sample_cli.main(['sample', '--settings', str(path), '--out', str(run.root / 'tampered.npz')])
  path.write_text(json.dumps(dict(logged, guide=dict(logged['guide'], extra=1))))
  with pytest.raises(ValueError, match=r"unknown guide field\(s\) \['extra'\]"):
    sample_cli.main(['sample', '--settings', str(path), '--out', str(run.root / 'tampered.npz')])


def test_evaluate_records_the_guide(run, tmp_path):
  from sid2.eval import evaluation
  raw = dict(workdir=run.workdir, step=2, num_samples=4, batch_size=4, sampler=None, num_steps=int(STEPS),
             clip_x=None, logvar_type=None, eta=None, guidance=1.0, guidance_interval=None, seed=0)
  ctx = evaluation.Context(raw, compute_pr=False, log=lambda s: None)
  plain = ctx.settings(2)
  guided = ctx.settings(2, guide_workdir=run.workdir, guide_step=1)
  assert 'guide' not in plain and guided['guide']['step'] == 1
  assert evaluation.cache_key(plain, ctx) != evaluation.cache_key(guided, ctx)


# ---------------------------------------------------------------------------------------------------------
# (e) export with a guide: the guide's parameters ship beside the model's and the sampler takes both.

def test_export_with_a_guide_runs_and_matches_the_in_process_sampler(run):
  out = str(run.root / 'export_guided')
  summary = export_cli.main(['export', '--workdir', run.workdir, '--out', out, '--export_num_samples', '4',
                             '--export_num_steps', STEPS, '--platforms', 'cpu', '--guide_workdir', run.small])
  assert sorted(os.listdir(out)) == ['config.json', 'guide_config.json', 'guide_params.safetensors',
                                     'params.safetensors', 'sampler.jaxexport', 'sampler.jaxexport.json']
  info = json.load(open(os.path.join(out, 'sampler.jaxexport.json')))
  sha = _sha(run.small, 1)
  assert info['guide']['step'] == 1 and info['guide']['params_sha256'] == sha == summary['guide']['params_sha256']
  assert info['guidance'] is None and info['arguments'][0].startswith('(params, guide_params)')
  params, config = export_lib.load(out)
  guide_params, guide_config = export_lib.load_guide(out)
  assert info['num_param_arrays'] == len(jax.tree.leaves(params))
  assert info['guide']['num_param_arrays'] == len(jax.tree.leaves(guide_params))
  assert export_lib.params_sha256(guide_params) == sha and guide_config.model.transformer_channels == 16
  sampler = export_lib.load_sampler(out)
  labels = [5, 6, 7, 8]
  x = np.asarray(sampler(params, 7, labels=labels, guidance=1.5, interval=(-3.0, 5.0), guide_params=guide_params))
  flat, _ = export_lib.load_params(os.path.join(out, 'guide_params.safetensors'), flat=True)
  x_flat = np.asarray(sampler(params, 7, labels=labels, guidance=1.5, interval=(-3.0, 5.0), guide_params=flat))
  s_cfg = restore.override_sampler(config, num_steps=int(STEPS))
  fn = restore.autoguided_sample_fn(s_cfg, guide_config, 4, 1)
  want = np.asarray(fn((params, guide_params), jax.random.PRNGKey(7), jnp.asarray(labels, jnp.int32),
                       jnp.float32(1.5), jnp.float32(-3.0), jnp.float32(5.0)))
  np.testing.assert_array_equal(x, want)  # single-platform export: bitwise
  np.testing.assert_array_equal(x_flat, want)
  # The closed form through the export: the model as its own guide is the unguided sampler.
  plain = restore.sample_fn(s_cfg, 4, 1)
  unguided = np.asarray(plain(params, jax.random.PRNGKey(7), jnp.asarray(labels, jnp.int32), jnp.float32(0.0),
                              jnp.float32(-3.0), jnp.float32(5.0)))
  self_guided = restore.autoguided_sample_fn(s_cfg, config, 4, 1)
  np.testing.assert_allclose(np.asarray(self_guided((params, params), jax.random.PRNGKey(7),
                                           jnp.asarray(labels, jnp.int32), jnp.float32(1.5), jnp.float32(-3.0),
                                           jnp.float32(5.0))), unguided, rtol=0, atol=1e-6)
  assert np.abs(x - unguided).max() > 1e-4
  with pytest.raises(ValueError, match='autoguided: pass guide_params'):
    sampler(params, 7, guidance=1.0)
  with pytest.raises(ValueError, match='give guidance=w'):
    sampler(params, 7, guide_params=guide_params)
  unguided_sampler = export_lib.ExportedSampler(None, dict(num_samples=4, guidance=1.0))
  with pytest.raises(ValueError, match='not autoguided'):
    unguided_sampler(params, 7, guide_params=guide_params)
  with pytest.raises(FileNotFoundError, match='not an autoguided export'):
    export_lib.load_guide(str(run.root))


# ---------------------------------------------------------------------------------------------------------
# experiments.autoguide_table: a few samples, resumable.

def test_autoguide_table_smoke_and_resume(run, monkeypatch, capsys):
  from experiments import reference_stats
  from sid2.eval import evaluation
  ref = str(run.root / 'ref.npz')
  try:
    reference_stats.run(tiny_config(**{'dataset.split': 'test'}), features='fmnist', out=ref, num=40,
                        batch_size=20, pr_cap=10, log=lambda s: None)
  except FileNotFoundError as e:
    pytest.skip(f'Fashion-MNIST not installed: {e}')
  out = str(run.root / 'table.json')
  argv = ['autoguide_table', '--workdir', run.workdir, '--guide_step', '1', '--strengths', '0.5,1',
          '--num_samples', '4', '--batch_size', '4', '--seeds', '0,1', '--num_steps', '2', '--ref', ref,
          '--out', out]
  scored = []
  real_score = evaluation.score
  monkeypatch.setattr(evaluation, 'score',
                      lambda *a, **k: scored.append(k.get('overrides')) or real_score(*a, **k))
  table = autoguide_table.main(argv)
  assert [r['id'] for r in table['rows']] == ['none', 'cfg', 'cfg_interval', 'autoguidance_0.5', 'autoguidance_1']
  assert len(scored) == 10 and table['step'] == 2 and table['guide']['step'] == 1
  for r in table['rows']:
    fds = r['fd']['values']
    assert r['fd']['n'] == 2 and all(np.isfinite(fds)) and min(fds) > 0 and fds[0] != fds[1]
    assert r['fd']['mean'] == pytest.approx(np.mean(fds)) and r['fd']['std'] == pytest.approx(np.std(fds, ddof=1))
  rows = {r['id']: r for r in table['rows']}
  assert rows['cfg_interval']['interval'] == [-3.0, 5.0] and rows['cfg']['interval'] is None
  stored = json.load(open(out))
  guided = stored['results'][rows['autoguidance_1']['keys'][0]]
  assert guided['sampling']['guide']['step'] == 1 and guided['sampling']['guidance'] == 1.0
  assert stored['results'][rows['cfg']['keys'][0]]['sampling'].get('guide') is None
  assert '| autoguidance | 0.5 |' in capsys.readouterr().out and open(out + '.md').read() == stored['markdown']
  # The 'none' row at seed 0 is experiments.evaluate's FD for the same settings.
  same = evaluate_cli.evaluate(dict(workdir=run.workdir, step=2, num_samples=4, batch_size=4, sampler=None,
                                    num_steps=2, clip_x=None, logvar_type=None, eta=None, guidance=0.0,
                                    guidance_interval='none', seed=0), ref=ref, compute_pr=False,
                               log=lambda s: None)
  assert rows['none']['fd']['values'][0] == pytest.approx(same['fd'], rel=1e-6)
  # Rerun: everything stored; a new strength scores only its own seeds.
  scored.clear()  # (experiments.evaluate's call above was one)
  again = autoguide_table.main(argv)
  assert scored == [] and again['rows'] == table['rows']
  more = autoguide_table.main([a if a != '0.5,1' else '0.5,1,2' for a in argv])
  assert [o['guidance'] for o in scored] == [2.0, 2.0] and [o['seed'] for o in scored] == [0, 1]
  assert more['rows'][:5] == table['rows'] and more['rows'][5]['id'] == 'autoguidance_2'
  with pytest.raises(ValueError, match='the guide is the model itself'):
    autoguide_table.main(argv[:3] + ['--guide_step', '2'] + argv[5:])
