"""Orbax checkpoints of the train state plus the data position, with fallback past a corrupt latest.

A checkpoint holds `state` (the TrainState pytree: params, EMA, optimizer state, step, RNG, counters) and
`data` (the input pipeline's position as JSON). Nothing is pickled.

The managers name the two items with orbax's current API, a `handler_registry` (`handler_registry()`: which
handler saves and restores each item for which `ocp.args` type), and save / restore them with
`ocp.args.Composite`; the deprecated `item_names=` / `item_handlers=` are not used. The files on disk are
the same (`<step>/state`, `<step>/data`, `_CHECKPOINT_METADATA`), so checkpoints written by managers made with
`item_names=('state', 'data')` restore unchanged (tests/test_checkpoint.py).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp


def handler_registry(raw_state: bool = False):
  """An orbax handler registry for the two items: `state` with the standard handler (StandardSave /
  StandardRestore) or, raw_state=True, the PyTree handler (PyTreeSave / PyTreeRestore, e.g. to read a sub-tree
  of a TrainState by its metadata); `data` as JSON."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  if raw_state:
    state, state_args = ocp.PyTreeCheckpointHandler(), (ocp.args.PyTreeSave, ocp.args.PyTreeRestore)
  else:
    state, state_args = ocp.StandardCheckpointHandler(), (ocp.args.StandardSave, ocp.args.StandardRestore)
  data = ocp.JsonCheckpointHandler()
  for args in state_args:
    registry.add('state', args, state)
  for args in (ocp.args.JsonSave, ocp.args.JsonRestore):
    registry.add('data', args, data)
  return registry


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a concrete pytree: the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def preservation_policy(keep: int, keep_every: int = 0):
  """The last `keep` checkpoints, plus (keep_every > 0) every checkpoint whose step is a multiple of it."""
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if keep_every:
    policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=keep_every))
  return ocp.checkpoint_managers.AnyPreservationPolicy(policies)


class Checkpointer:
  """Saves every `save_every` steps (and on demand), keeps the last `keep` (and, with keep_every > 0, every
  step that is a multiple of keep_every, permanently, in the same directory), restores the newest good one."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True, keep_every: int = 0):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(preservation_policy=preservation_policy(keep, keep_every),
                                           create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=handler_registry())

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict):
    """Saves (asynchronously); a no-op if a checkpoint of this step exists."""
    if step in self.manager.all_steps():
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
    return self.manager.save(step, args=args, force=True)

  def restore(self, step: int, abstract_state) -> Tuple[Any, dict]:
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    return restored['state'], dict(restored['data'])

  def restore_latest(self, abstract_state) -> Optional[Tuple[int, Any, dict]]:
    """(step, state, data) of the newest checkpoint that restores; warns past corrupt ones; None if none."""
    for step in reversed(self.all_steps()):
      try:
        state, data = self.restore(step, abstract_state)
        return step, state, data
      except Exception as e:  # corrupt or partial checkpoint: fall back to the previous one
        logging.warning('checkpoint at step %d could not be restored (%s: %s); trying the previous one',
                        step, type(e).__name__, e)
    return None

  def reached_preemption(self, step: int) -> bool:
    """True at the same step on every process once any process of a multi-process run got a preemption
    notice (SIGTERM, caught by jax's preemption service): orbax's `reached_preemption`, jax's preemption sync
    point. Call it at every step on every process. False without `jax.distributed` (single-process runs)."""
    return bool(self.manager.reached_preemption(step))

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
