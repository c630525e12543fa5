"""Dense indexes of integer keys without sorting millions of them.

The big tables key their rows by process, thread, stream or string id: a few distinct values (or
small non-negative ids) repeated over 10^6-10^7 rows. `np.unique` sorts them all (~20 ms per 10^6
rows); comparing against a handful of values, or counting small ids, takes ~1 ms.
"""
from __future__ import annotations

import numpy as np

FEW = 16            # up to this many distinct values: found by comparisons


def dense_index(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, per value its index among them): np.unique(values, return_inverse=True)."""
    if values.size:
        guess = np.unique(values[:: max(1, values.size // 2048)])
        if guess.size <= FEW:
            index, found = _positions(values, guess)
            if found:
                return guess, index
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi < 4 * values.size + 4096:        # small ids: counted
            present = np.zeros(hi + 1, bool)
            present[values] = True
            rank = np.cumsum(present) - 1
            return np.flatnonzero(present).astype(values.dtype, copy=False), rank[values]
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct, inverse.reshape(-1)


def index_in(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Per value: its position in the sorted array `table`, -1 where absent."""
    if not table.size or not values.size:
        return np.full(values.size, -1, np.int64)
    if table.size <= FEW:
        return _positions(values, table)[0]
    pos = np.minimum(np.searchsorted(table, values), table.size - 1)
    return np.where(table[pos] == values, pos, -1)


def _positions(values: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, bool]:
    """(per value its position in the small array `table`, -1 where absent; whether all were found)."""
    plus_one = np.zeros(values.size, np.int8)
    for i, v in enumerate(table.tolist()):
        plus_one += (values == v).view(np.int8) * np.int8(i + 1)
    found = bool(plus_one.all())
    index = plus_one.astype(np.int64)
    index -= 1
    return index, found
