"""The jitted sampler of a model and a config (SPEC §6, §7): what the loop's sample grids, restore's cached
samplers (and through them generation, evaluation and export) and the benchmarks run.

  sample = make_sample_fn(model, config, num_samples, num_channels)
  images = sample(params, rng, labels, *guidance_args(config))

The settings come from `sampling.SamplerSettings.from_config(config.sampler)`; guidance strength and interval
are traced arguments. `make_autoguided_sample_fn` is the autoguided variant (SiD2 B.5).
"""
from __future__ import annotations

import functools

import jax

from sid2 import guidance as guidance_lib
from sid2 import samplers
from sid2 import sampling
from sid2 import schedules
from sid2.models.build import example_shape, make_x_pred


def make_sample_fn(model, config, num_samples, num_channels, embedding_labels=False):
  """A jitted `sample(params, rng, labels, guidance, lo, hi) -> images` from the config's sampler settings.

  Guidance strength and interval are traced: changing them does not recompile (SPEC §7).
  embedding_labels: labels are conditioning embeddings (e.g. text [N, S, D]) and the unconditional branch
  is the model called with labels=None (its own null context).
  """
  settings = sampling.SamplerSettings.from_config(config.sampler)
  schedule = schedules.get_schedule(config.schedule, image_res=config.image_res)
  loop = samplers.sample_loop_fn((num_samples,) + example_shape(model, config, num_channels), schedule,
                                 **settings.loop_kwargs())
  x_pred = make_x_pred(model, config.parametrization)
  num_classes = config.model.get('num_classes', 0)

  def sample(params, rng, labels, guidance, lo, hi):
    if embedding_labels:
      fn = guidance_lib.guided_x_pred_fn(lambda z, logsnr: x_pred(params, z, logsnr, labels),
                                         lambda z, logsnr: x_pred(params, z, logsnr, None), guidance, (lo, hi))
    elif num_classes:
      fn = guidance_lib.class_guided_x_pred_fn(functools.partial(x_pred, params), labels, num_classes,
                                               guidance, (lo, hi))
    else:
      fn = lambda z, logsnr: x_pred(params, z, logsnr, None)
    return loop(fn, rng)
  return jax.jit(sample)


def make_autoguided_sample_fn(model, guide_model, config, guide_config, num_samples, num_channels):
  """A jitted `sample((params, guide_params), rng, labels, guidance, lo, hi) -> images` with autoguidance
  (SPEC §7; SiD2 B.5): x = x_good + w (x_good - x_bad) inside (lo, hi), x_good elsewhere.

  The sampler loop, schedule and example shape are `config`'s (the guide must agree on them:
  `restore.check_guide`); x_bad is `guide_model` with `guide_params`, in `guide_config`'s parametrisation,
  evaluated at the same z_t, logSNR and labels (None for unconditional models) as x_good. There is no
  classifier-free guidance here: both predictions are conditional. A guide equal to the model gives the
  unguided samples for any w (x_good - x_bad = 0).
  """
  settings = sampling.SamplerSettings.from_config(config.sampler)
  schedule = schedules.get_schedule(config.schedule, image_res=config.image_res)
  loop = samplers.sample_loop_fn((num_samples,) + example_shape(model, config, num_channels), schedule,
                                 **settings.loop_kwargs())
  x_good = make_x_pred(model, config.parametrization)
  x_bad = make_x_pred(guide_model, guide_config.parametrization)
  conditional = bool(config.model.get('num_classes', 0))

  def sample(params_pair, rng, labels, guidance, lo, hi):
    params, guide_params = params_pair
    cond = labels if conditional else None
    fn = guidance_lib.autoguided_x_pred_fn(lambda z, logsnr: x_good(params, z, logsnr, cond),
                                           lambda z, logsnr: x_bad(guide_params, z, logsnr, cond),
                                           guidance, (lo, hi))
    return loop(fn, rng)
  return jax.jit(sample)


def guidance_args(config):
  """(w, lo, hi) float32 of the config's guidance (SPEC §7); see `sampling.SamplerSettings.guidance_args`."""
  return sampling.SamplerSettings.from_config(config.sampler).guidance_args()
