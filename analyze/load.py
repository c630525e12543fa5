"""open_trace(path) -> Trace: any nsys SQLite export or PyTorch-profiler JSON, as DuckDB views.

The content decides the reader (not the file name): `SQLite format 3` -> nsys export; gzip -> looked
inside (a gzipped export is decompressed to a temporary file for loading, gzipped JSON goes to the Kineto
reader); `{` -> Kineto JSON. Loading and attribution run once per trace: the resulting tables are
kept in a DuckDB file (the cache) beside the trace, `<trace>.dsocr-cache.duckdb`, or under
$XDG_CACHE_HOME/dsocr-perf/ (default ~/.cache/dsocr-perf) when the trace's folder is read-only.
The cache is valid while the trace's size and mtime and CACHE_FORMAT match; it is written under a
temporary name and renamed, so a crash never leaves a half cache behind.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from dsocr_perf.analyze.errors import TraceError
from dsocr_perf.dsocr.stages import DOMAIN as MANIFEST_DOMAIN
from dsocr_perf.dsocr.stages import MANIFEST_SCHEMA

CACHE_FORMAT = 3  # bump whenever the tables or their meaning change
CACHE_SUFFIX = ".dsocr-cache.duckdb"
SQLITE_HEADER = b"SQLite format 3\x00"
GZIP_MAGIC = b"\x1f\x8b"
MEMORY_LIMIT = "3GB"

HINT = "give an nsys SQLite export (`nsys export --type sqlite`) or a PyTorch profiler trace (.json / .json.gz)"


STAGE_COLUMNS = ("name", "instances", "inclusive_ns", "exclusive_ns", "busy_ns", "span_ns", "cpu_ns",
                 "kernels", "gpu_ops", "launches")


@dataclass
class StageFacts:
    """Everything the stage table prints, without SQL: from the sweep directly, or read once from
    the DuckDB views."""
    stages: list[dict]          # the `stages` rows (STAGE_COLUMNS + depth), by first range
    ranges: int                 # range instances
    ops: int                    # GPU operations
    kernels: int
    kernel_ns: int              # all kernel time
    attributed_ns: int          # kernel time inside some range
    gpus: list[tuple]           # (device, name, memory bandwidth B/s, total memory), by device


@dataclass
class Trace:
    connection: object          # duckdb.DuckDBPyConnection with the canonical views (see `con`)
    path: Path
    source: str                 # 'nsys' | 'kineto'
    warnings: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    manifest: dict | None = None
    cache_path: Path | None = None
    connect: object = None      # builds `connection` on first use (the sweep's traces)
    facts: StageFacts | None = None

    @property
    def con(self):
        if self.connection is None and self.connect is not None:
            self.connection = self.connect()
        return self.connection

    def sql(self, query: str, params=None):
        return self.con.execute(query, params or [])

    def stage_facts(self) -> StageFacts:
        if self.facts is None:
            self.facts = _facts_from_views(self.con)
        return self.facts


def _facts_from_views(con) -> StageFacts:
    rows = con.execute(f"SELECT {', '.join(STAGE_COLUMNS)}, depth FROM stages ORDER BY first_range_id").fetchall()
    ops, kernels, kernel_ns, attributed = con.execute("""
        SELECT count(*), count(*) FILTER (WHERE kind = 0),
               coalesce(sum(end_ns - start_ns) FILTER (WHERE kind = 0), 0)::BIGINT,
               coalesce(sum(end_ns - start_ns) FILTER (
                   WHERE kind = 0 AND (pp_range IS NOT NULL OR op_id IN (SELECT op_id FROM _se_direct))), 0)::BIGINT
        FROM _ops""").fetchone()
    return StageFacts(stages=[dict(zip(STAGE_COLUMNS + ("depth",), r)) for r in rows],
                      ranges=con.execute("SELECT count(*) FROM _ranges").fetchone()[0], ops=ops, kernels=kernels,
                      kernel_ns=kernel_ns, attributed_ns=attributed,
                      gpus=con.execute("SELECT device, name, memory_bandwidth_Bps, total_memory FROM gpus "
                                       "ORDER BY device").fetchall())


def open_trace(path, *, cache: bool = True, lean: bool = False, engine: str = "auto") -> Trace:
    """Open a trace with its canonical views, from the cache when it has a valid one.

    `lean`: only what the stage table needs (`stages`, `_ops`, gpus, meta; no kernel names,
    categories, launch geometry, nor the `kernels`/`kernel_ranges` views), for the fastest stage
    table: without a valid cache an nsys export goes through the NumPy sweep (analyze.sweep), which
    writes no cache (building one costs ~3x the sweep), unless engine='duckdb' or the sweep does not
    model the trace; then the full load runs (and is cached when `cache`)."""
    path = Path(path)
    kind = sniff(path)
    cache_file = cache_path_for(path) if cache else None
    key = _cache_key(path)
    if cache_file is not None:
        trace = _open_cached(path, cache_file, key)
        if trace is not None:
            return trace

    if lean and engine != "duckdb" and kind in ("sqlite", "sqlite.gz"):
        trace = _open_swept(path, kind)
        if trace is not None:
            return trace
    lean = lean and cache_file is None

    import duckdb

    if cache_file is None:
        db = duckdb.connect(":memory:")
        _configure(db)
        _build(db, path, kind, cache=False, lean=lean)
        return _trace(db, path, None)

    tmp = cache_file.with_name(cache_file.name + f".tmp{os.getpid()}")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        db = duckdb.connect(str(tmp))
    except (OSError, duckdb.Error):  # nowhere to write: work in memory
        db = duckdb.connect(":memory:")
        _configure(db)
        _build(db, path, kind, cache=False)
        return _trace(db, path, None)
    try:
        _configure(db)
        _build(db, path, kind, cache=True)
        db.execute("CREATE TABLE _cache AS SELECT ? AS key, ? AS trace", [key, str(path.resolve())])
        db.execute("CHECKPOINT")
        db.close()
        os.replace(tmp, cache_file)
    except BaseException:
        db.close()
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".wal").unlink(missing_ok=True)
        raise
    trace = _open_cached(path, cache_file, key)
    if trace is None:
        raise TraceError(f"the analysis cache {cache_file} could not be reopened; run with --no-cache")
    return trace


def _open_swept(path: Path, kind: str) -> Trace | None:
    """The stage table by analyze.sweep, or None when the trace needs the DuckDB engine. DuckDB is
    not even imported unless something asks for `trace.con`."""
    from dsocr_perf.analyze import sweep

    sqlite_path = _gunzipped(path) if kind == "sqlite.gz" else path
    try:
        readers = sweep.Readers(sqlite_path)  # the two big tables, in two threads
        try:
            small = sweep.read_small_tables(sqlite_path)  # meanwhile here: NVTX, gpus, meta
            swept = sweep.sweep(readers, small)
        finally:
            readers.join_quietly()
    except sweep.Unsupported:
        return None
    finally:
        if kind == "sqlite.gz":
            sqlite_path.unlink(missing_ok=True)
    facts = sweep.stage_facts(swept)
    warnings = small.warnings + content_warnings(facts.ops, facts.ranges, sweep.unlaunched(swept), kineto=False)
    marks = small.nvtx.marks
    manifest = manifest_of(zip(marks.column("ts_ns").to_pylist(), marks.column("domain").to_pylist(),
                               marks.column("name").to_pylist()))
    meta = dict(small.meta)
    if manifest is not None:
        meta["manifest"] = json.dumps(manifest)

    def connect():
        import duckdb

        db = duckdb.connect(":memory:")
        _configure(db)
        db.execute("SET threads = 1")  # it holds only small tables and Arrow views
        sweep.store(db, swept)
        if manifest is not None:
            db.execute("INSERT INTO meta VALUES ('manifest', ?)", [meta["manifest"]])
        if warnings:
            db.executemany("INSERT INTO meta VALUES ('warning', ?)", [(w,) for w in warnings])
        return db

    return Trace(connection=None, connect=connect, path=path, source="nsys", warnings=warnings, meta=meta,
                 manifest=manifest, facts=facts)


def _configure(db) -> None:
    """Memory: DuckDB spills to disk beyond MEMORY_LIMIT, so 1e7 kernels stay within ~4 GB RSS."""
    import tempfile

    # DuckDB draws a progress bar on stdout for statements over 2 s: it would corrupt --json / --csv.
    db.execute("SET enable_progress_bar = false")
    db.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    db.execute(f"SET temp_directory = '{Path(tempfile.gettempdir()) / 'dsocr-duckdb-spill'}'")
    db.execute("SET preserve_insertion_order = false")


def sniff(path: Path) -> str:
    """'sqlite' | 'sqlite.gz' | 'json' | 'json.gz', or TraceError for anything else."""
    if not path.exists():
        raise TraceError(f"{path}: no such file; {HINT}")
    if path.is_dir():
        raise TraceError(f"{path} is a directory; {HINT}")
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
        except (OSError, EOFError) as e:
            raise TraceError(f"{path} is a damaged gzip file ({e}); copy it again") from None
        if inner.startswith(SQLITE_HEADER):
            return "sqlite.gz"
        if inner.lstrip()[:1] in (b"{", b"["):
            return "json.gz"
        raise TraceError(f"{path} is gzip but holds neither an SQLite export nor JSON; {HINT}")
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    raise TraceError(f"{path} is neither an SQLite database nor a JSON trace; {HINT}")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsocr-perf"


def cache_path_for(path: Path) -> Path:
    """Beside the trace when its folder is writable, else in the user cache folder."""
    path = path.resolve()
    if _writable(path.parent):
        return path.with_name(path.name + CACHE_SUFFIX)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    return cache_dir() / f"{digest}-{path.name}{CACHE_SUFFIX}"


def _writable(folder: Path) -> bool:
    """Writable for us AND meant to be written: root passes os.access everywhere, so a folder whose
    mode has no write bit at all (like ../shared) counts as read-only too."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def _cache_key(path: Path) -> str:
    st = path.stat()
    return f"{CACHE_FORMAT}:{st.st_size}:{st.st_mtime_ns}"


