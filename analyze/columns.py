"""Arrow columns to and from NumPy without pyarrow.compute (its import alone costs the stage table ~0.06 s)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def nullable(values: np.ndarray, dtype, mask: np.ndarray | None = None) -> pa.Array:
    """An Arrow array of `values`, NULL where `mask` (default: where the value is negative)."""
    if mask is None and values.size:
        low, high = int(values.min()), int(values.max())
        if low >= 0:
            return pa.array(values, dtype)             # no NULL: no copy where the types agree
        if high < 0:
            return pa.nulls(values.size, dtype)
    mask = values < 0 if mask is None else mask
    return pa.array(np.where(mask, 0, values), dtype, mask=mask if mask.any() else None)


def filled(column, fill: int) -> np.ndarray:
    """An integer column (Arrow, nullable) as NumPy, NULL -> `fill`."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not column.null_count:
        return column.to_numpy()
    start, n = column.offset, len(column)
    values = np.frombuffer(column.buffers()[1], column.type.to_pandas_dtype())[start:start + n]
    valid = np.unpackbits(np.frombuffer(column.buffers()[0], np.uint8), count=start + n, bitorder="little")[start:]
    return np.where(valid.astype(bool), values, fill)


def named_rows(column, names) -> np.ndarray:
    """The rows whose value (a string column, dictionary-encoded or not) is one of `names`."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        hit = np.array([v in names for v in column.dictionary.to_pylist()] + [False], bool)
        return np.flatnonzero(hit[filled(column.indices, -1)])
    return np.array([i for i, v in enumerate(column.to_pylist()) if v in names], np.int64)
