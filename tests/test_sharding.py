"""Sharded parameters (sid2.sharding): the FSDP spec rule, mesh config validation, U-ViT remat, and an
8-device run (data=2, fsdp=4) that matches the replicated one, keeps its state split and resumes.

The 8-device run is this file run as a script in a subprocess (`--worker OUT`), so the pytest process keeps
its single CPU device.
"""
import json
import os
import re
import subprocess
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from sid2 import checkpoint as ckpt_lib, config_lib, sharding, trainer, train_step as ts  # noqa: E402
from sid2.models import build as model_build  # noqa: E402
from sid2.models import uvit  # noqa: E402
from tests.train_utils import tiny_config, flat_params  # noqa: E402

MESH_2x4 = AbstractMesh((2, 4), ('data', 'fsdp'))


# ---------------------------------------------------------------------------------------------------------
# The spec rule.

@pytest.mark.parametrize('shape,fsdp,min_size,dim', [
    ((3, 3, 64, 128), 4, 0, 3),      # conv kernel: the largest divisible dim (C_out)
    ((128, 128), 4, 0, 1),           # equal dims: the last
    ((96, 64), 8, 0, 0),             # 96 % 8 == 0 and 96 > 64
    ((12, 10), 4, 0, 0),             # the only divisible dim, though not the largest
    ((6, 10), 4, 0, None),           # nothing divides: replicated
    ((4096,), 8, 1024, 0),           # a large vector is split too
    ((256,), 4, 1024, None),         # below min_shard_size: replicated
    ((32, 32), 4, 1024, 1),          # exactly min_shard_size elements: split
    ((), 4, 0, None),                # scalar
    ((3, 3, 64, 128), 1, 0, None),   # fsdp size 1: nothing to split over
    ((0, 8), 4, 0, None),            # empty
])
def test_fsdp_dim(shape, fsdp, min_size, dim):
  assert sharding.fsdp_dim(shape, fsdp, min_size) == dim


def test_param_spec_rules():
  assert sharding.param_spec((3, 3, 64, 128), MESH_2x4, 'fsdp', 0) == P(None, None, None, 'fsdp')
  assert sharding.param_spec((512, 100), MESH_2x4, 'fsdp', 0) == P('fsdp')
  assert sharding.param_spec((3, 3, 64, 128), MESH_2x4, 'replicated', 0) == P()
  assert sharding.param_spec((128,), MESH_2x4, 'fsdp', 1024) == P()
  assert sharding.param_spec((3, 3, 64, 128), {'data': 8}, 'fsdp', 0) == P()  # no fsdp axis
  with pytest.raises(ValueError, match=r"mesh.rules must be one of \('replicated', 'fsdp'\)"):
    sharding.param_spec((4, 4), MESH_2x4, 'zero3')


def _abstract_state(cfg):
  model = model_build.build_model(cfg, 1)
  optimizer, _ = ts.make_optimizer(cfg.optimizer, cfg.total_steps)
  init = lambda r: ts.create_train_state(model_build.init_params(model, cfg, 1, r), optimizer, r)
  return jax.eval_shape(init, jax.random.PRNGKey(0))


def test_state_specs_mirror_params():
  state = _abstract_state(tiny_config())
  specs = sharding.state_specs(state, MESH_2x4, 'fsdp', min_shard_size=256)
  flat = lambda t: {jax.tree_util.keystr(k): v for k, v in
                    jax.tree_util.tree_flatten_with_path(t, is_leaf=lambda x: isinstance(x, P))[0]}
  params = flat(specs.params)
  shapes = {k: v.shape for k, v in flat(state.params).items()}
  assert flat(specs.ema_params) == params
  adam = [s for s in jax.tree.leaves(specs.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  assert len(adam) == 1
  assert flat(adam[0].mu) == params and flat(adam[0].nu) == params and adam[0].count == P()
  for name in ('step', 'rng', 'nonfinite_total', 'nonfinite_streak'):
    assert getattr(specs, name) == P()
  split = {k for k, s in params.items() if s != P()}
  assert split and split != set(params)  # some leaves split, small ones (biases, norms) whole
  for k, s in params.items():
    if s != P():
      dim = len(s) - 1
      assert s[dim] == 'fsdp' and shapes[k][dim] % 4 == 0 and np.prod(shapes[k]) >= 256
    else:
      assert np.prod(shapes[k]) < 256 or all(d % 4 for d in shapes[k])
  # The transformer MLP's first kernel [32, 128]: split on its 128 outputs.
  mlp = "['transformer_block_0']['Dense_1']['kernel']"
  assert shapes[mlp] == (32, 128) and params[mlp] == P(None, 'fsdp')
  # A mesh config without fsdp, or no config at all: everything replicated.
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1))
  assert mesh.axis_names == ('data', 'fsdp')
  for cfg in (dict(fsdp=1), None):
    shardings = sharding.state_shardings(state, mesh, cfg)
    assert all(s.spec == P() and s.mesh is mesh for s in jax.tree.leaves(shardings))


