"""Shared by the command-line entry points: `main(argv, flag_values)` parses argv into a fresh FlagValues (so
it is callable from tests and other scripts without touching absl's global flags); `cli_entry` runs it under
absl with the global flags."""
from __future__ import annotations

import sys
from typing import Callable, Optional

from absl import app
from absl import flags
from absl import logging


def parse(argv, define_flags: Callable[[flags.FlagValues], None],
          flag_values: Optional[flags.FlagValues] = None, *, extra_args_ok: bool = True) -> flags.FlagValues:
  """`flag_values` when given (argv must then hold only the program name unless extra_args_ok), else a fresh
  FlagValues with `define_flags` applied and argv parsed into it."""
  if flag_values is None:
    fv = flags.FlagValues()
    define_flags(fv)
    fv(list(argv))
    return fv
  if not extra_args_ok and len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  return flag_values


def cli_entry(main_fn, define_fn):
  """Runs `main_fn` under absl with the global FLAGS: quiet library logs, bad input as one error line."""
  define_fn(flags.FLAGS)

  def entry(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs every file it opens at INFO
    try:
      main_fn(argv, flags.FLAGS)
    except (ValueError, FileNotFoundError) as e:
      sys.exit(f'error: {e}')

  app.run(entry)


def ensure_model_registered(config):
  """Imports `spectral` (which registers more models) when the config's model is not a sid2 model.

  sid2 never imports spectral; the commands do, here. ValueError if the model is still unknown.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  from sid2 import models  # pylint: disable=g-import-not-at-top
  from sid2 import restore  # pylint: disable=g-import-not-at-top
  if config.model.get('name', None) not in models.MODELS:
    try:
      importlib.import_module('spectral')
    except ImportError as e:
      logging.warning('could not import spectral (%s)', e)
  restore.check_model_registered(config)
