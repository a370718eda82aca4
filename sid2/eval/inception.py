"""Inception-v3 pool3 features for FID (Heusel et al. 2017) from a user-supplied weight file (issue 7).

The standard FID network is the TensorFlow Inception-v3 graph of 2015-12-05 (`inception-2015-12-05.tgz`,
used by the reference implementation bioinf-jku/TTUR); FID uses its 2048-d `pool_3` output. Its usual
PyTorch port is pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (the same bytes are published by
torch-fidelity as `weights-inception-2015-12-05-6726825d.pth`). The 8 hex digits in the name follow torch hub's
`filename-<sha256 prefix>.ext` convention. pytorch-fid publishes only that prefix; the full sha256
`STANDARD_SHA256` (which starts with it) is pinned next to pytorch-fid's URL in other public projects' hash
tables and recorded independently for both copies (95,628,359 bytes). Nothing is ever downloaded: the user
passes the file, and it is refused unless its sha256 is the standard one (or one the user asserts explicitly,
`expected_sha256`).

Network (`InceptionV3`): torchvision's Inception-v3 with the FID-specific blocks of the TF graph: every
`BasicConv2d` is conv (no bias) -> BatchNorm (eps 1e-3, stored statistics: inference) -> ReLU; the 3x3 average
pools inside the A, C and first E blocks exclude the zero padding from the mean (TF semantics), the last E
block (`Mixed_7c`) max-pools instead, and pool3 is the spatial mean of the 8x8x2048 map. Parameters use the
PyTorch names and layouts (conv kernels OIHW), so a state dict maps onto the flax tree by splitting names at
'.'; `fc.*` (the 1008-way classifier) and `*.num_batches_tracked` are not needed for pool3 and are ignored.

Input (`preprocess`): images [N, H, W, C] in [-1, 1], C = 1 (repeated to RGB) or 3, are first quantized to
8-bit pixel values p = round(127.5 (x + 1)) (what saving the samples as PNG, the papers' pipeline, does),
then resized to 299x299 bilinearly and normalized, in one of two conventions:
  'tf' (default; the TF graph that TTUR, ADM's evaluator and torch-fidelity run): TF1 `ResizeBilinear` with
      align_corners=False, i.e. source coordinate = output index * in/out (no half-pixel offset), then
      (p - 128) / 128.
  'pytorch_fid': `F.interpolate(bilinear, align_corners=False)` (half-pixel centres, source coordinate
      clamped at 0), then 2 p / 255 - 1. pytorch-fid documents that its numbers differ slightly from TTUR's.

Weight files: `.pth`/`.pt` torch checkpoints in either format (the zip format of torch >= 1.6, or the legacy
format: a sequence of pickles followed by raw storages; pytorch-fid's file dates from May 2019, torch 1.1, so
it is legacy). They are read WITHOUT unpickling: `pickletools.genops` only disassembles the opcodes, and a
small interpreter accepts the subset a state dict needs (dicts, OrderedDict, tuples, lists, strings, numbers,
booleans, None, memo, persistent storage ids and `torch._utils._rebuild_tensor_v2`), refusing every other
global or opcode before anything could run. Raw storages are read with numpy. `.safetensors` and `.npz`
(np.load with allow_pickle=False) files written by `convert_weights` (the command: `python -m
experiments.convert_inception SRC DST`) hold the same names plus the verified source file's sha256 and a
digest of the tensors, so a converted file is as strictly checked as the original.
"""
from __future__ import annotations

import functools
import math
import os
import pickletools
import re
import zipfile
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from sid2 import export
from sid2 import hashing

STANDARD_FILE_NAME = 'pt_inception-2015-12-05-6726825d.pth'
STANDARD_URL = 'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/' + STANDARD_FILE_NAME
STANDARD_SHA256 = '6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2'
STANDARD_NUM_BYTES = 95_628_359
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the TF graph's classifier (fc.*), unused for pool3
INPUT_SIZE = 299
BN_EPS = 1e-3
PREPROCESS_MODES = ('tf', 'pytorch_fid')
CONVERTED_EXTENSIONS = ('.safetensors', '.npz')
SOURCE_SHA256_KEY = '__source_sha256__'
TENSORS_SHA256_KEY = '__tensors_sha256__'


# ---------------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------------

