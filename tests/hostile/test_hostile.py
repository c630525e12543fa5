"""The hostile corpus (issue 14): every way a user, a damaged file or a signal can go wrong, each case
asserting the documented exit status, one `Error:` line that says what to do (no traceback, ever),
its inputs unchanged byte for byte with nothing written beside them, and, where the input is valid,
the numbers (against the hand-written truth of hostile_gen, or the same trace under a plain name).

Inputs are generated at test time (hostile_gen) into temporary folders; the few cases that need a
real process (signals, pipes, a full stdout) run `dsocr-analyze` as a subprocess, the rest in-process.
Classes: 1 SQL sandbox, 2 cache, 3 paths, 4 outputs that could harm inputs, 5 damaged input,
6 CLI misuse, 7 invariants on every valid input (../shared's real traces, the bundled examples).
"""
from __future__ import annotations

import copy
import gzip
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import hostile_gen as G
import pytest
from harness import EXIT, check, deadline, document, escaped, numbers, snapshot

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "traces/examples/nvtx-features-2025.3.sqlite"
GUNDAM = REPO / "traces/examples/h100-gundam.sqlite.gz"
GUNDAM_MANIFEST = REPO / "traces/examples/h100-gundam.json"
K, R, N = "CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS"
ROOT = os.geteuid() == 0
OK, USAGE, INPUT, OUTPUT, INTERRUPTED = (EXIT[k] for k in ("ok", "usage", "input", "output", "interrupted"))


def truth(**changes) -> dict:
    t = copy.deepcopy({k: G.BASE_TRUTH[k] for k in ("kernels", "kernel_ns", "attributed_ns", "ranges")})
    t.update(changes)
    return t


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """One folder per input kind, shared by the module's cases (each only reads them)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "base").mkdir()
    G.base_export(root / "base/base.sqlite")
    (root / "kineto").mkdir()
    G.write_kineto(root / "kineto/base.json", G.kineto_doc())
    (root / "example").mkdir()
    shutil.copy(EXAMPLE, root / "example/example.sqlite")
    (root / "example/example.sqlite").chmod(0o644)
    return root


@pytest.fixture
def base(tmp_path) -> Path:
    """A private copy of the base export in a folder of its own (the case may watch or damage it)."""
    folder = tmp_path / "trace"
    folder.mkdir()
    return G.base_export(folder / "base.sqlite")


def analysis(capsys, trace, *extra, code=OK, watch=None, **kw):
    """`dsocr-analyze TRACE --json --ranges all` checked; the parsed document (None on failure)."""
    watch = [Path(trace).parent] if watch is None else watch
    result = check(capsys, trace, "--json", "--ranges", "all", *extra, code=code, watch=watch, **kw)
    return document(result.out) if code == OK else result


# =============================================================================== 1. SQL sandbox

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A trace with a written cache (module-wide cache folder), another trace's cache, and victim files."""
    root = tmp_path_factory.mktemp("sandbox")
    (root / "trace").mkdir()
    trace = G.base_export(root / "trace" / "t.sqlite")
    other = G.Export()
    other.rows(K)[0]["end"] = 3400
    (root / "other").mkdir()
    other_trace = other.write(root / "other" / "o.sqlite")
    victim = root / "victim"
    victim.mkdir()
    (victim / "secret.txt").write_text("password\n")
    (victim / "secret.csv").write_text("a,b\n1,2\n")
    xdg = root / "xdg"
    with environ(XDG_CACHE_HOME=str(xdg)):
        from dsocr_perf.analyze import cache
        from dsocr_perf.analyze.trace import open_trace

        for t in (trace, other_trace):
            cache.store(open_trace(t))
        other_cache = cache.cache_file(other_trace)
        assert cache.load(trace) is not None and other_cache.is_file()
    return {"trace": trace, "victim": victim, "xdg": xdg, "other_cache": other_cache, "root": root}


@contextmanager
def environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _escapes(v: str, cache: str) -> list[tuple[str, str, int]]:
    """(id, SQL, exit status) of statements that try to leave the sandbox."""
    return [
        ("copy_to", f"COPY kernels TO '{v}/out.csv'", USAGE),
        ("copy_query_to", f"COPY (SELECT 1) TO '{v}/out.parquet' (FORMAT parquet)", USAGE),
        ("export_database", f"EXPORT DATABASE '{v}/exported'", USAGE),
        ("attach_new", f"ATTACH '{v}/new.duckdb' AS n", USAGE),
        ("attach_other_cache_rw", f"ATTACH '{cache}' AS o (READ_WRITE)", USAGE),
        ("attach_memory", "ATTACH ':memory:' AS m", USAGE),
        ("detach", "DETACH memory", USAGE),
        ("install", "INSTALL httpfs", USAGE),
        ("load", "LOAD httpfs", USAGE),
        ("load_file", f"LOAD '{v}/evil.duckdb_extension'", USAGE),
        ("read_text", f"SELECT * FROM read_text('{v}/secret.txt')", INPUT),
        ("read_csv", f"SELECT * FROM read_csv('{v}/secret.csv')", INPUT),
        ("read_csv_auto", f"SELECT * FROM read_csv_auto('{v}/secret.csv')", INPUT),
        ("read_parquet_glob", f"SELECT * FROM read_parquet('{v}/*.parquet')", INPUT),
        ("read_json", f"SELECT * FROM read_json('{v}/secret.txt')", INPUT),
        ("read_blob", "SELECT * FROM read_blob('/etc/hostname')", INPUT),
        ("glob", f"SELECT * FROM glob('{v}/*')", INPUT),
        ("sniff_csv", f"SELECT * FROM sniff_csv('{v}/secret.csv')", INPUT),
        ("replacement_scan", f"SELECT * FROM '{v}/secret.csv'", INPUT),
        ("attach_cache_by_scan", f"SELECT * FROM '{cache}'", INPUT),
        ("query_function_copy", f"SELECT * FROM query('COPY kernels TO ''{v}/q.csv''')", INPUT),
        ("set_external_access", "SET enable_external_access = true", USAGE),
        ("set_unlock", "SET lock_configuration = false", USAGE),
        ("pragma", "PRAGMA enable_profiling", USAGE),
        ("reset", "RESET memory_limit", USAGE),
        ("use", "USE memory", USAGE),
        ("call", "CALL pragma_version()", USAGE),
        ("checkpoint", "CHECKPOINT", USAGE),
        ("vacuum", "VACUUM", USAGE),
        ("create_table", "CREATE TABLE t AS SELECT 1", USAGE),
        ("create_macro", "CREATE MACRO m() AS 1", USAGE),
        ("insert", "INSERT INTO kernels SELECT * FROM kernels", USAGE),
        ("update", "UPDATE kernels SET dur_ns = 0", USAGE),
        ("delete", "DELETE FROM kernels", USAGE),
        ("drop", "DROP VIEW kernels", USAGE),
        ("begin", "BEGIN TRANSACTION", USAGE),
        ("prepare", "PREPARE p AS SELECT 1", USAGE),
        ("select_then_drop", "SELECT 1; DROP VIEW kernels", USAGE),
        ("select_then_copy", f"SELECT count(*) FROM kernels; COPY kernels TO '{v}/x.csv'", USAGE),
        ("comment_hides_copy", f"/* SELECT */ COPY kernels TO '{v}/c.csv'", USAGE),
        ("line_comment_then_attach", f"-- just a query\nATTACH '{v}/l.duckdb'", USAGE),
        ("explain_analyze_create", "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", USAGE),
        ("explain_analyze_copy", f"EXPLAIN ANALYZE COPY kernels TO '{v}/e.csv'", USAGE),
        ("explain_copy", f"EXPLAIN COPY kernels TO '{v}/e2.csv'", USAGE),
        ("empty", "", USAGE),
        ("blank", "  \n\t ", USAGE),
        ("comment_only", "-- nothing here\n/* nor here */", USAGE),
        ("semicolons_only", ";;;", USAGE),
        ("huge", "SELECT 1" + " " * (70 << 10), USAGE),
        ("union_bomb", "SELECT 1" + " UNION ALL SELECT 1" * 5000, USAGE),
        ("decode_model_without_manifest", "SELECT * FROM decode_model", INPUT),
        ("syntax_error", "SELEC 1", INPUT),
        ("unknown_view", "SELECT * FROM secrets", INPUT),
    ]


# Every escape against the cached connection (the cache file is a DuckDB database a write could reach);
# a representative subset against the in-memory sandbox of --no-cache.
IN_MEMORY = ("copy_to", "attach_memory", "read_text", "create_table", "explain_analyze_create", "select_then_drop",
             "set_unlock", "glob", "query_function_copy", "union_bomb")
ESCAPE_CASES = [pytest.param(c[0], True, id=f"{c[0]}-cached") for c in _escapes("V", "C")] + \
    [pytest.param(c, False, id=f"{c}-no-cache") for c in IN_MEMORY]


@pytest.mark.parametrize("case, cached", ESCAPE_CASES)
def test_sql_sandbox_escape(capsys, monkeypatch, sandbox, case, cached):
    monkeypatch.setenv("XDG_CACHE_HOME", str(sandbox["xdg"]))
    cases = {c[0]: c[1:] for c in _escapes(str(sandbox["victim"]), str(sandbox["other_cache"]))}
    query, code = cases[case]
    args = ["sql", sandbox["trace"], query] + ([] if cached else ["--no-cache"])
    watch = [sandbox["root"]]       # the trace, the other trace, both caches, the victim files
    result = check(capsys, *args, code=code, watch=watch)
    assert "password" not in result.out + result.err
    if case == "decode_model_without_manifest":
        assert str(sandbox["trace"]) in result.error and "manifest" in result.error


