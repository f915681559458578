"""A slow, plain-Python permutohedral lattice written from the paper, as an
independent reference for the C++/CUDA kernels (float64, dict hash table).

Adams, Baek & Davis, "Fast High-Dimensional Filtering Using the Permutohedral
Lattice", Eurographics 2010, Sec. 3-4, in the standard form with d+1 blur
directions of [1/2, 1, 1/2] and the slice factor 1 / (1 + 2^-d).
"""

from __future__ import annotations

import numpy as np


def elevation_matrix(d: int) -> np.ndarray:
    """E (d+1 x d): column i is (1, .., 1, -(i+1), 0, .., 0)/sqrt((i+1)(i+2)), times sqrt(2/3)(d+1)."""
    e = np.zeros((d + 1, d))
    for i in range(d):
        e[: i + 1, i] = 1.0
        e[i + 1, i] = -(i + 1)
        e[:, i] /= np.sqrt((i + 1) * (i + 2))
    return e * np.sqrt(2.0 / 3.0) * (d + 1)


def enclosing_simplex(y: np.ndarray) -> tuple[list[tuple[int, ...]], list[float]]:
    """The d+1 vertices (full d+1 coordinates) and barycentric weights of point y on H_d."""
    d = len(y) - 1
    # Closest remainder-0 point, ties rounded down.
    v = y / (d + 1)
    down = np.floor(v)
    rem0 = (np.where(v - down > 0.5, down + 1, down) * (d + 1)).astype(int)
    excess = rem0.sum() // (d + 1)
    offsets = y - rem0
    order = np.argsort(-offsets, kind="stable")  # largest offset first
    rank = np.empty(d + 1, dtype=int)
    rank[order] = np.arange(d + 1)
    # Bring rem0 onto the hyperplane: shift the ranks, wrap those leaving 0..d.
    rank = rank + excess
    wrap_low, wrap_high = rank < 0, rank > d
    rank[wrap_low] += d + 1
    rem0[wrap_low] += d + 1
    rank[wrap_high] -= d + 1
    rem0[wrap_high] -= d + 1
    delta = np.empty(d + 1)
    delta[rank] = (y - rem0) / (d + 1)  # offsets sorted by rank, largest first
    weights = [1.0 + delta[d] - delta[0]] + [delta[d - k] - delta[d + 1 - k] for k in range(1, d + 1)]
    vertices = []
    for k in range(d + 1):
        vertices.append(tuple(int(rem0[i] + (k if rank[i] <= d - k else k - (d + 1))) for i in range(d + 1)))
    return vertices, weights


def lattice_filter(features: np.ndarray, values: np.ndarray) -> np.ndarray:
    """features [P, d], values [P, K] -> [P, K]."""
    p_count, d = features.shape
    elevated = features @ elevation_matrix(d).T
    lattice: dict[tuple[int, ...], np.ndarray] = {}
    located = []
    for p in range(p_count):
        vertices, weights = enclosing_simplex(elevated[p])
        located.append((vertices, weights))
        for vertex, weight in zip(vertices, weights):
            lattice.setdefault(vertex, np.zeros(values.shape[1]))
            lattice[vertex] = lattice[vertex] + weight * values[p]
    for direction in range(d + 1):
        step = np.full(d + 1, -1)
        step[direction] = d
        blurred = {}
        for point, value in lattice.items():
            before = tuple(np.array(point) - step)
            after = tuple(np.array(point) + step)
            zero = np.zeros_like(value)
            blurred[point] = value + 0.5 * (lattice.get(before, zero) + lattice.get(after, zero))
        lattice = blurred
    alpha = 1.0 / (1.0 + 2.0**-d)
    out = np.zeros_like(values, dtype=np.float64)
    for p, (vertices, weights) in enumerate(located):
        for vertex, weight in zip(vertices, weights):
            out[p] += alpha * weight * lattice[vertex]
    return out