class Conv2d(nn.Module):
  """Bias-free convolution with a PyTorch-layout kernel `weight` [out, in, kh, kw] on NHWC inputs."""
  features: int
  kernel: Tuple[int, int]
  stride: int = 1
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    w = self.param('weight', nn.initializers.lecun_normal(in_axis=1, out_axis=0),
                   (self.features, x.shape[-1]) + tuple(self.kernel))
    ph, pw = self.padding
    return lax.conv_general_dilated(x, w.astype(x.dtype), (self.stride, self.stride), ((ph, ph), (pw, pw)),
                                    dimension_numbers=('NHWC', 'OIHW', 'NHWC'),
                                    precision=lax.Precision.HIGHEST)


class FrozenBatchNorm(nn.Module):
  """Inference BatchNorm, (x − running_mean) / sqrt(running_var + eps) · weight + bias (PyTorch names)."""
  eps: float = BN_EPS

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    weight = self.param('weight', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    mean = self.param('running_mean', nn.initializers.zeros, (c,))
    var = self.param('running_var', nn.initializers.ones, (c,))
    return (x - mean) * lax.rsqrt(var + self.eps) * weight + bias


class BasicConv2d(nn.Module):
  """conv -> BatchNorm(eps 1e-3) -> ReLU, submodules named `conv` and `bn` as in torchvision."""
  features: int
  kernel: Tuple[int, int] = (1, 1)
  stride: int = 1
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = Conv2d(self.features, self.kernel, self.stride, self.padding, name='conv')(x)
    return nn.relu(FrozenBatchNorm(name='bn')(x))


def avg_pool_3x3_exclude_pad(x):
  """3x3 stride-1 average pool, padding 1, padded zeros excluded from the mean (TF's AvgPool, SAME)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x, stride: int, pad: int = 0):
  """3x3 max pool (padding, if any, never wins: it is −inf)."""
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


def _c(features, kernel=(1, 1), stride=1, padding=(0, 0), *, name):
  return BasicConv2d(features, tuple(kernel), stride, tuple(padding), name=name)


class InceptionA(nn.Module):
  """Mixed_5b..5d: 1x1 | 1x1→5x5 | 1x1→3x3→3x3 | avgpool(exclude pad)→1x1 (64+64+96+pool_features)."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = _c(64, name='branch1x1')(x)
    b5 = _c(64, (5, 5), padding=(2, 2), name='branch5x5_2')(_c(48, name='branch5x5_1')(x))
    b3 = _c(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(_c(64, name='branch3x3dbl_1')(x))
    b3 = _c(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = _c(self.pool_features, name='branch_pool')(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction 35→17): 3x3/2 | 1x1→3x3→3x3/2 | maxpool/2 (384+96+in)."""

  @nn.compact
  def __call__(self, x):
    b3 = _c(384, (3, 3), stride=2, name='branch3x3')(x)
    bd = _c(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(_c(64, name='branch3x3dbl_1')(x))
    bd = _c(96, (3, 3), stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e: factorized 7x7 branches, avgpool(exclude pad)→1x1 (4 x 192)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = _c(192, name='branch1x1')(x)
    b7 = _c(c7, name='branch7x7_1')(x)
    b7 = _c(c7, **row, name='branch7x7_2')(b7)
    b7 = _c(192, **col, name='branch7x7_3')(b7)
    bd = _c(c7, name='branch7x7dbl_1')(x)
    bd = _c(c7, **col, name='branch7x7dbl_2')(bd)
    bd = _c(c7, **row, name='branch7x7dbl_3')(bd)
    bd = _c(c7, **col, name='branch7x7dbl_4')(bd)
    bd = _c(192, **row, name='branch7x7dbl_5')(bd)
    bp = _c(192, name='branch_pool')(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction 17→8): 1x1→3x3/2 | 1x1→1x7→7x1→3x3/2 | maxpool/2 (320+192+in)."""

  @nn.compact
  def __call__(self, x):
    b3 = _c(320, (3, 3), stride=2, name='branch3x3_2')(_c(192, name='branch3x3_1')(x))
    b7 = _c(192, name='branch7x7x3_1')(x)
    b7 = _c(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = _c(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = _c(192, (3, 3), stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/7c: 1x1 | 1x1→(1x3, 3x1) | 1x1→3x3→(1x3, 3x1) | pool→1x1 (320+768+768+192 = 2048).

  pool = 'avg' (exclude pad) in Mixed_7b and 'max' in Mixed_7c, as in the TF FID graph.
  """
  pool: str = 'avg'

  @nn.compact
  def __call__(self, x):
    row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    b1 = _c(320, name='branch1x1')(x)
    b3 = _c(384, name='branch3x3_1')(x)
    b3 = jnp.concatenate([_c(384, **row, name='branch3x3_2a')(b3), _c(384, **col, name='branch3x3_2b')(b3)], -1)
    bd = _c(448, name='branch3x3dbl_1')(x)
    bd = _c(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([_c(384, **row, name='branch3x3dbl_3a')(bd),
                          _c(384, **col, name='branch3x3dbl_3b')(bd)], -1)
    pooled = max_pool_3x3(x, 1, 1) if self.pool == 'max' else avg_pool_3x3_exclude_pad(x)
    bp = _c(192, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3 trunk: normalized [N, 299, 299, 3] -> pool3 features [N, 2048]."""

  @nn.compact
  def __call__(self, x):
    x = _c(32, (3, 3), stride=2, name='Conv2d_1a_3x3')(x)                 # 149
    x = _c(32, (3, 3), name='Conv2d_2a_3x3')(x)                           # 147
    x = _c(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)           # 147
    x = max_pool_3x3(x, 2)                                                # 73
    x = _c(80, name='Conv2d_3b_1x1')(x)                                   # 73
    x = _c(192, (3, 3), name='Conv2d_4a_3x3')(x)                          # 71
    x = max_pool_3x3(x, 2)                                                # 35
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)                                    # 17
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name='Mixed_7a')(x)                                    # 8
    x = InceptionE('avg', name='Mixed_7b')(x)
    x = InceptionE('max', name='Mixed_7c')(x)
    return jnp.mean(x, axis=(1, 2))                                       # pool3


def init_params(rng):
  """Random parameters of `InceptionV3` (for tests; real weights come from `load_inception_weights`)."""
  return InceptionV3().init(rng, jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))['params']


@functools.lru_cache(maxsize=1)
def expected_param_shapes() -> Dict[str, Tuple[int, ...]]:
  """{'Mixed_5b.branch1x1.conv.weight': (64, 192, 1, 1), ...}: the state-dict entries the network uses."""
  shapes = jax.eval_shape(init_params, jax.random.PRNGKey(0))
  return {'.'.join(str(k.key) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}


def torch_state_shapes() -> Dict[str, Tuple[Tuple[int, ...], str]]:
  """{name: (shape, numpy dtype)} of the full pytorch-fid state dict: the network's entries, one int64
  `num_batches_tracked` scalar per BatchNorm and the unused 1008-way classifier `fc`."""
  out = {}
  for name, shape in expected_param_shapes().items():
    out[name] = (shape, 'float32')
    if name.endswith('.bn.running_var'):
      out[name[:-len('running_var')] + 'num_batches_tracked'] = ((), 'int64')
  out['fc.weight'] = ((NUM_CLASSES, FEATURE_DIM), 'float32')
  out['fc.bias'] = ((NUM_CLASSES,), 'float32')
  return out


def _is_ignored_entry(name: str) -> bool:
  return name.startswith('fc.') or name.endswith('.num_batches_tracked')


def params_from_state_dict(state: Dict[str, np.ndarray]):
  """Flax params of `InceptionV3` from a PyTorch-named state dict; ValueError on missing, unexpected or
  mis-shaped entries (fc.* and *.num_batches_tracked are ignored)."""
  want = expected_param_shapes()
  missing = sorted(k for k in want if k not in state)
  extra = sorted(k for k in state if k not in want and not _is_ignored_entry(k))
  if missing or extra:
    raise ValueError(f'the weights do not fit the FID Inception-v3: {len(missing)} missing entries '
                     f'{missing[:5]}, {len(extra)} unexpected entries {extra[:5]}')
  params = {}
  for name, shape in want.items():
    value = np.asarray(state[name])
    if value.shape != shape or not np.issubdtype(value.dtype, np.floating):
      raise ValueError(f'weight {name} must be a float array of shape {shape}; got {value.dtype} {value.shape}')
    node = params
    *parents, leaf = name.split('.')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(value, jnp.float32)
  return params


# ---------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------

def resize_matrix(in_size: int, out_size: int, mode: str = 'tf') -> np.ndarray:
  """[out_size, in_size] bilinear interpolation weights along one axis.

  'tf': TF1 ResizeBilinear, align_corners=False: src = i · in/out. 'pytorch_fid': F.interpolate bilinear,
  align_corners=False: src = max((i + ½) · in/out − ½, 0). Both: lo = ⌊src⌋, hi = min(lo + 1, in − 1),
  out_i = (1 − (src − lo)) x_lo + (src − lo) x_hi.
  """
  if mode not in PREPROCESS_MODES:
    raise ValueError(f'preprocess must be one of {PREPROCESS_MODES}; got {mode!r}')
  # Coordinates in float32 arithmetic, as both reference kernels compute them.
  scale = np.float32(in_size / out_size)
  i = np.arange(out_size, dtype=np.float32)
  src = i * scale if mode == 'tf' else np.maximum((i + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo.astype(np.float32)).astype(np.float64)
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m.astype(np.float32)


def check_images(images) -> None:
  """ValueError unless images are [N, H, W, C] with N >= 1 and C in (1, 3)."""
  shape = tuple(getattr(images, 'shape', ()))
  if len(shape) != 4 or shape[0] < 1 or shape[1] < 1 or shape[2] < 1 or shape[3] not in (1, 3):
    raise ValueError(f'images must be [N, H, W, C] in [-1, 1] with C = 1 or 3; got shape {shape}')


def preprocess(images, mode: str = 'tf'):
  """[N, H, W, 1|3] in [-1, 1] -> the network's [N, 299, 299, 3] input (module docstring, 'Input')."""
  if mode not in PREPROCESS_MODES:
    raise ValueError(f'preprocess must be one of {PREPROCESS_MODES}; got {mode!r}')
  check_images(images)
  x = jnp.asarray(images, jnp.float32)
  p = jnp.clip(jnp.round((x + 1.0) * 127.5), 0.0, 255.0)  # 8-bit pixel values
  if p.shape[-1] == 1:
    p = jnp.repeat(p, 3, axis=-1)
  rh = resize_matrix(p.shape[1], INPUT_SIZE, mode)
  rw = resize_matrix(p.shape[2], INPUT_SIZE, mode)
  p = jnp.einsum('oh,nhwc,pw->nopc', rh, p, rw, precision=lax.Precision.HIGHEST)
  return (p - 128.0) / 128.0 if mode == 'tf' else p * (2.0 / 255.0) - 1.0


@functools.partial(jax.jit, static_argnames=('mode',))
def _features(params, images, mode):
  return InceptionV3().apply({'params': params}, preprocess(images, mode))


def inception_features(params, images, mode: str = 'tf'):
  """pool3 features [N, 2048] float32 of images [N, H, W, 1|3] in [-1, 1] (jitted per shape and mode)."""
  if mode not in PREPROCESS_MODES:
    raise ValueError(f'preprocess must be one of {PREPROCESS_MODES}; got {mode!r}')
  check_images(images)
  return _features(params, jnp.asarray(images, jnp.float32), mode)


def batched_inception_features(params, images, mode: str = 'tf', batch_size: int = 50) -> np.ndarray:
  """Features of many images in chunks of min(batch_size, N) (last one padded, one compilation): float64."""
  images = np.asarray(images, np.float32)
  check_images(images)
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'batch_size must be a positive integer; got {batch_size!r}')
  n = images.shape[0]
  b = min(batch_size, n)
  out = []
  for start in range(0, n, b):
    chunk = images[start:start + b]
    pad = b - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)])
    out.append(np.asarray(inception_features(params, chunk, mode), np.float64)[:b - pad])
  return np.concatenate(out)


# ---------------------------------------------------------------------------------------------------------
# Torch checkpoints without unpickling
# ---------------------------------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    'FloatStorage': 'f4', 'DoubleStorage': 'f8', 'HalfStorage': 'f2', 'BFloat16Storage': 'bfloat16',
    'LongStorage': 'i8', 'IntStorage': 'i4', 'ShortStorage': 'i2', 'CharStorage': 'i1',
    'ByteStorage': 'u1', 'BoolStorage': 'b1'}