def test_make_mesh_and_batch_sharding():
  one_d = sharding.make_mesh(None)
  assert one_d.axis_names == ('data',) and ts.batch_sharded(one_d).spec == P('data')
  two_d = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=-1, rules='replicated')))
  assert dict(two_d.shape) == {'data': 1, 'fsdp': 1}
  assert ts.batch_sharded(two_d).spec == P(('data', 'fsdp'))


# ---------------------------------------------------------------------------------------------------------
# Config validation.

def test_resolve_mesh_config():
  assert sharding.resolve_mesh_config(dict(fsdp=4), 8) == dict(data=2, fsdp=4, rules='fsdp',
                                                                min_shard_size=2 ** 14)
  assert sharding.resolve_mesh_config(dict(data=8, rules='replicated'), 8)['fsdp'] == 1
  assert sharding.resolve_mesh_config(dict(data=2, fsdp=-1, min_shard_size=0), 8)['fsdp'] == 4


@pytest.mark.parametrize('mesh,match', [
    (dict(data=2, fsdp=2), r'mesh.data \* mesh.fsdp = 2 \* 2 = 4 must equal the number of devices \(8\)'),
    (dict(fsdp=3), r'mesh.fsdp=3 must divide the number of devices \(8\)'),
    (dict(data=-1, fsdp=-1), 'at most one may be -1'),
    (dict(fsdp=0), r'mesh.fsdp must be an int >= 1 or -1'),
    (dict(data=True), r'mesh.data must be an int'),
    (dict(fsdp=2.0), r'mesh.fsdp must be an int'),
    (dict(rules='zero3'), r"mesh.rules must be one of \('replicated', 'fsdp'\); got 'zero3'"),
    (dict(min_shard_size=-1), r'mesh.min_shard_size must be an int >= 0'),
    (dict(tensor=2), r'unknown config field\(s\) mesh.tensor; allowed fields of mesh.: data, fsdp, '
                     r'min_shard_size, rules'),
])
def test_bad_mesh_config(mesh, match):
  with pytest.raises(ValueError, match=match):
    sharding.resolve_mesh_config(mesh, 8)
  cfg = tiny_config()
  with cfg.unlocked():
    cfg.mesh = ml_collections.ConfigDict(mesh)
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(cfg, num_devices=8)


def test_bad_mesh_raises_before_compute(tmp_path):
  cfg = tiny_config()
  with cfg.unlocked():
    cfg.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=1))  # 2 devices asked, 1 present
  with pytest.raises(ValueError, match=r'must equal the number of devices \(1\)'):
    trainer.train_and_evaluate(cfg, str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad')


# ---------------------------------------------------------------------------------------------------------
# Rematerialisation.

def test_remat_same_outputs_and_gradients():
  kw = dict(channels=(8,), enc_blocks=(1,), dec_blocks=(1,), transformer_channels=16, transformer_blocks=1,
            num_heads=2, num_classes=3, dropout=0.1, dropout_from_level=0, num_channels=1)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 1))
  logsnr, labels = jnp.array([1.0, -2.0]), jnp.array([0, 2])
  plain, remat = uvit.UViT(**kw), uvit.UViT(**kw, remat=True)
  rngs = {'params': jax.random.PRNGKey(1), 'dropout': jax.random.PRNGKey(2)}
  shapes = lambda m: jax.eval_shape(m.init, rngs, z, logsnr, labels)['params']
  abstract = shapes(plain)
  # Same names and shapes: checkpoints are interchangeable.
  assert jax.tree_util.tree_flatten_with_path(abstract)[0] == jax.tree_util.tree_flatten_with_path(
      shapes(remat))[0]
  # Random values everywhere (no zero-initialised layers hiding the rest of the network).
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype), abstract)

  def loss(model):
    return lambda p: jnp.mean(model.apply({'params': p}, z, logsnr, labels, train=True,
                                          rngs={'dropout': jax.random.PRNGKey(3)}) ** 2)
  (l0, g0), (l1, g1) = [jax.jit(jax.value_and_grad(loss(m)))(params) for m in (plain, remat)]
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g0))
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale)
  # Remat really is applied (and only when asked): jax.checkpoint shows in the gradient's jaxpr.
  jaxpr = lambda m: str(jax.make_jaxpr(jax.grad(loss(m)))(params))
  assert len(re.findall(r'\bremat', jaxpr(remat))) >= 3 and not re.findall(r'\bremat', jaxpr(plain))


def test_remat_field_validation():
  with pytest.raises(ValueError, match='model.remat must be a bool'):
    uvit.resolve_uvit_config(dict(remat='yes'))
  assert uvit.resolve_uvit_config({})['remat'] is False


