"""Export a workdir's EMA parameters (safetensors), config (JSON) and a serialized sampler (jax.export).

  python -m experiments.export --workdir runs/fmnist --out export/ \
      [--step N] [--export_num_samples 16] [--export_num_steps 128] [--sampler ddpm] [--platforms cpu,cuda]
      [--guide_workdir G [--guide_step S]]

Writes export/params.safetensors, export/config.json, export/sampler.jaxexport and
export/sampler.jaxexport.json. Load them without training code (see `sid2.export`):
  params, config = sid2.export.load('export/')
  sample = sid2.export.load_sampler('export/')
  images = sample(params, rng=0, guidance=1.0, interval=(-3.0, 5.0))
With --guide_workdir (autoguidance, as in experiments.sample) it also writes export/guide_params.safetensors and
export/guide_config.json, and the sampler needs them and an explicit w:
  guide_params, _ = sid2.export.load_guide('export/')
  images = sample(params, rng=0, guidance=1.0, guide_params=guide_params)
"""
from __future__ import annotations
from sid2 import runtime  # first, before jax: one CPU device per core, persistent compile cache
runtime.configure(__name__)  # (only when run as a program)

import json
from typing import Optional

from absl import flags

from experiments import cli
from sid2 import export as export_lib
from sid2 import restore
from sid2 import sampling

# The sampler flags of this command (the step count is --export_num_steps, fixed in the exported file).
SAMPLER_FLAG_FIELDS = tuple(f for f in sampling.LOOP_FIELDS if f != 'num_steps')


def define_flags(fv: flags.FlagValues):
  d = dict(flag_values=fv)
  cli.define_checkpoint_flags(fv)  # --workdir, --step
  flags.DEFINE_string('out', None, 'Output directory.', **d)
  flags.DEFINE_bool('export_sampler', True, 'Also write the serialized sampler.', **d)
  flags.DEFINE_integer('export_num_samples', None, 'Batch of the exported sampler (default: '
                       'config.sampler.num_samples).', **d)
  flags.DEFINE_integer('export_num_steps', None, 'Steps of the exported sampler (default: '
                       'config.sampler.num_steps).', **d)
  cli.define_sampler_flags(fv, SAMPLER_FLAG_FIELDS)
  cli.define_guide_flags(fv)  # autoguidance: the guide's parameters are exported beside the model's
  flags.DEFINE_string('platforms', ','.join(export_lib.DEFAULT_PLATFORMS),
                      'Comma-separated platforms to lower the sampler for (cpu, cuda, rocm, tpu).', **d)


def run(workdir: str, out: str, *, step=None, export_sampler=True, export_num_samples=None,
        export_num_steps=None, sampler=None, clip_x=None, logvar_type=None, eta=None,
        platforms=export_lib.DEFAULT_PLATFORMS, guide_workdir=None, guide_step=None, log=print) -> dict:
  """Validates, registers the model (imports spectral if needed) and writes the export; returns a summary."""
  if not workdir or not out:
    raise ValueError('workdir and out are required')
  config = restore.load_config(workdir)
  cli.ensure_model_registered(config)
  if isinstance(platforms, str):
    platforms = tuple(p.strip() for p in platforms.split(',') if p.strip())
  summary = export_lib.export_workdir(
      workdir, out, step=step, with_sampler=export_sampler, num_samples=export_num_samples,
      num_steps=export_num_steps, sampler=sampler, clip_x=clip_x, logvar_type=logvar_type, eta=eta,
      platforms=platforms, guide_workdir=guide_workdir, guide_step=guide_step)
  log(f'exported step {summary["step"]} of {workdir} to {out} (params sha256 {summary["sha256"]})')
  if 'guide' in summary:
    g = summary['guide']
    log(f'  autoguided by step {g["step"]} of {g["workdir"]} (guide params sha256 {g["params_sha256"]})')
  log(json.dumps(summary, indent=2))
  return summary


def main(argv, flag_values: Optional[flags.FlagValues] = None):
  """CLI entry. argv: ['export', '--workdir=...', ...]; flags parsed into a fresh FlagValues unless given."""
  fv = cli.parse(argv, define_flags, flag_values, extra_args_ok=False)
  return run(fv.workdir, fv.out, step=fv.step, export_sampler=fv.export_sampler,
             export_num_samples=fv.export_num_samples, export_num_steps=fv.export_num_steps,
             platforms=fv.platforms, **cli.sampler_flag_values(fv, SAMPLER_FLAG_FIELDS),
             **cli.guide_flag_values(fv))


if __name__ == '__main__':
  cli.cli_entry(main, define_flags)