def test_query_starting_with_a_comment_needs_the_double_dash(capsys, base):
    result = check(capsys, "sql", base, "-- a comment\nSELECT 1", code=USAGE, watch=[base.parent])
    assert "needs `--` before it" in result.error


@pytest.mark.parametrize("query, expected", [
    ("SELECT count(*) AS n FROM kernels /* ; COPY kernels TO 'x.csv' */", [{"n": 5}]),
    ("-- the kernel time\nSELECT sum(dur_ns) AS ns FROM kernels WHERE kind = 'kernel';", [{"ns": 2200}]),
    ("EXPLAIN ANALYZE SELECT 1 AS x", None),
    ("SELECT ['nan'::DOUBLE, 1.0] AS l, {'a': 'inf'::DOUBLE} AS s, MAP {'k': '-inf'::DOUBLE} AS m",   # no NaN in JSON
     [{"l": [None, 1.0], "s": {"a": None}, "m": {"k": None}}]),
    ("SELECT name FROM ranges WHERE name LIKE 'step_1' ORDER BY name", [{"name": "stepX1"}, {"name": "step_1"}]),
])
def test_sql_that_only_reads_is_answered(capsys, monkeypatch, sandbox, query, expected):
    monkeypatch.setenv("XDG_CACHE_HOME", str(sandbox["xdg"]))
    result = check(capsys, "sql", "--json", "--", sandbox["trace"], query, watch=[sandbox["root"]])
    rows = json.loads(result.out, parse_constant=lambda c: pytest.fail(c))
    if expected is not None:
        assert rows == expected


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind, code", [("folder", INPUT), ("fifo", INPUT), ("dev_zero", INPUT), ("not_utf8", INPUT),
                                        ("too_large", INPUT), ("missing", INPUT), ("empty", USAGE),
                                        ("comment_only", USAGE), ("write_statement", USAGE), ("symlink_loop", INPUT)])
def test_sql_file_option(capsys, tmp_path, base, kind, code):
    f = tmp_path / "q.sql"
    if kind == "folder":
        f.mkdir()
    elif kind == "fifo":
        _fifo(f)
    elif kind == "dev_zero":
        f = Path("/dev/zero")
    elif kind == "not_utf8":
        f.write_bytes(b"SELECT '\xff\xfe' FROM kernels")
    elif kind == "too_large":
        f.write_text("SELECT 1 " + "-" * (1 << 20))
    elif kind == "empty":
        f.write_text("")
    elif kind == "comment_only":
        f.write_text("-- top kernels\n")
    elif kind == "write_statement":
        f.write_text("COPY kernels TO 'x.csv'")
    elif kind == "symlink_loop":
        os.symlink(tmp_path / "b.sql", f)
        os.symlink(f, tmp_path / "b.sql")
    names = None if code == USAGE else escaped(f)
    check(capsys, "sql", base, "-f", f, code=code, watch=[base.parent], names=names)


# ===================================================================================== 2. cache

def _cache_files(trace: Path) -> tuple[Path, Path]:
    from dsocr_perf.analyze import cache

    f = cache.cache_file(trace)
    return f, cache.stamp_file(f)


def _sql_total(capsys, trace, code=OK, watch=None) -> int:
    result = check(capsys, "sql", trace, "SELECT sum(dur_ns) AS ns FROM kernels WHERE kind = 'kernel'", "--json",
                   code=code, watch=[trace.parent] if watch is None else watch)
    return json.loads(result.out)[0]["ns"]


def _write_cache(capsys, trace) -> Path:
    assert _sql_total(capsys, trace) == 2200
    f, stamp = _cache_files(trace)
    assert f.is_file() and stamp.is_file()
    return f


def _edit_kernel_end(trace: Path, end: int) -> None:
    """Change one value in place, keeping the file's size and restoring its mtime."""
    st = trace.stat()
    with sqlite3.connect(trace) as db:
        db.execute(f"UPDATE {K} SET end = ? WHERE start = 3000", (end,))
    os.utime(trace, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert trace.stat().st_size == st.st_size and trace.stat().st_mtime_ns == st.st_mtime_ns


def _duckdb_edit(path: Path, *statements: str) -> None:
    import duckdb

    con = duckdb.connect(str(path))
    try:
        for s in statements:
            con.execute(s)
        con.execute("CHECKPOINT")
    finally:
        con.close()


def _forge_stamp(f: Path) -> None:
    """What only a deliberate forger does: rewrite the stamp to the edited file (checks beyond it must hold)."""
    from dsocr_perf.analyze import cache

    cache.stamp_file(f).write_text(cache._stamp(f))


CACHE_DAMAGE = ["truncated", "random_bytes", "empty", "other_trace_cache", "other_trace_cache_and_stamp",
                "dropped_table", "dropped_table_forged_stamp", "altered_values", "added_column_forged_stamp",
                "dropped_column_forged_stamp", "renamed_table_forged_stamp", "stamp_missing", "stamp_garbage",
                "world_writable", "symlink_to_other_cache", "symlink_to_trace", "wal_beside", "folder_is_file"]


@pytest.mark.parametrize("damage", CACHE_DAMAGE)
def test_damaged_cache_gives_the_right_numbers(capsys, tmp_path, base, damage):
    f = _write_cache(capsys, base)
    stamp = f.with_suffix(".stamp")
    other = G.Export()
    other.rows(K)[0]["end"] = 3100          # 2200 - 400 ns
    other_trace = other.write(tmp_path / "other.sqlite")
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "random_bytes":
        f.write_bytes(random.Random(0).randbytes(f.stat().st_size))
    elif damage == "empty":
        f.write_bytes(b"")
    elif damage.startswith("other_trace_cache"):
        assert _sql_total(capsys, other_trace, watch=[]) == 1800
        of, ostamp = _cache_files(other_trace)
        shutil.copy(of, f)
        if damage.endswith("stamp"):
            shutil.copy(ostamp, stamp)
    elif damage == "dropped_table":
        _duckdb_edit(f, "DROP VIEW kernel_ranges", "DROP TABLE kernels")
    elif damage == "dropped_table_forged_stamp":
        _duckdb_edit(f, "DROP VIEW kernel_ranges", "DROP TABLE kernels")
        _forge_stamp(f)
    elif damage == "altered_values":
        _duckdb_edit(f, "UPDATE kernels SET dur_ns = 0, end_ns = start_ns")
    elif damage == "added_column_forged_stamp":
        _duckdb_edit(f, "ALTER TABLE stages ADD COLUMN evil INTEGER")
        _forge_stamp(f)
    elif damage == "dropped_column_forged_stamp":
        _duckdb_edit(f, "ALTER TABLE kernels DROP COLUMN category")
        _forge_stamp(f)
    elif damage == "renamed_table_forged_stamp":
        _duckdb_edit(f, "DROP VIEW kernel_ranges", "ALTER TABLE kernels RENAME TO kernels_old",
                     "CREATE TABLE kernels AS SELECT * FROM kernels_old WHERE false")
        _forge_stamp(f)
    elif damage == "stamp_missing":
        stamp.unlink()
        _duckdb_edit(f, "UPDATE kernels SET dur_ns = 0")
    elif damage == "stamp_garbage":
        stamp.write_bytes(os.urandom(10_000))
    elif damage == "world_writable":
        _duckdb_edit(f, "UPDATE kernels SET dur_ns = 0")
        _forge_stamp(f)
        f.chmod(0o666)
    elif damage.startswith("symlink_to"):
        target = base if damage == "symlink_to_trace" else _cache_files(other_trace)[0]
        if damage == "symlink_to_other_cache":
            assert _sql_total(capsys, other_trace, watch=[]) == 1800
        f.unlink()
        f.symlink_to(target)
        _forge_stamp(f)
    elif damage == "wal_beside":
        Path(str(f) + ".wal").write_bytes(os.urandom(4096))
    elif damage == "folder_is_file":
        shutil.rmtree(f.parent)
        f.parent.write_bytes(b"not a folder")
    protected = [base.parent] + ([other_trace] if damage.startswith("symlink_to") else [])
    before = snapshot(*protected)
    assert _sql_total(capsys, base) == 2200
    assert snapshot(*protected) == before
    if damage == "folder_is_file":
        assert f.parent.read_bytes() == b"not a folder"
    else:
        from dsocr_perf.analyze import cache

        assert cache.load(base) is not None and not f.is_symlink()   # rewritten, usable again


def test_trace_changed_while_it_was_analysed(capsys, base):
    """The cache carries the key of the trace as it was read: an edit during the run leaves no cache
    that would pass the new content off as the old."""
    from dsocr_perf.analyze import cache
    from dsocr_perf.analyze.trace import open_trace

    trace = open_trace(base)
    assert trace.totals.kernel_ns == 2200
    _edit_kernel_end(base, 3100)
    cache.store(trace)
    assert cache.load(base) is None
    assert _sql_total(capsys, base) == 1800


def test_relative_cache_home_is_ignored(capsys, monkeypatch, tmp_path, base):
    """XDG_CACHE_HOME=. run from the trace's folder would put the cache beside the trace."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", ".")
    monkeypatch.chdir(base.parent)
    assert _sql_total(capsys, base) == 2200           # check() watches the trace's folder
    assert any((tmp_path / "home/.cache/dsocr-perf").glob("*.duckdb"))


def test_stale_cache_same_size_restored_mtime(capsys, base):
    _write_cache(capsys, base)
    _edit_kernel_end(base, 3100)           # 500 ns -> 100 ns
    assert _sql_total(capsys, base) == 1800
    doc = analysis(capsys, base)
    assert doc["totals"]["kernel_ns"] == 1800


def test_cache_is_used_when_valid_and_left_alone(capsys, base):
    f = _write_cache(capsys, base)
    before = snapshot(f.parent)
    assert _sql_total(capsys, base) == 2200
    assert numbers(analysis(capsys, base)) == truth()
    assert snapshot(f.parent) == before


@contextmanager
def read_only(folder: Path):
    """A folder nobody can write: chmod for a user, the immutable attribute for root (chmod does not stop root)."""
    if not ROOT:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: no way to make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_cache_folder(capsys, base):
    folder = Path(os.environ["XDG_CACHE_HOME"]) / "dsocr-perf"
    folder.mkdir(parents=True)
    with read_only(folder):
        assert _sql_total(capsys, base) == 2200
        assert not any(folder.iterdir())


def test_world_writable_cache_folder_is_neither_read_nor_written(capsys, base):
    f = _write_cache(capsys, base)
    _duckdb_edit(f, "UPDATE kernels SET dur_ns = 0")
    _forge_stamp(f)
    f.parent.chmod(0o777)
    before = snapshot(f.parent)
    assert _sql_total(capsys, base) == 2200
    assert snapshot(f.parent) == before


@pytest.mark.parametrize("pid", ["dead", "garbage"])
def test_temporary_file_of_a_killed_writer_is_removed(capsys, base, pid):
    folder = Path(os.environ["XDG_CACHE_HOME"]) / "dsocr-perf"
    folder.mkdir(parents=True, mode=0o700)
    dead = _dead_pid() if pid == "dead" else "x"
    for name in (f".dsocr-cache-abc123.{dead}.tmp", f".dsocr-cache-abc123.{dead}.tmp.wal"):
        (folder / name).write_bytes(b"half a cache")
    assert _sql_total(capsys, base) == 2200                       # check() asserts no litter is left


def test_temporary_file_of_a_live_writer_is_kept(capsys, base):
    folder = Path(os.environ["XDG_CACHE_HOME"]) / "dsocr-perf"
    folder.mkdir(parents=True, mode=0o700)
    live = folder / f".dsocr-cache-abc123.{os.getppid()}.tmp"
    live.write_bytes(b"being written")
    from harness import run_analyze

    code, out, _ = run_analyze(capsys, "sql", base, "SELECT 1 AS one")
    assert code == 0 and live.read_bytes() == b"being written"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _analyze_cmd(*args) -> list[str]:
    return [sys.executable, "-c", "from dsocr_perf.analyze.cli import main; main()", *map(str, args)]


BIG_STEPS = 25_000


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A trace whose cache takes a while to write (the signal cases): 100,000 kernels, 25,000 ranges."""
    return G.scaled_export(tmp_path_factory.mktemp("big") / "big.sqlite", BIG_STEPS)


def _wait_for(predicate, timeout=60.0, step=0.002):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "SIGINT", "SIGTERM"])
def test_signal_during_cache_write(capsys, tmp_path, big, sig):
    _signal_during_cache_write(capsys, tmp_path, big, sig, 4 * BIG_STEPS)


