"""Input pipelines (`get_dataset`), chosen by `config.dataset.name`; `from sid2 import data` is the interface.

  core.py    the registry (`register_dataset`, `get_dataset`, `load_eval_images`), the in-memory pipeline
             (`InMemoryDataset`), Fashion-MNIST, tensorflow-datasets images, and the helpers that dataset
             modules share (`cfg_get`, `as_int`, `process_layout`, `check_state`); see its docstring
  video.py   'synthetic_video': bouncing shapes for the video U-ViT
  folder.py  'folder:<path>' / 'zip:<path>': your own images

video.py and folder.py import core only; this package imports all three and registers the built-in
datasets once, in that order, so they are known whenever sid2.data is imported. Plugins add more with
`register_dataset(prefix, builder)` (e.g. spectral's 'latents:<dir>').
"""
from sid2.data import core
from sid2.data import folder
from sid2.data import video
from sid2.data.core import DATASET_BUILDERS
from sid2.data.core import DATASETS
from sid2.data.core import DEFAULT_SHUFFLE_BUFFER
from sid2.data.core import FASHION_MNIST_CLASSES
from sid2.data.core import FASHION_MNIST_DIR
from sid2.data.core import FASHION_MNIST_RES
from sid2.data.core import FASHION_MNIST_SPLITS
from sid2.data.core import InMemoryDataset
from sid2.data.core import TfdsDataset
from sid2.data.core import as_int
from sid2.data.core import cfg_get
from sid2.data.core import check_state
from sid2.data.core import epoch_permutation
from sid2.data.core import fit_fashion_resolution
from sid2.data.core import get_dataset
from sid2.data.core import load_eval_images
from sid2.data.core import load_fashion_mnist
from sid2.data.core import process_layout
from sid2.data.core import read_idx
from sid2.data.core import register_dataset
from sid2.data.core import resize_and_center_crop
from sid2.data.core import scale_uint8

video.register()
folder.register()