_REBUILD_TENSOR = ('torch._utils', '_rebuild_tensor_v2')
_REBUILD_PARAMETER = ('torch._utils', '_rebuild_parameter')
_ORDERED_DICT = ('collections', 'OrderedDict')
ALLOWED_GLOBALS = frozenset({_REBUILD_TENSOR, _REBUILD_PARAMETER, _ORDERED_DICT}
                            | {('torch', name) for name in _STORAGE_DTYPES})
LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # first pickle of a legacy torch file
LEGACY_PROTOCOL_VERSION = 1001
_LITERAL_OPS = frozenset({
    'INT', 'BININT', 'BININT1', 'BININT2', 'LONG', 'LONG1', 'LONG4', 'FLOAT', 'BINFLOAT', 'STRING',
    'BINSTRING', 'SHORT_BINSTRING', 'UNICODE', 'BINUNICODE', 'SHORT_BINUNICODE', 'BINUNICODE8'})
_CONSTANT_OPS = {'NONE': None, 'NEWTRUE': True, 'NEWFALSE': False}


class _Global(NamedTuple):
  module: str
  name: str


class StorageRef(NamedTuple):
  """A storage named by a persistent id: key, element dtype name (e.g. 'FloatStorage'), element count."""
  key: str
  storage_type: str
  numel: int


