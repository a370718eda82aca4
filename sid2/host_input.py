"""Host input next to device compute: a prefetch thread for the next batches, and uint8 pixels scaled on device.

`Prefetcher(fetch, start, end, depth)` calls `fetch(step)` for step = start, start + 1, ... in that order on
one background thread, at most `depth` steps ahead of the consumer, so the next batches are read, decoded and
copied to the devices while the current step runs. The order of the calls is the synchronous loop's, so the
batches (and the dataset position recorded with each) are the same: prefetching changes timing only.

Pixels cross host -> device as uint8 (4x less traffic than float32) and `scale_images_on_device` maps them to
[-1, 1] inside the jitted step with SPEC §9's x / 127.5 - 1, bitwise the values `sid2.data.scale_uint8`
gives on the host (a 256-entry table lookup); float images pass through unchanged (datasets whose pixels
are not 8-bit values).
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np


# x / 127.5 - 1 for every 8-bit x, computed once on the host in float32 (SPEC §9, as `sid2.data.scale_uint8`).
# Looking pixels up in it gives bitwise the host's values: XLA rewrites a division by a constant into a
# multiplication by its reciprocal, which is off by one float32 ulp for some values.
UNIT_TABLE = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def uint8_to_unit(x):
  """uint8 pixels -> float32 in [-1, 1]: x / 127.5 - 1 (SPEC §9); other dtypes are returned as they are."""
  if x.dtype != jnp.uint8:
    return x
  return jnp.take(jnp.asarray(UNIT_TABLE), x.astype(jnp.int32), mode='clip')


def scale_images_on_device(train_step: Callable) -> Callable:
  """`train_step(state, batch, frozen)` that first scales a uint8 batch['image'] to [-1, 1] (jit it after)."""
  def step(state, batch, frozen=None):
    if 'image' in batch:
      batch = dict(batch, image=uint8_to_unit(batch['image']))
    return train_step(state, batch, frozen)
  return step


class _Failed:
  def __init__(self, error):
    self.error = error


class Prefetcher:
  """Background `fetch(step)` for steps in [start, end), `depth` ahead; `get(step)` returns them in order.

  depth 0: no thread, `get` calls `fetch` directly. An exception raised by `fetch` is re-raised by the `get`
  of that step. Use as a context manager (or call `close`) so the thread stops with the loop.
  """

  def __init__(self, fetch: Callable[[int], Any], start: int, end: int, depth: int = 2):
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
      raise ValueError(f'prefetch depth (config field prefetch_batches) must be an int >= 0; got {depth!r}')
    self._fetch, self._next, self._end, self._depth = fetch, start, end, depth
    self._stop = threading.Event()
    self._queue = queue.Queue(maxsize=max(depth, 1))
    self._thread = None
    if depth > 0 and start < end:
      self._thread = threading.Thread(target=self._run, args=(start,), daemon=True, name='sid2-prefetch')
      self._thread.start()

  def _run(self, step):
    while step < self._end and not self._stop.is_set():
      try:
        item = (step, self._fetch(step))
      except BaseException as e:  # pylint: disable=broad-except  (handed to the consumer)
        item = (step, _Failed(e))
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if isinstance(item[1], _Failed):
        return
      step += 1

  def get(self, step: int):
    """The fetched value for `step`; steps must be asked for in order from `start`."""
    if step != self._next:
      raise ValueError(f'Prefetcher: step {step} requested, expected {self._next} (steps are taken in order)')
    if step >= self._end:
      raise ValueError(f'Prefetcher: step {step} is past the last step {self._end - 1}')
    self._next += 1
    if self._thread is None:
      return self._fetch(step)
    got_step, value = self._queue.get()
    assert got_step == step, (got_step, step)
    if isinstance(value, _Failed):
      raise value.error
    return value

  def close(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
