"""FID Inception-v3 (sid2.eval.inception; issue 7): pickle-free torch readers, hash checks, the network.

No real weights here (no internet): synthetic checkpoints with the pytorch-fid names and shapes are written
in both torch formats by a small writer below (Python's pickle module only *writes*; the GLOBAL opcodes of
protocol 2 are then renamed to torch's), read back without unpickling and compared bitwise.
"""
import collections
import hashlib
import io
import json
import math
import pickle
import struct
import zipfile

import numpy as np
import pytest

from sid2.eval import fd
from sid2.eval import inception as inc


# ---- a minimal torch-checkpoint writer (tests only) ----

def _rebuild_tensor_v2(*args):  # stand-in, renamed to torch._utils._rebuild_tensor_v2 in the bytes
  raise AssertionError('never called')


class FloatStorage:  # stand-ins, renamed to torch.<Name>
  pass


class LongStorage:
  pass


_STORAGE_CLASSES = {'float32': FloatStorage, 'int64': LongStorage}


class _Storage:
  def __init__(self, key, array):
    self.key, self.array = key, np.ascontiguousarray(array).reshape(-1)


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def __reduce_ex__(self, protocol):
    return (_rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False,
                                 collections.OrderedDict()))


def _contiguous_strides(shape):
  strides, acc = [], 1
  for n in reversed(shape):
    strides.append(acc)
    acc *= n
  return tuple(reversed(strides))


def _tensors(state):
  """{name: _Tensor} with one storage per tensor, plus a shared storage and a transposed view."""
  out, storages = collections.OrderedDict(), []
  for name, a in state.items():
    s = _Storage(str(len(storages)), a)
    storages.append(s)
    out[name] = _Tensor(s, 0, a.shape, _contiguous_strides(a.shape))
  return out, storages


def _dumps(obj, persistent_id=None):
  buf = io.BytesIO()
  p = pickle.Pickler(buf, protocol=2)
  if persistent_id is not None:
    p.persistent_id = persistent_id
  p.dump(obj)
  data = buf.getvalue()
  mod = _rebuild_tensor_v2.__module__.encode()
  data = data.replace(b'c' + mod + b'\n_rebuild_tensor_v2\n', b'ctorch._utils\n_rebuild_tensor_v2\n')
  for cls in _STORAGE_CLASSES.values():
    name = cls.__name__.encode()
    data = data.replace(b'c' + mod + b'\n' + name + b'\n', b'ctorch\n' + name + b'\n')
  assert mod not in data
  return data


def _persistent_id(legacy):
  def pid(obj):
    if isinstance(obj, _Storage):
      t = ('storage', _STORAGE_CLASSES[obj.array.dtype.name], obj.key, 'cpu', obj.array.size)
      return t + (None,) if legacy else t
    return None
  return pid


def _state_object(tensors):
  od = collections.OrderedDict(tensors)
  od._metadata = collections.OrderedDict([('', {'version': 1}), ('Conv2d_1a_3x3.bn', {'version': 2})])
  return od


def write_torch(path, tensors, storages, legacy):
  """A torch checkpoint of {name: _Tensor} in the legacy or the zip format."""
  obj = _state_object(tensors)
  if legacy:
    with open(path, 'wb') as f:
      f.write(_dumps(inc.LEGACY_MAGIC) + _dumps(inc.LEGACY_PROTOCOL_VERSION))
      f.write(_dumps(dict(protocol_version=1001, little_endian=True, type_sizes=dict(short=2, int=4, long=4))))
      f.write(_dumps(obj, _persistent_id(True)))
      keys = sorted(s.key for s in storages)
      f.write(_dumps(keys))
      by_key = {s.key: s for s in storages}
      for k in keys:
        a = by_key[k].array
        f.write(struct.pack('<q', a.size) + a.astype(a.dtype.newbyteorder('<')).tobytes())
  else:
    with zipfile.ZipFile(path, 'w') as z:
      z.writestr('archive/data.pkl', _dumps(obj, _persistent_id(False)))
      z.writestr('archive/byteorder', 'little')
      for s in storages:
        z.writestr(f'archive/data/{s.key}', s.array.tobytes())
      z.writestr('archive/version', '3\n')