class TensorRef(NamedTuple):
  """`_rebuild_tensor_v2(storage, offset, size, stride, ...)` with offset and stride in elements."""
  storage: StorageRef
  offset: int
  size: Tuple[int, ...]
  stride: Tuple[int, ...]


class _Unsupported(ValueError):
  pass


def _int_tuple(value, what: str) -> Tuple[int, ...]:
  if type(value) is not tuple or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
    raise _Unsupported(f'tensor {what} must be a tuple of integers; got {value!r}')
  return value


def _reduce(func, args):
  """The few calls a state dict makes, evaluated as data (never by calling anything imported)."""
  if not isinstance(func, _Global) or type(args) is not tuple:
    raise _Unsupported(f'REDUCE of {func!r} with {type(args).__name__} arguments')
  key = (func.module, func.name)
  if key == _ORDERED_DICT:
    if args == ():
      return {}
    raise _Unsupported('OrderedDict with constructor arguments')
  if key == _REBUILD_TENSOR:
    if len(args) not in (6, 7) or not isinstance(args[0], StorageRef):
      raise _Unsupported(f'_rebuild_tensor_v2 expects (storage, offset, size, stride, requires_grad, hooks'
                         f'[, metadata]); got {len(args)} arguments')
    storage, offset, size, stride, requires_grad, hooks = args[:6]
    if isinstance(offset, bool) or not isinstance(offset, int) or not isinstance(requires_grad, bool):
      raise _Unsupported(f'bad tensor offset {offset!r} or requires_grad {requires_grad!r}')
    if not isinstance(hooks, dict) or hooks:
      raise _Unsupported('tensors with backward hooks')
    size, stride = _int_tuple(size, 'size'), _int_tuple(stride, 'stride')
    if len(size) != len(stride):
      raise _Unsupported(f'tensor size {size} and stride {stride} differ in length')
    return TensorRef(storage, offset, size, stride)
  if key == _REBUILD_PARAMETER:
    if len(args) != 3 or not isinstance(args[0], TensorRef):
      raise _Unsupported('_rebuild_parameter expects (tensor, requires_grad, hooks)')
    return args[0]
  raise _Unsupported(f'calling {func.module}.{func.name}')


