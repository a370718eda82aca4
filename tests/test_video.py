"""Video U-ViT (sid2.models.uvit_video), its FLOPs (SiD2 B.7), synthetic video data, the flops CLI and
an end-to-end tiny video training run."""
import functools
import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from sid2 import config_lib
from sid2 import data as data_lib
from sid2 import flops
from sid2 import images
from sid2 import models
from sid2.data import video as video_lib
from sid2.models import uvit_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(name='uvit_video', channels=(8, 16), enc_blocks=(1, 1), dec_blocks=(1, 1), transformer_channels=32,
            transformer_blocks=1, num_heads=2, num_frames=4, temporal_downsample=(False, True), num_classes=3,
            patching_size=2)


def _model(fields, res=16, channels=3):
  return models.get_model(ml_collections.ConfigDict(fields), image_res=res, num_channels=channels)


def _randomised(variables, seed=0, scale=0.3):
  """The same tree with every parameter drawn N(0, scale^2): undoes the zero-inits, so outputs depend on z."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


# ---------------------------------------------------------------------------------------------------------
# Model.

def test_shapes_zero_init_and_3d_kernels():
  model = _model(TINY)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 16, 16, 3))
  labels = jnp.array([0, 2])
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), z, jnp.zeros(2), labels)
  out = jax.jit(model.apply)(variables, z, jnp.array([-3.0, 4.0]), labels)
  assert out.shape == z.shape and out.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(out))) == 0.0  # Zero-initialised output conv.
  p = variables['params']
  assert p['conv_in']['kernel'].shape == (3, 3, 3, 4 * 3, 8)  # k_t x 3 x 3 on 2x2-patched frames.
  assert p['enc_0_block_0']['Conv_0']['kernel'].shape == (3, 3, 3, 8, 8)
  assert p['down_0']['Dense_0']['kernel'].shape == (4 * 8, 16)       # space only: 1x2x2
  assert p['down_1']['Dense_0']['kernel'].shape == (8 * 16, 32)      # space and time: 2x2x2
  assert p['up_1']['Dense_0']['kernel'].shape == (32, 8 * 16)
  flat = jax.eval_shape(_model(dict(TINY, temporal_kernel_size=1)).init, jax.random.PRNGKey(1), z, jnp.zeros(2))
  assert flat['params']['enc_1_block_0']['Conv_1']['kernel'].shape == (1, 3, 3, 16, 16)


def test_random_weights_sanity():
  """With random (non-zero) weights: examples do not mix (a reshape mixing batch and time would) and the
  class changes the output; the transformer sees T/2 x (16/8)^2 tokens (time halved once, space by
  patching 2 and two levels)."""
  model = _model(TINY)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 16, 16, 3))
  variables = _randomised(jax.eval_shape(model.init, jax.random.PRNGKey(1), z, jnp.zeros(2), jnp.zeros(2, int)))
  apply = jax.jit(model.apply)
  logsnr = jnp.array([-1.0, 2.0])
  out = apply(variables, z, logsnr, jnp.array([0, 1]))
  assert np.all(np.isfinite(np.asarray(out))) and float(jnp.std(out)) > 1e-3
  other = apply(variables, z.at[1].set(-z[1]), logsnr, jnp.array([0, 1]))
  np.testing.assert_array_equal(other[0], out[0])
  assert not np.allclose(other[1], out[1])
  relabelled = apply(variables, z, logsnr, jnp.array([2, 1]))
  assert not np.allclose(relabelled[0], out[0])
  np.testing.assert_array_equal(relabelled[1], out[1])
  _, inter = jax.eval_shape(functools.partial(model.apply, capture_intermediates=True, mutable=['intermediates']),
                            variables, z, logsnr)
  tokens = inter['intermediates']['transformer_block_0']['__call__'][0]
  assert tokens.shape == (2, 2 * 2 * 2, 32)


def test_space_time_to_depth_roundtrip_and_sincos_3d():
  x = jnp.arange(2 * 4 * 6 * 8 * 3, dtype=jnp.float32).reshape(2, 4, 6, 8, 3)
  y = uvit_video.space_time_to_depth(x, 2, 2)
  assert y.shape == (2, 2, 3, 4, 24)
  np.testing.assert_array_equal(uvit_video.depth_to_space_time(y, 2, 2), x)
  # Each output voxel holds exactly its 2x2x2 input block.
  np.testing.assert_array_equal(np.sort(np.asarray(y[0, 1, 2, 3])),
                                np.sort(np.asarray(x[0, 2:4, 4:6, 6:8]).reshape(-1)))
  emb = uvit_video.sincos_3d(4, 3, 5, 40)
  assert emb.shape == (60, 40)
  assert len(np.unique(np.round(np.asarray(emb), 5), axis=0)) == 60  # distinct positions
  np.testing.assert_array_equal(emb[:, 36:], 0.0)                   # 40 - 6 * 6 padding channels
  # Token order (t, y, x): the first sixth is sin(t), constant within a frame.
  np.testing.assert_allclose(emb[15:30, 0], math.sin(1.0), rtol=1e-6)


@pytest.mark.parametrize('fields,res,match', [
    (dict(TINY, foo=1), 16, r"unknown model field\(s\) \['foo'\].*uvit_video"),
    (dict(TINY, temporal_kernel_size=2), 16, 'model.temporal_kernel_size must be an odd int'),
    (dict(TINY, temporal_downsample=(True,)), 16, 'model.temporal_downsample must be .* 2 bools'),
    (dict(TINY, num_frames=6, temporal_downsample=True), 16, 'num_frames=6 must be divisible by .* = 4'),
    (dict(TINY, num_frames=0), 16, 'model.num_frames must be an int >= 1'),
    (dict(TINY), 20, r'image_res=20 must be divisible by patching_size \* 2\^levels'),
    (dict(TINY, channels=(8,)), 16, 'must have the same length'),
])
def test_validation_errors(fields, res, match):
  with pytest.raises(ValueError, match=match):
    models.validate_model_config(ml_collections.ConfigDict(fields), res)


def test_call_time_errors():
  model = _model(TINY)
  with pytest.raises(ValueError, match=r'z must be \[B, T, H, W, C\]'):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros(1))
  with pytest.raises(ValueError, match='z has 5 frames; it must be divisible by .* = 2'):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 5, 16, 16, 3)), jnp.zeros(1))


# ---------------------------------------------------------------------------------------------------------
# FLOPs (SiD2 B.3 adapted to 3-D convs, B.7).

FLOP_CONFIGS = [
    dict(name='uvit_video', channels=(128, 256), enc_blocks=(1, 1), dec_blocks=(1, 1), transformer_channels=256,
         transformer_blocks=1, num_heads=4, num_frames=4, temporal_downsample=(False, True), num_classes=10),
    dict(name='uvit_video', channels=(64, 128, 256), enc_blocks=(1, 1, 2), dec_blocks=(1, 2, 1),
         transformer_channels=256, transformer_blocks=1, num_heads=4, patching_size=2, drop_top_level=True,
         temporal_kernel_size=5, temporal_downsample=(True, True, False), num_frames=8),
]


@pytest.mark.parametrize('fields', FLOP_CONFIGS)
def test_video_gflops_matches_xla(fields):
  """Without padding taps the formula is XLA's multiply-add count (elementwise work < 1% at these widths);
  B.3's count includes the zero-padded taps: larger by about (3s/(3s-2))^2 (k_t T/(k_t T - r(r+1)))."""
  cfg = ml_collections.ConfigDict(fields)
  model = models.get_model(cfg, image_res=16, num_channels=3)
  z = jax.ShapeDtypeStruct((1, cfg.num_frames, 16, 16, 3), jnp.float32)
  logsnr = jax.ShapeDtypeStruct((1,), jnp.float32)
  labels = jax.ShapeDtypeStruct((1,), jnp.int32) if cfg.get('num_classes', 0) else None
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), z, logsnr, labels)
  cost = jax.jit(lambda v, z, l, y: model.apply(v, z, l, y)).lower(variables, z, logsnr, labels).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  xla = cost['flops'] / 2 / 1e9
  exact = flops.video_uvit_gflops(cfg, 16, cfg.num_frames, count_padding=False)
  assert exact == pytest.approx(xla, rel=0.01)
  b3 = flops.video_uvit_gflops(cfg, 16, cfg.num_frames)
  assert xla < b3 < 1.6 * xla


