"""A workdir's config and the EMA parameters of its latest (or a given) checkpoint, for the commands (SPEC §12).

Workdir layout: see `sid2.trainer` (`config.json` + orbax `checkpoints/<step>/{state,data}`).

Only the `ema_params` subtree of the saved TrainState is read (orbax `PyTreeRestore(partial_restore=True)`):
no optimizer state is built or loaded, so this works whatever optimizer trained the run and needs a third
of the memory of a full restore. The restore target is exact: the model is initialised abstractly
(`jax.eval_shape` of `models.build.init_params`) from the config, and its shapes and dtypes are checked against
the checkpoint's metadata before anything is read. As in the trainer, a checkpoint that cannot be read
(corrupt, partial) is skipped with a warning and the previous one is used.

The model must be registered in `sid2.models` (sid2 registers `uvit`); other names come from the config's
plugins (`sid2.plugins.load_plugins`, which the commands call) or a package imported first.
"""
from __future__ import annotations

import collections
import functools
import json
import logging
import os
from typing import Any, Optional, Sequence, Tuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from sid2 import checkpoint as ckpt_lib
from sid2 import models
from sid2 import plugins
from sid2 import sample_fns
from sid2 import sampling
from sid2.models import build as model_build

# Channel counts tried, in order, when neither the config (`num_channels`) nor the dataset name gives it.
CHANNEL_CANDIDATES = (1, 3, 4, 2)
# Datasets whose channel count is known without opening them.
KNOWN_CHANNELS = {'fashion_mnist': 1}

Restored = collections.namedtuple('Restored', 'config params step num_channels')


class CheckpointMismatchError(ValueError):
  """The checkpoint is readable but its parameters do not fit the config's model (no fallback)."""


def config_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'config.json')


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved training config written by the trainer (`<workdir>/config.json`); lists stay lists."""
  path = config_path(workdir)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: workdir={workdir!r} is not a training workdir '
                            '(expected config.json and checkpoints/ written by experiments.train)')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_registered_config(workdir: str) -> ml_collections.ConfigDict:
  """`load_config` with the config's plugins imported and its model checked to be registered."""
  config = load_config(workdir)
  plugins.load_plugins(config)
  check_model_registered(config)
  return config


