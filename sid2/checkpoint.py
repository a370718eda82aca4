"""Orbax checkpoints of the train state plus the data position, with fallback past a corrupt latest.

A checkpoint holds `state` (the TrainState pytree: params, EMA, optimizer state, step, RNG, counters) and
`data` (the input pipeline's position as JSON). Nothing is pickled.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp


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
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'data'))

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

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