def test_video_gflops_is_the_b7_sum():
  cfg = ml_collections.ConfigDict(FLOP_CONFIGS[0])
  t, e = 4, 4 * 128
  expected = (flops.conv3d_resblock_gflops(16, t, 128, 2) + flops.conv3d_resblock_gflops(8, t, 256, 2)
              + flops.spacetime_transformer_gflops((t // 2) * 4 ** 2, 256, 1)
              + 2 * 27 * t * 16 ** 2 * 3 * 128 / 1e9                           # 3x3x3 conv_in, conv_out
              + 2 * (t * 16 ** 2 * 128 * 256 + t * 8 ** 2 * 256 * 256) / 1e9    # down + up projections
              + (128 * e + e * e) / 1e9                                         # logSNR MLP
              + (2 * e * 2 * 128 + 2 * e * 2 * 256 + e * 4 * 256) / 1e9)        # scale/shift Denses
  assert flops.video_uvit_gflops(cfg, 16, t) == pytest.approx(expected, rel=1e-12)
  # B.7's per-term formulas: 27 s^2 T C^2 per 3x3x3 conv; 12 C^2 N + 2 N^2 C per transformer block.
  assert flops.conv3d_resblock_gflops(64, 16, 128, 1) == pytest.approx(2 * 27 * 64 ** 2 * 16 * 128 ** 2 / 1e9)
  assert flops.spacetime_transformer_gflops(16 * 16 ** 2, 1024, 1) == pytest.approx(
      (12 * 1024 ** 2 * 4096 + 2 * 4096 ** 2 * 1024) / 1e9)
  assert flops.spacetime_transformer_gflops(16 ** 2, 1024, 3) == pytest.approx(flops.transformer_gflops(16, 1024, 3))


def test_one_frame_video_is_the_image_count():
  # T = 1 with per-frame 3x3 convs (k_t = 1): every term reduces to the image U-ViT's B.3 count.
  image = dict(FLOP_CONFIGS[1], name='uvit')
  for k in ('num_frames', 'temporal_kernel_size', 'temporal_downsample'):
    image.pop(k)
  video = dict(FLOP_CONFIGS[1], num_frames=1, temporal_kernel_size=1, temporal_downsample=())
  for pad in (True, False):
    assert flops.video_uvit_gflops(ml_collections.ConfigDict(video), 32, 1, count_padding=pad) == pytest.approx(
        flops.uvit_gflops(ml_collections.ConfigDict(image), 32, count_padding=pad), rel=1e-12)
  with pytest.raises(ValueError, match='num_frames=3 must be divisible'):
    flops.video_uvit_gflops(ml_collections.ConfigDict(FLOP_CONFIGS[1]), 32, 3)


def test_flops_cli_kinetics600_and_fashion_mnist():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'experiments.flops', 'configs/kinetics600.py',
                         'configs/fashion_mnist.py'],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith('configs/')}
  k600 = rows['configs/kinetics600.py']
  assert k600[1:3] == ['uvit_video', '16x64x64']
  fwd, train = float(k600[4]), float(k600[5])
  assert fwd == pytest.approx(3570, rel=0.05)  # SiD2 B.7: "3570 GFLOPs per forward pass"
  assert train == pytest.approx(3 * fwd, rel=1e-4)
  assert float(k600[6]) == pytest.approx(3 * fwd * 512 * 500_000 / 1e12, rel=1e-2)  # B.7: "about 2.5 ZF"
  fm = rows['configs/fashion_mnist.py']
  assert fm[1:3] == ['uvit', '32x32']
  from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
  expected = flops.uvit_gflops(fashion_mnist.get_config().model, 32, num_channels=1)
  assert float(fm[4]) == pytest.approx(expected, abs=0.006)