def interpret_pickle(stream, persistent_load: Optional[Callable[[Any], Any]] = None):
  """The object one pickle describes, built from its disassembled opcodes (`pickletools.genops`).

  Only the state-dict subset is understood (module docstring); any other opcode or global raises
  ValueError naming it. Nothing is imported or called. `stream` is bytes or a binary file positioned at the
  pickle (left just after its STOP); `persistent_load(pid)` resolves BINPERSID ids (refused if None).
  """
  stack, marks, memo = [], [], {}

  def pop(n=1):
    if len(stack) < n or (marks and len(stack) - n < marks[-1]):
      raise _Unsupported('stack underflow')
    items = stack[len(stack) - n:]
    del stack[len(stack) - n:]
    return items

  def pop_mark():
    if not marks:
      raise _Unsupported('no MARK on the stack')
    start = marks.pop()
    items = stack[start:]
    del stack[start:]
    return items

  def top(kind, what):
    if not stack or not isinstance(stack[-1], kind):
      raise _Unsupported(f'{what} on a {type(stack[-1]).__name__ if stack else "empty stack"}')
    return stack[-1]

  try:
    for op, arg, pos in pickletools.genops(stream):
      name = op.name
      if name == 'PROTO':
        if arg > 5:
          raise _Unsupported(f'pickle protocol {arg}')
      elif name == 'FRAME':
        pass
      elif name == 'STOP':
        if len(stack) != 1 or marks:
          raise _Unsupported('malformed pickle: the stack does not hold exactly one object at STOP')
        return stack[0]
      elif name == 'MARK':
        marks.append(len(stack))
      elif name in _LITERAL_OPS:
        stack.append(arg)
      elif name in _CONSTANT_OPS:
        stack.append(_CONSTANT_OPS[name])
      elif name == 'EMPTY_DICT':
        stack.append({})
      elif name == 'EMPTY_LIST':
        stack.append([])
      elif name == 'EMPTY_TUPLE':
        stack.append(())
      elif name in ('TUPLE1', 'TUPLE2', 'TUPLE3'):
        stack.append(tuple(pop(int(name[-1]))))
      elif name == 'TUPLE':
        stack.append(tuple(pop_mark()))
      elif name == 'LIST':
        stack.append(list(pop_mark()))
      elif name == 'DICT':
        items = pop_mark()
        stack.append(dict(zip(items[0::2], items[1::2])))
      elif name == 'SETITEM':
        k, v = pop(2)
        top(dict, 'SETITEM')[k] = v
      elif name == 'SETITEMS':
        items = pop_mark()
        if len(items) % 2:
          raise _Unsupported('SETITEMS with an odd number of items')
        top(dict, 'SETITEMS').update(zip(items[0::2], items[1::2]))
      elif name == 'APPEND':
        v, = pop()
        top(list, 'APPEND').append(v)
      elif name == 'APPENDS':
        items = pop_mark()
        top(list, 'APPENDS').extend(items)
      elif name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
        memo[arg] = top(object, name)
      elif name == 'MEMOIZE':
        memo[len(memo)] = top(object, name)
      elif name in ('GET', 'BINGET', 'LONG_BINGET'):
        if arg not in memo:
          raise _Unsupported(f'memo key {arg} read before it was written')
        stack.append(memo[arg])
      elif name in ('GLOBAL', 'STACK_GLOBAL'):
        module, gname = arg.split(' ', 1) if name == 'GLOBAL' else pop(2)
        if (module, gname) not in ALLOWED_GLOBALS:
          raise ValueError(f'refusing the global {module}.{gname} (byte {pos}): a weights file may only '
                           f'reference {sorted(".".join(g) for g in ALLOWED_GLOBALS)}')
        stack.append(_Global(module, gname))
      elif name == 'REDUCE':
        func, args = pop(2)
        stack.append(_reduce(func, args))
      elif name == 'BUILD':
        state, = pop()
        # OrderedDict state dicts carry their `_metadata` (per-module versions) as instance state: dropped.
        if not isinstance(state, dict):
          raise _Unsupported('BUILD with non-dict state')
        top(dict, 'BUILD')
      elif name == 'BINPERSID':
        if persistent_load is None:
          raise _Unsupported('a persistent id where none is expected')
        pid, = pop()
        stack.append(persistent_load(pid))
      elif name == 'POP':
        pop()
      else:
        raise _Unsupported(f'opcode {name}')
  except _Unsupported as e:
    raise ValueError(f'not a plain weights file (nothing was executed): unsupported pickle content: {e}'
                     ) from None
  except TypeError as e:  # e.g. an unhashable dict key
    raise ValueError(f'malformed pickle in the weights file: {e}') from None
  raise ValueError('malformed pickle in the weights file: no STOP opcode')


