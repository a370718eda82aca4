"""FLOP estimates (SiD2 B.3, SPEC §8): a multiply-add counts as one flop; a training step is 3x forward."""
from __future__ import annotations

TRAIN_FACTOR = 3  # SPEC §8: training step = 3 x forward pass.


def transformer_gflops(size, num_channels, blocks):
  """GFLOPs of `blocks` transformer blocks on a size x size token grid (SPEC §8, SiD2 B.3).

  Linears: q, k, v, attention-out (4 C^2) and the MLP in/out with 4x expansion (8 C^2) per token; attention:
  the two token-token products (QK^T and AV), size^4 * C each.
  """
  linears = 12 * num_channels ** 2 * blocks * size ** 2
  attn = 2 * size ** 4 * blocks * num_channels
  return (linears + attn) / 1e9


def resblock_gflops(size, num_channels, blocks):
  """GFLOPs of `blocks` ResBlocks (two 3x3 convs, C -> C) at size x size (SPEC §8, SiD2 B.3)."""
  return 2 * 3 ** 2 * blocks * num_channels ** 2 * size ** 2 / 1e9


def train_gflops(forward_gflops):
  """Training-step GFLOPs = 3 x forward (SPEC §8)."""
  return TRAIN_FACTOR * forward_gflops


def uvit_gflops(model_config, image_res, *, num_channels=3, count_padding=True):
  """Forward GFLOPs (multiply-add = 1) of one image through the SiD2 U-ViT (`sid2.models.uvit`, SPEC §8).

  Sums the B.3 terms, `resblock_gflops` per level x (enc + dec blocks) and `transformer_gflops` at the core,
  plus the layers B.3 leaves out: input/output 3x3 convs, 2x2 down/up-sampling projections (s^2 C_l C_{l+1}
  each), and the per-example conditioning Denses (logSNR MLP, per-block scale/shift). Elementwise work
  (norms, activations, softmax) is not counted.
  count_padding=True counts every 3x3 conv as 9 s^2 C_in C_out, as B.3 does. count_padding=False counts
  only taps that hit the image, (3s - 2)^2 C_in C_out per conv, which is what XLA's cost analysis counts
  (zero 'SAME' padding is not multiplied); at small s the two differ (e.g. 4% at s = 32).
  """
  from sid2.models import uvit  # pylint: disable=g-import-not-at-top  (flax only when needed)
  f = uvit.resolve_uvit_config(model_config)
  uvit.check_resolution(f, image_res)
  levels = uvit.used_levels(f['channels'], f['drop_top_level'])
  chans, c_t, p = f['channels'], f['transformer_channels'], f['patching_size']
  e = uvit.emb_width(f)

  def conv3(size, c_in, c_out):
    taps = 9 * size ** 2 if count_padding else (3 * size - 2) ** 2
    return taps * c_in * c_out

  size = image_res // p
  c0 = chans[levels[0]]
  gflops = 2 * conv3(size, num_channels * p * p, c0) / 1e9  # conv_in and conv_out.
  gflops += (c0 * e + e * e) / 1e9  # logSNR features -> Dense(E) -> Dense(E).
  for i in levels:
    blocks = f['enc_blocks'][i] + f['dec_blocks'][i]
    if count_padding:
      gflops += resblock_gflops(size, chans[i], blocks)
    else:
      gflops += 2 * blocks * conv3(size, chans[i], chans[i]) / 1e9
    gflops += blocks * e * 2 * chans[i] / 1e9  # scale/shift Dense per ResBlock.
    c_next = chans[i + 1] if i + 1 < len(chans) else c_t
    gflops += 2 * size ** 2 * chans[i] * c_next / 1e9  # Downsample + Upsample.
    size //= 2
  gflops += transformer_gflops(size, c_t, f['transformer_blocks'])
  gflops += f['transformer_blocks'] * e * 4 * c_t / 1e9  # adaLN Dense per transformer block.
  return gflops


# ---------------------------------------------------------------------------------------------------------
# Video (SiD2 B.7: "the same gflop calculations as before adapted to 3D Convs").