def test_flops_command_reports_a_bad_config_and_counts_the_rest(tmp_path, capsys):
  from experiments import flops as flops_cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='1 of 2 config'):
    flops_cli.main(['flops', f'--configs={tmp_path / "nope.py"}', os.path.join(REPO, 'configs/fashion_mnist.py')])
  captured = capsys.readouterr()
  assert 'does not exist' in captured.err and 'fashion_mnist.py' in captured.out


def test_kinetics600_config():
  from configs import kinetics600  # pylint: disable=g-import-not-at-top
  c = kinetics600.get_config()
  config_lib.validate_config(c)
  o = c.optimizer
  assert (c.batch_size, o.name, o.beta1, o.beta2, o.eps, o.learning_rate, o.warmup_steps, o.weight_decay,
          c.ema_decay, c.total_steps, c.schedule) == (
              512, 'adam', 0.9, 0.98, 1e-10, 1e-4, 100, 0.0, 0.9999, 500_000, 'cosine_interpolated_low_32_high_128')
  assert (c.num_frames, c.image_res, c.model.num_frames, c.dataset.num_frames) == (16, 64, 16, 16)
  with pytest.raises(ValueError, match="dataset.name 'kinetics600' is neither"):
    data_lib.get_dataset(c.dataset, image_res=64, global_batch_size=8, seed=0, process_index=0, process_count=1)