def _storage_dtype(storage_type: str, byteorder: str) -> np.dtype:
  code = _STORAGE_DTYPES[storage_type]
  if code == 'bfloat16':
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(code).newbyteorder(byteorder)


def _storage_loader(storages: Dict[str, StorageRef], legacy: bool):
  """persistent_load for ('storage', torch.<T>Storage, key, location, numel[, view_metadata])."""
  def load(pid):
    if type(pid) is not tuple or len(pid) != (6 if legacy else 5) or pid[0] != 'storage':
      raise _Unsupported(f'persistent id {pid!r} (only tensor storages are allowed)')
    _, storage_type, key, _, numel = pid[:5]
    if not isinstance(storage_type, _Global) or storage_type.name not in _STORAGE_DTYPES:
      raise _Unsupported(f'storage type {storage_type!r}')
    if not isinstance(key, str) or isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
      raise _Unsupported(f'storage key {key!r} / size {numel!r}')
    if legacy and pid[5] is not None:
      raise _Unsupported('storage views (view_metadata)')
    ref = StorageRef(key, storage_type.name, numel)
    if storages.setdefault(key, ref) != ref:
      raise _Unsupported(f'storage {key} referenced with two types or sizes')
    return ref
  return load


def _read_zip(path: str):
  with zipfile.ZipFile(path) as z:
    pkls = [n for n in z.namelist() if re.fullmatch(r'[^/]+/data\.pkl', n)]
    if len(pkls) != 1:
      raise ValueError(f'{path} is a zip file but not a torch checkpoint (<name>/data.pkl entries: {pkls})')
    prefix = pkls[0][:-len('data.pkl')]
    byteorder = 'little'
    if prefix + 'byteorder' in z.namelist():
      byteorder = z.read(prefix + 'byteorder').decode('ascii', 'replace').strip()
      if byteorder not in ('little', 'big'):
        raise ValueError(f'{path}: unknown byteorder record {byteorder!r}')
    storages = {}
    obj = interpret_pickle(z.read(pkls[0]), _storage_loader(storages, legacy=False))
    arrays = {}
    for key, ref in storages.items():
      dtype = _storage_dtype(ref.storage_type, '<' if byteorder == 'little' else '>')
      entry = f'{prefix}data/{key}'
      if entry not in z.namelist():
        raise ValueError(f'{path}: storage record {entry} is missing')
      data = z.read(entry)
      if len(data) < ref.numel * dtype.itemsize:
        raise ValueError(f'{path}: storage {key} holds {len(data)} bytes, {ref.numel * dtype.itemsize} needed')
      arrays[key] = np.frombuffer(data, dtype, count=ref.numel)
  return obj, arrays


