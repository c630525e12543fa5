"""`open_trace(path) -> Trace`: a trace opened once, everything about it resolved in one place.

Opening resolves, once: the format (the content decides, not the name: `SQLite format 3` -> nsys
SQLite export; gzip -> looked inside; `{` -> PyTorch-profiler JSON; a folder of `.parquet`/`.arrow`
tables -> nsys Parquet/Arrow export) and the exporter's version, the workload manifest (embedded or
beside the trace: analyze.read.manifest), the GPU (name, bandwidth, memory), the warnings. The
attribution runs once (analyze.attribute); the canonical tables (analyze.tables) are built when
first asked for. With a valid cache (analyze.cache) the tables come from it instead.

The trace is only ever read: SQLite through a read-only, immutable URI; a gzipped export is
decompressed to a private temporary file that goes when the Trace does.
"""
from __future__ import annotations

import atexit
import gzip
import os
import shutil
import stat
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dsocr_perf.analyze.errors import TraceError
from dsocr_perf.analyze.paths import check_input, is_table_folder
from dsocr_perf.dsocr import stages as S

SQLITE_HEADER = b"SQLite format 3\x00"
GZIP_MAGIC = b"\x1f\x8b"
HINT = "give an nsys SQLite export (`nsys export --type sqlite`) or a PyTorch profiler trace (.json / .json.gz)"


@dataclass
class Gpu:
    name: str | None = None
    sm_count: int | None = None
    clock_hz: int | None = None
    memory_bandwidth_Bps: int | None = None
    total_memory: int | None = None


@dataclass
class Totals:
    kernels: int
    kernel_ns: int            # all kernel time in the trace
    attributed_ns: int        # kernel time launched inside some range
    gpu_ops: int
    gpu_op_ns: int            # kernels, memcpys and memsets
    ranges: int
    first_ns: int | None      # first GPU op start, last GPU op end
    last_ns: int | None


@dataclass
class Trace:
    path: Path
    format: str               # 'sqlite' | 'sqlite.gz' | 'parquet' | 'json' | 'json.gz'
    source: str               # 'nsys' | 'kineto'
    version: str | None       # the exporter's version (nsys EXPORT_PRODUCT_VERSION)
    manifest: dict | None
    manifest_source: str | None
    gpu: Gpu
    warnings: list[str]
    totals: Totals
    tables: object            # analyze.tables.Tables or analyze.cache.CachedTables
    meta: dict = field(default_factory=dict)
    cache_key: str | None = None   # analyze.cache.key_of the trace before it was read
    _con: object = field(default=None, repr=False)

    def table(self, name: str):
        """A canonical table as Arrow (see analyze.tables)."""
        return self.tables.get(name)

    def polars(self, name: str):
        import polars as pl

        return pl.from_arrow(self.table(name))

    @property
    def con(self):
        """One sandboxed connection with every view, made on first use (for the outputs' own SQL)."""
        if self._con is None:
            self._con = self.sandbox()
        return self._con

    def sandbox(self, query: str | None = None):
        """A sandboxed DuckDB connection (analyze.sql) with the views `query` names (all without one)."""
        from dsocr_perf.analyze import sql

        wanted = sql.referenced(query, sql.VIEWS) if query is not None else set(sql.VIEWS)
        if query is None and self.manifest is None:
            wanted.discard("decode_model")
        if hasattr(self.tables, "connection"):          # a cache: its tables are already in DuckDB
            con = self.tables.connection()
            if "decode_model" in wanted:
                con.register("decode_model", self.decode_model(strict=query is not None))
            if not getattr(self.tables, "locked", False):
                sql.lock(con)
                self.tables.locked = True
            return con
        tables = {}
        for name in sorted(wanted):
            if name == "kernels" and query is not None and not sql.needs_kernel_details(query):
                tables[name] = self.table("kernels_core")   # names and geometry are costly to read
            elif name == "decode_model":
                tables[name] = self.decode_model(strict=query is not None)
            elif name in sql.DEPENDS:
                tables.update({dep: self.table(dep) for dep in sql.DEPENDS[name]})
            elif name in self.tables.NAMES:
                tables[name] = self.table(name)
        return sql.sandbox(tables)

    def decode_model(self, strict: bool = False):
        """Analytic FLOPs and bytes per decode step and decoder layer of the recorded workload; with
        `strict` (a query names the view) a manifest the model cannot use is an error, not 0 rows."""
        import pyarrow as pa

        from dsocr_perf.analyze.metrics.flops import DECODE_MODEL_SCHEMA, MANIFEST_ERRORS, decode_model_rows

        if self.manifest is None:
            raise TraceError(f"{self.path} carries no dsocr manifest, so there is no decode_model view; put the "
                             "capture's manifest beside the trace as NAME.json, or query the other views")
        try:
            rows = decode_model_rows(self.manifest)
        except MANIFEST_ERRORS as e:
            if strict:
                raise TraceError(f"{self.path}: its manifest ({self.manifest_source}) cannot give the decode_model "
                                 f"view ({' '.join(str(e).split())[:200]}); fix the manifest, or query the other "
                                 "views") from None
            rows = []
        schema = pa.schema(DECODE_MODEL_SCHEMA)
        return pa.Table.from_pylist(rows, schema) if rows else schema.empty_table()

    @property
    def is_dsocr(self) -> bool:
        """The trace has DeepSeek-OCR stage ranges."""
        return any(n.split(":", 1)[-1] in S.REPORTED_STAGES for n in self.range_names())

    def range_names(self) -> list[str]:
        return self.tables.range_name_list()