def checkpoint_steps(workdir: str) -> list:
  """The steps of the finished checkpoints in `<workdir>/checkpoints`, ascending."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and os.path.isdir(os.path.join(directory, d))
                and not d.endswith('.orbax-checkpoint-tmp'))


def check_model_registered(config):
  """ValueError naming the model and the registered ones when `config.model.name` is not registered."""
  name = config.model.get('name', None)
  if name not in models.MODELS:
    raise ValueError(f'config field model.name={name!r} is not a registered model (registered: '
                     f'{sorted(models.MODELS)}); {plugins.missing_hint()} (the commands load config.plugins)')


def abstract_params(config, num_channels: int, sharding=None):
  """ShapeDtypeStructs of the model's parameters for `config` (model init under `jax.eval_shape`)."""
  check_model_registered(config)
  model = model_build.build_model(config, num_channels)
  shapes = jax.eval_shape(functools.partial(model_build.init_params, model, config, num_channels),
                          jax.random.PRNGKey(0))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def _shape_dtype_map(tree) -> dict:
  """{'a/b/c': (shape, dtype name)} of a pytree of arrays, ShapeDtypeStructs or orbax ArrayMetadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path):
          (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in leaves}


def _first_difference(want: dict, got: dict) -> str:
  for k in sorted(set(want) | set(got)):
    if want.get(k) != got.get(k):
      return f'{k}: config gives {want.get(k, "nothing")}, checkpoint has {got.get(k, "nothing")}'
  return ''


def resolve_num_channels(config, stored: dict) -> int:
  """The image channel count whose abstract parameters match `stored` ({path: (shape, dtype)}).

  From `config.num_channels` if set, else from the dataset name (fashion_mnist: 1), else the first of
  CHANNEL_CANDIDATES whose parameter shapes match the checkpoint. ValueError with the first mismatch.
  """
  if config.get('num_channels', None):
    candidates = (int(config.num_channels),)
  elif config.get('dataset', {}).get('name', None) in KNOWN_CHANNELS:
    candidates = (KNOWN_CHANNELS[config.dataset.name],)
  else:
    candidates = CHANNEL_CANDIDATES
  mismatch = ''
  for c in candidates:
    want = _shape_dtype_map(abstract_params(config, c))
    if want == stored:
      return c
    mismatch = f'num_channels={c}: {_first_difference(want, stored)}'
  raise CheckpointMismatchError(f'the checkpoint\'s EMA parameters do not match the model of config.json '
                   f'(model.name={config.model.name!r}); tried num_channels in {list(candidates)}; '
                   f'first difference for {mismatch}')


def _manager(workdir: str):
  """A read-only orbax manager over `<workdir>/checkpoints` that reads the `state` item as a raw PyTree."""
  options = ocp.CheckpointManagerOptions(create=False, read_only=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               handler_registry=ckpt_lib.handler_registry(raw_state=True))


def _restore_ema(manager, step: int, config, sharding) -> Tuple[Any, int]:
  """(EMA params, num_channels) of one checkpoint: metadata check, then a partial restore of ema_params."""
  metadata = manager.item_metadata(step)['state']
  tree = metadata.tree if hasattr(metadata, 'tree') else metadata
  if not isinstance(tree, dict) or 'ema_params' not in tree:
    raise KeyError(f'checkpoint {step} has no readable ema_params metadata')
  stored = _shape_dtype_map(tree['ema_params'])
  num_channels = resolve_num_channels(config, stored)
  target = {'ema_params': abstract_params(config, num_channels, sharding)}
  args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                partial_restore=True)
  restored = manager.restore(step, args=ocp.args.Composite(state=args))
  return restored['state']['ema_params'], num_channels


def load(workdir: str, step: Optional[int] = None, *, config=None, sharding=None) -> Restored:
  """(config, EMA params, step, num_channels) of the latest readable (or the given) checkpoint.

  step=None: the newest checkpoint that restores, skipping unreadable ones with a warning (as the
  trainer does). An explicit step must exist (ValueError listing the steps) and is not skipped.
  sharding: where the arrays go (default: the first local device).
  """
  config = load_config(workdir) if config is None else config
  check_model_registered(config)
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'no checkpoints in {checkpoint_dir(workdir)}')
  if step is not None:
    if isinstance(step, bool) or not isinstance(step, int) or step not in steps:
      raise ValueError(f'step={step!r} is not a checkpoint of {workdir}; available steps: {steps}')
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  manager = _manager(workdir)
  errors = []
  try:
    for s in ([step] if step is not None else reversed(steps)):
      try:
        params, num_channels = _restore_ema(manager, s, config, sharding)
        return Restored(config, params, s, num_channels)
      except CheckpointMismatchError:
        raise  # config and checkpoint disagree: not a corrupt file, so no fallback
      except Exception as e:  # corrupt or partial checkpoint: fall back to the previous one
        if step is not None:
          raise RuntimeError(f'checkpoint {s} of {workdir} could not be restored: '
                             f'{type(e).__name__}: {e}') from e
        logging.warning('checkpoint at step %d could not be restored (%s: %s); trying the previous one',
                        s, type(e).__name__, e)
        errors.append(f'step {s}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')
  finally:
    manager.close()
  raise RuntimeError(f'no checkpoint of {workdir} could be restored: ' + '; '.join(errors))


def load_ema_params(workdir: str, step: Optional[int] = None, *, config=None, sharding=None):
  """(EMA params pytree, step) of the latest readable (or the given) checkpoint; see `load`."""
  r = load(workdir, step, config=config, sharding=sharding)
  return r.params, r.step


# ---------------------------------------------------------------------------------------------------------
# Sampling from a restored workdir (shared by experiments.sample and experiments.export).

SAMPLER_FIELDS = sampling.LOOP_FIELDS  # the sampler fields that shape the compiled loop


def override_sampler(config, **overrides):
  """A copy of `config` whose `sampler` sub-config has the given non-None fields replaced and validated.

  Keys are the fields of `sid2.sampling.SamplerSettings`. ValueError (naming the field) for an unknown key
  or a bad setting.
  """
  settings = sampling.SamplerSettings.from_config(config.sampler).override(**overrides)
  config = ml_collections.ConfigDict(config.to_dict())
  for k, v in overrides.items():
    if v is not None:
      config.sampler[k] = getattr(settings, k)
  return config


def _sampler_key(config, num_samples, num_channels):
  keep = {k: config.get(k) for k in ('model', 'image_res', 'schedule', 'parametrization', 'sampler')}
  keep = {k: (v.to_dict() if hasattr(v, 'to_dict') else v) for k, v in keep.items()}
  keep['sampler'] = {k: keep['sampler'].get(k) for k in SAMPLER_FIELDS}
  return json.dumps(keep, sort_keys=True, default=str), int(num_samples), int(num_channels)


def _guide_key(guide_config) -> str:
  """What of the guide's config its predictions depend on (the loop and schedule are the model's)."""
  keep = {k: guide_config.get(k) for k in ('model', 'image_res', 'parametrization')}
  return json.dumps({k: (v.to_dict() if hasattr(v, 'to_dict') else v) for k, v in keep.items()},
                    sort_keys=True, default=str)


@functools.lru_cache(maxsize=8)
def _cached_sample_fn(key, num_samples, num_channels):
  config = ml_collections.ConfigDict(json.loads(key))
  return sample_fns.make_sample_fn(model_build.build_model(config, num_channels), config, num_samples,
                                   num_channels)


def sample_fn(config, num_samples: int, num_channels: int):
  """`sample_fns.make_sample_fn` for these settings, cached: `fn(params, rng, labels, guidance, lo, hi)`.

  The same settings give the same jitted function object, so repeated commands in one process (tests,
  notebooks, chunks) compile once. Only the model, schedule, parametrisation and sampler fields matter.
  """
  return _cached_sample_fn(*_sampler_key(config, num_samples, num_channels))


@functools.lru_cache(maxsize=8)
def _cached_autoguided_sample_fn(key, num_samples, num_channels, guide_key):
  config = ml_collections.ConfigDict(json.loads(key))
  guide_config = ml_collections.ConfigDict(json.loads(guide_key))
  return sample_fns.make_autoguided_sample_fn(model_build.build_model(config, num_channels),
                                              model_build.build_model(guide_config, num_channels), config,
                                              guide_config, num_samples, num_channels)


def autoguided_sample_fn(config, guide_config, num_samples: int, num_channels: int):
  """`sample_fns.make_autoguided_sample_fn` for these settings, cached like `sample_fn`:
  `fn((params, guide_params), rng, labels, guidance, lo, hi)`. Check the pair with `check_guide` first."""
  return _cached_autoguided_sample_fn(*_sampler_key(config, num_samples, num_channels), _guide_key(guide_config))


# ---------------------------------------------------------------------------------------------------------
# The guide of autoguidance must describe the same task as the model it guides.

def _plain(value):
  return value.to_dict() if hasattr(value, 'to_dict') else value


def _config_channels(config) -> Optional[int]:
  return config.get('num_channels', None) or KNOWN_CHANNELS.get(config.get('dataset', {}).get('name', None))


def _frames(config) -> int:
  return int(config.get('num_frames', 0) or config.model.get('num_frames', 0) or 0)


def guide_mismatches(config, guide_config, num_channels=None, guide_num_channels=None) -> list:
  """[(field, model's value, guide's value)] of the fields autoguidance needs equal: image shape (image_res,
  channels, frames), logSNR schedule, parametrisation (eps / x / v output) and conditioning
  (model.num_classes). Channels are compared when known for both (given, or from the configs)."""
  channels = num_channels or _config_channels(config)
  guide_channels = guide_num_channels or _config_channels(guide_config)
  pairs = [('image_res', config.get('image_res', None), guide_config.get('image_res', None))]
  if channels and guide_channels:
    pairs.append(('num_channels', int(channels), int(guide_channels)))
  pairs += [('num_frames', _frames(config), _frames(guide_config)),
            ('schedule', _plain(config.get('schedule', None)), _plain(guide_config.get('schedule', None))),
            ('parametrization', _plain(config.get('parametrization', None)),
             _plain(guide_config.get('parametrization', None))),
            ('model.num_classes', int(config.model.get('num_classes', 0) or 0),
             int(guide_config.model.get('num_classes', 0) or 0))]
  return [(name, a, b) for name, a, b in pairs if a != b]


def check_guide(config, guide_config, num_channels=None, guide_num_channels=None, *, workdir='the model',
                guide_workdir='the guide'):
  """ValueError naming every field (with both values) on which the guide differs from the model."""
  bad = guide_mismatches(config, guide_config, num_channels, guide_num_channels)
  if bad:
    diffs = '; '.join(f'{name}: model {a!r}, guide {b!r}' for name, a, b in bad)
    raise ValueError(f'the guide ({guide_workdir}) does not fit the model ({workdir}): {diffs}. Autoguidance '
                     'needs the same image shape, logSNR schedule, parametrization and conditioning')


def default_labels(config, num_samples: int):
  """Round-robin class labels 0, 1, ..., C-1, 0, ... for class-conditional models; None otherwise."""
  num_classes = int(config.model.get('num_classes', 0) or 0)
  if not num_classes:
    return None
  return [i % num_classes for i in range(num_samples)]


def check_labels(config, labels: Optional[Sequence[int]]):
  """ValueError unless labels are ints in [0, num_classes) for a class-conditional model (None: any)."""
  num_classes = int(config.model.get('num_classes', 0) or 0)
  if labels is None:
    return
  if not num_classes:
    raise ValueError('labels were given but the model is unconditional (config field model.num_classes=0)')
  bad = [l for l in labels if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < num_classes]
  if bad:
    raise ValueError(f'labels must be ints in [0, {num_classes}) (model.num_classes={num_classes}); '
                     f'got {bad[:5]}')