def _open_cached(path: Path, cache_file: Path, key: str) -> Trace | None:
    if not cache_file.exists():
        return None
    import duckdb

    try:
        db = duckdb.connect(str(cache_file), read_only=True)
        db.execute("SET enable_progress_bar = false")
        row = db.execute("SELECT key FROM _cache").fetchone()
    except duckdb.Error:
        return None
    if row is None or row[0] != key:
        db.close()
        return None
    return _trace(db, path, cache_file)


def _trace(db, path: Path, cache_file: Path | None) -> Trace:
    meta = dict(db.execute("SELECT key, value FROM meta WHERE key NOT IN ('warning')").fetchall())
    warnings = [w for (w,) in db.execute("SELECT value FROM meta WHERE key = 'warning' ORDER BY rowid").fetchall()]
    manifest = json.loads(meta["manifest"]) if "manifest" in meta else None
    return Trace(connection=db, path=path, source=meta.get("source", "nsys"), warnings=warnings, meta=meta,
                 manifest=manifest, cache_path=cache_file)


def _build(db, path: Path, kind: str, cache: bool, lean: bool = False) -> None:
    """Load the trace's base tables into `db`, derive the canonical views, record warnings in meta."""
    from dsocr_perf.analyze import attribution

    warnings: list[str] = []
    if kind in ("sqlite", "sqlite.gz"):
        from dsocr_perf.analyze.nsys import load_nsys

        sqlite_path = _gunzipped(path) if kind == "sqlite.gz" else path
        try:
            load_nsys(db, sqlite_path, warnings, lean=lean, meanwhile=attribution.derive_ranges)
        finally:
            if kind == "sqlite.gz":  # the cache holds everything; the decompressed copy is not kept
                sqlite_path.unlink(missing_ok=True)
    else:
        _load_kineto(db, path, warnings)
    attribution.name_tables(db, categories=not lean)
    warnings += attribution.derive(db)
    warnings += _content_warnings(db)
    manifest = _manifest(db)
    if manifest is not None:
        db.execute("INSERT INTO meta VALUES ('manifest', ?)", [json.dumps(manifest)])
    if warnings:
        db.executemany("INSERT INTO meta VALUES ('warning', ?)", [(w,) for w in warnings])
    if cache:
        # In the cache the kernels view becomes a table: later queries skip the name joins
        # (`select count(*) from kernels` at 1e7: 1.0 s as a view); DuckDB compresses the names.
        db.execute("CREATE TABLE _kernels AS SELECT * FROM kernels")
        db.execute("DROP VIEW kernels")
        db.execute("ALTER TABLE _kernels RENAME TO kernels")