def sniff(path: Path) -> str:
    """'sqlite' | 'sqlite.gz' | 'json' | 'json.gz' | 'parquet', or TraceError."""
    check_input(path)
    if path.is_dir():
        if is_table_folder(path):
            return "parquet"
        raise TraceError(f"{path} is a folder without nsys tables (StringIds.parquet); {HINT}, or an "
                         "`nsys export --type parquetdir` folder")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise TraceError(f"{path}: cannot read ({e.strerror}); check the file's permissions") from None
    if not head:
        raise TraceError(f"{path} is empty; {HINT}")
    if head.startswith(SQLITE_HEADER):
        return "sqlite"
    if head.startswith(GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as f:
                inner = f.read(64)
        except (OSError, EOFError, zlib.error) as e:
            raise TraceError(f"{path} is a damaged gzip file ({e}); copy it again") from None
        if inner.startswith(SQLITE_HEADER):
            return "sqlite.gz"
        if inner.lstrip()[:1] in (b"{", b"["):
            return "json.gz"
        raise TraceError(f"{path} is gzip but holds neither an SQLite export nor JSON; {HINT}")
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    raise TraceError(f"{path} is neither an SQLite database nor a JSON trace; {HINT}")


def open_trace(path, *, cache: bool = True, accounting: bool = True) -> Trace:
    """Open a trace (see the module docstring); `cache=False` neither reads nor writes the cache.
    `accounting=False`: the GPUs' idle time is not worked out beside the attribution (a query of
    kernels or ranges alone needs no wall-time accounting; it is worked out later if asked for)."""
    path = Path(path)
    fmt = sniff(path)
    if fmt == "sqlite":
        _check_no_wal(path)        # before the cache: its key does not see the -wal file
    if cache:
        from dsocr_perf.analyze import cache as C

        try:
            key = C.key_of(path)
        except OSError as e:
            raise TraceError(f"{path}: cannot read ({e.strerror or e}); check the file's permissions") from None
        cached = C.load(path, key)
        if cached is not None:
            facts, tables = cached
            return Trace(path=path, format=fmt, source=facts["source"], version=facts["version"],
                         manifest=facts["manifest"], manifest_source=facts["manifest_source"], gpu=Gpu(**facts["gpu"]),
                         warnings=facts["warnings"], totals=Totals(**facts["totals"]), tables=tables, meta=facts["meta"])
        trace = compute(path, fmt, accounting)
        trace.cache_key = key
        return trace
    return compute(path, fmt, accounting)


def compute(path: Path, fmt: str, accounting: bool = True) -> Trace:
    from dsocr_perf.analyze.accounting import idle_time
    from dsocr_perf.analyze.attribute import attribute
    from dsocr_perf.analyze.tables import Tables

    raw, open_source = read(path, fmt)
    _check_clock(path, raw)
    # the GPUs' idle time needs the raw tables only: a second thread works it out beside the
    # attribution (NumPy lets go of the interpreter lock in its loops; the machine has two cores)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsocr-idle") as pool:
        idle = pool.submit(idle_time, raw) if accounting else None
        try:
            att = attribute(raw)
        except ValueError as e:
            raise TraceError(f"{path}: {e}; it cannot be attributed: capture it again (or report it if the capture is "
                             "sound)") from None
        return _trace(path, fmt, raw, att, Tables(raw, att, open_source, idle.result() if idle else None))


def read(path: Path, fmt: str):
    """(Raw, a function opening the export again for lazy reads, or None)."""
    if fmt in ("json", "json.gz"):
        from dsocr_perf.analyze.read.kineto import read_kineto

        try:
            return read_kineto(path), None
        except (ValueError, UnicodeDecodeError) as e:
            raise TraceError(f"{path} is not a usable PyTorch profiler trace ({e}); export it again "
                             "(prof.export_chrome_trace)") from None
    from dsocr_perf.analyze.read.nsys import open_export, read_nsys

    target = _gunzipped(path) if fmt == "sqlite.gz" else _short_path(path) if fmt == "sqlite" else path
    opener, kind = open_export(target, str(path))
    return read_nsys(opener, str(path), kind), opener


def _check_no_wal(path: Path) -> None:
    """An export in WAL mode with a non-empty PATH-wal beside it has committed changes the file itself
    does not hold; a non-empty PATH-journal is a writer that crashed mid-transaction. The read-only,
    immutable open (which writes nothing beside the trace) sees neither, so its numbers would be
    wrong: refused."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
        wal, journal = Path(str(path) + "-wal"), Path(str(path) + "-journal")
        pending = len(header) == 20 and header[18] == 2 and wal.is_file() and wal.stat().st_size > 0
        hot = journal.is_file() and journal.stat().st_size > 0
    except OSError:
        return
    if hot:
        raise TraceError(f"{path} has a rollback journal beside it ({journal.name}): a program was writing it and "
                         "stopped mid-way; open it once with sqlite3 (which rolls the journal back) or export it "
                         "again, then run again")
    if pending:
        raise TraceError(f"{path} has changes in {wal.name} beside it that the file does not hold yet (SQLite WAL "
                         f"mode); fold them in first: sqlite3 {path} 'PRAGMA wal_checkpoint(TRUNCATE)' (or copy both "
                         "files and run that on the copy), then run again")


MAX_SPAN_NS = 1 << 46      # ~19.5 hours: what the engine's packed keys hold, and sums of times stay far from int64


def _check_clock(path: Path, raw) -> None:
    """Every timestamp of the trace within MAX_SPAN_NS of the others: a damaged export (a time near
    2**63, a clock jump) is refused with one line rather than overflowing sums into wrong numbers."""
    columns = (raw.ops.start, raw.ops.end, raw.calls.start, raw.calls.end,
               raw.nvtx.ranges.column("start_ns").to_numpy(), raw.nvtx.ranges.column("end_ns").to_numpy())
    present = [c for c in columns if len(c)]
    if not present:
        return
    lo, hi = min(int(c.min()) for c in present), max(int(c.max()) for c in present)
    if hi - lo >= MAX_SPAN_NS:
        raise TraceError(f"{path}: its timestamps span {(hi - lo) / 3.6e12:,.0f} hours ({lo} to {hi} ns), more than a "
                         "trace holds (19 h): the export is damaged; re-export it or capture again")


def _trace(path: Path, fmt: str, raw, att, tables) -> Trace:
    from dsocr_perf.analyze.read.manifest import find_manifest

    meta = dict(raw.meta)
    marks = raw.nvtx.marks
    embedded = meta.pop("manifest", None)
    manifest, source, manifest_warnings = find_manifest(
        path, zip(marks.column("ts_ns").to_pylist(), marks.column("domain").to_pylist(),
                  marks.column("name").to_pylist()), embedded)
    ops = raw.ops
    is_kernel = ops.kind == 0
    dur = ops.end - ops.start
    totals = Totals(kernels=int(is_kernel.sum()), kernel_ns=int(dur[is_kernel].sum()),
                    attributed_ns=att.attributed_ns, gpu_ops=len(ops),
                    gpu_op_ns=int(dur.sum()),
                    ranges=int(att.ranges.start.size), first_ns=int(ops.start.min()) if len(ops) else None,
                    last_ns=int(ops.end.max()) if len(ops) else None)
    warnings = raw.warnings + att.warnings + manifest_warnings + _content_warnings(raw, att)
    return Trace(path=path, format=fmt, source=raw.source, version=meta.get("EXPORT_PRODUCT_VERSION"),
                 manifest=manifest, manifest_source=source, gpu=_gpu(raw.gpus, manifest), warnings=warnings,
                 totals=totals, tables=tables, meta=meta)


def _gpu(gpus, manifest: dict | None) -> Gpu:
    rows = [r for r in gpus.to_pylist() if r.get("name")]
    if rows:
        r = rows[0]
        return Gpu(r["name"], r.get("sm_count"), r.get("clock_hz"), r.get("memory_bandwidth_Bps"),
                   r.get("total_memory"))
    env = (manifest or {}).get("environment") if isinstance(manifest, dict) else None
    name = env.get("gpu_name") if isinstance(env, dict) and isinstance(env.get("gpu_name"), str) else None
    return Gpu(name)


def _content_warnings(raw, att) -> list[str]:
    out = []
    ops, n_ranges = len(raw.ops), att.ranges.start.size
    if ops == 0:
        out.append("no GPU kernels in this trace: was CUDA traced? (nsys profile --trace=cuda,nvtx)")
    elif not int((raw.ops.kind == 0).sum()):
        out.append("no GPU kernels in this trace, only memcpy/memset operations: the kernel table is missing or "
                   "empty (re-export the report, or capture with `nsys profile --trace=cuda,nvtx`)")
    if n_ranges == 0 and raw.source == "kineto":
        out.append("no record_function ranges (user_annotation) in this trace: nothing to attribute kernels to, "
                   "showing kernels only (wrap the stages in torch.profiler.record_function)")
    elif n_ranges == 0:
        out.append("no NVTX ranges in this trace: nothing to attribute kernels to, showing kernels only "
                   "(capture with `nsys profile --trace=cuda,nvtx` and NVTX ranges in the program)")
    unlaunched = int((att.op_call < 0).sum())
    if ops and unlaunched:
        out.append(f"{unlaunched:,} of {ops:,} GPU operations have no launching API call in the trace (CUDA API "
                   "tracing off, or launched before the capture started); they are in no range")
    return out


def _gunzipped(path: Path) -> Path:
    """A gzipped export decompressed into a private temporary file, removed with the process (and,
    when the process was killed, by the next one: the file name carries the pid)."""
    _remove_orphans()
    fd, name = tempfile.mkstemp(suffix=".sqlite", prefix=f"dsocr-{os.getpid()}-")
    target = Path(name)
    os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
    try:
        with os.fdopen(fd, "wb") as dst, gzip.open(path, "rb") as src:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, EOFError, zlib.error) as e:
        target.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None and not isinstance(e, gzip.BadGzipFile):
            raise TraceError(f"cannot decompress {path} into {target.parent} ({e.strerror or e}); free some space "
                             "there or set TMPDIR") from None
        raise TraceError(f"{path}: cannot decompress ({e}); the gzip file is damaged, copy it again") from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    _TEMPORARY.append(target)
    return target


_TEMPORARY: list[Path] = []
SQLITE_MAX_PATH = 500   # SQLite opens no file whose absolute path (symlinks resolved) is over 512 bytes


def _short_path(path: Path) -> Path:
    """The export itself, or, when its path is too long for SQLite, a hard link to it in TMPDIR (same
    file, no copy), removed with the process."""
    if len(os.fsencode(os.path.realpath(path))) <= SQLITE_MAX_PATH:
        return path
    _remove_orphans()
    fd, name = tempfile.mkstemp(suffix=".sqlite", prefix=f"dsocr-{os.getpid()}-")
    os.close(fd)
    os.unlink(name)
    try:
        os.link(os.path.realpath(path), name)
    except OSError as e:
        raise TraceError(f"{path}: its path is longer than SQLite can open (512 bytes) and it cannot be linked from "
                         f"{tempfile.gettempdir()} ({e.strerror or e}); move the trace to a shorter path") from None
    _TEMPORARY.append(Path(name))
    return Path(name)


def _remove_orphans() -> None:
    """Decompressed exports left by processes that were killed (SIGKILL skips atexit)."""
    from dsocr_perf.analyze.cache import _process_exists

    for orphan in Path(tempfile.gettempdir()).glob("dsocr-*-*.sqlite"):
        try:
            pid = int(orphan.name.split("-")[1])
            if pid != os.getpid() and not _process_exists(pid) and orphan.stat().st_uid == os.getuid():
                orphan.unlink()
        except (ValueError, OSError):
            pass


def _remove_temporary() -> None:
    for path in _TEMPORARY:
        path.unlink(missing_ok=True)


atexit.register(_remove_temporary)
