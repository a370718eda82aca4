"""Image grids and PNG writing for samples (PIL; values in [-1, 1])."""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images):
  """[-1, 1] floats -> uint8 with the x/127.5 - 1 convention inverted (round to nearest)."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images, ncols=None, pad=1):
  """[N, H, W, C] in [-1, 1] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] grid (C = 1 or 3).

  Videos [N, T, H, W, C]: one row per video, its T frames side by side (ncols is then T).
  """
  if np.ndim(images) == 5:
    n, t = np.shape(images)[:2]
    return image_grid(np.reshape(images, (n * t,) + np.shape(images)[2:]), ncols=t, pad=pad)
  images = to_uint8(images)
  n, h, w, c = images.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return grid


def save_image_grid(images, path, ncols=None):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  grid = image_grid(images, ncols)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  return path
