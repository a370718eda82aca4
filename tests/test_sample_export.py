"""Restoring EMA params from a workdir, the sample and export commands, and the exported sampler (SPEC §12).

One tiny workdir, trained by `sid2.trainer.train_and_evaluate` for 2 steps with a checkpoint at each, is
shared by every test. Samplers use 4 steps and a batch of 4 so that the in-process sampling calls reuse one
compiled function.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from safetensors import numpy as st_numpy

from experiments import export as export_cli
from experiments import sample as sample_cli
from sid2 import export as export_lib
from sid2 import restore
from sid2 import trainer
from tests.train_utils import flat_params, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = '4'


def _equal_trees(a, b):
  fa, fb = flat_params(jax.device_get(a)), flat_params(jax.device_get(b))
  return fa.keys() == fb.keys() and all(fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k])
                                        for k in fa)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp('sample_export')
  workdir = str(root / 'run')
  state = trainer.train_and_evaluate(tiny_config(checkpoint_every=1), workdir, stop_after=2)
  assert restore.checkpoint_steps(workdir) == [1, 2]
  return types.SimpleNamespace(root=root, workdir=workdir, state=jax.device_get(state))


def _copy_workdir(run, name, config_edit=None):
  """A workdir beside the trained one: a config.json copy (optionally edited) and its checkpoints."""
  dst = run.root / name
  dst.mkdir()
  config = json.load(open(os.path.join(run.workdir, 'config.json')))
  if config_edit:
    config_edit(config)
  json.dump(config, open(dst / 'config.json', 'w'))
  shutil.copytree(os.path.join(run.workdir, 'checkpoints'), dst / 'checkpoints')
  return str(dst)


def _in_process_samples(run, seed, labels, guidance=1.0, interval=(-100.0, 100.0)):
  params, _ = restore.load_ema_params(run.workdir)
  config = restore.override_sampler(restore.load_config(run.workdir), num_steps=int(STEPS))
  fn = restore.sample_fn(config, len(labels), 1)
  return np.asarray(fn(params, jax.random.PRNGKey(seed), jnp.asarray(labels, jnp.int32),
                       jnp.float32(guidance), jnp.float32(interval[0]), jnp.float32(interval[1])))


# ---------------------------------------------------------------------------------------------------------
# sid2.restore

def test_restore_returns_the_trained_ema_params(run):
  config = restore.load_config(run.workdir)
  saved = json.loads(config.to_json())
  assert saved.pop('num_channels') == 1
  assert saved == json.loads(tiny_config(checkpoint_every=1).to_json())
  params, step = restore.load_ema_params(run.workdir)
  assert step == 2
  assert _equal_trees(params, run.state.ema_params)
  assert not _equal_trees(params, run.state.params)  # the EMA, not the raw parameters
  params1, step1 = restore.load_ema_params(run.workdir, step=1)
  assert step1 == 1 and not _equal_trees(params1, params)
  with pytest.raises(ValueError, match=r'step=7 is not a checkpoint.*available steps: \[1, 2\]'):
    restore.load_ema_params(run.workdir, step=7)


def test_restore_falls_back_past_a_corrupt_latest_checkpoint(run):
  workdir = _copy_workdir(run, 'corrupt')
  for f in glob.glob(os.path.join(workdir, 'checkpoints', '2', 'state', '**', '*'), recursive=True):
    if os.path.isfile(f):
      with open(f, 'wb') as fh:
        fh.write(b'garbage')
  params, step = restore.load_ema_params(workdir)
  assert step == 1
  assert _equal_trees(params, restore.load_ema_params(run.workdir, step=1)[0])
  with pytest.raises(RuntimeError, match='checkpoint 2 .* could not be restored'):
    restore.load_ema_params(workdir, step=2)


def test_restore_errors_for_unknown_or_mismatched_models(run):
  unknown = _copy_workdir(run, 'unknown_model', lambda c: c['model'].update(name='no_such_model'))
  with pytest.raises(ValueError, match=r"model.name='no_such_model' is not a registered.*import spectral"):
    restore.load_ema_params(unknown)
  with pytest.raises(ValueError, match='not a registered model'):  # after trying `import spectral`
    sample_cli.main(['sample', '--workdir', unknown, '--out', str(run.root / 'x.png')])
  wider = _copy_workdir(run, 'wider_model', lambda c: c['model'].update(transformer_channels=48))
  with pytest.raises(restore.CheckpointMismatchError, match='first difference'):
    restore.load_ema_params(wider)


# ---------------------------------------------------------------------------------------------------------
# experiments.sample

def test_sample_npz_regenerates_exactly_from_its_json(run):
  out = str(run.root / 'samples.npz')
  images, labels, record = sample_cli.main(
      ['sample', '--workdir', run.workdir, '--num_samples', '6', '--batch_size', '4', '--num_steps', STEPS,
       '--sampler', 'ddpm', '--guidance', '1.0', '--guidance_interval=-3,5', '--seed', '3', '--out', out])
  with np.load(out) as f:  # np.load refuses pickled objects by default
    assert f['images'].shape == (6, 32, 32, 1) and f['images'].dtype == np.float32
    assert np.isfinite(f['images']).all() and f['images'].min() >= -1 and f['images'].max() <= 1
    assert f['labels'].tolist() == [0, 1, 2, 3, 4, 5]
    assert json.loads(str(f['settings'])) == record
    saved = f['images']
  np.testing.assert_array_equal(saved, images)
  assert np.abs(saved[0] - saved[1]).max() > 0.1  # distinct samples
  logged = json.load(open(out + '.json'))
  assert logged == record
  assert logged['step'] == 2 and logged['seed'] == 3 and logged['guidance_interval'] == [-3.0, 5.0]
  assert logged['params_sha256'] == export_lib.params_sha256(run.state.ema_params)
  assert (logged['sampler'], logged['num_steps'], logged['batch_size']) == ('ddpm', 4, 4)

  again, _, _ = sample_cli.main(['sample', '--settings', out + '.json', '--out', str(run.root / 'again.npz')])
  np.testing.assert_array_equal(again, saved)  # bitwise
  # Per-sample keys: sample i depends on (seed, i, label), not on num_samples or batch_size.
  first4, _, _ = sample_cli.main(
      ['sample', '--workdir', run.workdir, '--num_samples', '4', '--batch_size', '3', '--num_steps', STEPS,
       '--guidance', '1.0', '--guidance_interval=-3,5', '--seed', '3', '--out', str(run.root / 'first4.npz')])
  np.testing.assert_allclose(first4, saved[:4], rtol=0, atol=1e-5)
  # And sample i is the trainer's one-sample sampler on the key fold_in(PRNGKey(seed), i).
  params, _ = restore.load_ema_params(run.workdir)
  fn = restore.sample_fn(restore.override_sampler(restore.load_config(run.workdir), num_steps=4), 1, 1)
  for i in (0, 5):
    key = jax.random.fold_in(jax.random.PRNGKey(3), i)
    same = np.clip(np.asarray(fn(params, key, jnp.asarray([i], jnp.int32), jnp.float32(1.0),
                                 jnp.float32(-3.0), jnp.float32(5.0))), -1, 1)
    np.testing.assert_allclose(same[0], saved[i], rtol=0, atol=1e-5)


def test_sample_png_with_one_class_label(run):
  out = str(run.root / 'grid.png')
  images, labels, record = sample_cli.main(
      ['sample', '--workdir', run.workdir, '--num_samples', '4', '--num_steps', STEPS, '--class_label', '3',
       '--step', '1', '--out', out])
  assert Image.open(out).size == (2 * 33 + 1, 2 * 33 + 1)  # 2x2 grid of 32^2 with 1-pixel padding
  assert labels.tolist() == [3, 3, 3, 3] and record['labels'] == [3, 3, 3, 3] and record['step'] == 1
  assert record['guidance'] == 1.0 and record['guidance_interval'] == [-100.0, 100.0]  # config defaults
  assert images.shape == (4, 32, 32, 1)


@pytest.mark.parametrize('flags, message', [
    (['--sampler', 'foo'], r"sampler must be one of \('ddpm', 'ddim', 'addim'\)"),
    (['--guidance_interval=3'], 'guidance_interval must be'),
    (['--guidance_interval=a,b'], 'guidance_interval must be'),
    (['--guidance_interval=5,-3'], 'lo < hi'),
    (['--labels', '0,x'], 'comma-separated integers'),
    (['--labels', '10'], r'in \[0, 10\)'),
    (['--labels', '1', '--class_label', '2'], 'at most one'),
    (['--num_steps', '0'], 'num_steps must be a positive integer'),
    (['--num_samples', '0'], 'num_samples must be a positive integer'),
    (['--clip_x', 'dynamic'], 'clip_x must be one of'),
    (['--logvar_type', 'huge'], 'logvar_type must be one of'),
    (['--eta', '2'], r'eta must be a real number in \[0.0, 1.0\]'),
    (['--step', '99'], 'available steps'),
    (['--out', 'x.jpg'], r"out must be a file name ending in one of \('.png', '.npz'\)"),
])
def test_sample_bad_flags_fail_before_any_compute(run, monkeypatch, flags, message):
  def no_compute(*args, **kwargs):
    raise AssertionError('compute reached')
  monkeypatch.setattr(restore, 'load', no_compute)
  monkeypatch.setattr(restore, 'sample_fn', no_compute)
  argv = ['sample', '--workdir', run.workdir, '--out', str(run.root / 'bad.png')] + flags
  with pytest.raises(ValueError, match=message):
    sample_cli.main(argv)


def test_settings_file_fixes_every_setting(run, monkeypatch):
  monkeypatch.setattr(restore, 'load', lambda *a, **k: (_ for _ in ()).throw(AssertionError('compute')))
  path = run.root / 'some.json'
  path.write_text(json.dumps(dict(version=1, workdir=run.workdir)))
  with pytest.raises(ValueError, match='only --out and --workdir may be given with it'):
    sample_cli.main(['sample', '--settings', str(path), '--num_steps', '2', '--out', str(run.root / 'a.png')])


# ---------------------------------------------------------------------------------------------------------
# experiments.export and sid2.export

@pytest.fixture(scope='module')
def exported(run):
  out = str(run.root / 'export')
  summary = export_cli.main(['export', '--workdir', run.workdir, '--out', out, '--export_num_samples', '4',
                             '--export_num_steps', STEPS, '--platforms', 'cpu'])
  multi = str(run.root / 'export_multi')
  export_lib.export_workdir(run.workdir, multi, num_samples=4, num_steps=4, platforms=('cpu', 'cuda', 'tpu'))
  return types.SimpleNamespace(dir=out, multi=multi, summary=summary)


def test_export_params_and_config_round_trip(run, exported):
  assert sorted(os.listdir(exported.dir)) == ['config.json', 'params.safetensors', 'sampler.jaxexport',
                                              'sampler.jaxexport.json']
  params, config = export_lib.load(exported.dir)
  assert _equal_trees(params, run.state.ema_params)  # bitwise, same dtypes and keys
  assert json.loads(config.to_json()) == json.loads(restore.load_config(run.workdir).to_json())
  flat, meta = export_lib.load_params(os.path.join(exported.dir, 'params.safetensors'), flat=True)
  assert meta['step'] == 2 and meta['format'] == export_lib.PARAMS_FORMAT
  assert meta['sha256'] == export_lib.params_sha256(run.state.ema_params) == exported.summary['sha256']
  assert 'conv_in/kernel' in flat and export_lib.unflatten_params(flat).keys() == params.keys()
  # A changed value no longer matches the stored sha256.
  flat['conv_in/kernel'] = flat['conv_in/kernel'] + np.float32(1e-3)
  tampered = str(exported.dir) + '_tampered.safetensors'
  st_numpy.save_file(flat, tampered, metadata={k: str(v) for k, v in meta.items()})
  with pytest.raises(ValueError, match='sha256'):
    export_lib.load_params(tampered)
  info = json.load(open(os.path.join(exported.dir, 'sampler.jaxexport.json')))
  assert (info['num_samples'], info['num_steps'], info['sampler'], info['platforms']) == (4, 4, 'ddpm', ['cpu'])


def test_exported_sampler_runs_with_only_jax_and_matches(run, exported, tmp_path):
  """In a fresh process with flax, optax, orbax, tensorflow and sid2's model/training code made
  unimportable: load params + samplers, sample, and compare with the in-process trainer sampler."""
  out = str(tmp_path / 'exported_samples.npz')
  script = textwrap.dedent(f'''
      import importlib.abc, sys
      BLOCKED = ('flax', 'optax', 'orbax', 'tensorflow', 'tensorflow_datasets', 'clu', 'sid2.trainer',
                 'sid2.models', 'sid2.restore', 'sid2.samplers', 'sid2.guidance', 'sid2.train_step')
      class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if any(name == b or name.startswith(b + '.') for b in BLOCKED):
            raise ImportError('blocked: ' + name)
      sys.meta_path.insert(0, Block())
      import numpy as np
      from sid2 import export
      params, config = export.load({exported.dir!r})
      flat, _ = export.load_params({exported.dir!r}, flat=True)
      one = export.load_sampler({exported.dir!r})
      multi = export.load_sampler({exported.multi!r})
      x = np.asarray(one(params, 7, labels=[5, 6, 7, 8], guidance=0.5, interval=(-3.0, 5.0)))
      x_flat = np.asarray(one(flat, 7, labels=[5, 6, 7, 8], guidance=0.5, interval=(-3.0, 5.0)))
      x_multi = np.asarray(multi(params, 7, labels=[5, 6, 7, 8], guidance=0.5, interval=(-3.0, 5.0)))
      x_default = np.asarray(one(params, 8))
      assert not [m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in BLOCKED)]
      np.savez({out!r}, x=x, x_flat=x_flat, x_multi=x_multi, x_default=x_default)
      ''')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-c', script], env=env, cwd=str(tmp_path), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with np.load(out) as f:
    got = {k: f[k] for k in f.files}
  want = _in_process_samples(run, 7, [5, 6, 7, 8], 0.5, (-3.0, 5.0))
  np.testing.assert_array_equal(got['x'], want)       # single-platform export: bitwise
  np.testing.assert_array_equal(got['x_flat'], want)  # flat safetensors dict accepted as params
  np.testing.assert_allclose(got['x_multi'], want, rtol=0, atol=1e-5)  # cpu+cuda+tpu lowering: float tol.
  # Defaults: round-robin labels and the config's guidance (1.0 on (-100, 100)).
  np.testing.assert_array_equal(got['x_default'], _in_process_samples(run, 8, [0, 1, 2, 3]))


_STANDALONE = textwrap.dedent("""
    import importlib.abc, importlib.util, os, sys
    ROOT, HERE, BLOCKED = sys.argv[1], sys.argv[2], tuple(sys.argv[3].split(','))
    # The project is off the import path (its editable install's finder too): only the interpreter's own
    # paths and site-packages remain (a virtualenv may live inside the checkout, as CI's .venv does).
    def _project_path(p):
      p = os.path.abspath(p)
      inside = p == ROOT or p.startswith(ROOT + os.sep)
      return inside and not p.startswith(os.path.abspath(sys.prefix) + os.sep)
    sys.path[:] = [p for p in sys.path if p and not _project_path(p)]
    class Block(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + '.') for b in BLOCKED):
          raise ImportError('blocked: ' + name)
    sys.meta_path.insert(0, Block())
    spec = importlib.util.spec_from_file_location('standalone_export', os.path.join(HERE, 'export.py'))
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    """)
_PROJECT = ('sid2', 'spectral', 'experiments', 'configs', 'tests', 'flax', 'optax', 'orbax', 'tensorflow', 'clu')


def _run_standalone(body, tmp_path, blocked):
  """Runs `body` after loading a copy of sid2/export.py with the project and `blocked` unimportable."""
  shutil.copy(os.path.join(ROOT, 'sid2', 'export.py'), tmp_path / 'export.py')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['JAX_PLATFORMS'] = 'cpu'
  return subprocess.run([sys.executable, '-I', '-c', _STANDALONE + textwrap.dedent(body), ROOT, str(tmp_path),
                         ','.join(blocked)], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                        timeout=600)


def test_export_dir_samples_without_the_project(run, exported, tmp_path):
  """A copy of sid2/export.py, run where neither the project nor its training dependencies import, loads the
  export directory and samples (catches a hidden dependency); without flatbuffers it says what is missing."""
  out = str(tmp_path / 'standalone.npz')
  proc = _run_standalone(f"""
      import numpy as np
      params, config = export.load({exported.dir!r})
      x = np.asarray(export.load_sampler({exported.dir!r})(params, 7, labels=[5, 6, 7, 8], guidance=0.5,
                                                             interval=(-3.0, 5.0)))
      assert not [m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in BLOCKED)]
      assert 'flatbuffers' in sys.modules
      np.savez({out!r}, x=x)
      """, tmp_path, _PROJECT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with np.load(out) as f:
    np.testing.assert_array_equal(f['x'], _in_process_samples(run, 7, [5, 6, 7, 8], 0.5, (-3.0, 5.0)))
  info = json.load(open(os.path.join(exported.dir, 'sampler.jaxexport.json')))
  assert 'flatbuffers' in info['runtime_requirements']
  proc = _run_standalone(f"""
      try:
        export.load_sampler({exported.dir!r})
      except ImportError as e:
        print(e)
      """, tmp_path, _PROJECT + ('flatbuffers',))
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'needs the flatbuffers package' in proc.stdout and 'pip install flatbuffers' in proc.stdout


@pytest.mark.parametrize('flags, message', [
    (['--sampler', 'foo'], 'sampler must be one of'),
    (['--platforms', 'gpu'], 'platforms must be'),
    (['--export_num_samples', '0'], 'num_samples must be a positive integer'),
    (['--export_num_steps', '-1'], 'num_steps must be a positive integer'),
])
def test_export_bad_flags_fail_before_any_compute(run, monkeypatch, flags, message):
  monkeypatch.setattr(restore, 'load', lambda *a, **k: (_ for _ in ()).throw(AssertionError('compute')))
  with pytest.raises(ValueError, match=message):
    export_cli.main(['export', '--workdir', run.workdir, '--out', str(run.root / 'bad_export')] + flags)


def test_flatten_round_trip_and_key_checks():
  tree = {'a': {'b': np.arange(3, dtype=np.float32), 'c': np.ones((2, 2), np.int32)}, 'd': np.zeros(())}
  flat = export_lib.flatten_params(tree)
  assert sorted(flat) == ['a/b', 'a/c', 'd']
  back = export_lib.unflatten_params(flat)
  assert _equal_trees(back, tree)
  assert export_lib.params_sha256(flat) == export_lib.params_sha256(tree)
  assert export_lib.params_sha256({'a': {'b': np.arange(3, dtype=np.float64)}}) != export_lib.params_sha256(
      {'a': {'b': np.arange(3, dtype=np.float32)}})
  with pytest.raises(ValueError, match="without '/'"):
    export_lib.flatten_params({'a/b': np.zeros(1)})