def _read_legacy(path: str):
  with open(path, 'rb') as f:
    try:
      magic = interpret_pickle(f)
    except ValueError as e:
      raise ValueError(f'{path} is neither a torch zip checkpoint nor a legacy torch file: {e}') from None
    if magic != LEGACY_MAGIC:
      raise ValueError(f'{path} is not a torch checkpoint (its first pickle is not the legacy magic number)')
    version = interpret_pickle(f)
    if version != LEGACY_PROTOCOL_VERSION:
      raise ValueError(f'{path}: legacy torch protocol version {version!r}, expected {LEGACY_PROTOCOL_VERSION}')
    sys_info = interpret_pickle(f)
    if not isinstance(sys_info, dict) or not isinstance(sys_info.get('little_endian'), bool):
      raise ValueError(f'{path}: malformed legacy sys_info {sys_info!r}')
    byteorder = '<' if sys_info['little_endian'] else '>'
    storages = {}
    obj = interpret_pickle(f, _storage_loader(storages, legacy=True))
    keys = interpret_pickle(f)
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
      raise ValueError(f'{path}: the storage list {keys!r} does not match the storages the tensors use')
    arrays = {}
    for key in keys:
      ref = storages[key]
      dtype = _storage_dtype(ref.storage_type, byteorder)
      head = f.read(8)
      if len(head) != 8:
        raise ValueError(f'{path}: truncated before storage {key}')
      numel = int.from_bytes(head, 'little' if byteorder == '<' else 'big', signed=True)
      if numel != ref.numel:
        raise ValueError(f'{path}: storage {key} records {numel} elements, its tensors expect {ref.numel}')
      data = f.read(numel * dtype.itemsize)
      if len(data) != numel * dtype.itemsize:
        raise ValueError(f'{path}: storage {key} is truncated')
      arrays[key] = np.frombuffer(data, dtype)
  return obj, arrays


def _materialize(ref: TensorRef, arrays: Dict[str, np.ndarray]) -> np.ndarray:
  """The tensor as an owned, native-byte-order numpy array (bounds-checked strided view, then copied)."""
  data = arrays[ref.storage.key]
  native = data.dtype.newbyteorder('=')
  if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
    raise ValueError(f'negative size, stride or offset in tensor {ref}')
  if math.prod(ref.size) == 0:
    return np.zeros(ref.size, native)
  last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
  if last >= data.size:
    raise ValueError(f'tensor {ref} reads past its storage of {data.size} elements')
  view = np.lib.stride_tricks.as_strided(data[ref.offset:], shape=ref.size,
                                         strides=[s * data.itemsize for s in ref.stride], writeable=False)
  return np.array(view, dtype=native)


