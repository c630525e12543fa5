"""The analysis cache: derived from the trace, checked on every open, never trusted.

A command that reads more than the stage table (sql, kernels, report, ...) leaves, after printing its
answer, every canonical table in one DuckDB file under $XDG_CACHE_HOME/dsocr-perf/ (default
~/.cache/dsocr-perf/; never beside the trace), so that the next command on the same trace starts at
once. The stage table itself writes none (computing it is as fast as writing one) but reads one.

A cache is used only when all of these hold, else the trace is read again (and the cache rewritten):
- its key matches the trace now: cache format, size, mtime, ctime, inode and device, and a
  fingerprint of the content (first and last 64 KiB and 16 blocks between; for a Parquet folder,
  every file's name, size and times), so an edit that restores the timestamp still shows;
- it belongs to this user and only this user can write it (the file, not a symlink, in a folder
  only this user can write);
- it is the very file this tool wrote: its stamp (NAME.stamp beside it: inode, size, mtime and
  ctime of the cache file, recorded after the rename) still matches, so a cache edited, truncated,
  replaced or copied in from elsewhere is never read, whatever it holds;
- every table is there with the columns and the row count recorded when it was written.
It is opened read-only in the SQL sandbox (analyze.sql). It is written to a temporary file created
exclusively beside it and renamed when complete; temporary files of killed writers are removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dsocr_perf.analyze.paths import signals_held

CACHE_FORMAT = 1
BACKGROUND_OPS = 1_000_000
TABLES = ("kernels", "launches", "cuda_api", "ranges", "marks", "range_stats", "stages", "gpu_gaps", "gpu_metrics", "gpus",
          "meta", "_op_lane_inner", "_op_startend", "_range_ancestors")
STALE_TEMP_S = 3600
BLOCK = 64 << 10


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/dsocr-perf; a relative XDG_CACHE_HOME is ignored, as the XDG spec says (with
    XDG_CACHE_HOME=. the cache would land beside the trace)."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    return Path(base if os.path.isabs(base) else Path.home() / ".cache") / "dsocr-perf"


def cache_file(path: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:32]
    return cache_dir() / f"{digest}.duckdb"


def key_of(path: Path) -> str:
    """Everything that changes when the trace's content may have changed."""
    path = Path(path)
    if path.is_dir():
        parts = []
        for entry in sorted(path.iterdir()):
            st = entry.stat()
            parts.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}")
        return f"{CACHE_FORMAT}:dir:" + hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()
    st = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = st.st_size
        offsets = {0, max(0, size - BLOCK)} | {size * i // 17 for i in range(1, 17)}
        for offset in sorted(offsets):
            f.seek(offset)
            digest.update(f.read(BLOCK if offset in (0, max(0, size - BLOCK)) else 4096))
    return f"{CACHE_FORMAT}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}:{digest.hexdigest()}"


def _private(st: os.stat_result, kind) -> bool:
    """Owned by this user, writable by no one else, of the kind asked for (stat.S_ISREG / S_ISDIR)."""
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and kind(st.st_mode)


def _owned_by_me(file: Path) -> bool:
    """A regular file (not a symlink) that only this user can write, in a folder only this user can write."""
    return _private(os.lstat(file), stat.S_ISREG) and _private(os.stat(file.parent), stat.S_ISDIR)


def stamp_file(file: Path) -> Path:
    return file.with_suffix(".stamp")


def _stamp(file: Path) -> str:
    st = os.lstat(file)
    return f"{CACHE_FORMAT}:{st.st_ino}:{st.st_dev}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _is_ours(file: Path) -> bool:
    """The file this tool wrote and nothing since: its stamp matches (see the module docstring)."""
    stamp = stamp_file(file)
    if not _owned_by_me(file) or not _owned_by_me(stamp) or os.lstat(stamp).st_size > 256:
        return False
    return stamp.read_text(encoding="ascii", errors="replace") == _stamp(file)


def load(path: Path, key: str | None = None):
    """(facts, CachedTables) of a valid cache for the trace at `path` (whose key_of is `key`), or None."""
    file = cache_file(path)
    try:
        if file.parent.is_dir():
            _remove_stale_temporaries(file.parent)
        if not os.path.lexists(file) or not _is_ours(file):
            return None
        key = key or key_of(path)
    except (OSError, ValueError):
        return None
    import duckdb

    from dsocr_perf.analyze import sql

    try:
        con = duckdb.connect(str(file), read_only=True, config=sql.SANDBOX_CONFIG)
    except (duckdb.Error, OSError):
        return None
    try:
        rows = con.execute("SELECT key, facts, tables FROM _cache").fetchall()
        row = rows[0] if len(rows) == 1 else None
        if row is None or row[0] != key:
            con.close()
            return None
        facts, recorded = json.loads(row[1]), json.loads(row[2])
        if set(recorded) != set(TABLES) or not _intact(con, recorded):
            con.close()
            return None
    except (duckdb.Error, ValueError, TypeError, KeyError):
        con.close()
        return None
    return facts, CachedTables(con, facts)


def _intact(con, recorded: dict) -> bool:
    """Every table with the columns and rows recorded when it was written, and the kernel_ranges view."""
    columns: dict[str, list[str]] = {}
    for table, column in con.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = 'main' "
                                     "AND NOT internal ORDER BY table_name, column_index").fetchall():
        columns.setdefault(table, []).append(column)
    counts = " UNION ALL ".join(f"SELECT '{name}', count(*) FROM \"{name}\"" for name in recorded)
    rows = dict(con.execute(counts).fetchall())
    views = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'kernel_ranges'").fetchall()[0][0]
    return views == 1 and all(columns.get(name) == expected["columns"] and rows.get(name) == expected["rows"]
                              for name, expected in recorded.items())