def test_sigkill_during_cache_write_of_gen_synthetic(capsys, tmp_path, shared):
    """The same on benchmarks/gen_synthetic.py's export (its DDL comes from ../shared)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gen_synthetic

    trace = tmp_path / "syn" / "syn100k.sqlite"
    trace.parent.mkdir()
    gen_synthetic.generate(100_000, trace, seed=0)
    with sqlite3.connect(f"file:{trace}?mode=ro", uri=True) as db:
        ops = sum(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in (K, "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET")
                  if db.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", (t,)).fetchone()[0])
    _signal_during_cache_write(capsys, tmp_path, trace, signal.SIGKILL, ops)


def _signal_during_cache_write(capsys, tmp_path, trace, sig, ops):
    xdg = tmp_path / "xdg"
    folder = xdg / "dsocr-perf"
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg)}
    before = snapshot(trace.parent)
    p = subprocess.Popen(_analyze_cmd("sql", trace, "SELECT count(*) FROM kernels"), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writing = _wait_for(lambda: folder.is_dir() and any(folder.glob(".dsocr-cache-*.tmp")))
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert writing, "the cache write was not seen"
    assert b"Traceback" not in err
    if sig == signal.SIGKILL:
        assert p.returncode == -signal.SIGKILL
    else:
        assert p.returncode == INTERRUPTED and err.decode().count("\n") == 1 and err.startswith(b"Error: interrupted")
        assert not list(folder.glob(".dsocr-cache-*")), "an interrupted writer left its temporary file"
    assert snapshot(trace.parent) == before
    # the next run: the right answer, and the killed writer's litter gone
    with environ(XDG_CACHE_HOME=str(xdg)):
        result = check(capsys, "sql", trace, "SELECT count(*) AS n FROM kernels", "--json", watch=[trace.parent])
    assert json.loads(result.out) == [{"n": ops}]


def test_concurrent_runs(tmp_path, base):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    before = snapshot(base.parent)
    procs = [subprocess.Popen(_analyze_cmd("sql", base, "SELECT sum(dur_ns) AS ns FROM kernels WHERE kind = 'kernel'",
                                           "--json"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, results
    assert all(json.loads(out) == [{"ns": 2200}] and not err for out, err in results)
    assert snapshot(base.parent) == before
    folder = tmp_path / "xdg" / "dsocr-perf"
    assert not list(folder.glob(".dsocr-cache-*"))
    with environ(XDG_CACHE_HOME=str(tmp_path / "xdg")):
        from dsocr_perf.analyze import cache

        assert cache.load(base) is not None


# ===================================================================================== 3. paths

NAMES = {
    "hash": "a#b.sqlite", "question": "a?b.sqlite", "percent": "a%b.sqlite", "percent_2F": "a%2Fb.sqlite",
    "percent_00": "a%00b.sqlite", "space": "a b .sqlite", "quotes": "a'b\"c.sqlite", "newline": "a\nb.sqlite",
    "tab_cr": "a\tb\rc.sqlite", "escape_seq": "a\x1b[31mb.sqlite", "backslash": "a\\b.sqlite",
    "non_utf8": os.fsdecode(b"a\xff\xfeb.sqlite"), "unicode": "трасса✓.sqlite", "leading_dash": "-x.sqlite",
    "leading_dashes": "--json.sqlite", "long_240": "x" * 233 + ".sqlite", "uri_like": "file:a.sqlite?mode=rw",
    "dots": "...sqlite", "no_suffix": "trace", "wrong_suffix": "trace.json", "image_suffix": "roof.png",
}


@pytest.mark.parametrize("command", ["stages", "sql"])
@pytest.mark.parametrize("label", list(NAMES))
def test_odd_names_give_the_same_numbers(capsys, tmp_path, corpus, label, command):
    folder = tmp_path / "odd"
    folder.mkdir()
    path = folder / NAMES[label]
    shutil.copy(corpus / "base/base.sqlite", path)
    if command == "stages":
        doc = document(check(capsys, "--json", "--ranges", "all", "--", path, watch=[folder]).out)
        assert numbers(doc) == truth()
        assert doc["trace"] == str(path)
    else:
        args = ["sql", "--json", "--", path, "SELECT sum(dur_ns) AS ns FROM kernels WHERE kind = 'kernel'"]
        result = check(capsys, *args, watch=[folder])
        assert json.loads(result.out) == [{"ns": 2200}]


@pytest.mark.parametrize("label", ["newline", "non_utf8", "escape_seq", "long_240", "percent_2F"])
def test_odd_names_that_do_not_exist(capsys, tmp_path, label):
    path = tmp_path / NAMES[label]
    check(capsys, path, code=INPUT, watch=[tmp_path], names=escaped(path.name))


def test_deep_path(capsys, tmp_path, corpus):
    folder = tmp_path.joinpath(*[f"level{i:02d}" for i in range(60)])
    folder.mkdir(parents=True)
    shutil.copy(corpus / "base/base.sqlite", folder / "t.sqlite")
    assert numbers(analysis(capsys, folder / "t.sqlite")) == truth()


def test_symlink_to_a_trace_is_accepted(capsys, tmp_path, corpus):
    link = tmp_path / "link.sqlite"
    link.symlink_to(corpus / "base/base.sqlite")
    assert numbers(analysis(capsys, link, watch=[tmp_path, corpus / "base"])) == truth()


def test_relative_symlink_chain(capsys, tmp_path, corpus):
    shutil.copy(corpus / "base/base.sqlite", tmp_path / "real.sqlite")
    (tmp_path / "a.sqlite").symlink_to("real.sqlite")
    (tmp_path / "b.sqlite").symlink_to("a.sqlite")
    assert numbers(analysis(capsys, tmp_path / "b.sqlite")) == truth()


def _unreadable(path: Path) -> Path:
    if ROOT:
        pytest.skip("running as root: chmod 000 does not stop root from reading")
    path.chmod(0)
    return path


BAD_PATHS = ["symlink_loop", "dangling_symlink", "fifo", "dev_null", "dev_zero", "dev_urandom", "folder", "empty_folder",
             "folder_with_junk", "empty_file", "unreadable", "socket", "missing", "empty_name", "file_as_folder"]


@pytest.mark.parametrize("kind", BAD_PATHS)
def test_paths_that_are_not_traces(capsys, tmp_path, corpus, kind):
    p = tmp_path / "t.sqlite"
    if kind == "symlink_loop":
        p.symlink_to(tmp_path / "u.sqlite")
        (tmp_path / "u.sqlite").symlink_to(p)
    elif kind == "dangling_symlink":
        p.symlink_to(tmp_path / "gone.sqlite")
    elif kind == "fifo":
        _fifo(p)
    elif kind in ("dev_null", "dev_zero", "dev_urandom"):
        p = Path("/dev/" + kind[4:])
    elif kind == "folder":
        p.mkdir()
        (p / "x.txt").write_text("x")
    elif kind == "empty_folder":
        p.mkdir()
    elif kind == "folder_with_junk":
        p.mkdir()
        (p / "StringIds.parquet").write_bytes(b"not parquet at all")
    elif kind == "empty_file":
        p.write_bytes(b"")
    elif kind == "file_as_folder":
        shutil.copy(corpus / "base/base.sqlite", p)
        p = p / "inside.sqlite"
    elif kind == "unreadable":
        shutil.copy(corpus / "base/base.sqlite", p)
        _unreadable(p)
    elif kind == "socket":
        import socket

        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    elif kind == "empty_name":
        p = Path("")
    watch = [tmp_path] if str(p).startswith(str(tmp_path)) else []
    names = None if kind == "empty_name" else escaped(p)
    for args in ((p,), ("sql", p, "SELECT 1"), ("kernels", p)):
        check(capsys, *args, code=INPUT, watch=watch, names=names)


def _parquet_export(folder: Path) -> Path:
    """The base export as an `nsys export --type parquetdir` folder (one TABLE.parquet per table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    e = G.Export()
    for name, rows in e.tables.items():
        columns = G.COLUMNS[name]
        data = {c: [r.get(c) for r in rows] for c in columns}
        pq.write_table(pa.table({c: pa.array(v, pa.string() if c in G.TYPES else pa.int64()) for c, v in data.items()}),
                       folder / f"{name}.parquet")
    return folder


def test_parquet_folder_is_a_trace(capsys, tmp_path):
    folder = _parquet_export(tmp_path / "run.parquetdir")
    assert numbers(analysis(capsys, folder, watch=[tmp_path])) == truth()
    result = check(capsys, "sql", folder, "SELECT count(*) AS n FROM kernels", "--json", watch=[tmp_path])
    assert json.loads(result.out) == [{"n": 5}]


@pytest.mark.parametrize("fmt", ["sqlite.gz", "json.gz", "pt.trace.json"])
def test_compressed_and_kineto_names(capsys, tmp_path, corpus, fmt):
    path = tmp_path / f"we ird#%?.{fmt}"
    if fmt == "sqlite.gz":
        path.write_bytes(gzip.compress((corpus / "base/base.sqlite").read_bytes()))
        assert numbers(analysis(capsys, path)) == truth()
    else:
        G.write_kineto(path, G.kineto_doc(), gz=fmt.endswith(".gz"))
        assert numbers(analysis(capsys, path)) == G.KINETO_TRUTH


# ================================================================ 4. outputs that could harm inputs

@pytest.fixture
def manifest_trace(tmp_path) -> Path:
    """The bundled example with a manifest beside it (so stages have FLOPs and a roofline)."""
    folder = tmp_path / "mtrace"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "run.sqlite")
    (folder / "run.sqlite").chmod(0o644)
    shutil.copy(GUNDAM_MANIFEST, folder / "run.json")
    return folder / "run.sqlite"