def test_config_num_frames_consistency():
  from configs import video_tiny  # pylint: disable=g-import-not-at-top
  c = video_tiny.get_config()
  config_lib.validate_config(c)
  c.num_frames = 16  # references: model.num_frames and dataset.num_frames follow
  config_lib.validate_config(c)
  assert c.model.num_frames == 16 and c.dataset.num_frames == 16
  d = ml_collections.ConfigDict(c.to_dict())
  d.model.num_frames = 8
  with pytest.raises(ValueError, match='model.num_frames=8 must equal num_frames=16'):
    config_lib.validate_config(d)
  e = ml_collections.ConfigDict(c.to_dict())
  e.loss_type = 'power:1'
  with pytest.raises(ValueError, match='loss_type=.power:1.: the power loss is defined on images'):
    config_lib.validate_config(e)
  # The trainer's data check (before any compute): a video model needs video data of its length.
  from sid2.models import build as model_build  # pylint: disable=g-import-not-at-top
  model = model_build.build_model(c, 3)
  assert model_build.example_shape(model, c, 3) == (16, 16, 16, 3)
  model_build.check_data_frames(model, c, types.SimpleNamespace(num_frames=16))
  with pytest.raises(ValueError, match="yields images but model.name='uvit_video' takes videos of 16 frames"):
    model_build.check_data_frames(model, c, types.SimpleNamespace())


# ---------------------------------------------------------------------------------------------------------
# Synthetic video data.

def _dataset(**kw):
  cfg = dict(name='synthetic_video', num_frames=6, num_classes=4, num_channels=3)
  cfg.update(kw.pop('cfg', {}))
  args = dict(image_res=32, global_batch_size=8, seed=3, process_index=0, process_count=1)
  args.update(kw)
  return data_lib.get_dataset(cfg, **args)


