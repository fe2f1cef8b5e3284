"""JPEG's 8x8 block DCT as one matrix, numpy only (so torch-free code such as the input analysis
can use it as the JPEG simulation of the degradations does)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["block_dct_matrix"]


def block_dct_matrix() -> np.ndarray:
    """The 8x8 block DCT as one (64, 64) float64 matrix on row-major flattened blocks: kron(D, D)
    with D the orthonormal 8-point DCT-II, because JPEG's 2-D DCT is D @ block @ D.T. One matmul
    over all blocks is much faster than two small per-block products."""
    k, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    d = np.sqrt(2 / 8) * np.cos((2 * n + 1) * k * math.pi / 16)
    d[0] /= math.sqrt(2)
    return np.kron(d, d)
