"""One registry style for everything chosen by name in a config (schedules, weightings and losses, samplers,
models, datasets, auxiliary losses).

  SCHEDULES = registry.Registry('schedule')

  @SCHEDULES.register('cosine')
  def _cosine(name, image_res): ...

  @SCHEDULES.register_pattern(r'cosine_shifted_(\\d+)', 'cosine_shifted_<noise_res>')
  def _shifted(name, match): ...   # returns the entry for this name (and may raise ValueError)

`get(name)` returns the entry of an exact name, else the first pattern that matches the whole name (its
parser builds the entry), else a ValueError that lists the allowed names. Registering the same object twice
is a no-op; a different object under a taken name is a ValueError. `entries` is the plain name -> entry dict.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional


class Registry:
  """Named entries plus pattern-named ones (regex -> parser); see the module docstring."""

  def __init__(self, kind: str, field: Optional[str] = None):
    self.kind = kind  # what an entry is, for messages ('schedule', 'model', ...)
    self.field = field or kind  # the config field that names an entry, for messages
    self.entries: dict = {}
    self.patterns: list = []  # (compiled regex, display name, parser(name, match) -> entry)

  def register(self, name: str, entry: Any = None):
    """Registers `entry` under `name`; without `entry`, a decorator that registers what it decorates."""
    if entry is None:
      return lambda obj: self.register(name, obj)
    if not isinstance(name, str) or not name:
      raise ValueError(f'{self.kind} name must be a non-empty string, got {name!r}')
    if name in self.entries and self.entries[name] is not entry:
      raise ValueError(f'{self.kind} name {name!r} is already registered to {self.entries[name]!r}')
    self.entries[name] = entry
    return entry

  def register_pattern(self, regex: str, display, parser: Optional[Callable] = None):
    """Names that fully match `regex` resolve to `parser(name, match)`; `display` (a name or a tuple of names,
    e.g. 'sigmoid:<b>') is shown in the allowed list.

    Without `parser`, a decorator. Re-registering the same display replaces the parser.
    """
    if parser is None:
      return lambda fn: self.register_pattern(regex, display, fn)
    display = (display,) if isinstance(display, str) else tuple(display)
    self.patterns = [p for p in self.patterns if p[1] != display] + [(re.compile(regex), display, parser)]
    return parser

  def names(self) -> tuple:
    """Exact names (in registration order), then the pattern names."""
    return tuple(self.entries) + tuple(d for p in self.patterns for d in p[1])

  def find(self, name) -> Optional[Any]:
    """The entry for `name`, or None when nothing matches (a matching pattern's parser may raise)."""
    if not isinstance(name, str):
      return None
    if name in self.entries:
      return self.entries[name]
    for regex, _, parser in self.patterns:
      match = regex.fullmatch(name)
      if match:
        return parser(name, match)
    return None

  def get(self, name) -> Any:
    """The entry for `name`; ValueError naming the field and the allowed names when there is none."""
    entry = self.find(name)
    if entry is None:
      raise ValueError(self.unknown_message(name))
    return entry

  def unknown_message(self, name) -> str:
    return f'unknown {self.field} {name!r}; allowed: {", ".join(self.names())}'

  def __contains__(self, name) -> bool:
    if not isinstance(name, str):
      return False
    return name in self.entries or any(p[0].fullmatch(name) for p in self.patterns)

  def __iter__(self):
    return iter(self.names())

  def __len__(self):
    return len(self.entries) + len(self.patterns)

  def __repr__(self):
    return f'Registry({self.kind!r}: {", ".join(self.names())})'