def test_synthetic_video_determinism_and_slicing():
  ds = _dataset()
  assert (ds.num_frames, ds.num_classes, ds.num_channels, ds.per_process_batch_size) == (6, 4, 3, 8)
  b = ds.next_batch(5)
  assert b['image'].shape == (8, 6, 32, 32, 3) and b['image'].dtype == np.float32
  assert b['label'].dtype == np.int32 and set(b['label']) <= {0, 1, 2, 3}
  assert b['image'].min() >= -1.0 and b['image'].max() <= 1.0 and b['image'].min() == -1.0
  np.testing.assert_array_equal(_dataset().next_batch(5)['image'], b['image'])
  assert not np.array_equal(ds.next_batch(6)['image'], b['image'])
  assert not np.array_equal(_dataset(seed=4).next_batch(5)['image'], b['image'])
  parts = [_dataset(process_index=p, process_count=2).next_batch(5) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p['image'] for p in parts]), b['image'])
  np.testing.assert_array_equal(np.concatenate([p['label'] for p in parts]), b['label'])
  # Frames differ (the shapes move) for most videos.
  moving = np.mean(np.abs(b['image'][:, 0] - b['image'][:, -1]) > 0, axis=(1, 2, 3)) > 0
  assert moving.sum() >= 6
  # State: the next step, restorable; a different seed is refused.
  assert ds.get_state() == dict(step=7, seed=3, global_batch_size=8)
  other = _dataset()
  other.set_state(ds.get_state())
  assert other.get_state()['step'] == 7
  with pytest.raises(ValueError, match='seed'):
    _dataset(seed=9).set_state(ds.get_state())


def test_synthetic_video_classes_are_shapes():
  """Coverage (area in pixels) of each class equals its shape's closed-form area, in every frame (the
  shapes bounce inside the frame, never clipped): square 4 r^2, disc pi r^2, diamond 2 r^2, ring
  pi r^2 (1 - 0.3^2)."""
  rng = np.random.default_rng(0)
  params = video_lib.draw_params(rng, 32, num_classes=4, num_channels=1, image_res=64)
  video = video_lib.render(params, num_frames=5, image_res=64)
  coverage = ((video + 1.0) / (params['color'][:, None, None, None, :] + 1.0)).sum(axis=(2, 3, 4))  # [n, T]
  r = params['radius'][:, None]
  area = np.select([params['label'][:, None] == k for k in range(4)],
                   [4 * r ** 2, np.pi * r ** 2, 2 * r ** 2, np.pi * r ** 2 * (1 - 0.3 ** 2)])
  np.testing.assert_allclose(coverage, np.broadcast_to(area, coverage.shape), rtol=0.04)


@pytest.mark.parametrize('cfg,match', [
    (dict(num_classes=5), r'dataset.num_classes must be in \[1, 4\]'),
    (dict(num_channels=2), r'dataset.num_channels must be one of \(1, 3\)'),
    (dict(num_frames=0), 'dataset.num_frames must be an integer >= 1'),
])
def test_synthetic_video_errors(cfg, match):
  with pytest.raises(ValueError, match=match):
    _dataset(cfg=cfg)


def test_video_grid_rows_are_videos():
  video = np.full((2, 3, 4, 5, 1), -1.0, np.float32)
  video[1, 2] = 1.0  # second video, third frame white
  grid = images.image_grid(video)
  assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 1)
  assert np.all(grid[1 + 5:1 + 5 + 4, 1 + 2 * 6:1 + 2 * 6 + 5] == 255)
  assert grid[1:5, 1:6].max() == 0


# ---------------------------------------------------------------------------------------------------------
# End to end: train_and_evaluate on synthetic video.

def test_train_tiny_video(tmp_path):
  from configs import video_tiny  # pylint: disable=g-import-not-at-top
  from sid2 import trainer  # pylint: disable=g-import-not-at-top
  c = video_tiny.get_config()
  c.image_res, c.num_frames, c.batch_size = 8, 4, 2
  c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = 2, 1, 2, 2
  c.model.update(dict(channels=(8,), enc_blocks=(1,), dec_blocks=(1,), transformer_channels=16, num_heads=2,
                      temporal_downsample=(True,)))
  c.sampler.num_steps, c.sampler.num_samples = 2, 2
  state = trainer.train_and_evaluate(c, str(tmp_path))
  assert int(state.step) == 2
  assert os.path.isdir(tmp_path / 'checkpoints' / '2')
  png = np.asarray(Image.open(tmp_path / 'samples' / 'step_2.png'))
  assert png.shape == (2 * 9 + 1, 4 * 9 + 1, 3)  # one row per sample, its 4 frames side by side
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model']['num_frames'] == 4 and saved['dataset']['num_frames'] == 4