OUTPUT_CASES = [
    ("perfetto_onto_trace", ["export-perfetto", "{T}", "-o", "{T}", "--force"]),
    ("writeback_onto_trace", ["writeback", "{T}", "--out", "{T}", "--force"]),
    ("perfetto_onto_manifest", ["export-perfetto", "{T}", "-o", "{D}/run.json", "--force"]),
    ("writeback_onto_manifest", ["writeback", "{T}", "--out", "{D}/run.json", "--force"]),
    ("perfetto_onto_hardlink", ["export-perfetto", "{T}", "-o", "{D}/hard.sqlite", "--force"]),
    ("perfetto_through_symlink_to_trace", ["export-perfetto", "{T}", "-o", "{D}/link.json", "--force"]),
    ("perfetto_through_dangling_symlink", ["export-perfetto", "{T}", "-o", "{D}/dangling.json", "--force"]),
    ("report_into_trace_file", ["report", "{T}", "--out", "{T}", "--force"]),
    ("report_into_trace_folder", ["report", "{T}", "--out", "{D}", "--force"]),
    ("report_through_symlink", ["report", "{T}", "--out", "{D}/linkdir", "--force"]),
    ("roofline_onto_the_trace", ["{D}/roof.png", "--roofline", "{D}/roof", "--force"]),
    ("roofline_missing_folder", ["{T}", "--roofline", "{D}/missing/roof"]),
    ("roofline_through_symlink", ["{T}", "--roofline", "{D}/rooflink"]),
    ("perfetto_existing_without_force", ["export-perfetto", "{T}", "-o", "{D}/existing.json"]),
    ("perfetto_onto_fifo", ["export-perfetto", "{T}", "-o", "{D}/fifo", "--force"]),
    ("perfetto_onto_device", ["export-perfetto", "{T}", "-o", "{D}/device", "--force"]),
    ("perfetto_onto_folder", ["export-perfetto", "{T}", "-o", "{D}/sub", "--force"]),
    ("perfetto_name_too_long", ["export-perfetto", "{T}", "-o", "{D}/" + "y" * 300 + ".json"]),
    ("perfetto_through_a_file", ["export-perfetto", "{T}", "-o", "{D}/existing.json/out.json"]),
    ("perfetto_missing_folder", ["export-perfetto", "{T}", "-o", "{D}/nowhere/out.json"]),
    ("writeback_through_a_file", ["writeback", "{T}", "--out", "{D}/existing.json/out.sqlite"]),
    ("report_through_a_file", ["report", "{T}", "--out", "{D}/existing.json/rep"]),
]


@pytest.mark.parametrize("case", [c[0] for c in OUTPUT_CASES])
def test_outputs_that_would_harm(capsys, manifest_trace, case):
    d = manifest_trace.parent
    os.link(manifest_trace, d / "hard.sqlite")
    shutil.copy(manifest_trace, d / "roof.png")         # a trace is known by its content, not its name
    shutil.copy(d / "run.json", d / "roof.png.json")
    (d / "link.json").symlink_to(manifest_trace)
    (d / "dangling.json").symlink_to(d / "nothing.json")
    (d / "linkdir").symlink_to(d)
    (d / "rooflink.png").symlink_to(manifest_trace)
    (d / "existing.json").write_text("{}")
    (d / "sub").mkdir()
    _fifo(d / "fifo")
    if ROOT:
        os.mknod(d / "device", stat.S_IFCHR | 0o666, os.makedev(1, 7))    # a /dev/full of our own
    else:
        _fifo(d / "device")
    args = [a.replace("{T}", str(manifest_trace)).replace("{D}", str(d)) for a in dict(OUTPUT_CASES)[case]]
    check(capsys, *args, code=OUTPUT, watch=[d])


def test_part_files_and_part_symlinks_are_left_alone(capsys, manifest_trace):
    d = manifest_trace.parent
    out = d.parent / "out"
    out.mkdir()
    (out / ".x.json.keep.part").write_text("someone's")
    for i in range(20):    # symlinks where a temporary file could be guessed: never followed, never removed
        (out / f".x.json.{i:08d}.part").symlink_to(manifest_trace)
    before = snapshot(d)
    check(capsys, "export-perfetto", manifest_trace, "-o", out / "x.json", watch=[])
    assert snapshot(d) == before
    assert (out / ".x.json.keep.part").read_text() == "someone's"
    assert sum(1 for p in out.iterdir() if p.is_symlink()) == 20
    assert json.loads((out / "x.json").read_text())["traceEvents"]


@pytest.mark.parametrize("command", ["export-perfetto", "writeback", "report", "roofline"])
def test_read_only_output_folder(capsys, manifest_trace, command):
    out = manifest_trace.parent.parent / "ro"
    out.mkdir()
    args = {"export-perfetto": ["export-perfetto", manifest_trace, "-o", out / "x.json"],
            "writeback": ["writeback", manifest_trace, "--out", out / "x.sqlite"],
            "report": ["report", manifest_trace, "--out", out / "rep"],
            "roofline": [manifest_trace, "--roofline", out / "roof"]}[command]
    with read_only(out):
        check(capsys, *args, code=OUTPUT, watch=[out, manifest_trace.parent])


@contextmanager
def full_disk(tmp_path: Path):
    """A folder on a 64 kB tmpfs that is full but for 2 kB (root), else skip."""
    folder = tmp_path / "full"
    folder.mkdir()
    if not ROOT or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                                  capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs (needs root); ENOSPC is covered by the stdout-to-/dev/full cases")
    try:
        with open(folder / "filler", "wb") as f:
            try:
                f.write(b"\0" * (62 << 10))
            except OSError:
                pass
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("command", ["export-perfetto", "writeback", "report"])
def test_full_disk(capsys, tmp_path, manifest_trace, command):
    with full_disk(tmp_path) as folder:
        args = {"export-perfetto": ["export-perfetto", manifest_trace, "-o", folder / "x.json"],
                "writeback": ["writeback", manifest_trace, "--out", folder / "x.sqlite"],
                "report": ["report", manifest_trace, "--out", folder]}[command]
        check(capsys, *args, code=OUTPUT, watch=[folder, manifest_trace.parent])


def test_outputs_where_they_belong(capsys, manifest_trace):
    """The valid counterpart: the default outputs beside the trace, the trace untouched."""
    d = manifest_trace.parent
    before = snapshot(d)
    check(capsys, "export-perfetto", manifest_trace, watch=[])
    check(capsys, "writeback", manifest_trace, watch=[])
    check(capsys, manifest_trace, "--roofline", d / "roof", watch=[])
    after = snapshot(d)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(Path(k).name for k in set(after) - set(before)) == ["roof.png", "roof.svg", "run.analysis.sqlite",
                                                                       "run.perfetto.json"]


