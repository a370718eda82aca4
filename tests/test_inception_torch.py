"""sid2.eval.inception against an independent implementation: pytorch-fid's FID Inception-v3 (issue 14).

Skipped unless `torch`, `torchvision` and `pytorch_fid` are importable (they are not in the project's
environment; CI skips this file). The real weights cannot be fetched here, so both networks get the same
random state dict, written by torch itself (`torch.save`, legacy and zip formats, as the real file is a
torch state dict), read back by our pickle-free reader, and both compute pool3 features of the same images
with the pytorch-fid input convention (bilinear resize with half-pixel centres, 2 p / 255 - 1). What this
does not check: the TF-graph resize convention ("tf", our default; tests/test_inception.py checks it against TF).

  PYTHONPATH=$PWD <python with torch + pytorch-fid> -m pytest -q tests/test_inception_torch.py
"""
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip('torch')
if 'torchvision._meta_registrations' not in sys.modules:  # a CUDA-built torchvision with CPU torch
  try:
    import torchvision  # noqa: F401  pylint: disable=unused-import
  except RuntimeError:
    sys.modules.pop('torchvision', None)
    sys.modules['torchvision._meta_registrations'] = types.ModuleType('torchvision._meta_registrations')
pytorch_fid_inception = pytest.importorskip('pytorch_fid.inception')

from sid2.eval import inception as inc  # noqa: E402
from tests.test_inception import random_state  # noqa: E402


@pytest.fixture(scope='module')
def nets(tmp_path_factory):
  state = random_state(1)
  tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
  d = tmp_path_factory.mktemp('torch_inception')
  paths = {}
  for fmt, zip_format in (('legacy', False), ('zip', True)):
    paths[fmt] = str(d / f'{fmt}.pth')
    torch.save(tensors, paths[fmt], _use_new_zipfile_serialization=zip_format)
  ours = {fmt: inc.load_inception_weights(p, inc.file_sha256(p))[0] for fmt, p in paths.items()}
  pytorch_fid_inception.load_state_dict_from_url = lambda *a, **k: tensors
  theirs = pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True,
                                             use_fid_inception=True).eval()
  return ours, theirs, paths


def _torch_features(net, pixels):
  """pytorch-fid's pool3 of uint8 images [N, H, W, C] (greyscale tiled to RGB), input p / 255 in [0, 1]."""
  x = pixels.astype(np.float32) / 255.0
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  with torch.no_grad():
    return net(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())[0][:, :, 0, 0].numpy()


def test_torch_written_files_load_identically(nets):
  import jax
  ours, _, _ = nets
  a, b = (jax.tree_util.tree_leaves(ours[f]) for f in ('legacy', 'zip'))
  assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize('shape', [(2, 32, 32, 3), (2, 64, 64, 1), (1, 299, 299, 3)])
def test_pool3_matches_pytorch_fid(nets, shape):
  ours, theirs, _ = nets
  pixels = np.random.default_rng(shape[1]).integers(0, 256, size=shape).astype(np.uint8)
  want = _torch_features(theirs, pixels)
  got = np.asarray(inc.inception_features(ours['legacy'], pixels / np.float32(127.5) - 1, mode='pytorch_fid'))
  assert want.shape == got.shape == (shape[0], inc.FEATURE_DIM)
  scale = np.abs(want).max()
  print(f'{shape}: max |ours - pytorch-fid| = {np.abs(got - want).max():.3g} (max |feature| {scale:.3g})')
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * scale)
