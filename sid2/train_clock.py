"""The training-time budget: `config.max_train_seconds` on `config.train_clock` (issue 18).

A run stops (checkpoint, sample grid) once it has trained for `max_train_seconds` (0 or absent: no budget)
on its clock, counted from the start of `train_and_evaluate` (data loading, initialisation and compilation
included) and carried across resumptions: the seconds spent up to each checkpoint are kept in
`<workdir>/train_clock.json`, and a resumed run continues from those of the checkpoint it restored.

Clocks: 'wall' (time.time: what a user waits) or 'process' (time.process_time: CPU seconds of every thread of
this process; a fair measure when other jobs share the machine, about cores x wall when the run is alone).
Both are recorded at every checkpoint whichever one the budget uses.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

CLOCKS = ('wall', 'process')
FILENAME = 'train_clock.json'
_NOW = {'wall': time.time, 'process': time.process_time}


def check_config(config) -> None:
  """ValueError naming the field unless max_train_seconds >= 0 and train_clock is one of CLOCKS."""
  budget = config.get('max_train_seconds', 0.0)
  if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
    raise ValueError(f'config field max_train_seconds must be a number >= 0 (0: no time budget); got {budget!r}')
  clock = config.get('train_clock', 'wall')
  if clock not in CLOCKS:
    raise ValueError(f'config field train_clock must be one of {CLOCKS}; got {clock!r}')


class TrainClock:
  """Seconds trained so far on both clocks (this invocation plus the restored checkpoint's), and the budget."""

  def __init__(self, workdir: str, config, *, write: bool = True):
    self.path = os.path.join(workdir, FILENAME)
    self.clock = config.get('train_clock', 'wall')
    self.budget = float(config.get('max_train_seconds', 0.0) or 0.0)
    self.write = write
    self._start = {k: f() for k, f in _NOW.items()}
    self._offset = {k: 0.0 for k in CLOCKS}
    self.record = dict(clock=self.clock, budget=self.budget, steps={}, stopped_by_budget=None)
    if os.path.isfile(self.path):
      with open(self.path) as f:
        old = json.load(f)
      self.record['steps'] = dict(old.get('steps', {}))
      self.record['stopped_by_budget'] = old.get('stopped_by_budget')

  def resume(self, step: int) -> None:
    """Continue from the seconds recorded at checkpoint `step` (0 when none were, e.g. a fresh run)."""
    at = self.record['steps'].get(str(int(step)))
    self._offset = {k: float(at[k]) if at else 0.0 for k in CLOCKS}
    # Entries past the restored step belong to a future this run will redo.
    self.record['steps'] = {s: v for s, v in self.record['steps'].items() if int(s) <= step}

  def seconds(self, clock: Optional[str] = None) -> float:
    clock = clock or self.clock
    return self._offset[clock] + _NOW[clock]() - self._start[clock]

  def exhausted(self) -> bool:
    return self.budget > 0 and self.seconds() >= self.budget

  def mark(self, step: int, *, stopped: bool = False) -> None:
    """Records both clocks at checkpoint `step` (and that the budget ended the run there)."""
    self.record['steps'][str(int(step))] = {k: round(self.seconds(k), 3) for k in CLOCKS}
    if stopped:
      self.record['stopped_by_budget'] = int(step)
    elif (self.record['stopped_by_budget'] or step) < step:  # a larger budget trained on past that stop
      self.record['stopped_by_budget'] = None
    if self.write:
      tmp = self.path + '.tmp'
      with open(tmp, 'w') as f:
        json.dump(self.record, f, indent=1)
      os.replace(tmp, self.path)


def read(workdir: str) -> dict:
  """The `train_clock.json` record of a workdir ({} when absent)."""
  path = os.path.join(workdir, FILENAME)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)
