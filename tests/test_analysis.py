"""Loss-vs-logSNR analysis (sid2/analysis.py) and its notebook (notebooks/loss_vs_logsnr.ipynb).

Closed forms: the exact Gaussian denoiser's eps-MSE, the SPEC §3 weighted = 1/2 w (-dlambda/dt) unweighted
relation, the power loss's band sums (SPEC §4, Parseval) and its HH band against the sigmoid loss. The
notebook is executed end to end with nbclient on a checkpoint trained here.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sid2 import analysis
from sid2 import oracles
from sid2 import parametrization as param_lib
from sid2 import schedules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'loss_vs_logsnr.ipynb')


def _config(loss_type='sigmoid:1.0', schedule='cosine', parametrization='v', image_res=4):
  return ml_collections.ConfigDict(dict(image_res=image_res, schedule=schedule, loss_type=loss_type,
                                        parametrization=parametrization, model=dict(num_classes=0)))


def _gaussian_apply_fn(parametrization):
  """The exact posterior mean E[x|z] of x ~ N(mean, diag var) (SPEC §6), as a model output."""
  def apply_fn(params, z, logsnr, labels):
    assert labels is None
    mean, var = params
    x_hat = oracles.gaussian_posterior_mean(z, logsnr, mean, var)
    return param_lib.from_x(x_hat, z, logsnr, parametrization)
  return apply_fn


def _gaussian_data(res=4, n=256, seed=0):
  rng = np.random.default_rng(seed)
  mean = rng.uniform(-0.5, 0.5, (res, res, 1)).astype(np.float32)
  var = rng.uniform(0.05, 1.0, (res, res, 1)).astype(np.float32)
  x = mean + np.sqrt(var) * rng.standard_normal((n, res, res, 1)).astype(np.float32)
  return mean, var, x


@pytest.mark.parametrize('parametrization', ['eps', 'x', 'v'])
def test_exact_gaussian_denoiser_matches_closed_form_mmse(parametrization):
  # x ~ N(mu, diag s^2), z = alpha x + sigma eps: Var[x|z] = s^2 sigma^2 / (alpha^2 s^2 + sigma^2), so the
  # optimal eps-MSE is e^lambda Var[x|z] = s^2 / (s^2 + e^-lambda) and the x-MSE s^2 / (1 + e^lambda s^2),
  # both averaged over dimensions.
  mean, var, x = _gaussian_data()
  lams = np.linspace(-8.0, 8.0, 9)
  res = analysis.loss_vs_logsnr((mean, var), _config(parametrization=parametrization), x, lams, num_noise=8,
                                apply_fn=_gaussian_apply_fn(parametrization), rng=jax.random.PRNGKey(1))
  eps_closed = np.array([np.mean(var / (var + np.exp(-l))) for l in lams])
  x_closed = np.array([np.mean(var / (1.0 + np.exp(l) * var)) for l in lams])
  # Monte Carlo over 256 images x 8 draws x 16 dims: relative error about 0.5%.
  np.testing.assert_allclose(res['eps_mse'], eps_closed, rtol=0.03)
  np.testing.assert_allclose(res['x_mse'], x_closed, rtol=0.03)
  # Exact per example (SPEC §2): eps - eps_hat = (alpha / sigma) (x_hat - x).
  np.testing.assert_allclose(res['eps_mse'], np.exp(lams) * res['x_mse'], rtol=1e-4)
  # A denoiser built for the wrong variance is far off near lambda = 0 (where the prior matters): the check
  # has teeth.
  worse = analysis.loss_vs_logsnr((mean, var * 0.2), _config(parametrization=parametrization), x, lams,
                                  num_noise=8, apply_fn=_gaussian_apply_fn(parametrization),
                                  rng=jax.random.PRNGKey(1))
  mid = (lams >= 0) & (lams <= 4)
  assert np.all(worse['eps_mse'][mid] > 1.2 * eps_closed[mid])


def test_video_shaped_data():
  # [B, T, H, W, C] data (video models): every reduction is over all axes but the batch.
  mean, var, x = _gaussian_data(res=4, n=64)
  video = np.stack([x, x[::-1]], axis=1)  # two frames
  lams = np.array([-2.0, 0.0, 2.0])
  res = analysis.loss_vs_logsnr((mean, var), _config(), video, lams, num_noise=4,
                                apply_fn=_gaussian_apply_fn('v'))
  eps_closed = np.array([np.mean(var / (var + np.exp(-l))) for l in lams])
  np.testing.assert_allclose(res['eps_mse'], eps_closed, rtol=0.05)


@pytest.mark.parametrize('schedule,image_res', [('cosine', 4), ('cosine_interpolated', 8)])
def test_weighted_loss_is_half_w_times_neg_dlogsnr_dt_times_eps_mse(schedule, image_res):
  mean, var, x = _gaussian_data(res=image_res, n=16)
  lams = np.linspace(-14.0, 14.0, 15)
  bias = 1.5
  apply_fn = _gaussian_apply_fn('v')
  params = (mean + 0.3, var * 2.0)  # a denoiser with a real error, so the losses are not tiny
  res = analysis.loss_vs_logsnr(params, _config(f'sigmoid:{bias}', schedule, image_res=image_res), x, lams,
                                num_noise=2, apply_fn=apply_fn)
  sched = schedules.get_schedule(schedule, image_res=image_res)
  lo, hi = float(sched(1.0)), float(sched(0.0))
  inside = (lams >= lo - 1e-3) & (lams <= hi + 1e-3)
  assert 0 < inside.sum() < len(lams)  # the grid runs past both ends of the schedule
  np.testing.assert_array_equal(res['in_range'], inside)
  assert np.all(np.isnan(res['loss'][~inside])) and np.all(np.isfinite(res['eps_mse']))
  # t = t(lambda) (closed form for cosine, bisection for cosine_interpolated) and -dlambda/dt by differences.
  t = res['t'][inside]
  np.testing.assert_allclose(np.asarray(sched(t)), lams[inside], atol=2e-3)
  h, interior = 1e-3, (t > 0.01) & (t < 0.99)
  fd = -(np.asarray(sched(t + h), np.float64) - np.asarray(sched(t - h), np.float64)) / (2 * h)
  np.testing.assert_allclose(res['neg_dlogsnr_dt'][inside][interior], fd[interior], rtol=1e-2)
  # SPEC §3: the sigmoid loss (computed in x-space by sid2.losses) is 1/2 sigmoid(b - lambda) (-dl/dt) eps-MSE.
  w = 1.0 / (1.0 + np.exp(lams - bias))
  np.testing.assert_allclose(res['weight'], w, rtol=1e-5)
  np.testing.assert_allclose(res['loss'][inside],
                             0.5 * w[inside] * res['neg_dlogsnr_dt'][inside] * res['eps_mse'][inside], rtol=2e-4)
  np.testing.assert_allclose(res['loss_per_logsnr'][inside], 0.5 * w[inside] * res['eps_mse'][inside], rtol=2e-4)
  # EDM-monotonic goes through the eps-space path of sid2.losses: same relation with its own w.
  edm = analysis.loss_vs_logsnr(params, _config('edm_monotonic', schedule, image_res=image_res), x, lams,
                                num_noise=2, apply_fn=apply_fn)
  np.testing.assert_allclose(edm['eps_mse'], res['eps_mse'], rtol=1e-6)  # same noise at every call
  np.testing.assert_allclose(edm['loss'][inside],
                             0.5 * edm['weight'][inside] * edm['neg_dlogsnr_dt'][inside] * edm['eps_mse'][inside],
                             rtol=2e-4)


def test_power_loss_bands_sum_and_hh_band_matches_sigmoid():
  mean, var, x = _gaussian_data(res=8, n=8)
  lams = np.linspace(-8.0, 8.0, 9)
  bias = 0.7
  res = analysis.loss_vs_logsnr((mean + 0.2, var), _config(f'power:{bias}', image_res=8), x, lams,
                                num_noise=2, apply_fn=_gaussian_apply_fn('x'))
  assert res['band_names'] == ['LH', 'HL', 'HH', 'LLLH', 'LLHL', 'LLHH', 'LLLL']
  assert res['band_loss'].shape == (9, 7) and 'weight' not in res
  np.testing.assert_allclose(res['band_loss'].sum(1), res['loss'], rtol=1e-4)
  np.testing.assert_allclose(res['band_x_mse'].sum(1), res['x_mse'], rtol=1e-5)  # Parseval (SPEC §5)
  # SPEC §4: band weight sigmoid(lambda + log(2) l(s) - b), l = 1, 1, 0, 3, 3, 2, 4.
  lows = np.array([1, 1, 0, 3, 3, 2, 4])
  np.testing.assert_allclose(res['band_weight'], 1 / (1 + np.exp(-(lams[:, None] + np.log(2) * lows - bias))),
                             rtol=1e-5)

  # An error that is a pure level-1 HH pattern (a checkerboard): l = 0, b_s = -b, so power:b weighs it with
  # eps-space weight 2 e^-b sigmoid(b - lambda), i.e. exactly 2 e^-b times the sigmoid:b loss.
  checker = np.where((np.arange(8)[:, None] + np.arange(8)[None]) % 2 == 0, 1.0, -1.0)[..., None] * 0.1

  def apply_fn(params, z, logsnr, labels):
    return jnp.broadcast_to(params + checker, z.shape)  # x-parametrisation: x_hat = x + checkerboard

  same = np.repeat(x[:1], 4, axis=0)  # every example is the same image, so x_hat does not depend on z
  kw = dict(num_noise=1, apply_fn=apply_fn)
  power = analysis.loss_vs_logsnr(same[0], _config(f'power:{bias}', parametrization='x', image_res=8),
                                  same, lams, **kw)
  sigmoid = analysis.loss_vs_logsnr(same[0], _config(f'sigmoid:{bias}', parametrization='x', image_res=8),
                                    same, lams, **kw)
  hh = power['band_names'].index('HH')
  np.testing.assert_allclose(power['band_x_mse'][:, hh], 0.01, rtol=1e-5)
  np.testing.assert_allclose(np.delete(power['band_x_mse'], hh, axis=1), 0.0, atol=1e-9)
  np.testing.assert_allclose(power['loss'], 2 * np.exp(-bias) * sigmoid['loss'], rtol=1e-4)
  eps_w = np.asarray(analysis.power_band_eps_weights(lams, bias, 2))[:, hh]
  np.testing.assert_allclose(eps_w, 2 * np.exp(-bias) / (1 + np.exp(lams - bias)), rtol=1e-5)


def test_bad_input_raises_before_compute():
  mean, var, x = _gaussian_data(n=4)
  apply_fn = _gaussian_apply_fn('v')
  call = lambda cfg, data=x, lams=(0.0,), **kw: analysis.loss_vs_logsnr(
      (mean, var), cfg, data, lams, apply_fn=apply_fn, **kw)
  with pytest.raises(ValueError, match='loss_type'):
    call(_config('sigmoidal:1'))
  with pytest.raises(ValueError, match='parametrization'):
    call(_config(parametrization='score'))
  with pytest.raises(ValueError, match='schedule'):
    call(_config(schedule='cosine_wobbly'))
  with pytest.raises(ValueError, match='image_res'):
    call(_config(image_res=8))
  with pytest.raises(ValueError, match='logsnrs'):
    call(_config(), lams=[[0.0]])
  with pytest.raises(ValueError, match='num_noise'):
    call(_config(), num_noise=0)
  with pytest.raises(ValueError, match="'image'"):
    call(_config(), data={'images': x})
  cond = _config()
  cond.model.num_classes = 3
  with pytest.raises(ValueError, match='label'):
    call(cond)
  with pytest.raises(ValueError, match=r'\[0, 3\)'):
    call(cond, data=dict(image=x, label=np.array([0, 1, 2, 3])))
  with pytest.raises(ValueError, match='model.name'):
    analysis.loss_vs_logsnr({}, ml_collections.ConfigDict(dict(_config().to_dict(), model=dict(name='nope'))),
                            x, [0.0])


def test_read_training_curve_averages_records_by_count(tmp_path):
  edges = [-2.0, 0.0, 2.0]  # bins: (<-2), [-2, 0), [0, 2), (>=2)
  recs = [dict(step=10, bin_edges=edges, count=[1, 2, 0, 0], loss=[9.0, 1.0, None, None],
               eps_mse=[9.0, 0.5, None, None]),
          dict(step=20, bin_edges=edges, count=[0, 2, 4, 1], loss=[None, 3.0, 2.0, 9.0],
               eps_mse=[None, 1.5, 1.0, 9.0])]
  path = tmp_path / 'loss_vs_logsnr.jsonl'
  path.write_text('\n'.join(json.dumps(r).replace('null', 'NaN') for r in recs) + '\n')
  curve = analysis.read_training_curve(str(path))
  np.testing.assert_allclose(curve['logsnr'], [-1.0, 1.0])
  np.testing.assert_allclose(curve['loss'], [2.0, 2.0])
  np.testing.assert_allclose(curve['eps_mse'], [1.0, 1.0])
  np.testing.assert_allclose(curve['count'], [4, 4])
  assert curve['steps'] == (10, 20)
  assert analysis.read_training_curve(str(tmp_path / 'missing.jsonl')) is None


def test_notebook_runs_end_to_end_on_a_tiny_checkpoint(tmp_path):
  import nbformat
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager
  from nbclient import NotebookClient

  from sid2 import trainer
  from tests.train_utils import tiny_config

  workdir = str(tmp_path / 'run')
  cfg = tiny_config(total_steps=2, log_every=1, checkpoint_every=2, eval_every=1000,
                    **{'sampler.num_samples': 0})
  trainer.train_and_evaluate(cfg, workdir)
  assert os.path.isfile(os.path.join(workdir, 'loss_vs_logsnr.jsonl'))

  nb = nbformat.read(NOTEBOOK, as_version=4)
  for cell in nb.cells:  # stored without outputs
    assert cell.cell_type != 'code' or (not cell.outputs and cell.execution_count is None)
  idx = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
  assert len(idx) == 1 and "WORKDIR = 'runs/fmnist'" in nb.cells[idx[0]].source
  figure = str(tmp_path / 'figure.png')
  injected = (f'WORKDIR = {workdir!r}\nNUM_IMAGES = 8\nNUM_NOISE = 1\nNUM_LOGSNR = 8\nSPLIT = "test"\n'
              f'FIGURE = {figure!r}\n')
  nb.cells.insert(idx[0] + 1, nbformat.v4.new_code_cell(injected, metadata={'tags': ['injected-parameters']}))
  # The kernel: ipykernel's built-in 'python3' spec only (no kernel directories searched, so kernels installed
  # elsewhere on the machine cannot interfere); jupyter_client starts it with this interpreter (the venv's
  # python), and it inherits this process's environment (CPU, XLA flags, compilation cache).
  km = KernelManager(kernel_name='python3', kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
  assert km.kernel_spec.argv[0] in ('python', sys.executable)
  client = NotebookClient(nb, km=km, timeout=300, resources={'metadata': {'path': REPO}})
  client.execute()  # raises CellExecutionError if any cell fails

  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert f'{workdir}: step 2, uvit, loss_type {cfg.loss_type}' in text
  # The integral of loss / (-dlambda/dt) over lambda (EMA params, test images) estimates E_t[loss]; after two
  # steps the model has barely moved, so it must agree with the trainer's logged training loss.
  expected = float(text.split('over λ): ')[1].split()[0])
  with open(os.path.join(workdir, 'loss_vs_logsnr.jsonl')) as f:
    recs = [json.loads(line) for line in f]
  counts = np.array([r['count'] for r in recs], float)
  logged = np.nansum(np.array([r['loss'] for r in recs], float) * counts) / counts.sum()
  assert abs(expected - logged) < 0.25 * logged, (expected, logged)
  assert any('image/png' in o.get('data', {}) for o in outputs if o.output_type == 'display_data')
  assert os.path.getsize(figure) > 10_000


def test_conditioning_follows_the_train_step():
  cfg = _config()
  cfg.model.num_classes = 10
  images = np.zeros((3, 4, 4, 1), np.float32)
  labels = analysis.conditioning(cfg, dict(image=images, label=np.array([1, 2, 3])))
  np.testing.assert_array_equal(labels, [1, 2, 3])
  assert analysis.conditioning(cfg, dict(image=images, label=np.array([1, 2, 3])), null_labels=True) is None
  text = analysis.conditioning(cfg, dict(image=images, text=np.ones((3, 2, 5))))
  assert text['text'].shape == (3, 2, 5) and bool(np.all(text['keep']))
  cfg.model.num_classes = 0
  assert analysis.conditioning(cfg, dict(image=images, label=np.array([1, 2, 3]))) is None