def random_state(seed=0):
  rng = np.random.default_rng(seed)
  state = collections.OrderedDict()
  for name, (shape, dtype) in inc.torch_state_shapes().items():
    if dtype == 'int64':
      state[name] = np.array(rng.integers(0, 10 ** 6), np.int64).reshape(shape)
    elif name.endswith('running_var'):
      state[name] = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
    elif name.endswith('.bn.weight'):
      state[name] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    elif name.endswith('.conv.weight'):
      fan_in = math.prod(shape[1:])
      state[name] = (rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    else:
      state[name] = (0.1 * rng.normal(size=shape)).astype(np.float32)
  return state


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  """(state, {'legacy': path, 'zip': path}) of one random pytorch-fid-shaped state dict."""
  d = tmp_path_factory.mktemp('inception')
  state = random_state()
  tensors, storages = _tensors(state)
  paths = {}
  for fmt in ('legacy', 'zip'):
    paths[fmt] = str(d / f'{fmt}.pth')
    write_torch(paths[fmt], tensors, storages, legacy=fmt == 'legacy')
  return state, paths


# ---- architecture ----

def test_parameter_count_matches_torchvision_inception_v3():
  # torchvision documents inception_v3 with 27,161,264 parameters (1000 classes, with AuxLogits:
  # conv0 768*128 + BN 2*128, conv1 128*768*25 + BN 2*768, fc 768*1000 + 1000). The FID network drops
  # AuxLogits and has 1008 classes; BN running statistics are buffers, not parameters.
  aux = 768 * 128 + 2 * 128 + 128 * 768 * 25 + 2 * 768 + 768 * 1000 + 1000
  want = 27_161_264 - aux + 8 * (2048 + 1)
  shapes = inc.torch_state_shapes()
  got = sum(math.prod(s) for k, (s, _) in shapes.items()
            if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
  assert got == want == 23_850_960
  assert shapes['Mixed_7c.branch_pool.conv.weight'][0] == (192, 2048, 1, 1)
  assert shapes['Mixed_6b.branch7x7_2.conv.weight'][0] == (128, 128, 1, 7)
  assert sum(k.endswith('.bn.running_var') for k in shapes) == 94


def _torch_basic_conv(x_nchw, w, stride, pad, bn):
  """PyTorch semantics in numpy: cross-correlation on NCHW with OIHW weights, eval BatchNorm, ReLU."""
  (ph, pw), (_, _, kh, kw) = pad, w.shape
  x = np.pad(x_nchw, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
  ho, wo = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
  y = np.zeros((x.shape[0], w.shape[0], ho, wo))
  for i in range(ho):
    for j in range(wo):
      patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
      y[:, :, i, j] = np.einsum('nchw,ochw->no', patch, w)
  g, b, m, v = (a[None, :, None, None] for a in bn)
  return np.maximum((y - m) / np.sqrt(v + 1e-3) * g + b, 0.0)


def test_basic_conv_matches_pytorch_semantics():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)  # NCHW
  for kernel, stride, pad in (((1, 3), 2, (0, 1)), ((3, 1), 1, (1, 0)), ((3, 3), 2, (0, 0))):
    w = rng.normal(size=(4, 3) + kernel).astype(np.float32)
    bn = (rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4))
    params = {'conv': {'weight': w}, 'bn': dict(zip(('weight', 'bias', 'running_mean', 'running_var'),
                                                    (a.astype(np.float32) for a in bn)))}
    got = inc.BasicConv2d(4, kernel, stride, pad).apply({'params': params}, x.transpose(0, 2, 3, 1))
    want = _torch_basic_conv(x.astype(np.float64), w.astype(np.float64), stride, pad, bn)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-4)


