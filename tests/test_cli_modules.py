"""Every command in experiments/ imports without defining absl flags (so tests and scripts can import several
in one process: two modules defining --out at import raised DuplicateFlagError), defines its flags on a given
FlagValues, and runs as a program with bad input reported as one error line."""
import ast
import importlib
import os
import pkgutil
import subprocess
import sys

from absl import app
from absl import flags
import pytest

import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if m.name != 'cli')


def test_importing_every_command_defines_no_global_flags():
  for name in MODULES:
    importlib.import_module(f'experiments.{name}')
  ours = {m: [f.name for f in fl] for m, fl in flags.FLAGS.flags_by_module_dict().items()
          if m.startswith('experiments') or m.endswith(tuple(f'{n}.py' for n in MODULES))}
  assert ours == {}


def test_commands_import_no_other_command():
  """Shared code lives in library modules (sid2/, spectral/); a command imports only experiments.cli."""
  found = {}
  for name in MODULES:
    with open(os.path.join(ROOT, 'experiments', f'{name}.py')) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == 'experiments':
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('experiments.'):
        targets = [node.module.split('.', 1)[1]]
      elif isinstance(node, ast.Import):
        targets = [a.name.split('.', 1)[1] for a in node.names if a.name.startswith('experiments.')]
      else:
        continue
      others = [t for t in targets if t != 'cli']
      if others:
        found.setdefault(name, []).extend(others)
  assert found == {}


@pytest.mark.parametrize('name', MODULES)
def test_flags_go_to_the_given_flag_values(name):
  module = importlib.import_module(f'experiments.{name}')
  define = getattr(module, 'define_flags', None)
  assert define is not None, f'experiments.{name} has no define_flags(fv)'
  fv = flags.FlagValues()
  define(fv)
  assert len(list(fv)) > 0
  again = flags.FlagValues()
  define(again)  # a second, independent set: no duplicate-flag error
  assert set(again) == set(fv)


@pytest.mark.parametrize('name', ['lowbit_figures', 'wiener_figure', 'toy_frequency', 'train_features',
                                  'compare_weightings', 'spectra', 'train_autoencoder'])
def test_stray_arguments_are_refused_before_compute(name):
  module = importlib.import_module(f'experiments.{name}')
  argv = [name, 'stray']
  if name == 'train_autoencoder':
    argv.insert(1, '--out=/nonexistent/x')
  with pytest.raises(app.UsageError, match='stray'):
    module.main(argv)


def test_program_reports_bad_input_as_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'experiments.wiener_figure', f'--out={tmp_path / "w.txt"}'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == f"error: out must end in .png; got '{tmp_path / 'w.txt'}'"


def test_program_runs_lowbit_figures(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'experiments.lowbit_figures', f'--out={tmp_path}',
                         '--num_points=21', '--bits=1,8'], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / 'lowbit_summary.json').exists() and (tmp_path / 'figure11_loss_per_bits.png').exists()
