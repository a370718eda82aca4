"""Packages that extend sid2, named by the config and imported by one loader (`load_plugins`).

A plugin is any importable module that registers things when imported: models (`sid2.models.register_model`),
datasets (`sid2.data.register_dataset`), auxiliary losses (`sid2.aux_losses.register_aux_loss`), samplers,
schedules or weightings. A config names its plugins in the optional top-level field
`plugins = ('spectral',)`; every entry point calls `load_plugins(config)` before it builds anything, so no
entry point imports a plugin by hand, and sid2 never imports one at module level.

Configs and workdirs written before the field existed have no `plugins`: for them `load_plugins` imports
`LEGACY_PLUGINS` (Spectral Diffusion, the one extension at the time) when it is importable, and skips it
silently otherwise, which is what the entry points did by hand. A config that sets `plugins` (even to ())
gets exactly those, and a plugin that cannot be imported is a ValueError naming the field.
"""
from __future__ import annotations

import importlib
from typing import Optional, Sequence

LEGACY_PLUGINS = ('spectral',)


def plugin_names(config) -> Optional[tuple]:
  """`config.plugins` as a tuple of module names, or None when the config has no such field."""
  get = getattr(config, 'get', None)
  names = get('plugins', None) if get is not None else None
  if names is None:
    return None
  if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
    raise ValueError(f"config field plugins must be a tuple of module names, e.g. ('spectral',); got {names!r}")
  return tuple(names)


def load_plugins(config=None, names: Optional[Sequence[str]] = None) -> tuple:
  """Imports the plugins of `config` (or the given module names); returns the names that were imported.

  Without a `plugins` field (and no `names`), the importable ones of LEGACY_PLUGINS (see the module docstring).
  """
  if names is None:
    names = plugin_names(config) if config is not None else None
  if names is None:
    return tuple(n for n in LEGACY_PLUGINS if _try_import(n))
  for name in names:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ValueError(f'config field plugins: could not import {name!r} ({type(e).__name__}: {e})') from None
  return tuple(names)


def _try_import(name: str) -> bool:
  try:
    importlib.import_module(name)
  except ImportError:
    return False
  return True


def missing_hint() -> str:
  """The advice appended to 'not registered' errors."""
  return ("name the package that registers it in the config (plugins=('spectral',)) or import it before "
          'loading, e.g. `import spectral`')