def test_avg_pool_excludes_padding_and_resize_closed_forms():
  x = np.full((1, 4, 5, 2), 3.0, np.float32)
  np.testing.assert_allclose(np.asarray(inc.avg_pool_3x3_exclude_pad(x)), x, rtol=1e-6)
  # TF1 legacy (src = i * in/out) and PyTorch half-pixel (src = (i + 1/2) in/out - 1/2, clamped) for 2 -> 4.
  np.testing.assert_allclose(inc.resize_matrix(2, 4, 'tf'), [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
  np.testing.assert_allclose(inc.resize_matrix(2, 4, 'pytorch_fid'),
                             [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
  for mode in inc.PREPROCESS_MODES:
    np.testing.assert_allclose(inc.resize_matrix(7, 7, mode), np.eye(7), atol=1e-7)
    np.testing.assert_allclose(inc.resize_matrix(32, 299, mode).sum(1), 1.0, rtol=1e-6)
  # Normalisation: x = -1, 1 -> pixels 0, 255 -> (p - 128) / 128 ('tf') and 2p/255 - 1 ('pytorch_fid').
  img = np.concatenate([-np.ones((1, 2, 2, 1)), np.ones((1, 2, 2, 1))], axis=2).astype(np.float32)
  tf_in = np.asarray(inc.preprocess(img, 'tf'))
  assert tf_in.shape == (1, 299, 299, 3)
  np.testing.assert_allclose(tf_in[0, 0, 0], -1.0)
  np.testing.assert_allclose(tf_in[0, 0, -1], 127 / 128, rtol=1e-6)
  pt_in = np.asarray(inc.preprocess(img, 'pytorch_fid'))
  np.testing.assert_allclose(pt_in[0, 0, [0, -1], 0], [-1.0, 1.0], rtol=1e-6)
  with pytest.raises(ValueError, match='preprocess'):
    inc.resize_matrix(2, 4, 'area')
  with pytest.raises(ValueError, match='C = 1 or 3'):
    inc.check_images(np.zeros((2, 8, 8, 2)))


# ---- pickle-free reading ----

@pytest.mark.parametrize('fmt', ['legacy', 'zip'])
def test_torch_formats_round_trip_bitwise(synthetic, fmt):
  state, paths = synthetic
  got = inc.read_torch_state_dict(paths[fmt])
  assert list(got) == list(state)
  for k, v in state.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
    assert got[k].tobytes() == v.tobytes(), k


@pytest.mark.parametrize('legacy', [True, False])
def test_shared_storage_offsets_and_strides(tmp_path, legacy):
  base = np.arange(24, dtype=np.float32)
  s = _Storage('7', base)
  tensors = {'a': _Tensor(s, 0, (2, 3), (3, 1)),
             'b': _Tensor(s, 6, (3, 4), (1, 3)),  # a transposed (column-major) view at offset 6
             'c': _Tensor(s, 23, (), ())}
  path = str(tmp_path / 'w.pth')
  write_torch(path, tensors, [s], legacy)
  got = inc.read_torch_state_dict(path)
  np.testing.assert_array_equal(got['a'], base[:6].reshape(2, 3))
  np.testing.assert_array_equal(got['b'], base[6:18].reshape(4, 3).T)
  assert got['c'].shape == () and got['c'] == 23.0
  bad = {'x': _Tensor(s, 20, (2, 3), (3, 1))}  # reads past the 24 elements
  write_torch(path, bad, [s], legacy)
  with pytest.raises(ValueError, match='past its storage'):
    inc.read_torch_state_dict(path)


def test_unexpected_globals_and_opcodes_are_refused(tmp_path):
  evil = pickle.dumps(None, protocol=2)[:2] + b'cos\nsystem\nX\x04\x00\x00\x00echo\x85R.'
  with pytest.raises(ValueError, match=r'refusing the global os\.system'):
    inc.interpret_pickle(evil)
  # The same inside a zip checkpoint and a legacy file.
  path = tmp_path / 'evil.pth'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', evil)
  with pytest.raises(ValueError, match=r'os\.system'):
    inc.read_torch_state_dict(str(path))
  path.write_bytes(_dumps(inc.LEGACY_MAGIC) + _dumps(1001) + _dumps(dict(little_endian=True)) + evil)
  with pytest.raises(ValueError, match=r'os\.system'):
    inc.read_torch_state_dict(str(path))
  # Globals via STACK_GLOBAL (protocol 4) and object construction opcodes are refused as well.
  with pytest.raises(ValueError, match=r'builtins\.eval'):
    inc.interpret_pickle(pickle.dumps(eval, protocol=4))
  with pytest.raises(ValueError, match='unsupported'):
    inc.interpret_pickle(pickle.dumps(collections.OrderedDict, protocol=2)[:-1] + b')\x81.')  # NEWOBJ
  # Plain data still reads.
  value = {'a': (1, 2.5, None, True), 'b': ['x', -(2 ** 70)], 'c': 'é'}
  assert inc.interpret_pickle(pickle.dumps(value, protocol=2)) == value


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / 'x.pth'
  path.write_bytes(b'hello world')
  with pytest.raises(ValueError, match='neither a torch zip'):
    inc.read_torch_state_dict(str(path))
  path.write_bytes(_dumps(12345))
  with pytest.raises(ValueError, match='magic'):
    inc.read_torch_state_dict(str(path))


# ---- hash checks and converted files ----

def test_standard_hash_facts():
  assert inc.STANDARD_FILE_NAME.endswith('-' + inc.STANDARD_SHA256[:8] + '.pth')  # torch hub convention
  assert len(inc.STANDARD_SHA256) == 64


def test_hash_check_and_conversion(synthetic, tmp_path):
  state, paths = synthetic
  path = paths['legacy']
  digest = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  with pytest.raises(ValueError, match=inc.STANDARD_SHA256):  # not the standard file
    inc.read_verified_state_dict(path)
  with pytest.raises(ValueError, match='asserted'):
    inc.read_verified_state_dict(path, '0' * 64)
  with pytest.raises(ValueError, match='inception_sha256 must be'):
    inc.read_verified_state_dict(path, 'abc')
  with pytest.raises(FileNotFoundError, match=inc.STANDARD_SHA256):
    inc.read_verified_state_dict(str(tmp_path / 'missing.pth'))
  got, info = inc.read_verified_state_dict(path, digest.upper())
  assert info['sha256'] == digest and info['format'] == 'torch-legacy' and not info['standard']
  for ext in ('.safetensors', '.npz'):
    dst = str(tmp_path / f'w{ext}')
    out = inc.convert_weights(path, dst, digest)
    assert out[inc.SOURCE_SHA256_KEY] == digest
    # Converted from a non-standard source: refused unless the converted file's own hash is asserted.
    with pytest.raises(ValueError, match='source sha256'):
      inc.read_verified_state_dict(dst)
    back, info = inc.read_verified_state_dict(dst, out['sha256'])
    assert info['source_sha256'] == digest and set(back) == set(state)
    for k, v in state.items():
      assert back[k].tobytes() == v.tobytes() and back[k].dtype == v.dtype, k
  # A converted file recording the standard source is accepted without assertion, but not once changed.
  std = {k: v for k, v in state.items()}
  from safetensors.numpy import save_file
  dst = str(tmp_path / 'std.safetensors')
  save_file(std, dst, metadata={inc.SOURCE_SHA256_KEY: inc.STANDARD_SHA256,
                                inc.TENSORS_SHA256_KEY: inc.tensors_sha256(std)})
  assert inc.read_verified_state_dict(dst)[1]['standard']
  std['fc.bias'] = std['fc.bias'] + 1
  save_file(std, dst, metadata={inc.SOURCE_SHA256_KEY: inc.STANDARD_SHA256,
                                inc.TENSORS_SHA256_KEY: inc.tensors_sha256(state)})
  with pytest.raises(ValueError, match='do not match their recorded digest'):
    inc.read_verified_state_dict(dst)


def test_convert_command(synthetic, tmp_path, capsys):
  """`python -m experiments.convert_inception SRC DST --sha256 HEX` is `convert_weights` (positional SRC DST)."""
  from absl import app
  from experiments import convert_inception
  state, paths = synthetic
  path = paths['legacy']
  digest = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  dst = str(tmp_path / 'cli.safetensors')
  out = convert_inception.main(['convert_inception', path, dst, f'--sha256={digest}'])
  assert out[inc.SOURCE_SHA256_KEY] == digest and out['sha256'] in capsys.readouterr().out
  back, _ = inc.read_verified_state_dict(dst, out['sha256'])
  assert set(back) == set(state)
  with pytest.raises(ValueError, match=inc.STANDARD_SHA256):  # no --sha256: only the standard file is taken
    convert_inception.main(['convert_inception', path, str(tmp_path / 'x.safetensors')])
  with pytest.raises(app.UsageError, match='SRC DST'):
    convert_inception.main(['convert_inception', path])


def test_params_from_state_dict_checks_names_and_shapes(synthetic):
  state, _ = synthetic
  params = inc.params_from_state_dict(state)
  np.testing.assert_array_equal(np.asarray(params['Mixed_5b']['branch1x1']['conv']['weight']),
                                state['Mixed_5b.branch1x1.conv.weight'])
  with pytest.raises(ValueError, match='1 missing'):
    inc.params_from_state_dict({k: v for k, v in state.items() if k != 'Conv2d_1a_3x3.bn.bias'})
  with pytest.raises(ValueError, match='AuxLogits'):
    inc.params_from_state_dict(dict(state, **{'AuxLogits.fc.bias': np.zeros(1000, np.float32)}))
  with pytest.raises(ValueError, match='shape'):
    inc.params_from_state_dict(dict(state, **{'Conv2d_1a_3x3.bn.bias': np.zeros(31, np.float32)}))


# ---- the network and evaluate's wiring ----

def test_features_shape_and_finite(synthetic):
  state, paths = synthetic
  params, _ = inc.load_inception_weights(paths['zip'], inc.file_sha256(paths['zip']))
  rng = np.random.default_rng(0)
  gray = rng.uniform(-1, 1, size=(2, 32, 32, 1)).astype(np.float32)
  f = np.asarray(inc.inception_features(params, gray))
  assert f.shape == (2, inc.FEATURE_DIM) and f.dtype == np.float32 and np.all(np.isfinite(f))
  assert np.all(f >= 0) and np.abs(f[0] - f[1]).max() > 0  # ReLU then mean; different images differ
  rgb = np.repeat(gray, 3, axis=-1)
  np.testing.assert_array_equal(np.asarray(inc.preprocess(gray)), np.asarray(inc.preprocess(rgb)))
  np.testing.assert_array_equal(inc.batched_inception_features(params, gray, batch_size=50), f)


def test_evaluate_refuses_nonstandard_inception_weights_before_sampling(synthetic, tmp_path, monkeypatch):
  # End-to-end Inception scoring is in tests/test_evaluate.py; here only the hash check of the weight file.
  from experiments import evaluate
  from sid2 import generation
  _, paths = synthetic
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps(dict(image_res=32, num_channels=1, model=dict(name='uvit'),
                                                       dataset=dict(name='fashion_mnist'))))
  monkeypatch.setattr(generation, 'prepare', lambda *a, **k: (_ for _ in ()).throw(AssertionError('sampled')))
  argv = ['evaluate', f'--workdir={workdir}', '--num_samples=2', '--noprecision_recall', '--features=inception',
          f'--inception_weights={paths["legacy"]}']
  with pytest.raises(ValueError, match=inc.STANDARD_SHA256):  # refused before any sampling
    evaluate.main(argv)
  with pytest.raises(ValueError, match='inception_sha256 must be a 64-digit hex'):
    evaluate.main(argv + ['--inception_sha256=abc'])


def test_few_sample_fd_matches_the_covariance_route():
  # FIDs with N < D (as in the test above: 2 samples, 2048-d) use the sample-space form in fd.py.
  rng = np.random.default_rng(3)
  for n1, n2, d in ((2, 2, 16), (5, 9, 32), (20, 3, 64)):
    x1 = rng.normal(size=(n1, d)) * rng.uniform(0.5, 2, size=d)
    x2 = rng.normal(size=(n2, d)) + 0.3
    want = fd.frechet_distance(*fd.feature_stats(x1), *fd.feature_stats(x2))
    assert fd.frechet_distance_features(x1, x2) == pytest.approx(want, rel=1e-6)
    assert fd.frechet_distance_features(x1, x1) == pytest.approx(0.0, abs=1e-9)


def test_tf_resize_matches_tensorflow_resize_bilinear():
  # The 'tf' preprocessing against TF1's own ResizeBilinear (align_corners=False, no half-pixel centres),
  # the op of the reference FID graph; tensorflow is installed for tfds.
  tf = pytest.importorskip('tensorflow')
  for shape in ((2, 32, 32, 3), (1, 28, 40, 3)):
    p = np.random.default_rng(0).integers(0, 256, size=shape).astype(np.float32)
    ours = np.asarray(inc.preprocess(p / 127.5 - 1, 'tf')) * 128 + 128
    theirs = tf.compat.v1.image.resize_bilinear(p, [299, 299], align_corners=False,
                                                half_pixel_centers=False).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)
