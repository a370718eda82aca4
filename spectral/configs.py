"""Building blocks of the Spectral Diffusion configs (`configs/spectral_*.py`): the optimisation settings of
supplement Tables 2-3, the UNet sub-configs of Tables 4-7, and the variants every table config offers.

A table config file's `get_config(arg)` takes comma-separated options (ml_collections' `--config=file:arg`):
  student (default): the WG-UNet of the table, trained without distillation;
  lite:     the same widths with plain down/up-sampling (the Lite-LDM baseline, SPEC §13);
  teacher:  a full-width plain UNet (ours: the paper does not list its teachers; widths after the public
            LDM configs of the same task, head width 32);
  distill:  the student plus spectrum-aware distillation (SPEC §13) from `teacher_workdir` (set it on the
            command line: --config.teacher_workdir=...), with Π at feat-up1 to the teacher's width.
Importing this module imports `spectral`, which registers the models and the distillation loss.
"""
from __future__ import annotations

import ml_collections

import spectral  # noqa: F401  (registers 'wg_unet', 'unet' and the 'spectral' distillation)
from spectral import unet as unet_lib

VARIANTS = ('student', 'lite', 'teacher', 'distill')


def parse_args(arg, extra=()):
  """'' | 'lite' | 'distill,celebahq' ... -> (variant, set of the other options); ValueError on unknowns."""
  tokens = [t.strip() for t in (arg or '').split(',') if t.strip()]
  unknown = [t for t in tokens if t not in VARIANTS + tuple(extra)]
  if unknown:
    raise ValueError(f'unknown config option(s) {unknown}; allowed: {VARIANTS + tuple(extra)}')
  variants = [t for t in tokens if t in VARIANTS]
  if len(variants) > 1:
    raise ValueError(f'choose one variant of {VARIANTS}; got {variants}')
  return (variants[0] if variants else 'student'), set(tokens) - set(variants)


def unet_config(name='wg_unet', **fields):
  """A model sub-config with every UNet field spelled out (defaults from `spectral.unet.UNET_DEFAULTS`)."""
  f = dict(unet_lib.UNET_DEFAULTS)
  f.update(fields)
  if name == 'unet':
    f['downsample'] = 'plain'
  return ml_collections.ConfigDict(dict(name=name, **f))


def distill_config(**fields):
  """The `distill` sub-config of SPEC §13 with the paper's defaults (taps output + feat-up1, λ = 0.1)."""
  from spectral import distill  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(distill.DISTILL_DEFAULTS, **fields))


def apply_variant(c, variant, teacher_model):
  """Turns a student config `c` into its `variant` (see the module docstring)."""
  if variant == 'lite':
    c.model.name = 'unet'
    c.model.downsample = 'plain'
    c.description += ' -- Lite-LDM baseline (plain down/up-sampling, no distillation)'
  elif variant == 'teacher':
    c.model = teacher_model
    c.description += ' -- teacher (full-width plain UNet, ours)'
  elif variant == 'distill':
    c.distill = distill_config()
    c.teacher_workdir = ''
    c.model.proj_taps = ('feat-up1',)
    c.model.proj_channels = (teacher_model.channels[0],)
    c.description += ' -- with spectrum-aware distillation (set --config.teacher_workdir)'
  return c


def table_config(*, description, latent_res, latent_channels, dataset, batch_size, total_steps,
                 learning_rate, model, conditioning='none', num_classes=0, guidance=0.0):
  """A training config with Tables 2-3's optimisation settings around a UNet sub-config.

  Tables 2-3: DDPM linear-β schedule (1000 steps), ε-prediction with the plain ε-MSE, Adam, 1k warmup steps,
  then linear decay. Data: pre-computed latents (`spectral.latents`), not clipped when sampling.
  """
  c = ml_collections.ConfigDict()
  c.description = description
  c.plugins = ('spectral',)  # sid2.plugins: the entry points import spectral (models, distillation, latents)
  c.seed = 0
  c.batch_size = batch_size
  c.total_steps = total_steps
  c.log_every = 100
  c.eval_every = 10_000
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  c.max_nonfinite_streak = 20
  c.image_res = latent_res
  c.num_channels = latent_channels
  c.dataset = ml_collections.ConfigDict(dict(name=f'latents:{dataset}', split='train', data_dir='',
                                             shuffle_buffer=10_000, num_classes=num_classes))
  c.schedule = 'linear_beta'
  c.loss_type = 'eps_mse'
  c.parametrization = 'eps'
  c.low_discrepancy = False
  c.cond_drop_prob = 0.1 if conditioning != 'none' else 0.0
  c.ema_decay = 0.9999
  c.model = model
  c.optimizer = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=learning_rate, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
      warmup_steps=1000, grad_clip=0.0, decay='linear', end_factor=0.0))
  # The paper samples with DDIM (supplement Figs. 4-5: 500 steps); latents are not clipped.
  c.sampler = ml_collections.ConfigDict(dict(
      name='ddim', num_steps=200, clip_x='none', logvar_type='0.3', eta=0.0, guidance=guidance,
      guidance_interval=(-100.0, 100.0), num_samples=16))
  return c