# ============================================================================ 5. damaged input

_EXAMPLE_NUMBERS: dict = {}


def _example_numbers(capsys, corpus) -> dict:
    """The undamaged example's numbers (computed once)."""
    if not _EXAMPLE_NUMBERS:
        _EXAMPLE_NUMBERS.update(numbers(analysis(capsys, corpus / "example/example.sqlite")))
    return _EXAMPLE_NUMBERS


EXAMPLE_BYTES = EXAMPLE.stat().st_size


@pytest.mark.parametrize("offset", [0, 16, 99, 100, 512, 4095, 4096, 4097, 8192, 65536, 131072, 200_000, 300_000,
                                    EXAMPLE_BYTES - 4096, EXAMPLE_BYTES - 1])
def test_truncated_sqlite(capsys, tmp_path, corpus, offset):
    p = tmp_path / "cut.sqlite"
    p.write_bytes((corpus / "example/example.sqlite").read_bytes()[:offset])
    result = check(capsys, p, "--json", "--ranges", "all", "--no-cache", code=_either(capsys, p), watch=[tmp_path],
                   names=str(p))
    if result.code == OK:
        assert numbers(document(result.out)) == _example_numbers(capsys, corpus)


def _either(capsys, path) -> int:
    """The exit status this damaged input gets (0 or 3); check() then asserts everything else."""
    from harness import run_analyze

    with deadline(60):
        code, _, _ = run_analyze(capsys, path, "--json", "--ranges", "all", "--no-cache")
    assert code in (OK, INPUT), code
    return code