def _gunzipped(path: Path) -> Path:
    """Decompress a gzipped export to a temporary file (deleted after loading)."""
    import shutil
    import tempfile

    fd, name = tempfile.mkstemp(suffix=".sqlite", prefix="dsocr-")
    os.close(fd)
    target = Path(name)
    try:
        with gzip.open(path, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, EOFError) as e:
        target.unlink(missing_ok=True)
        raise TraceError(f"{path}: cannot decompress ({e}); the gzip file is damaged, copy it again") from None
    return target


def _load_kineto(db, path: Path, warnings: list[str]) -> None:
    try:
        from dsocr_perf.analyze.kineto import load_kineto
    except ImportError:
        raise TraceError(f"{path} is a JSON trace, and reading PyTorch profiler traces is not available yet; "
                         "give an nsys SQLite export") from None
    from dsocr_perf.analyze import schema

    try:
        tables = load_kineto(path)
    except TraceError:
        raise
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise TraceError(f"{path} is not valid JSON ({e}); re-save the profiler trace "
                         "(prof.export_chrome_trace)") from None
    if isinstance(tables, tuple):  # (tables, warnings) is accepted too
        tables, extra = tables
        warnings += list(extra)
    base = schema.normalize(tables, source=f"kineto reader ({path.name})")
    load_base_tables(db, base, source="kineto")


