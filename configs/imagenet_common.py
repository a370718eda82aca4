"""Shared settings of the SiD2 class-conditional ImageNet configs (SiD2 §3, supplement B.1-B.6, C.2, C.3).

The six configs imagenet{128,256,512}_{small,flop_heavy}.py call `imagenet_config(image_res)` and then set
only what differs: the input patching and, for the 128^2 flop-heavy model, `drop_top_level`.

Sources. "(paper)" marks a number printed in the SiD2 supplement we have (`shared/papers/sid2_supplement.txt`)
or SPEC; "(recon)" marks our reconstruction. Our copy of the supplement lost B.6's small-model settings block
and its ImageNet training-settings block; the stored arXiv HTML (2410.19324v2) could only be read from its
beginning, and no copy of either block (nor of simple diffusion's appendix, 2301.11093) turned up.
  (paper) dataset: class-conditional ImageNet, tfds 'imagenet2012', 1000 classes.
  (paper) schedule 'cosine_interpolated' (B.1: noise_res_low = 32, noise_res_high = image_res).
  (paper) sigmoid loss bias -3 at 512^2, -1.5 at 256^2, 0 at 128^2 (B.6 "loss_type = sigmoid:0  # 128^2",
          SPEC §3: about 1.5 per 2x resolution).
  (paper) sampling: 'ddpm', 512 steps, clip_x 'static', logvar_type '0.3', guidance 1.0 on the logSNR
          interval (-3, 5) at 512^2, (-1.5, 5) at 256^2, (0, 5) at 128^2 (B.4, B.6).
  (paper) flop heavy: "patching_size = 1" (printed twice, the resolutions lost), and at 128^2 "the top-level
          layer (128 channels) is entirely removed" (B.6); the top level has 128 channels; symmetric E3-D3
          blocks are the baseline (C.3).
  (paper) the flop-heavy 512^2 forward pass costs 653 GFLOPs (Table 5; multiply-add = 1 flop, B.3).
  (paper) ema_decay 0.9999, Adam (0.9, 0.98), eps 1e-10, learning rate 1e-4, 100 warm-up steps, no weight
          decay, batch 512, 500k steps: B.7's Kinetics-600 training block (its "1.e=10" / "1e=4" read as
          1e-10 / 1e-4), the only SiD2 training block that survived; we use it for ImageNet too (recon: that
          it carries over).
  (recon) the U-ViT below, its patching per resolution (see `PATCHING`), dropout, the embedding width,
          v-parametrisation (simple diffusion's), cond_drop_prob 0.1, grad_clip 1.0, the shuffle buffer,
          logging/checkpoint cadence.

The U-ViT (recon). Levels (128, 256, 512, 1024) with E3-D3 ResBlocks each, then 13 transformer blocks of
width 2048 (16 heads) four levels down. "Flop heavy" = the same parameters with every level at twice the
resolution (SiD2 §3: process the image at a higher resolution rather than add parameters):
  small:      patching 4 at 512^2, 2 at 256^2, 1 at 128^2  -> top level 128^2, transformer on 8x8
  flop heavy: patching 2 at 512^2, 1 at 256^2, and at 128^2 patching 1 without the top level
              -> the 256-channel level at 128^2, transformer on 16x16
Why patching 2 (not 1) at 512^2: B.6's flop-heavy block prints `patching_size = 1` twice (read: the 256^2 and
128^2 lines, their comments lost); third-party summaries of arXiv 2410.19324 describe flop-heavy scaling as
a smaller input patch at the same parameters (emergentmind.com) with "2x2 for 512 x 512 images"
(themoonlight.io) -- secondary sources, not the paper's text; and with patching 1 the
128-channel top level alone, E3-D3 at 512^2, costs 6 * resblock_gflops(512, 128, 1) = 464 GFLOPs and every
further level the same again, so no E3-D3 network of this shape fits in 653 GFLOPs. With patching 2 the four
E3-D3 levels cost 4 x 116 GFLOPs and the transformer width/depth were chosen to bring the total
(`sid2.flops.uvit_gflops`) to 654.0 GFLOPs, 0.2% above Table 5's 653 (645.0 without the zero-padding taps).
The small models cost 164.3 / 162.9 / 162.6 GFLOPs at 512^2 / 256^2 / 128^2, the flop-heavy 256^2 and 128^2
ones 652.6 and 532.1; 962M parameters each (959M for the 128^2 flop-heavy model). All variants share every
parameter shape except conv_in/conv_out (patch size); the 128^2 flop-heavy model additionally lacks the top
level's blocks and down/up projections, and its conv_in/emb_dense0/norm_out are 256 wide (the U-ViT sizes
them by the first used level). `emb_channels` is fixed at 1024 so that the class embedding and every block's
conditioning Dense keep their shapes when the top level is dropped.
"""
import ml_collections