@pytest.mark.parametrize("seed", range(10))
def test_random_pages_overwritten(capsys, tmp_path, corpus, seed):
    data = bytearray((corpus / "example/example.sqlite").read_bytes())
    rng = random.Random(seed)
    for _ in range(1 + seed % 3):
        page = rng.randrange(1, len(data) // 4096)
        data[page * 4096:(page + 1) * 4096] = rng.randbytes(4096)
    p = tmp_path / "pages.sqlite"
    p.write_bytes(bytes(data))
    result = check(capsys, p, "--json", "--ranges", "all", "--no-cache", code=_either(capsys, p), watch=[tmp_path],
                   names=str(p))
    if result.code == OK:
        assert numbers(document(result.out)) == _example_numbers(capsys, corpus)


GZ_DAMAGE = ["flip_header", "flip_early", "flip_middle", "flip_late", "truncated_half", "truncated_tail", "random_inside",
             "trailing_garbage", "empty_gzip", "gzip_of_gzip", "text_inside"]


@pytest.mark.parametrize("damage", GZ_DAMAGE)
def test_damaged_gzip(capsys, tmp_path, corpus, damage):
    raw = (corpus / "base/base.sqlite").read_bytes()
    gz = bytearray(gzip.compress(raw))
    if damage.startswith("flip"):
        at = {"flip_header": 3, "flip_early": 40, "flip_middle": len(gz) // 2, "flip_late": len(gz) - 12}[damage]
        gz[at] ^= 0xFF
        gz[at + 1] ^= 0x55
    elif damage == "truncated_half":
        gz = gz[: len(gz) // 2]
    elif damage == "truncated_tail":
        gz = gz[:-4]
    elif damage == "random_inside":
        gz = bytearray(gzip.compress(random.Random(1).randbytes(20_000)))
    elif damage == "trailing_garbage":
        gz += b"garbage after the stream"
    elif damage == "empty_gzip":
        gz = bytearray(gzip.compress(b""))
    elif damage == "gzip_of_gzip":
        gz = bytearray(gzip.compress(bytes(gz)))
    elif damage == "text_inside":
        gz = bytearray(gzip.compress(b"hello, not a trace"))
    p = tmp_path / "t.sqlite.gz"
    p.write_bytes(bytes(gz))
    result = check(capsys, p, "--json", "--ranges", "all", "--no-cache", code=_either(capsys, p), watch=[tmp_path],
                   names=str(p))
    if result.code == OK:
        assert numbers(document(result.out)) == truth()
    assert not list(Path(os.environ["TMPDIR"]).glob("dsocr-*.sqlite")) or result.code == OK


def _kineto_with(extra: list[dict] | None = None, **top) -> dict:
    return G.kineto_doc(G.kineto_events() + (extra or []), **top)


def _k(ts, dur, **kw):
    e = {"ph": "X", "cat": "kernel", "name": "k_hostile", "pid": 0, "tid": 7, "ts": ts, "dur": dur,
         "args": {"correlation": 99, "device": 0, "stream": 7}}
    e.update(kw)
    return e


KINETO_DAMAGE = {   # an extra hostile kernel next to the valid ones: left out (counted) or ignored
    "ts_1e30": [_k(1e30, 5)], "ts_big_int": [_k(10**30, 5)], "dur_negative": [_k(20000, -5)],
    "ts_text": [_k("abc", 5)], "ts_nan_literal": "NaN", "dur_infinity_literal": "Infinity",
    "dur_beyond_int64": [_k(20000, 10**25)], "ts_bool": [_k(True, 5)], "ts_list": [_k([1], 5)],
    "ts_null": [_k(None, 5)], "ts_negative_huge": [_k(-(10**18), 5)], "dur_null": [_k(20000, None)],
    "not_dicts": [None, 1, "x", [], {"ph": "X"}], "args_not_dict": [_k(20000, 5, args=[1, 2])],
    "name_not_text": [_k(20000, 5, name={"a": 1})], "huge_name": [_k(20000, 5, name="k" * 2_000_000)],
}


@pytest.mark.parametrize("damage", list(KINETO_DAMAGE))
def test_kineto_numbers_beyond_reason(capsys, tmp_path, damage):
    p = tmp_path / "k.json"
    extra = KINETO_DAMAGE[damage]
    if isinstance(extra, str):         # a literal that is not JSON but Python's json reads
        text = json.dumps(_kineto_with([_k(77777, 7777)]))
        key = '"ts": 77777' if damage.startswith("ts") else '"dur": 7777'
        assert text.count(key) == 1
        G.write_kineto(p, text.replace(key, key.split(":")[0] + f": {extra}"))
    else:
        G.write_kineto(p, _kineto_with(extra))
    doc = analysis(capsys, p)
    t = numbers(doc)
    if damage in ("huge_name", "args_not_dict", "name_not_text"):      # a valid kernel (launched by no call)
        assert t["kernels"] == 5 and t["kernel_ns"] == 2_205_000
        t.update(kernels=4, kernel_ns=2_200_000)
    assert t == G.KINETO_TRUTH
    result = check(capsys, p, "--ranges", "all", watch=[tmp_path])
    if damage not in ("not_dicts", "huge_name", "args_not_dict", "name_not_text"):
        assert any("left out" in w for w in result.warnings()), result.err


KINETO_BAD = {
    "not_utf8": b'{"traceEvents": [{"name": "\xff\xfe", "ph": "X"}]}',
    "deep_100k": b'{"traceEvents": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deep_array": b"[" * 100_000 + b"]" * 100_000,
    "top_level_list": b"[1, 2, 3]",
    "events_not_list": b'{"traceEvents": {"a": 1}}',
    "no_events": b'{"traceEvents": []}',
    "all_unusable": json.dumps({"traceEvents": [_k("x", 1), _k(1e30, 1)]}).encode(),
    "truncated": json.dumps(G.kineto_doc()).encode()[:300],
    "base_time_beyond_int64": json.dumps(G.kineto_doc(baseTimeNanoseconds=2**63 - 10)).encode(),
    "bom_and_junk": b"\xef\xbb\xbf{oops}",
}


@pytest.mark.parametrize("damage", list(KINETO_BAD))
@pytest.mark.parametrize("gz", [False, True], ids=["json", "json.gz"])
def test_kineto_that_cannot_be_analysed(capsys, tmp_path, damage, gz):
    p = tmp_path / ("k.json.gz" if gz else "k.json")
    G.write_kineto(p, KINETO_BAD[damage], gz=gz)
    check(capsys, p, code=INPUT, watch=[tmp_path], names=str(p))


def test_kineto_device_properties_of_the_wrong_types(capsys, tmp_path):
    p = tmp_path / "k.json"
    G.write_kineto(p, G.kineto_doc(deviceProperties=[{"id": 0, "name": ["x"], "numSms": "a", "totalGlobalMem": 1e40},
                                                     {"id": "zero"}, "junk", None]))
    assert numbers(analysis(capsys, p)) == G.KINETO_TRUTH


def _gundam_manifest() -> dict:
    return json.loads(GUNDAM_MANIFEST.read_text())


def _workloads(m: dict):
    return [m["workload"]] + [p["workload"] for p in m.get("pages", [])]


MANIFESTS = {   # each: (manifest text, FLOPs expected)
    "valid": (lambda m: m, True),
    "workload_list": (lambda m: [m.__setitem__("workload", [1, 2])] + [p.__setitem__("workload", [1])
                                                                        for p in m["pages"]], False),
    "tile_grid_text": (lambda m: [w.__setitem__("tile_grid", "2x3") for w in _workloads(m)], True),  # views count
    "kv_lengths_text": (lambda m: [w.__setitem__("decode_kv_lengths", ["a", "b"]) for w in _workloads(m)], False),
    "kv_lengths_huge": (lambda m: [w.__setitem__("decode_kv_lengths", [10**30]) for w in _workloads(m)], False),
    "kv_lengths_negative": (lambda m: [w.__setitem__("decode_kv_lengths", [-5]) for w in _workloads(m)], False),
    "kv_lengths_too_many": (lambda m: [w.__setitem__("decode_kv_lengths", list(range(100_000)))
                                       for w in _workloads(m)], False),
    "tokens_negative": (lambda m: [w.__setitem__("image_tokens", -100) for w in _workloads(m)], False),
    "tokens_bool": (lambda m: [w.__setitem__("image_tokens", True) for w in _workloads(m)], False),
    "tokens_fraction": (lambda m: [w.__setitem__("image_tokens", 903.5) for w in _workloads(m)], False),
    "views_text": (lambda m: [w.__setitem__("views", "tiles") for w in _workloads(m)], False),
    "views_count_text": (lambda m: [w.__setitem__("views", [{"name": "t", "count": "x", "side": 640}])
                                    for w in _workloads(m)], False),
    "model_list": (lambda m: m.__setitem__("model", []), False),
    "config_zero_heads": (lambda m: m["model"]["config"]["decoder"].__setitem__("num_attention_heads", 0), False),
    "config_1e9_layers": (lambda m: m["model"]["config"]["decoder"].__setitem__("num_hidden_layers", 10**9), False),
    "config_negative": (lambda m: m["model"]["config"]["decoder"].__setitem__("hidden_size", -1280), False),
    "config_text": (lambda m: m["model"]["config"]["decoder"].__setitem__("hidden_size", "big"), False),
    "pages_junk": (lambda m: m.__setitem__("pages", [1, None, "x"]), False),
    "environment_text": (lambda m: m.__setitem__("environment", "x"), True),
    "nesting_1000": ('{"schema": "dsocr-manifest/1", "workload": ' + '{"x": ' * 1000 + "1" + "}" * 1001, False),
    "nesting_100k": ('{"schema": "dsocr-manifest/1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", False),
    "size_50MB": ('{"schema": "dsocr-manifest/1", "pad": "' + "x" * (50 << 20) + '"}', False),
    "nan_literal": ('{"schema": "dsocr-manifest/1", "workload": {"image_tokens": NaN}}', False),
    "not_utf8": (b'{"schema": "dsocr-manifest/1", "x": "\xff"}', False),
    "not_an_object": ("[1, 2, 3]", False),
    "other_schema": ('{"schema": "something-else/1"}', False),
    "fifo": (None, False),
}


@pytest.mark.parametrize("case", list(MANIFESTS))
def test_manifest_of_the_right_schema_with_wrong_contents(capsys, manifest_trace, case):
    make, flops = MANIFESTS[case]
    sidecar = manifest_trace.with_suffix(".json")
    sidecar.unlink()
    if make is None:
        _fifo(sidecar)
    elif callable(make):
        m = _gundam_manifest()
        make(m)
        sidecar.write_text(json.dumps(m))
    else:
        sidecar.write_bytes(make if isinstance(make, bytes) else make.encode())
    doc = analysis(capsys, manifest_trace, "--ranges", "stages")
    has_flops = any(r["flops"] for r in doc["ranges"])
    if flops is not None:
        assert has_flops == flops, (doc["warnings"], doc["notes"])
    if flops:
        prefill = next(r for r in doc["ranges"] if r["name"] == "dsocr:prefill")
        assert prefill["flops"] == 4_266_546_065_408       # the valid manifest's number
    code = OK if flops else INPUT
    check(capsys, "sql", manifest_trace, "SELECT count(*) AS n FROM decode_model", code=code,
          watch=[manifest_trace.parent], names=str(manifest_trace))


def _variant(edit) -> G.Export:
    e = G.Export()
    edit(e)
    return e


def _wrappers(depth: int) -> list[dict]:
    """`depth` push/pop ranges w0 > w1 > ... around everything, each its own name."""
    return [G.nvtx_range(i - depth - 1, 20_000 + depth - i, None, text=f"w{i}") for i in range(depth)]


NSYS_VARIANTS = {   # id: (edit, expected exit, expected numbers or None, a warning that must say so)
    "no_start_column": (lambda e: e.drop_column(K, "start"), INPUT, None, None),
    "no_end_column": (lambda e: e.drop_column(K, "end"), INPUT, None, None),
    "runtime_without_correlation_column": (lambda e: e.drop_column(R, "correlationId"), INPUT, None, None),
    "null_start": (lambda e: e.rows(K)[0].update(start=None), OK,
                   truth(kernels=3, kernel_ns=1700, attributed_ns=1400, ranges={
                       "outer": (1, 1400, 0, 1400, 2), "step_1": (1, 400, 400, 400, 1),
                       "stepX1": (1, 1000, 1000, 1000, 1)}), "without a start or end"),
    "null_end": (lambda e: e.rows(K)[0].update(end=None), OK, "null_start", "without a start or end"),
    "text_start": (lambda e: e.rows(K)[0].update(start="abc"), OK, "null_start", "without a start or end"),
    "fractional_start": (lambda e: e.rows(K)[0].update(start=3000.5), OK, "null_start", "without a start or end"),
    "ends_before_start": (lambda e: e.rows(K)[0].update(start=3500, end=3000), OK, "null_start",
                          "end before they start"),
    "null_correlation": (lambda e: e.rows(K)[0].update(correlationId=None), OK,
                         truth(attributed_ns=1400, ranges={"outer": (1, 1400, 0, 1400, 2),
                                                           "step_1": (1, 400, 400, 400, 1),
                                                           "stepX1": (1, 1000, 1000, 1000, 1)}),
                         "no launching API call"),
    "runtime_null_start": (lambda e: e.rows(R)[1].update(start=None), OK, "null_correlation", "no launching API call"),
    "runtime_null_end": (lambda e: e.rows(R)[1].update(end=None), OK, "null_correlation", "no launching API call"),
    "runtime_null_correlation": (lambda e: e.rows(R)[1].update(correlationId=None), OK, "null_correlation",
                                 "no launching API call"),
    "runtime_null_thread": (lambda e: e.rows(R)[1].update(globalTid=None), OK, "null_correlation",
                            "no launching API call"),
    "runtime_text_correlation": (lambda e: e.rows(R)[1].update(correlationId="one"), OK, "null_correlation",
                                 "no launching API call"),
    "duplicate_correlation": (lambda e: e.rows(R).append(G.call(6300, 6400, 1)), OK, truth(), "repeat the"),
    "range_ends_before_start": (lambda e: e.rows(N)[1].update(start=5000, end=2000), OK,
                                truth(ranges={"outer": (1, 1900, 900, 1900, 3), "stepX1": (1, 1000, 1000, 1000, 1)}),
                                "end before they start"),
    "ranges_do_not_nest": (lambda e: e.rows(N)[1].update(end=7000), OK,
                           truth(attributed_ns=0, ranges={"outer": (1, 0, 0, 0, 0), "step_1": (1, 0, 0, 0, 0),
                                                          "stepX1": (1, 0, 0, 0, 0)}), "do not nest"),
    "no_kernel_table": (lambda e: e.without(K), OK, None, "no GPU kernels"),
    "empty_kernel_table": (lambda e: e.empty(K), OK, None, "no GPU kernels"),
    "no_nvtx_table": (lambda e: e.without(N), OK, truth(attributed_ns=0, ranges={}), "no NVTX ranges"),
    "no_runtime_table": (lambda e: e.without(R), OK, truth(attributed_ns=0, ranges={
        "outer": (1, 0, 0, 0, 0), "step_1": (1, 0, 0, 0, 0), "stepX1": (1, 0, 0, 0, 0)}), "no launching API call"),
    "every_table_empty": (lambda e: e.empty(K, R, N, "CUPTI_ACTIVITY_KIND_MEMCPY"), INPUT, None, None),
    "no_string_table": (lambda e: e.without("StringIds"), INPUT, None, None),
    "views_not_tables": (lambda e: [e.as_view(t) for t in (K, R, N, "StringIds")], OK, truth(), None),
    "giant_names": (lambda e: e.rows("StringIds").__setitem__(0, {"id": 1, "value": "k" * 5_000_000}), OK, truth(),
                    None),
    "nvtx_text_not_utf8": (lambda e: e.rows(N).__setitem__(1, G.nvtx_range(
        2000, 5000, None, text=G.Raw("CAST(X'7374657031FF' AS TEXT)"))), OK, None, None),
    "nvtx_text_blob": (lambda e: e.rows(N).append(G.nvtx_range(6500, 6600, None, text=G.Raw("X'FFFE41'"))), OK,
                       None, None),
    "string_blob": (lambda e: e.rows("StringIds").append({"id": 9, "value": G.Raw("X'FF00'")}), OK, truth(), None),
    "metadata_blob": (lambda e: e.rows("META_DATA_EXPORT").append({"name": G.Raw("X'FF'"), "value": G.Raw("X'FF'")}),
                      OK, truth(), None),
    "gpu_name_blob": (lambda e: e.rows("TARGET_INFO_GPU")[0].update(name=G.Raw("X'FF'"), smCount="many"), OK, truth(),
                      None),
    "unknown_string_ids": (lambda e: [r.update(demangledName=999, shortName=999) for r in e.rows(K)], OK, truth(),
                           None),
    "time_near_int64_max": (lambda e: e.rows(K)[3].update(start=2**63 - 10, end=2**63 - 1), INPUT, None, None),
    "times_beyond_19h": (lambda e: e.rows(K)[3].update(start=10**14, end=10**14 + 300), INPUT, None, None),
    "negative_times": (lambda e: [r.update(start=r["start"] - 10**12, end=r["end"] - 10**12)
                                  for t in (K, R, N, "CUPTI_ACTIVITY_KIND_MEMCPY") for r in e.rows(t)], OK, truth(),
                       None),
    "correlation_huge": (lambda e: (e.rows(K)[0].update(correlationId=2**62), e.rows(R)[1].update(correlationId=2**62)),
                         OK, truth(), None),
    "overlapping_kernels_on_a_stream": (lambda e: e.rows(K)[1].update(start=3200, end=3600), OK,
                                        truth(ranges={"outer": (1, 1900, 0, 1600, 3), "step_1": (1, 900, 900, 600, 2),
                                                      "stepX1": (1, 1000, 1000, 1000, 1)}), None),
    "nesting_200_deep": (lambda e: e.rows(N).extend(_wrappers(200)), OK,
                         truth(attributed_ns=2200, ranges={**truth()["ranges"], **{   # k_late is inside them
                             f"w{i}": (1, 2200, 300 if i == 199 else 0, 2200, 4) for i in range(200)}}), None),
    "nesting_300_deep": (lambda e: e.rows(N).extend(_wrappers(300)), INPUT, None, None),   # quadratic before: refused
    "domain_creates_100k": (lambda e: e.rows(N).extend(
        G.nvtx_range(-5000, None, None, event_type=75, text=f"d{i}", domainId=i + 1) for i in range(100_000)), OK,
        truth(), None),
    "not_an_nsys_export": (lambda e: [e.without(t) for t in list(e.tables)] + [e.tables.__setitem__(
        "people", [{"name": "x"}])], INPUT, None, None),
}


@pytest.mark.parametrize("case", list(NSYS_VARIANTS))
def test_damaged_nsys_export(capsys, tmp_path, case):
    edit, code, expected, warning = NSYS_VARIANTS[case]
    if isinstance(expected, str):
        expected = NSYS_VARIANTS[expected][2]
    p = _variant(edit).write(tmp_path / "v.sqlite")
    result = analysis(capsys, p, code=code, names=str(p) if code else None)
    if code == OK:
        if expected is not None:
            assert numbers(result) == expected
        text = check(capsys, p, "--ranges", "all", watch=[tmp_path])
        if warning:
            assert any(warning in w for w in text.warnings()), text.err
        assert "GPU kernel time" in text.out
    else:
        assert "GPU kernel time" not in result.out


SURVIVORS = ["unknown_string_ids", "nvtx_text_not_utf8", "views_not_tables", "ranges_do_not_nest",
             "duplicate_correlation", "no_nvtx_table", "kineto_dur_negative"]
COMMANDS = {"kernels": ["kernels", "{T}", "--json"], "sql": ["sql", "{T}", "SELECT * FROM kernels", "--json"],
            "perfetto": ["export-perfetto", "{T}", "-o", "{O}/x.json"], "writeback": ["writeback", "{T}", "--out", "{O}/x.db"],
            "report": ["report", "{T}", "--out", "{O}/rep"], "dataset": ["dataset", "{T}"], "diff": ["diff", "{B}", "{T}"]}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", SURVIVORS)
def test_every_command_on_damaged_but_usable_input(capsys, tmp_path, corpus, case, command):
    """What the stage table survives, every other command survives too (a NULL kernel name crashed five)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    if case.startswith("kineto_"):
        t = G.write_kineto(tmp_path / "in/k.json", _kineto_with(KINETO_DAMAGE[case[len("kineto_"):]]))
    else:
        t = _variant(NSYS_VARIANTS[case][0]).write(tmp_path / "in/v.sqlite")
    args = [a.replace("{T}", str(t)).replace("{O}", str(tmp_path / "out")).replace("{B}", str(corpus / "base/base.sqlite"))
            for a in COMMANDS[command]]
    code = INPUT if command == "dataset" else OK        # no `request` ranges in these traces
    result = check(capsys, *args, code=code, watch=[tmp_path / "in", corpus / "base"], names=str(t) if code else None)
    if command in ("kernels", "sql"):
        rows = json.loads(result.out, parse_constant=_bad)
        assert all(r.get("name") for r in rows)                      # every op has a name
        assert all(r[k] >= 0 for r in rows for k in ("total_ns", "dur_ns") if k in r)


@pytest.mark.parametrize("state", ["wal_pending", "wal_checkpointed", "hot_journal", "empty_journal"])
def test_sqlite_side_files(capsys, tmp_path, state):
    """A -wal beside a WAL-mode export holds changes the file does not; a -journal is a writer that
    stopped mid-way: the immutable read sees neither, so those are refused, not answered with old numbers."""
    p = G.base_export(tmp_path / "t.sqlite")
    con = sqlite3.connect(p)
    if state.startswith("wal"):
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA wal_autocheckpoint=0")
        con.execute(f"UPDATE {K} SET end = 3100 WHERE start = 3000")
        con.commit()
        if state == "wal_pending":
            keep = tmp_path / "keep"               # the -wal as a crashed or still-open writer leaves it
            keep.mkdir()
            for suffix in ("-wal", "-shm"):
                shutil.copy(str(p) + suffix, keep / suffix)
    con.close()                                    # checkpoints and removes the -wal
    if state == "wal_pending":
        for suffix in ("-wal", "-shm"):
            shutil.copy(tmp_path / "keep" / suffix, str(p) + suffix)
    elif state.endswith("journal"):
        Path(str(p) + "-journal").write_bytes(b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7" * 64 if state == "hot_journal" else b"")
    if state in ("wal_pending", "hot_journal"):
        check(capsys, "sql", p, "SELECT 1", code=INPUT, watch=[tmp_path], names=str(p))
    else:
        expected = 1800 if state == "wal_checkpointed" else 2200
        assert _sql_total(capsys, p, watch=[tmp_path]) == expected


def test_a_range_nested_in_one_of_its_own_name(capsys, tmp_path):
    """The one exception to 'inclusive <= the trace's kernel time': a name whose instances nest sums them
    per instance, as nsys nvtx_kern_sum does (outer counts its 1900 ns twice)."""
    from harness import invariants

    e = G.Export()
    e.rows(N).append(G.nvtx_range(1500, 9500, 6))
    p = e.write(tmp_path / "selfnest.sqlite")
    result = check(capsys, p, "--json", "--ranges", "all", watch=[tmp_path])
    doc = json.loads(result.out, parse_constant=_bad)
    invariants(doc, self_nested=("outer",))
    assert numbers(doc) == truth(ranges={**truth()["ranges"], "outer": (2, 3800, 0, 3800, 3)})


def test_a_column_changing_type_after_the_first_batch(capsys, tmp_path):
    """Integer columns are read without CAST; a text value after 64k rows makes the driver fail on the
    type change, and the table is read again, the text counting as NULL (a row left out), not as 0."""
    e = G.Export()
    e.rows(R).extend(G.call(20_000 + 10 * i, 20_005 + 10 * i, 1_000_000 + i) for i in range(70_000))
    e.rows(K).extend(G.kernel(20_000 + 10 * i, 20_005 + 10 * i, 1_000_000 + i, 2) for i in range(70_000))
    e.rows(K)[-1]["start"] = "abc"
    p = e.write(tmp_path / "mixed.sqlite")
    doc = analysis(capsys, p)
    assert doc["totals"]["kernels"] == 4 + 69_999
    assert doc["totals"]["kernel_ns"] == 2200 + 5 * 69_999
    assert numbers(doc)["ranges"] == truth()["ranges"]


# ============================================================================== 6. CLI misuse

CLI_USAGE = [
    ("top_negative", ["kernels", "{T}", "--top", "-1"]), ("top_zero", ["kernels", "{T}", "--top", "0"]),
    ("top_text", ["kernels", "{T}", "--top", "many"]), ("diff_top_zero", ["diff", "{T}", "{T}", "--top", "0"]),
    ("unknown_option", ["{T}", "--bogus"]), ("unknown_short_option", ["-x", "{T}"]),
    ("unknown_option_of_sql", ["sql", "{T}", "SELECT 1", "--xml"]),
    ("sql_missing_trace", ["sql"]), ("sql_missing_query", ["sql", "{T}"]),
    ("sql_query_and_file", ["sql", "{T}", "SELECT 1", "-f", "{T}"]), ("kernels_missing_trace", ["kernels"]),
    ("diff_one_trace", ["diff", "{T}"]), ("report_missing_trace", ["report"]),
    ("perfetto_missing_trace", ["export-perfetto"]), ("csv_and_json", ["sql", "{T}", "SELECT 1", "--csv", "--json"]),
    ("range_percent", ["kernels", "{T}", "--range", "step%"]), ("range_underscore", ["kernels", "{T}", "--range", "_"]),
    ("range_like_pattern", ["kernels", "{T}", "--range", "step_"]), ("range_star", ["kernels", "{T}", "--range", "*"]),
    ("range_empty", ["kernels", "{T}", "--range", ""]),
    ("peak_tflops_zero", ["{T}", "--peak-tflops", "0"]), ("peak_tflops_negative", ["{T}", "--peak-tflops", "-1"]),
    ("peak_tflops_nan", ["{T}", "--peak-tflops", "nan"]), ("peak_tflops_inf", ["{T}", "--peak-tflops", "inf"]),
    ("peak_gbs_nan", ["{T}", "--peak-gbs", "NaN"]), ("peak_gbs_text", ["{T}", "--peak-gbs", "fast"]),
    ("report_peak_nan", ["report", "{T}", "--peak-tflops", "nan"]),
    ("report_peak_negative_inf", ["report", "{T}", "--peak-gbs", "-inf"]),
    ("attention_policy_bogus", ["{T}", "--attention-policy", "bogus"]), ("ranges_bogus", ["{T}", "--ranges", "some"]),
    ("kernels_by_bogus", ["kernels", "{T}", "--by", "size"]), ("no_arguments", []),
    ("option_before_trace_missing_value", ["--ranges"]),
]


@pytest.mark.parametrize("case", [c[0] for c in CLI_USAGE])
def test_cli_misuse(capsys, base, case):
    args = [a.replace("{T}", str(base)) for a in dict(CLI_USAGE)[case]]
    result = check(capsys, *args, code=USAGE, watch=[base.parent])
    assert not result.out
    assert ".;" not in result.error


def test_kernels_range_is_an_exact_name(capsys, base):
    """--range step_1 must not match stepX1 (no LIKE): k_gemm 500 + k_elem 400, and nothing of stepX1's 1000."""
    result = check(capsys, "kernels", base, "--range", "step_1", "--json", watch=[base.parent])
    rows = json.loads(result.out)
    assert sorted((r["name"], r["total_ns"]) for r in rows) == [("k_elem", 400), ("k_gemm", 500)]
    rows = json.loads(check(capsys, "kernels", base, "--range", "outer", "--json", watch=[base.parent]).out)
    assert sorted((r["name"], r["total_ns"]) for r in rows) == [("[CUDA memcpy Host-to-Device]", 100),
                                                                 ("k_elem", 400), ("k_gemm", 1500)]


def test_version_and_unknown_command(capsys, base):
    assert check(capsys, "--version").out.startswith("dsocr-analyze ")
    check(capsys, "bogus-command", code=INPUT, names="bogus-command")


@pytest.mark.parametrize("command", ["", "stages", "kernels", "sql", "report", "dataset", "diff", "export-perfetto",
                                     "writeback"])
def test_help_of_every_command(capsys, command):
    result = check(capsys, *([command] if command else []), "--help")
    assert result.out.startswith("Usage: dsocr-analyze")
    if command in ("stages", "kernels"):
        assert "[default:" in result.out


def _run(args, stdout=subprocess.PIPE, env=None, timeout=120, **kw):
    return subprocess.run(_analyze_cmd(*args), stdout=stdout, stderr=subprocess.PIPE, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


PIPE_CASES = {"stages": ["{T}"], "stages_json": ["{T}", "--json"], "sql_table": ["sql", "{T}", "{BIG}"],
              "sql_csv": ["sql", "{T}", "{BIG}", "--csv"], "sql_json": ["sql", "{T}", "{BIG}", "--json"],
              "kernels": ["kernels", "{T}"], "help": ["--help"]}
BIG_QUERY = "SELECT * FROM range(30000)"     # more than a pipe holds


@pytest.mark.parametrize("case", list(PIPE_CASES))
def test_broken_pipe_exits_quietly(base, case):
    args = [a.replace("{T}", str(base)).replace("{BIG}", BIG_QUERY) for a in PIPE_CASES[case]]
    p = subprocess.Popen(_analyze_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()                                # | head -1
    err = p.stderr.read()
    p.wait(timeout=120)
    assert p.returncode == 0 and not err, (p.returncode, err)


@pytest.mark.parametrize("case", list(PIPE_CASES) + ["version"])
def test_stdout_to_a_full_device(base, case):
    args = ["--version"] if case == "version" else \
        [a.replace("{T}", str(base)).replace("{BIG}", BIG_QUERY) for a in PIPE_CASES[case]]
    with open("/dev/full", "w") as full:
        p = _run(args, stdout=full)
    err = p.stderr.decode()
    assert p.returncode == OUTPUT and err.count("\n") == 1 and err.startswith("Error: ") and "Traceback" not in err, err
    assert "No space left" in err


@pytest.mark.parametrize("query, code", [("SELECT 'é' AS e", OK), (b"SELECT '\xff' AS e", USAGE)])
def test_non_ascii_query_under_the_c_locale(base, query, code):
    """LC_ALL=C decodes argv as ASCII: the query's UTF-8 bytes arrive as surrogates (an internal error before)."""
    arg = query if isinstance(query, bytes) else query.encode()
    p = subprocess.run([os.fsencode(a) for a in _analyze_cmd("sql", base)] + [arg, b"--json"], capture_output=True,
                       env={**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}, timeout=120)
    assert p.returncode == code and b"Traceback" not in p.stderr, p.stderr
    if code == OK:
        assert json.loads(p.stdout) == [{"e": "é"}]
    else:
        assert p.stderr.count(b"\n") == 1 and p.stderr.startswith(b"Error: ")


@pytest.fixture(scope="module")
def big_gz(big) -> Path:
    out = big.parent.parent / "bigz" / "big.sqlite.gz"
    out.parent.mkdir()
    out.write_bytes(gzip.compress(big.read_bytes(), compresslevel=1))
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", ["query", "reading", "gunzip", "output"])
def test_interrupt_during_a_long_run(tmp_path, base, big, big_gz, sig, phase):
    (tmp_path / "tmp").mkdir()
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "TMPDIR": str(tmp_path / "tmp")}
    if phase == "query":
        args, trace = ["sql", base, "SELECT count(*) FROM range(100000000000)", "--no-cache"], base
    elif phase == "reading":
        args, trace = [big, "--no-cache"], big
    elif phase == "gunzip":
        args, trace = [big_gz, "--no-cache"], big_gz
    else:
        args, trace = ["export-perfetto", big, "-o", tmp_path / "out.json.gz", "--no-cache"], big
    before = snapshot(trace.parent)
    p = subprocess.Popen(_analyze_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, **env})
    if phase == "output":
        assert _wait_for(lambda: any(tmp_path.glob(".out.json.gz.*.part")) or p.poll() is not None)
    elif phase == "gunzip":
        assert _wait_for(lambda: any((tmp_path / "tmp").glob("dsocr-*.sqlite")) or p.poll() is not None)
    else:
        time.sleep(1.0 if phase == "query" else 0.3)
    sent = time.monotonic()
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    elapsed = time.monotonic() - sent
    if p.returncode == 0 and phase != "query":
        pytest.skip("the run finished before the signal arrived")
    assert p.returncode == INTERRUPTED, (p.returncode, err)
    assert err.decode().count("\n") == 1 and err.startswith(b"Error: interrupted"), err
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    assert snapshot(trace.parent) == before
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))
    assert not (tmp_path / "out.json.gz").exists()
    assert not list((tmp_path / "tmp").iterdir()), "a temporary file was left"


def test_sigkill_during_gunzip_leaves_what_the_next_run_removes(capsys, monkeypatch, tmp_path, big_gz):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    p = subprocess.Popen(_analyze_cmd(big_gz, "--no-cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "TMPDIR": str(tmp)})
    assert _wait_for(lambda: any(tmp.glob("dsocr-*.sqlite")) or p.poll() is not None)
    p.kill()
    p.communicate(timeout=60)
    orphans = set(tmp.glob("dsocr-*.sqlite"))
    assert orphans, "the decompressed export was not seen"
    check(capsys, big_gz, "--no-cache", watch=[big_gz.parent])
    assert not orphans & set(tmp.glob("dsocr-*.sqlite"))      # this process's own goes at its exit


# ==================================================================== 7. invariants on valid input

def _valid_inputs():
    from conftest import SHARED as shared

    out = [pytest.param(p, id=p.name) for p in sorted((REPO / "traces/examples").glob("*.sqlite*"))]
    patterns = ("traces/nsys-sqlite/*.sqlite", "fixtures/nsys/*.sqlite", "traces/kineto/*.json*")
    for pattern in patterns:
        for p in sorted(shared.glob(pattern)) if shared.is_dir() else []:
            out.append(pytest.param(p, id=p.name))
    if not shared.is_dir():
        out.append(pytest.param(None, id="shared-traces", marks=pytest.mark.skip("../shared is not beside the "
                                                                                   "repository")))
    return out


@pytest.mark.parametrize("path", _valid_inputs())
def test_invariants_of_every_valid_input(capsys, path):
    """Every range name (--ranges all: the stage view selects among the same rows)."""
    status, out, err = _quiet(capsys, path, "--json", "--ranges", "all", "--no-cache")
    assert "Traceback" not in err
    if status == INPUT and "no GPU kernels" in err:          # the one export in ../shared without kernels
        assert err.count("\n") == 1
        return
    assert status == OK, err
    document(out)


def _bad(constant):
    raise ValueError(constant)


def _quiet(capsys, *args):
    from harness import run_analyze

    with deadline(120):
        return run_analyze(capsys, *args)


@pytest.mark.parametrize("make", ["base", "kineto", "kineto_gz", "parquet", "sqlite_gz"])
def test_invariants_of_the_synthetic_inputs(capsys, tmp_path, corpus, make):
    if make == "base":
        p = corpus / "base/base.sqlite"
    elif make == "kineto":
        p = corpus / "kineto/base.json"
    elif make == "kineto_gz":
        p = G.write_kineto(tmp_path / "k.json.gz", G.kineto_doc(), gz=True)
    elif make == "parquet":
        p = _parquet_export(tmp_path / "p.parquetdir")
    else:
        p = tmp_path / "b.sqlite.gz"
        p.write_bytes(gzip.compress((corpus / "base/base.sqlite").read_bytes()))
    doc = analysis(capsys, p)
    assert numbers(doc) == (G.KINETO_TRUTH if "kineto" in make else truth())
    rows = json.loads(check(capsys, "sql", p, "SELECT * FROM stages", "--json", watch=[p.parent]).out,
                      parse_constant=_bad)
    assert {r["name"] for r in rows} == {"outer", "step_1", "stepX1"}