def load_base_tables(db, base: dict, source: str) -> None:
    """Base tables (analyze.schema, Arrow) -> the DuckDB layout the nsys reader produces directly:
    names interned into `strings`, GPU-op kinds as codes 0/1/2."""
    for name, table in base.items():
        db.register(f"_arrow_{name}", table)
    db.execute("""
        CREATE OR REPLACE TABLE strings AS
        SELECT CAST(row_number() OVER (ORDER BY value) AS BIGINT) AS id, value FROM (
            SELECT name AS value FROM _arrow_kernels UNION SELECT short_name FROM _arrow_kernels
            UNION SELECT api_name FROM _arrow_launches) WHERE value IS NOT NULL;

        CREATE OR REPLACE TABLE base_ops AS
        SELECT k.op_id, CAST(CASE k.kind WHEN 'kernel' THEN 0 WHEN 'memcpy' THEN 1 ELSE 2 END AS UTINYINT) AS kind,
               k.start_ns, k.end_ns, k.device, k.stream, k.gpid, k.pid, k.correlation,
               n.id AS name_id, coalesce(s.id, n.id) AS short_name_id,
               k.grid_x, k.grid_y, k.grid_z, k.block_x, k.block_y, k.block_z, k.registers, k.shared_mem,
               k.bytes, k.graph_node
        FROM _arrow_kernels k LEFT JOIN strings n ON n.value = k.name LEFT JOIN strings s ON s.value = k.short_name;

        CREATE OR REPLACE TABLE base_launches AS
        SELECT l.correlation, l.gpid, l.pid, l.tid, l.start_ns, l.end_ns, a.id AS api_id
        FROM _arrow_launches l LEFT JOIN strings a ON a.value = l.api_name;

        CREATE OR REPLACE TABLE base_ranges AS SELECT * FROM _arrow_ranges;
        UPDATE base_ranges SET end_ns = (
            SELECT greatest(max(start_ns), max(end_ns)) FROM (
                SELECT start_ns, end_ns FROM _arrow_ranges UNION ALL SELECT ts_ns, ts_ns FROM _arrow_marks))
        WHERE end_ns IS NULL;
        CREATE OR REPLACE TABLE base_marks AS SELECT * FROM _arrow_marks;
        CREATE OR REPLACE TABLE gpus AS SELECT * FROM _arrow_gpus;
        CREATE OR REPLACE TABLE meta AS SELECT * FROM _arrow_meta;
    """)
    db.execute("INSERT INTO meta VALUES ('source', ?)", [source])
    for name in base:
        db.unregister(f"_arrow_{name}")


def _content_warnings(db) -> list[str]:
    ops = db.execute("SELECT count(*) FROM _ops").fetchone()[0]
    ranges = db.execute("SELECT count(*) FROM base_ranges").fetchone()[0]
    kineto = db.execute("SELECT count(*) FROM meta WHERE key = 'source' AND value = 'kineto'").fetchone()[0] > 0
    unlaunched = db.execute("SELECT count(*) FROM _ops WHERE tid IS NULL").fetchone()[0] if ops else 0
    return content_warnings(ops, ranges, unlaunched, kineto)


def content_warnings(ops: int, ranges: int, unlaunched: int, kineto: bool) -> list[str]:
    out = []
    if ops == 0:
        out.append("no GPU kernels in this trace: was CUDA traced? (nsys profile --trace=cuda,nvtx)")
    if ranges == 0 and kineto:
        out.append("no record_function ranges (user_annotation) in this trace: nothing to attribute kernels to, "
                   "showing kernels only (wrap the stages in torch.profiler.record_function)")
    elif ranges == 0:
        out.append("no NVTX ranges in this trace: nothing to attribute kernels to, showing kernels only "
                   "(capture with `nsys profile --trace=cuda,nvtx` and NVTX ranges in the program)")
    if ops and unlaunched:
        out.append(f"{unlaunched} of {ops} GPU operations have no launching API call in the trace "
                   "(CUDA API tracing off, or launched before the capture started); they are in no range")
    return out


def _manifest(db) -> dict | None:
    return manifest_of(db.execute("SELECT ts_ns, domain, name FROM base_marks").fetchall())


def manifest_of(marks) -> dict | None:
    """The dsocr workload manifest among (ts_ns, domain, name) marks: the first JSON mark in domain
    dsocr with "schema": "dsocr-manifest/1"."""
    prefix = MANIFEST_DOMAIN + ":{"
    for _, domain, name in sorted((m for m in marks if m[1] == MANIFEST_DOMAIN and m[2] and m[2].startswith(prefix)),
                                  key=lambda m: m[0]):
        try:
            value = json.loads(name[len(MANIFEST_DOMAIN) + 1:])
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("schema") == MANIFEST_SCHEMA:
            return value
    return None
