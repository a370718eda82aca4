"""sid2.runtime: one CPU device per core and the persistent compilation cache, set up before jax starts.

The decisions are pure functions of the environment (tested directly); two fresh processes train the same
tiny config in new workdirs and the second must take every compiled program from the cache the first filled.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from sid2 import config_lib
from sid2 import runtime
from tests.train_utils import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_device_plan():
  cpu = dict(JAX_PLATFORMS='cpu')
  assert runtime.plan_devices(None, cpu, cores=2)[0] == 2
  assert runtime.plan_devices('auto', cpu, cores=16)[0] == 16
  assert runtime.plan_devices('3', cpu, cores=2)[0] == 3
  assert runtime.plan_devices(None, dict(cpu, SID2_CPU_DEVICES='1'), cores=8)[0] is None  # opt-out
  assert runtime.plan_devices(None, cpu, cores=1)[0] is None
  user = dict(cpu, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  assert runtime.plan_devices(None, user, cores=8) == (None, 'the user set the CPU device count '
                                                             '(XLA_FLAGS / JAX_NUM_CPU_DEVICES)')
  assert runtime.plan_devices(None, dict(cpu, JAX_NUM_CPU_DEVICES='2'), cores=8)[0] is None
  assert runtime.plan_devices(None, dict(JAX_PLATFORMS='cuda'), cores=8)[0] is None
  assert runtime.plan_devices(None, dict(JAX_PLATFORMS='cuda,cpu'), cores=8)[0] is None
  assert runtime.plan_devices(None, cpu, cores=8, jax_imported=True)[0] is None
  with pytest.raises(ValueError, match='--cpu_devices / SID2_CPU_DEVICES must be .auto. or a positive'):
    runtime.plan_devices('zero', cpu, cores=2)


def test_cache_plan_and_flags():
  assert runtime.plan_cache(None, dict(XDG_CACHE_HOME='/x')) == ('/x/sid2/jax_cache', 'default')
  assert runtime.plan_cache('off', {})[0] is None
  assert runtime.plan_cache(None, dict(SID2_COMPILATION_CACHE='0'))[0] is None
  assert runtime.plan_cache('/tmp/c', dict(JAX_COMPILATION_CACHE_DIR='/y')) == ('/tmp/c', 'requested')
  assert runtime.plan_cache(None, dict(JAX_COMPILATION_CACHE_DIR='/y'))[0] is None  # jax reads the user's
  argv = ['prog', '--cpu_devices=2', '--workdir', 'w', '--compilation_cache', 'off', '--x=1']
  assert runtime._pop_flag(argv, '--cpu_devices') == '2' and runtime._pop_flag(argv, '--compilation_cache') == 'off'
  assert argv == ['prog', '--workdir', 'w', '--x=1']
  assert runtime.configure('some.module', ['prog', '--cpu_devices=2']) == {}  # imported, not run: no-op


def test_batch_divisibility_error_names_the_switch(monkeypatch):
  monkeypatch.setenv(runtime.FORCED_ENV, '3')
  with pytest.raises(ValueError, match=r'batch_size=8 must be divisible by the number of devices \(3\) '
                                       r'\(3 CPU devices, one per core, chosen by sid2.runtime.*--cpu_devices=N'):
    config_lib.validate_config(tiny_config(), num_devices=3)


SCRIPT = textwrap.dedent('''
    import json, sys
    from sid2 import runtime
    argv = ['train', '--cpu_devices=2']
    info = runtime.configure('__main__', argv)
    import jax
    from sid2 import trainer
    from tests.train_utils import tiny_config
    cfg = tiny_config(total_steps=2, log_every=1, eval_every=2, checkpoint_every=2,
                      **{'sampler.num_samples': 2, 'sampler.num_steps': 1, 'model.channels': (8,),
                         'model.enc_blocks': (1,), 'model.dec_blocks': (0,), 'model.transformer_blocks': 1})
    trainer.train_and_evaluate(cfg, sys.argv[1])
    print('RESULT', json.dumps(dict(info, argv=argv, devices=jax.device_count(), **runtime.compile_stats())))
    ''')


def _train_once(tmp_path, name):
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_COMPILATION_CACHE_DIR', 'SID2_COMPILATION_CACHE',
                                                          'SID2_CPU_DEVICES', runtime.FORCED_ENV)}
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', XDG_CACHE_HOME=str(tmp_path / 'xdg'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             XLA_FLAGS=' '.join(f for f in env.get('XLA_FLAGS', '').split() if runtime.FORCE_FLAG not in f))
  proc = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path / name)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


def _entries(path):
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_second_run_compiles_nothing(tmp_path):
  cache = str(tmp_path / 'xdg' / 'sid2' / 'jax_cache')
  first = _train_once(tmp_path, 'a')
  assert first['devices'] == 2 and first['cpu_devices'] == 2 and first['argv'] == ['train']
  assert first['cache_dir'] == cache and first['cache_reason'] == 'default'
  assert first['compile_requests'] > 0 and first['cache_hits'] == 0
  filled = _entries(cache)
  assert len(filled) > 0
  second = _train_once(tmp_path, 'b')
  # Every program of the second process (train step, init, sampler, ...) came from the first's cache.
  assert second['compile_requests'] == first['compile_requests']
  assert second['cache_hits'] == second['compile_requests']
  assert _entries(cache) == filled