NUM_CLASSES = 1000

# SiD2 B.6 / SPEC §3 (paper): sigmoid loss bias per resolution.
SIGMOID_BIAS = {512: -3.0, 256: -1.5, 128: 0.0}
# SiD2 B.4 / B.6 (paper): guidance interval (logSNR) per resolution; the upper end is kept at 5.
GUIDANCE_INTERVAL = {512: (-3.0, 5.0), 256: (-1.5, 5.0), 128: (0.0, 5.0)}
# Input patching per variant and resolution (recon, see the module docstring); at 128^2 the flop-heavy model
# also drops the top level.
PATCHING = {'small': {512: 4, 256: 2, 128: 1}, 'flop_heavy': {512: 2, 256: 1, 128: 1}}
RESOLUTIONS = tuple(sorted(SIGMOID_BIAS))

# The shared U-ViT (recon), in `sid2.models.uvit` field names; patching_size / drop_top_level are set per file.
UVIT = dict(
    name='uvit', channels=(128, 256, 512, 1024), enc_blocks=(3, 3, 3, 3), dec_blocks=(3, 3, 3, 3),
    transformer_channels=2048, transformer_blocks=13, num_heads=16, patching_size=1, drop_top_level=False,
    dropout=0.1, dropout_from_level=1, num_classes=NUM_CLASSES, emb_channels=1024, attention='xla',
    dtype='bfloat16', param_dtype='float32', remat=False)


def imagenet_config(image_res: int, description: str = '') -> ml_collections.ConfigDict:
  """The SiD2 ImageNet config at `image_res` (128, 256 or 512) with the shared U-ViT at patching 1.

  Callers set `model.patching_size` (and `model.drop_top_level` for the 128^2 flop-heavy model).
  """
  if image_res not in SIGMOID_BIAS:
    raise ValueError(f'image_res must be one of {RESOLUTIONS} for the SiD2 ImageNet configs; got {image_res!r}')
  c = ml_collections.ConfigDict()
  c.description = description or f'SiD2 U-ViT, class-conditional ImageNet {image_res}x{image_res}'
  c.seed = 0
  c.batch_size = 512  # B.7 (paper, Kinetics-600), global.
  c.total_steps = 500_000  # B.7 (paper, Kinetics-600).
  c.log_every = 100
  c.eval_every = 50_000
  c.checkpoint_every = 10_000
  c.keep_checkpoints = 3
  c.max_nonfinite_streak = 20

  c.image_res = image_res
  c.dataset = ml_collections.ConfigDict(dict(name='imagenet2012', split='train', data_dir='',
                                             shuffle_buffer=10_000, num_classes=NUM_CLASSES))
  c.schedule = 'cosine_interpolated'  # B.1 (paper): noise_res_low 32, noise_res_high image_res.
  c.loss_type = f'sigmoid:{SIGMOID_BIAS[image_res]:g}'  # B.6, SPEC §3 (paper).
  c.parametrization = 'v'
  c.low_discrepancy = True
  c.cond_drop_prob = 0.1
  c.ema_decay = 0.9999  # B.7 (paper).

  c.model = ml_collections.ConfigDict(dict(UVIT))
  c.optimizer = ml_collections.ConfigDict(dict(  # B.7 (paper) except grad_clip/end_factor (recon).
      name='adam', learning_rate=1e-4, beta1=0.9, beta2=0.98, eps=1e-10, weight_decay=0.0, warmup_steps=100,
      grad_clip=1.0, decay='constant', end_factor=1.0))
  c.sampler = ml_collections.ConfigDict(dict(  # B.4, B.6 (paper); num_samples: the eval grid (recon).
      name='ddpm', num_steps=512, clip_x='static', logvar_type='0.3', eta=0.0, guidance=1.0,
      guidance_interval=GUIDANCE_INTERVAL[image_res], num_samples=16))
  # Plain data parallelism by default; 962M params + EMA + Adam = 15.4 GB of f32 state, more than a 16 GB
  # v5e chip holds: on such chips launch with --config.mesh.fsdp=4 (or 8) and --config.model.remat=True.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, rules='fsdp', min_shard_size=2 ** 14))
  return c
