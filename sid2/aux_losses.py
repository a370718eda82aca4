"""Auxiliary losses chosen by `config.distill.name` (other packages register theirs; sid2 imports none).

A builder is `builder(config, model, num_channels) -> (apply_fn returning (output, features), aux_loss_fn,
frozen pytree)`; the loop passes them to `train_step.make_train_step` (e.g. spectral's distillation,
registered as 'spectral' when `spectral` is imported).
"""
from __future__ import annotations

from sid2 import registry

AUX_LOSS_REGISTRY = registry.Registry('aux loss', field='distill.name')
AUX_LOSSES = AUX_LOSS_REGISTRY.entries


def register_aux_loss(name, builder=None):
  """Registers an auxiliary-loss builder (e.g. spectral's distillation) under `config.distill.name` (without
  `builder`: a decorator). Re-registering the same builder is a no-op."""
  return AUX_LOSS_REGISTRY.register(name, builder)


def build_aux_loss(config, model, num_channels):
  """(apply_fn, aux_loss_fn, frozen) for `config.distill`, or (None, None, None) without one."""
  distill = config.get('distill', None)
  if distill is None or not distill.get('name', ''):
    return None, None, None
  if distill.name not in AUX_LOSSES:
    raise ValueError(f'config field distill.name={distill.name!r} is not registered; allowed: '
                     f'{sorted(AUX_LOSSES)} (import the package that provides it, e.g. spectral)')
  return AUX_LOSSES[distill.name](config, model, num_channels)
