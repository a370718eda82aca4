"""Converts the FID Inception-v3 weights, once, from the torch file to safetensors / npz (issue 7).

  python -m experiments.convert_inception pt_inception-2015-12-05-6726825d.pth inception.safetensors \
      [--sha256 HEX]

SRC is verified (its sha256 must be the standard one, `sid2.eval.inception.STANDARD_SHA256`, unless --sha256
asserts another) and read without unpickling; DST (.safetensors or .npz) holds the same tensors plus the
source's sha256 and a digest of the tensors, checked whenever it is loaded (`sid2.eval.inception.convert_weights`).
"""
from __future__ import annotations

from typing import Optional

from absl import app
from absl import flags

from experiments import cli


def define_flags(fv: flags.FlagValues):
  """Defines this command's flags on `fv` (the global FLAGS for the CLI, a fresh FlagValues in `main`)."""
  flags.DEFINE_string('sha256', None, 'Assert a non-standard sha256 for SRC.', flag_values=fv)


def main(argv, flag_values: Optional[flags.FlagValues] = None) -> dict:
  """Verifies SRC and writes DST; returns DST's info dict."""
  fv, positional = cli.parse_with_args(argv, define_flags, flag_values)
  if len(positional) != 2:
    raise app.UsageError(f'expected SRC DST (the torch weight file and the output .safetensors or .npz); got '
                         f'{positional}')
  from sid2.eval import inception  # pylint: disable=g-import-not-at-top
  src, dst = positional
  out = inception.convert_weights(src, dst, fv.sha256)
  print(f'wrote {out["path"]} (sha256 {out["sha256"]}; source sha256 {out[inception.SOURCE_SHA256_KEY]})')
  return out


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
