"""Integer keys of the big tables: dense indexes without sorting millions of them, and passes in chunks.

The big tables key their rows by process, thread, stream or string id: a few distinct values (or
small non-negative ids) repeated over 10^6-10^7 rows. `np.unique` sorts them all (~20 ms per 10^6
rows); comparing against a handful of values, or counting small ids, takes ~1 ms.

Passes over 10^7 rows go `CHUNK` rows at a time: their temporaries stay a few MB, are reused by the
allocator instead of being faulted in afresh (which costs more than the arithmetic on this kind of
machine), and the peak memory stays that of the tables themselves.
"""
from __future__ import annotations

import numpy as np

FEW = 16            # up to this many distinct values: found by comparisons
CHUNK = 1 << 18     # rows per step of a pass over a big table
INDEX = np.int32    # row indexes into the big tables (up to 2**31 rows)


def spans(n: int) -> list[slice]:
    """Slices of at most CHUNK rows covering range(n)."""
    return [slice(lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK)]


def distinct(values: np.ndarray) -> np.ndarray:
    """np.unique(values), from a sample when every value is among a few sampled ones."""
    if values.size:
        guess = np.unique(values[:: max(1, values.size // 2048)])
        if guess.size <= FEW and all(_positions(values[s], guess)[1] for s in spans(values.size)):
            return guess
    return np.unique(values)


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
    unique, inverse = np.unique(values, return_inverse=True)
    return unique, inverse.reshape(-1)


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


def accumulate(total: np.ndarray, group: np.ndarray, weights: np.ndarray | None = None) -> None:
    """total[g] += weight (1 without weights) for every g of `group`: counted over the window of
    groups the rows touch (rows in time order touch a few neighbouring ranges), or added one by one
    where they are few for their window (calls of several threads, memcpy calls)."""
    if not group.size:
        return
    lo, hi = int(group.min()), int(group.max()) + 1
    if hi - lo > 4 * group.size:
        # weights in the total's own dtype: a cast inside ufunc.at takes its slow path (12x here)
        np.add.at(total, group, 1 if weights is None else weights.astype(total.dtype, copy=False))
        return
    counts = np.bincount(group - lo, weights=weights, minlength=hi - lo)
    np.add(total[lo:hi], counts, out=total[lo:hi], casting="unsafe")
