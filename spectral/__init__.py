"""Spectral Diffusion ("Diffusion Probabilistic Model Made Slim", arXiv 2211.17106) on top of sid2.

Importing this package registers the wavelet-gated UNet ('wg_unet') and its plain counterpart ('unet') in
sid2's model registry, the spectrum-aware distillation loss ('spectral') in sid2's aux-loss registry, and, where
sid2.data offers the hook, the pre-computed latents datasets ('latents:<dir>').
"""
from sid2 import models as _models
from spectral import unet as _unet

for _name in _unet.MODEL_NAMES:
  _models.register_model(_name, _unet.build_unet, _unet.validate_unet)

from spectral import distill as _distill  # noqa: E402  (registers 'spectral' with sid2.aux_losses)
from spectral import latents as _latents  # noqa: E402

_latents.register()