def spacetime_transformer_gflops(num_tokens, num_channels, blocks):
  """GFLOPs of `blocks` transformer blocks on N = `num_tokens` tokens: (12 C^2 N + 2 N^2 C) per block
  (SPEC §8 with size^2 -> N; `transformer_gflops(s, C, b)` == this with N = s^2)."""
  linears = 12 * num_channels ** 2 * blocks * num_tokens
  attn = 2 * num_tokens ** 2 * blocks * num_channels
  return (linears + attn) / 1e9


def conv3d_resblock_gflops(size, num_frames, num_channels, blocks, temporal_kernel_size=3):
  """GFLOPs of `blocks` 3-D ResBlocks (two k_t x 3 x 3 convs, C -> C) on T x size x size (SiD2 B.7):
  a 3x3x3 conv costs 27 s^2 T C^2, so a block 2 * 27 s^2 T C^2 (B.3's `resblock_gflops` x k_t T)."""
  return 2 * 3 ** 2 * temporal_kernel_size * blocks * num_channels ** 2 * size ** 2 * num_frames / 1e9


def _taps(n, k):
  """Kernel taps of a 'SAME' size-k (odd) convolution along an axis of length n that hit the input
  (zero padding excluded): n k minus the taps that fall into the padding."""
  r = k // 2
  return sum(min(r, i) + min(r, n - 1 - i) + 1 for i in range(n))


def video_uvit_gflops(model_config, image_res, num_frames, num_channels=3, *, count_padding=True):
  """Forward GFLOPs (multiply-add = 1) of one video [T, H, W, C] through `sid2.models.uvit_video` (SiD2 B.7).

  The B.3 terms adapted to 3-D: `conv3d_resblock_gflops` per level x (enc + dec blocks), with T halved
  after each level whose `temporal_downsample` is set, and `spacetime_transformer_gflops` at the core on
  N = T' s'^2 tokens; plus, as `uvit_gflops` counts them, the k_t x 3 x 3 input/output convs, the
  down/up-sampling projections (T s^2 C_l C_{l+1} each, whether or not time is halved too) and the
  per-example conditioning Denses. Elementwise work is not counted.
  count_padding=False counts only the taps that hit the input (what XLA's cost analysis counts): per axis
  of length n, n k - r(r + 1) taps for a size-k kernel with r = (k - 1)/2 (3n - 2 for k = 3), when n > r.
  """
  from sid2.models import uvit, uvit_video  # pylint: disable=g-import-not-at-top  (flax only when needed)
  f = uvit_video.resolve_uvit_video_config(model_config)
  uvit_video.check_video_resolution(f, image_res, num_frames)
  levels = uvit.used_levels(f['channels'], f['drop_top_level'])
  chans, c_t, p = f['channels'], f['transformer_channels'], f['patching_size']
  kt = f['temporal_kernel_size']
  e = uvit.emb_width(f)

  def conv(frames, size, c_in, c_out):
    if count_padding:
      taps = kt * frames * 9 * size ** 2
    else:
      taps = _taps(frames, kt) * _taps(size, 3) ** 2
    return taps * c_in * c_out

  size, frames = image_res // p, num_frames
  c0 = chans[levels[0]]
  gflops = 2 * conv(frames, size, num_channels * p * p, c0) / 1e9  # conv_in and conv_out.
  gflops += (c0 * e + e * e) / 1e9  # logSNR features -> Dense(E) -> Dense(E).
  for i in levels:
    blocks = f['enc_blocks'][i] + f['dec_blocks'][i]
    if count_padding:
      gflops += conv3d_resblock_gflops(size, frames, chans[i], blocks, kt)
    else:
      gflops += 2 * blocks * conv(frames, size, chans[i], chans[i]) / 1e9
    gflops += blocks * e * 2 * chans[i] / 1e9  # scale/shift Dense per ResBlock.
    c_next = chans[i + 1] if i + 1 < len(chans) else c_t
    gflops += 2 * frames * size ** 2 * chans[i] * c_next / 1e9  # Downsample + Upsample.
    size //= 2
    frames //= 2 if f['temporal_downsample'][i] else 1
  gflops += spacetime_transformer_gflops(frames * size ** 2, c_t, f['transformer_blocks'])
  gflops += f['transformer_blocks'] * e * 4 * c_t / 1e9  # adaLN Dense per transformer block.
  return gflops


# ---------------------------------------------------------------------------------------------------------
# Per config: the command is `python -m experiments.flops configs/x.py [configs/y.py ...]`.

