"""Shared by the command-line entry points: `main(argv, flag_values)` parses argv into a fresh FlagValues (so
it is callable from tests and other scripts without touching absl's global flags); `cli_entry` runs it under
absl with the global flags; `define_checkpoint_flags` the --workdir / --step pair of the commands that read a
checkpoint; `define_sampler_flags` / `sampler_flag_values` are the sampler flags of every
command and `define_guide_flags` / `guide_flag_values` the autoguidance flags of sample, evaluate and export,
defined once from `sid2.sampling`."""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging

from sid2 import sampling


def parse_with_args(argv, define_flags: Callable[[flags.FlagValues], None],
                    flag_values: Optional[flags.FlagValues] = None) -> Tuple[flags.FlagValues, List[str]]:
  """(FlagValues, the positional arguments after the program name): `flag_values` and argv[1:] when given
  (absl has parsed the flags out of argv then), else a fresh FlagValues with `define_flags` applied and argv
  parsed into it."""
  if flag_values is None:
    fv = flags.FlagValues()
    define_flags(fv)
    rest = fv(list(argv))
  else:
    fv, rest = flag_values, argv
  return fv, list(rest[1:])


def parse(argv, define_flags: Callable[[flags.FlagValues], None],
          flag_values: Optional[flags.FlagValues] = None, *, extra_args_ok: bool = True) -> flags.FlagValues:
  """`flag_values` when given (argv must then hold only the program name unless extra_args_ok), else a fresh
  FlagValues with `define_flags` applied and argv parsed into it."""
  fv, rest = parse_with_args(argv, define_flags, flag_values)
  if not extra_args_ok and rest:
    raise app.UsageError(f'unexpected arguments: {rest}')
  return fv


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


def write_figure_and_json(result: dict, out_dir: str, stem: str, plot: Callable[[dict, str], None]):
  """Writes <out_dir>/<stem>.png (by `plot(result, path)`) and <stem>.json, and says so."""
  os.makedirs(out_dir, exist_ok=True)
  png, js = (os.path.join(out_dir, stem + ext) for ext in ('.png', '.json'))
  plot(result, png)
  with open(js, 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  print(f'wrote {png} and {js} ({result["seconds"]} s)')


def ensure_model_registered(config):
  """Imports the config's plugins (`sid2.plugins.load_plugins`), then ValueError if its model is unknown."""
  from sid2 import plugins  # pylint: disable=g-import-not-at-top
  from sid2 import restore  # pylint: disable=g-import-not-at-top
  plugins.load_plugins(config)
  restore.check_model_registered(config)


WORKDIR_HELP = 'Training workdir (config.json + checkpoints/).'
STEP_HELP = 'Checkpoint step (default: the latest readable one).'


def define_checkpoint_flags(fv: flags.FlagValues, workdir_help: str = WORKDIR_HELP, step_help: str = STEP_HELP):
  """Defines --workdir (a training workdir) and --step (its checkpoint, default None = the latest) on `fv`:
  the checkpoint a sampling / evaluation / export command reads."""
  flags.DEFINE_string('workdir', None, workdir_help, flag_values=fv)
  flags.DEFINE_integer('step', None, step_help, flag_values=fv)


def define_sampler_flags(fv: flags.FlagValues, fields: Sequence[str] = sampling.FLAG_FIELDS):
  """Defines the sampler flags (--sampler, --num_steps, --clip_x, ... per `sampling.flag_specs`) on `fv`, all
  defaulting to None (= the workdir config's value)."""
  define = dict(string=flags.DEFINE_string, integer=flags.DEFINE_integer, float=flags.DEFINE_float)
  for name, kind, help_text in sampling.flag_specs(fields):
    define[kind](name, None, help_text, flag_values=fv)


def sampler_flag_values(fv: flags.FlagValues, fields: Sequence[str] = sampling.FLAG_FIELDS) -> dict:
  """{flag name: value} of the sampler flags defined by `define_sampler_flags(fv, fields)`."""
  return {name: fv[name].value for name, _, _ in sampling.flag_specs(fields)}


def define_guide_flags(fv: flags.FlagValues):
  """Defines the autoguidance flags (--guide_workdir, --guide_step per `sampling.GUIDE_FLAGS`) on `fv`."""
  define = dict(string=flags.DEFINE_string, integer=flags.DEFINE_integer)
  for name, kind, help_text in sampling.GUIDE_FLAGS:
    define[kind](name, None, help_text, flag_values=fv)


def guide_flag_values(fv: flags.FlagValues) -> dict:
  """{flag name: value} of the flags defined by `define_guide_flags(fv)`."""
  return {name: fv[name].value for name in sampling.GUIDE_FLAG_NAMES}