class CachedTables:
    """The canonical tables of a cache file (read-only DuckDB connection)."""
    NAMES = TABLES

    def __init__(self, con, facts: dict):
        self.con, self.facts = con, facts
        self._arrow: dict = {}

    def get(self, name: str):
        if name == "ranges_core":
            return self.get("ranges").drop_columns(["payload"])
        if name not in self._arrow:
            self._arrow[name] = self.con.table(name).to_arrow_table()
        return self._arrow[name]

    def range_name_list(self) -> list[str]:
        return self.facts["range_names"]

    def gpu_busy_ns(self) -> int:
        return self.facts["gpu_busy_ns"]

    def connection(self):
        return self.con


def store_after_answer(trace) -> None:
    """Write the cache once a command has answered: at once for a small trace; for a big one (more
    than BACKGROUND_OPS GPU ops: ~10 s of writing per 10^6) from a detached process that opens the
    trace afresh (analyze.build_cache), so the command returns with its answer."""
    if isinstance(trace.tables, CachedTables):
        return
    if trace.totals.gpu_ops < BACKGROUND_OPS:
        store(trace)
        return
    folder = cache_dir()
    marker = building_marker(trace.path)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        pid = int(marker.read_text() or 0) if marker.exists() else 0
        if pid > 0 and _process_exists(pid):
            return                                   # a builder is at work already
        builder = subprocess.Popen([sys.executable, "-m", "dsocr_perf.analyze.build_cache", os.path.abspath(trace.path)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        marker.write_text(str(builder.pid))
    except (OSError, ValueError):
        pass


def building_marker(path: Path) -> Path:
    """While a detached builder writes the cache of `path`: this file, holding its process id."""
    return cache_dir() / f".{cache_file(path).stem}.building"


def store(trace) -> None:
    """Write every canonical table of `trace` to its cache file (best effort: a cache that cannot be
    written is skipped without a word; the answer was already given)."""
    if isinstance(trace.tables, CachedTables):
        return
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not _private(os.stat(folder), stat.S_ISDIR):    # others could swap files in it
            return
        _remove_stale_temporaries(folder)
        key = getattr(trace, "cache_key", None)    # the trace as it was when it was read
        if key is None or key != key_of(trace.path):  # it changed while it was analysed: a cache would lie
            return
    except OSError:
        return
    tmp = stamp_tmp = None
    try:   # from the moment the temporary name exists, every exit removes it (Ctrl-C and SIGTERM included)
        with signals_held():
            fd, name = tempfile.mkstemp(prefix=".dsocr-cache-", suffix=f".{os.getpid()}.tmp", dir=folder)
            tmp = Path(name)
            stamp_tmp = tmp.with_name(tmp.name.replace(".dsocr-cache-", ".dsocr-cache-stamp-", 1))
        os.close(fd)
        os.unlink(name)                 # DuckDB creates the file itself; the name stays ours
        _write(trace, tmp, key)
        os.chmod(tmp, 0o600)
        final = cache_file(trace.path)
        os.replace(tmp, final)
        fd = os.open(stamp_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(_stamp(final))
        os.replace(stamp_tmp, stamp_file(final))
    except Exception:  # noqa: BLE001 - the cache is optional; the answer was already printed
        pass
    finally:
        if tmp is not None:
            for leftover in (tmp, Path(str(tmp) + ".wal"), stamp_tmp):
                leftover.unlink(missing_ok=True)


def _write(trace, tmp: Path, key: str) -> None:
    import duckdb

    from dsocr_perf.analyze import sql

    con = duckdb.connect(str(tmp))
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(f"SET memory_limit = '{sql.MEMORY_LIMIT}'")
        recorded = {}
        for name in TABLES:
            table = trace.table(name)
            con.register("_source", table)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _source')
            con.unregister("_source")
            recorded[name] = {"columns": table.column_names, "rows": table.num_rows}
            trace.tables.forget(name)       # written: its memory goes before the next table is built
        con.execute(sql.KERNEL_RANGES)
        facts = {"source": trace.source, "version": trace.version, "manifest": trace.manifest,
                 "manifest_source": trace.manifest_source, "gpu": vars(trace.gpu), "warnings": trace.warnings,
                 "totals": vars(trace.totals), "meta": trace.meta, "range_names": trace.range_names(),
                 "gpu_busy_ns": trace.tables.gpu_busy_ns()}
        con.execute("CREATE TABLE _cache AS SELECT ? AS key, ? AS facts, ? AS tables, ? AS written",
                    [key, json.dumps(facts), json.dumps(recorded), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())])
        con.execute("CHECKPOINT")
    finally:
        con.close()


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of writers that were killed: their process is gone, or they are old."""
    now = time.time()
    for tmp in folder.glob(".dsocr-cache-*.tmp*"):
        try:
            pid = int(tmp.name.split(".tmp")[0].rsplit(".", 1)[-1])
        except ValueError:
            pid = None
        try:
            alive = pid is not None and pid != os.getpid() and _process_exists(pid)
            if not alive or now - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
