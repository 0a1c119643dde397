"""Image grids and conversions (images in [-1, 1], shape (N, C, H, W))."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1, upscale: int = 1) -> np.ndarray:
    """Tile images into one (H', W', C) uint8 array, ``nrow`` images per row."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(imgs):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    if upscale > 1:
        grid = grid.repeat(upscale, 0).repeat(upscale, 1)
    return grid


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None, upscale: int | None = None) -> Path:
    """Write an image grid PNG; small images are upscaled (nearest) to be visible."""
    from PIL import Image

    h = x.shape[-1]
    upscale = upscale or max(1, 64 // h)
    grid = make_grid(x, nrow, upscale=upscale)
    mode = "L" if grid.shape[-1] == 1 else "RGB"
    image = Image.fromarray(grid[..., 0] if mode == "L" else grid, mode=mode)
    return atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))