def read_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
  """{name: numpy array} of a torch state-dict file (zip or legacy format), read without unpickling."""
  obj, arrays = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, TensorRef)
                                          for k, v in obj.items()):
    raise ValueError(f'{path} does not hold a flat state dict {{name: tensor}}')
  return {k: _materialize(v, arrays) for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------------------
# Verified loading and conversion
# ---------------------------------------------------------------------------------------------------------

file_sha256 = hashing.file_sha256  # one home: sid2.hashing

tensors_sha256 = export.params_sha256  # one home: a flat dict's digest (name, dtype, shape, LE bytes)

def _check_hex(value, field: str) -> Optional[str]:
  if value is None:
    return None
  if not isinstance(value, str) or not re.fullmatch(r'[0-9a-fA-F]{64}', value):
    raise ValueError(f'{field} must be a 64-digit hex sha256; got {value!r}')
  return value.lower()


def _read_converted(path: str):
  """(state, metadata {source_sha256, tensors_sha256}) of a .safetensors or .npz written by convert_weights."""
  if path.endswith('.safetensors'):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    with safe_open(path, framework='np') as f:
      meta = dict(f.metadata() or {})
    state = load_file(path)
  else:
    with np.load(path, allow_pickle=False) as z:
      state = {k: z[k] for k in z.files}
    meta = {k: str(state.pop(k)) for k in (SOURCE_SHA256_KEY, TENSORS_SHA256_KEY) if k in state}
  return state, {'source_sha256': meta.get(SOURCE_SHA256_KEY), 'tensors_sha256': meta.get(TENSORS_SHA256_KEY)}


def read_verified_state_dict(path: str, expected_sha256: Optional[str] = None):
  """(state dict, info) of an Inception weight file, refusing anything not verified as the standard weights.

  The file's sha256 is computed before its content is parsed. With `expected_sha256` (the user's assertion)
  the file must have exactly that hash. Otherwise a torch file must be the standard pytorch-fid file
  (`STANDARD_SHA256`), and a converted .safetensors/.npz must record STANDARD_SHA256 as its source and hold
  exactly the tensors its recorded digest names. FileNotFoundError / ValueError otherwise.
  """
  expected = _check_hex(expected_sha256, 'inception_sha256')
  if not isinstance(path, str) or not path:
    raise ValueError(f'inception_weights must be a file path; got {path!r}')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Inception weight file {path} not found (nothing is downloaded: fetch '
                            f'{STANDARD_URL} yourself, sha256 {STANDARD_SHA256})')
  digest = file_sha256(path)
  converted = os.path.splitext(path)[1].lower() in CONVERTED_EXTENSIONS
  if expected is not None and digest != expected:
    raise ValueError(f'Inception weight file {path} has sha256 {digest}, not the asserted inception_sha256 '
                     f'{expected}')
  if expected is None and not converted and digest != STANDARD_SHA256:
    raise ValueError(f'Inception weight file {path} has sha256 {digest}, but the standard FID network '
                     f'({STANDARD_FILE_NAME}) has sha256 {STANDARD_SHA256}; FIDs from other weights are not '
                     f'comparable with the papers. Pass inception_sha256={digest} to assert this file on '
                     'purpose.')
  if converted:
    state, meta = _read_converted(path)
    if expected is None:
      if meta['source_sha256'] != STANDARD_SHA256:
        raise ValueError(f'converted Inception weights {path} record source sha256 {meta["source_sha256"]!r}, '
                         f'not the standard {STANDARD_SHA256}; pass inception_sha256={digest} to assert this '
                         'file on purpose')
      if meta['tensors_sha256'] != tensors_sha256(state):
        raise ValueError(f'converted Inception weights {path}: the tensors do not match their recorded digest '
                         f'{meta["tensors_sha256"]!r} (the file was changed after conversion)')
    source = meta['source_sha256']
    fmt = os.path.splitext(path)[1].lower()[1:]
  else:
    state = read_torch_state_dict(path)
    source, fmt = digest, 'torch-zip' if zipfile.is_zipfile(path) else 'torch-legacy'
  info = dict(path=os.path.abspath(path), sha256=digest, format=fmt, source_sha256=source,
              standard=(source == STANDARD_SHA256), asserted_sha256=expected)
  return state, info


def load_inception_weights(path: str, expected_sha256: Optional[str] = None):
  """(flax params of InceptionV3, info dict with the file's sha256) from a verified weight file."""
  state, info = read_verified_state_dict(path, expected_sha256)
  return params_from_state_dict(state), info


def convert_weights(src: str, dst: str, expected_sha256: Optional[str] = None) -> dict:
  """Writes the verified `src` weights to `dst` (.safetensors or .npz, same names) with the source sha256
  and the tensors' digest; returns the info dict of `dst` (its sha256 included)."""
  ext = os.path.splitext(dst)[1].lower()
  if ext not in CONVERTED_EXTENSIONS:
    raise ValueError(f'dst must end in one of {CONVERTED_EXTENSIONS}; got {dst!r}')
  state, info = read_verified_state_dict(src, expected_sha256)
  state = {k: np.ascontiguousarray(v) for k, v in state.items()}
  meta = {SOURCE_SHA256_KEY: info['source_sha256'], TENSORS_SHA256_KEY: tensors_sha256(state)}
  if ext == '.safetensors':
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file(state, dst, metadata=meta)
  else:
    with open(dst, 'wb') as f:
      np.savez(f, **state, **{k: np.array(v) for k, v in meta.items()})
  return dict(meta, path=os.path.abspath(dst), sha256=file_sha256(dst))