# ---------------------------------------------------------------------------------------------------------
# 8 forced host devices: sharded vs replicated, and resume from a sharded checkpoint.

STEPS = 3
FSDP_MESH = dict(data=2, fsdp=4, rules='fsdp', min_shard_size=256)


def _worker_config(mesh=None):
  cfg = tiny_config(total_steps=STEPS, eval_every=1000, checkpoint_every=1000, log_every=1,
                    **{'sampler.num_samples': 0, 'optimizer.eps': 1e-5})  # eps: see tests/train_utils.py
  if mesh is not None:
    with cfg.unlocked():
      cfg.mesh = ml_collections.ConfigDict(mesh)
  return cfg


def _shard_info(tree):
  return {k: dict(spec=str(x.sharding.spec), shard=list(x.addressable_shards[0].data.shape),
                  shape=list(x.shape))
          for k, x in ((jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0])}


def _worker(out):
  """Replicated 1-D run and FSDP run (stopped after 2 steps, resumed for the last), both on 8 devices."""
  jax.config.update('jax_num_cpu_devices', 8)
  assert jax.device_count() == 8
  # The baseline skips its checkpoint (test_train covers replicated ones): orbax's first save of 8-way
  # replicated arrays compiles a slicing program per array shape, about 20 s on a loaded 2-core machine.
  with mock.patch.object(ckpt_lib.Checkpointer, 'save', lambda *args: False):
    replicated = trainer.train_and_evaluate(_worker_config(), os.path.join(out, 'replicated'))
  fsdp_dir = os.path.join(out, 'fsdp')
  half = trainer.train_and_evaluate(_worker_config(FSDP_MESH), fsdp_dir, stop_after=STEPS - 1)
  info = dict(params=_shard_info(half.params), ema=_shard_info(half.ema_params),
              opt=_shard_info(half.opt_state), bytes_fsdp=sharding.bytes_per_device(half),
              bytes_replicated=sharding.bytes_per_device(replicated))
  resumed = trainer.train_and_evaluate(_worker_config(FSDP_MESH), fsdp_dir)
  info.update(resumed_step=int(resumed.step), resumed_params=_shard_info(resumed.params))
  with open(os.path.join(out, 'info.json'), 'w') as f:
    json.dump(info, f)
  for name, state in (('replicated', replicated), ('fsdp', resumed)):
    np.savez(os.path.join(out, f'{name}.npz'), **flat_params(jax.device_get(state.params)))


def _losses(workdir):
  lines = open(os.path.join(workdir, 'loss_vs_logsnr.jsonl')).read().splitlines()
  return {json.loads(l)['step']: np.array(json.loads(l)['loss'], np.float64) for l in lines}


def test_fsdp_8_devices_matches_replicated_and_resumes(tmp_path):
  out = str(tmp_path)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  p = subprocess.run([sys.executable, os.path.abspath(__file__), '--worker', out], cwd=out, env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-4000:]
  info = json.load(open(os.path.join(out, 'info.json')))
  # Same losses at every step and same parameters after training (different summation order only).
  a, b = _losses(os.path.join(out, 'replicated')), _losses(os.path.join(out, 'fsdp'))
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  for step in a:
    np.testing.assert_allclose(b[step], a[step], rtol=1e-5, atol=1e-6, err_msg=f'step {step}')
  pa, pb = np.load(os.path.join(out, 'replicated.npz')), np.load(os.path.join(out, 'fsdp.npz'))
  assert pa.files == pb.files
  for k in pa.files:
    np.testing.assert_allclose(pb[k], pa[k], rtol=1e-4, atol=1e-5, err_msg=k)
  # The state really is split: the transformer MLP kernel [32, 128] holds [32, 32] per device, in the
  # params, the EMA and both Adam moments; a bias stays whole.
  mlp = "['transformer_block_0']['Dense_1']['kernel']"
  for tree in ('params', 'ema', 'resumed_params'):
    assert info[tree][mlp] == dict(spec=str(P(None, 'fsdp')), shard=[32, 32], shape=[32, 128]), tree
  assert info['params']["['conv_in']['bias']"]['spec'] == str(P())
  moments = [v for k, v in info['opt'].items() if k.endswith(mlp)]
  assert len(moments) == 2 and all(v['shard'] == [32, 32] for v in moments)
  assert info['bytes_fsdp'] < 0.5 * info['bytes_replicated']
  # The sharded checkpoint written at step 2 restored into the run that finished step 3.
  assert info['resumed_step'] == STEPS
  assert {'2', '3'} <= set(os.listdir(os.path.join(out, 'fsdp', 'checkpoints')))


if __name__ == '__main__':
  if len(sys.argv) == 3 and sys.argv[1] == '--worker':
    _worker(sys.argv[2])
  else:
    sys.exit(f'usage: {sys.argv[0]} --worker OUT_DIR')