# Models with a closed-form count; any other registered model is counted by XLA's cost analysis.
FORMULA_MODELS = ('uvit', 'uvit_video')


def load_config(path):
  """`get_config()` of a config file, imported from its path (no absl / config_flags needed)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise ValueError(f'config file {path} does not exist')
  root = os.path.dirname(os.path.dirname(path))  # so that `from configs import x` inside it resolves
  if root not in sys.path:
    sys.path.insert(0, root)
  name = '_sid2_flops_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'config file {path} has no get_config()')
  return module.get_config()


def config_num_channels(config):
  """Image channels of a config's data: `config.num_channels`, else the dataset's known channel count
  (Fashion-MNIST 1, synthetic video `dataset.num_channels`), else 3 (RGB)."""
  if config.get('num_channels', None):
    return int(config.num_channels)
  dataset = config.get('dataset', None) or {}
  if dataset.get('num_channels', None):
    return int(dataset['num_channels'])
  return 1 if dataset.get('name', '') == 'fashion_mnist' else 3


def _abstract_inputs(model, config, num_channels):
  """ShapeDtypeStructs (z, logsnr, labels) for one example; [1, T, H, W, C] for video models."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  res = config.image_res
  frames = getattr(model, 'num_frames', 0)
  shape = (1,) + ((frames,) if frames else ()) + (res, res, num_channels)
  labels = (jax.ShapeDtypeStruct((1,), jnp.int32) if config.model.get('num_classes', 0) else None)
  return jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct((1,), jnp.float32), labels


def config_cost(config):
  """dict(model, res, frames, params, forward_gflops, source) of a training config, without allocating
  parameters (`jax.eval_shape` of the init); forward GFLOPs per example (multiply-add = 1)."""
  import jax  # pylint: disable=g-import-not-at-top
  from sid2 import models  # pylint: disable=g-import-not-at-top
  num_channels = config_num_channels(config)
  model = models.get_model(config.model, image_res=config.image_res, num_channels=num_channels)
  z, logsnr, labels = _abstract_inputs(model, config, num_channels)
  variables = jax.eval_shape(
      lambda r, z, l, y: model.init({'params': r, 'dropout': r}, z, l, y, train=False),
      jax.ShapeDtypeStruct((2,), jax.numpy.uint32), z, logsnr, labels)
  params = sum(int(x.size) for x in jax.tree.leaves(variables.get('params', variables)))
  frames = getattr(model, 'num_frames', 0)
  name = config.model.name
  if name == 'uvit':
    gflops, source = uvit_gflops(config.model, config.image_res, num_channels=num_channels), 'B.3'
  elif name == 'uvit_video':
    gflops, source = video_uvit_gflops(config.model, config.image_res, frames, num_channels), 'B.3/B.7'
  else:
    # No closed form: XLA's count of the lowered forward (it counts a multiply-add as 2 flops).
    fwd = jax.jit(lambda v, z, l, y: model.apply(v, z, l, y, train=False))
    cost = fwd.lower(variables, z, logsnr, labels).cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    gflops, source = float(cost['flops']) / 2 / 1e9, 'XLA/2'
  return dict(model=name, res=config.image_res, frames=frames, params=params, forward_gflops=gflops,
              source=source)


def format_table(rows):
  """The CLI's table: one line per config."""
  header = ('config', 'model', 'resolution', 'params', 'fwd GFLOPs', 'train GFLOPs', 'run ZFLOPs', 'count')
  lines = []
  for r in rows:
    res = f'{r["frames"]}x{r["res"]}x{r["res"]}' if r['frames'] else f'{r["res"]}x{r["res"]}'
    run = r['train_gflops'] * r['batch_size'] * r['total_steps'] / 1e12
    lines.append((r['config'], r['model'], res, f'{r["params"] / 1e6:.2f}M', f'{r["forward_gflops"]:.2f}',
                  f'{r["train_gflops"]:.2f}', f'{run:.3g}', r['source']))
  widths = [max(len(x[k]) for x in [header] + lines) for k in range(len(header))]
  fmt = lambda cols: '  '.join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()
  return '\n'.join([fmt(header), fmt(['-' * w for w in widths])] + [fmt(x) for x in lines])
