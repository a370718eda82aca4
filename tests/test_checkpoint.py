"""sid2.checkpoint on orbax's current API (handler_registry, no item_names) reads and writes the same files as
the managers made with the deprecated `item_names=('state', 'data')` did: old checkpoints still restore."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sid2 import checkpoint as ckpt_lib
from sid2 import restore


def _state(seed):
  k = jax.random.PRNGKey(seed)
  return dict(params=dict(w=jax.random.normal(k, (3, 4)), b=jnp.arange(4, dtype=jnp.float32)),
              ema_params=dict(w=jnp.full((3, 4), float(seed)), b=jnp.ones((4,), jnp.bfloat16)),
              step=jnp.asarray(seed, jnp.int32))


def _old_style_save(directory, step, state, data):
  """A checkpoint as sid2 wrote it before the move: item_names=('state', 'data'), Composite args."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True),
                                    item_names=('state', 'data'))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)))
  manager.wait_until_finished()
  manager.close()


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_checkpointer_restores_an_old_style_checkpoint_and_saves_the_same_layout(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  old = _state(3)
  _old_style_save(directory, 3, old, dict(epoch=1, index=24))
  ckpt = ckpt_lib.Checkpointer(directory, async_save=False)
  step, state, data = ckpt.restore_latest(ckpt_lib.abstract_like(_state(0)))
  assert (step, data) == (3, dict(epoch=1, index=24))
  _assert_same(state, old)
  new = _state(5)
  ckpt.save(5, new, dict(epoch=2, index=8))
  ckpt.close()
  assert sorted(p.name for p in (tmp_path / 'checkpoints' / '5').iterdir() if not p.name.startswith('_')) == \
      sorted(p.name for p in (tmp_path / 'checkpoints' / '3').iterdir() if not p.name.startswith('_'))
  # The new checkpoint reads back with an old-style manager too.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    manager = ocp.CheckpointManager(directory, item_names=('state', 'data'))
  restored = manager.restore(5, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(ckpt_lib.abstract_like(_state(0))), data=ocp.args.JsonRestore()))
  manager.close()
  _assert_same(restored['state'], new)
  assert dict(restored['data']) == dict(epoch=2, index=8)


def test_restore_manager_reads_metadata_and_a_subtree_of_an_old_style_checkpoint(tmp_path):
  old = _state(7)
  _old_style_save(restore.checkpoint_dir(str(tmp_path)), 7, old, dict(epoch=0, index=0))
  manager = restore._manager(str(tmp_path))  # pylint: disable=protected-access
  meta = manager.item_metadata(7)['state']
  meta = meta.tree if hasattr(meta, 'tree') else meta
  assert tuple(meta['ema_params']['w'].shape) == (3, 4)
  target = dict(ema_params=jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), old['ema_params']))
  args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                partial_restore=True)
  restored = manager.restore(7, args=ocp.args.Composite(state=args))['state']
  manager.close()
  assert set(restored) == {'ema_params'}
  _assert_same(restored['ema_params'], old['ema_params'])


def test_no_preemption_in_a_single_process_run(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / 'c'), async_save=False)
  assert not any(ckpt.reached_preemption(s) for s in range(3))
  ckpt.close()
