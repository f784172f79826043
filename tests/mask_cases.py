"""Random mask sets shared by the mask packing tests (torch / NumPy in test_postprocess_masks.py,
the CUDA encode kernel's host build in test_kernels_masks.py): empty masks, one pixel, noise over
the whole image, filled windows."""

from __future__ import annotations

import numpy as np


def random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """``bool[n, h, w]``, each mask one of four kinds drawn by ``rng``."""
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        kind = rng.integers(4)
        if kind == 0:
            continue  # empty
        if kind == 1:
            masks[i] = rng.random((h, w)) < rng.uniform(0.01, 0.9)
        elif kind == 2:
            masks[i, rng.integers(h), rng.integers(w)] = True  # one pixel
        else:
            y0, y1 = sorted(rng.integers(0, h + 1, 2))
            x0, x1 = sorted(rng.integers(0, w + 1, 2))
            masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
    return masks
