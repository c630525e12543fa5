"""`Raw`: what every reader hands the engine, whatever the source (nsys SQLite or Parquet export,
PyTorch-profiler JSON). Big tables are NumPy columns (int64 unless noted), one row per event.

Conventions:
- times are integer nanoseconds on the trace's clock;
- `process` is a key unique per process in the trace (nsys: globalTid >> 24, which keeps the
  host and VM bits; Kineto: the pid); ops join their launching call on (process, correlation);
- `thread` is a key unique per thread in the trace (nsys: globalTid); ranges and calls share it;
- missing values are -1 in small-integer columns (device, stream, graph node, copy kind).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

KERNEL, MEMCPY, MEMSET = 0, 1, 2
STREAM_BITS = 40
TID_BITS = 24                 # nsys globalTid: ... | pid << 24 | tid
TID_MASK = (1 << TID_BITS) - 1
OP_KINDS = ("kernel", "memcpy", "memset")

# ENUM_CUDA_MEMCPY_OPER ids (identical in every export that has the enum); names as nsys >= 2024 prints them.
MEMCPY_KINDS = {
    0: "Unknown", 1: "Host-to-Device", 2: "Device-to-Host", 3: "Host-to-Array", 4: "Array-to-Host",
    5: "Array-to-Array", 6: "Array-to-Device", 7: "Device-to-Array", 8: "Device-to-Device",
    9: "Host-to-Host", 10: "Peer-to-Peer", 11: "Unified Host-to-Device", 12: "Unified Device-to-Host",
    13: "Unified Device-to-Device",
}
# Short direction names used in counts (`memcpy` keys of the JSON): HtoD, DtoH, DtoD, HtoH, PtoP, other.
MEMCPY_DIRECTIONS = {1: "HtoD", 2: "DtoH", 3: "HtoD", 4: "DtoH", 6: "DtoD", 7: "DtoD", 5: "DtoD", 8: "DtoD",
                     9: "HtoH", 10: "PtoP", 11: "HtoD", 12: "DtoH", 13: "DtoD"}


@dataclass
class GpuOps:
    """Kernels, then memcpys, then memsets; `op_id` = position."""
    start: np.ndarray
    end: np.ndarray
    kind: np.ndarray          # int8: KERNEL, MEMCPY, MEMSET
    process: np.ndarray       # -1 where the export has none
    correlation: np.ndarray   # -1 where the export has none
    stream_key: np.ndarray    # device << 40 | stream; -1 where unknown
    graph_node: np.ndarray    # -1: not a CUDA-graph node
    copy_kind: np.ndarray     # int8, memcpy rows: ENUM_CUDA_MEMCPY_OPER id; -1 elsewhere

    def __len__(self) -> int:
        return len(self.start)

    @property
    def device(self) -> np.ndarray:
        return np.where(self.stream_key >= 0, self.stream_key >> STREAM_BITS, -1)

    @property
    def stream(self) -> np.ndarray:
        return np.where(self.stream_key >= 0, self.stream_key & ((1 << STREAM_BITS) - 1), -1)

    @staticmethod
    def empty() -> "GpuOps":
        z = np.zeros(0, np.int64)
        return GpuOps(z, z, z.astype(np.int8), z, z, z, z, z.astype(np.int8))


@dataclass
class ApiCalls:
    """Every CUDA runtime and driver API call (not only launches: syncs, copies, mallocs too)."""
    start: np.ndarray
    end: np.ndarray
    process: np.ndarray
    thread: np.ndarray
    correlation: np.ndarray
    name_id: np.ndarray       # int32 index into `names`; -1 unknown
    names: list[str]          # API names without the `_vNNNN` suffix
    os_ids: tuple | None = None   # (pid, tid) where `thread` is no nsys globalTid (Kineto)

    def __len__(self) -> int:
        return len(self.start)

    @property
    def pid(self) -> np.ndarray:
        """OS process ids (nsys: from globalTid, computed when asked)."""
        return self.pid_of(slice(None))

    @property
    def tid(self) -> np.ndarray:
        return self.tid_of(slice(None))

    def pid_of(self, calls) -> np.ndarray:
        """The OS process ids of some calls (indexes or a slice)."""
        return self.os_ids[0][calls] if self.os_ids is not None else (self.thread[calls] >> TID_BITS) & TID_MASK

    def tid_of(self, calls) -> np.ndarray:
        return self.os_ids[1][calls] if self.os_ids is not None else self.thread[calls] & TID_MASK

    @staticmethod
    def empty() -> "ApiCalls":
        z = np.zeros(0, np.int64)
        return ApiCalls(z, z, z, z, z, z.astype(np.int32), [])


@dataclass
class Raw:
    source: str                       # 'nsys' | 'kineto'
    format: str                       # 'sqlite' | 'parquet' | 'kineto-json'
    gpu_ops: object                   # GpuOps, or a function returning them while a reader thread still reads
    calls: ApiCalls
    nvtx: object                      # analyze.read.nvtx.Nvtx (ranges and marks)
    sync_keys: np.ndarray             # (process << 32 | correlation) of NVIDIA's synchronisation records
    gpus: object                      # pyarrow Table: device, name, sm_count, clock_hz, memory_bandwidth_Bps, ...
    meta: list[tuple[str, str]]
    warnings: list[str] = field(default_factory=list)
    # op details (names, geometry, bytes) in op order, read only when a command needs them
    details: Callable[[], object] | None = None
    gpu_metrics: Callable[[], object] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ops(self) -> GpuOps:
        """The GPU ops; the first use waits for the reader thread (the engine asks after the calls and
        ranges: their work overlaps the read of the biggest table)."""
        with self._lock:
            if callable(self.gpu_ops):
                self.gpu_ops = self.gpu_ops()
            return self.gpu_ops


def valid_text(column):
    """Any Arrow column (chunked or not; text, binary, numbers, NULL) as one string Array whose every
    value is valid UTF-8: bytes that are not (a damaged or hostile export, a BLOB where text belongs)
    are replaced with U+FFFD instead of failing later, far from the file."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        column = column.cast(pa.string()) if column.type != pa.string() else column
        try:
            column.validate(full=True)
            return column
        except pa.ArrowInvalid:
            column = column.cast(pa.binary())
    return pa.array([None if v is None else v.decode("utf-8", "replace") for v in column.to_pylist()], pa.string())


def int_column(column):
    """Any Arrow column as int64 with NULL where a value is not an integer: text, a fractional or
    non-finite REAL, a number beyond int64 (a damaged export; SQLite keeps whatever a row holds). A
    column that mixes integers and text arrives as text: its integer-looking values are kept."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = column.type
    if kind == pa.int64():
        return column
    if pa.types.is_null(kind):
        return pa.nulls(len(column), pa.int64())
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        try:
            return column.cast(pa.int64())
        except pa.ArrowInvalid:            # uint64 beyond int64
            big = pc.greater(column, pa.scalar(np.iinfo(np.int64).max, kind))
            return pc.if_else(big, pa.scalar(None, kind), column).cast(pa.int64())
    if pa.types.is_floating(kind):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(values) & (np.abs(values) < 2.0 ** 63) & (values == np.floor(values))
        return pa.array(np.where(ok, values, 0).astype(np.int64), pa.int64(), mask=~ok)
    text = valid_text(column)
    integral = pc.fill_null(pc.match_substring_regex(text, r"^\s*-?[0-9]{1,18}\s*$"), False)
    return pc.if_else(integral, pc.utf8_trim_whitespace(text), pa.scalar(None, pa.string())).cast(pa.int64())
