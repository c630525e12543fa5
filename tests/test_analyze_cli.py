"""dsocr-analyze end to end: the stage table, JSON, kernels, sql, the cache, gzip, bad input.

Bad input must give ONE line `Error: ...` (what is wrong, what to do) and the documented exit status
(3 bad input, 2 usage), never a traceback. The CLI runs in-process through analyze.cli.main."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from cli_helper import run_analyze as run
from conftest import SHARED

from dsocr_perf.analyze import cache
from dsocr_perf.analyze.trace import open_trace

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "traces/examples/nvtx-features-2025.3.sqlite"
# ../shared: used only by the tests that take the `shared` fixture (skipped without it)
TINY = SHARED / "fixtures/nsys/tiny-2025.3.sqlite"
NO_KERNELS = SHARED / "traces/nsys-sqlite/nsys-2021.3.2_dynamicvit_empty_nsys_profile.sqlite"
NO_NVTX = SHARED / "traces/nsys-sqlite/nsys-2023.2.3_cutlass_benchmark_report1.sqlite"
GRAPH_MODE = SHARED / "traces/nsys-sqlite/nsys-2025.5.2_flameox_graph_trace_fixture.sqlite"


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """The test's private XDG cache folder (conftest sets one for every test)."""
    import os

    return Path(os.environ["XDG_CACHE_HOME"])


@pytest.fixture
def example(tmp_path) -> Path:
    """A writable copy of the bundled example."""
    path = tmp_path / EXAMPLE.name
    shutil.copy(EXAMPLE, path)
    path.chmod(0o644)
    return path


def test_stage_table_on_the_bundled_trace(capsys, example):
    code, out, err = run(capsys, example)
    assert code == 0, err
    lines = out.split("\n\n")[1].splitlines()   # the attribution table
    # The stages in pipeline order, children indented under prefill, found in the dsocr domain.
    names = [line.split()[0] for line in lines if line.lstrip().startswith("dsocr:")]
    assert names == ["dsocr:prefill", "dsocr:sam", "dsocr:clip", "dsocr:projector", "dsocr:decode"]
    assert [line.startswith("  ") for line in lines if "dsocr:" in line] == [False, True, True, True, False]
    prefill = next(line for line in lines if line.startswith("dsocr:prefill")).split()
    # n, GPU ms (107 459 ns), GPU % of 368 652 ns kernel time, excl, ..., span 105.336 ms, wall 249.638 ms
    assert prefill[1:4] == ["1", "0.107", "29.2%"]
    assert prefill[7:9] == ["105.336", "249.638"]
    assert "GPU kernel time 0.369 ms in 92 kernels" in out


def test_json_has_every_range_with_the_contract_keys(capsys, example):
    code, out, _ = run(capsys, example, "--json", "--ranges", "all")
    assert code == 0
    data = json.loads(out)
    assert data["trace"] == str(example) and data["warnings"] == []
    keys = {"name", "instances", "inclusive_ns", "exclusive_ns", "busy_ns", "span_ns", "cpu_ns", "kernels", "gpu_ops"}
    assert all(keys <= set(r) for r in data["ranges"])
    by_name = {r["name"]: r for r in data["ranges"]}
    assert len(by_name) == 13
    # Default-domain range: no leading colon. decode_step: 8 instances, 32 kernels (nvtx_kern_sum).
    assert "default_domain_range" in by_name
    assert (by_name["dsocr:decode_step"]["instances"], by_name["dsocr:decode_step"]["kernels"]) == (8, 32)
    # Exclusive times of all ranges = the attributed kernel time; all kernel time is the export's own
    # SELECT sum("end" - start) FROM CUPTI_ACTIVITY_KIND_KERNEL; 10,305 ns of it run outside every range.
    assert sum(r["exclusive_ns"] for r in data["ranges"]) == data["totals"]["attributed_ns"] == 368_556 - 10_305
    assert data["totals"]["kernel_ns"] == 368_556


def test_cache_is_written_after_the_answer_and_reused(capsys, example, cache_home):
    code, first, _ = run(capsys, "sql", example, "select count(*) from kernels")
    written = cache.cache_file(example)
    assert code == 0 and written.exists() and written.parent == cache_home / "dsocr-perf"
    assert sorted(p.name for p in example.parent.iterdir()) == [example.name]     # nothing beside the trace
    stamp = written.stat().st_mtime_ns
    code, second, _ = run(capsys, "sql", example, "select count(*) from kernels")
    assert second == first and written.stat().st_mtime_ns == stamp               # read, not rebuilt
    assert isinstance(open_trace(example).tables, cache.CachedTables)


def test_big_trace_cache_is_written_by_the_detached_builder(capsys, example, cache_home, monkeypatch):
    """A trace above BACKGROUND_OPS answers first; the real detached process then writes the cache."""
    monkeypatch.setattr(cache, "BACKGROUND_OPS", 1)
    code, first, _ = run(capsys, "sql", example, "select count(*) from kernels")
    written, marker = cache.cache_file(example), cache.building_marker(example)
    assert code == 0
    deadline = time.monotonic() + 60
    while (not written.exists() or marker.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert written.exists() and not marker.exists()
    assert isinstance(open_trace(example).tables, cache.CachedTables)
    code, second, _ = run(capsys, "sql", example, "select count(*) from kernels")
    with sqlite3.connect(example) as export:     # the kernels view holds every GPU op: 92 kernels + 1 memcpy
        ops = sum(export.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY"))
    assert second == first and int(first.split()[-1]) == ops == 93


def test_cache_notices_an_edit_that_keeps_size_and_timestamp(capsys, example, cache_home):
    run(capsys, "sql", example, "select count(*) from kernels")
    st = example.stat()
    with sqlite3.connect(example) as db:            # one kernel 1 ns longer: same size on disk
        db.execute('UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET "end" = "end" + 1 WHERE rowid = 1')
    os.utime(example, ns=(st.st_atime_ns, st.st_mtime_ns))     # as `cp -p` / `rsync -t` leave it
    assert example.stat().st_size == st.st_size and example.stat().st_mtime_ns == st.st_mtime_ns
    assert not isinstance(open_trace(example).tables, cache.CachedTables)


def test_a_damaged_or_foreign_cache_is_never_used(capsys, example, cache_home):
    code, first, _ = run(capsys, "sql", example, "select count(*), sum(dur_ns) from kernels")
    written = cache.cache_file(example)
    written.write_bytes(written.read_bytes()[:5000])                              # truncated
    assert not isinstance(open_trace(example).tables, cache.CachedTables)
    code, again, _ = run(capsys, "sql", example, "select count(*), sum(dur_ns) from kernels")
    assert code == 0 and again == first
    written.chmod(0o666)                                                          # others may write it
    assert not isinstance(open_trace(example).tables, cache.CachedTables)


def test_stage_table_writes_no_cache_but_reads_one(capsys, tmp_path, cache_home, shared):
    trace = tmp_path / TINY.name
    shutil.copy(TINY, trace)
    trace.chmod(0o644)
    code, computed, _ = run(capsys, trace)
    assert code == 0 and not cache.cache_file(trace).exists()
    assert run(capsys, "sql", trace, "select count(*) from kernels")[1].split()[-1] == "7"
    assert cache.cache_file(trace).exists()
    code, cached, _ = run(capsys, trace)
    assert code == 0 and cached == computed


def test_read_only_trace_folder(cache_home, shared):
    # ../shared is read-only: the analysis only reads it, the cache is the user's.
    trace = open_trace(TINY)
    assert trace.sandbox("SELECT count(*) FROM kernels").execute("SELECT count(*) FROM kernels").fetchall() == [(7,)]


def test_no_cache_writes_nothing(capsys, example, cache_home):
    code, _, _ = run(capsys, "sql", example, "select 1", "--no-cache")
    assert code == 0 and sorted(p.name for p in example.parent.iterdir()) == [example.name]
    assert not (cache_home / "dsocr-perf").exists()


def test_gzipped_export(capsys, tmp_path, cache_home, shared):
    gz = tmp_path / "tiny.sqlite.gz"
    gz.write_bytes(gzip.compress(TINY.read_bytes()))
    code, out, err = run(capsys, "--json" if False else gz, "--json")
    assert code == 0, err
    by_name = {r["name"]: r for r in json.loads(out)["ranges"]}
    # tiny-2025.3.reports/nvtx_kern_sum.csv: prefill 5 kernels, decode 1.
    assert (by_name["prefill"]["kernels"], by_name["decode"]["kernels"]) == (5, 1)


def test_kernels_command(capsys, example):
    code, out, _ = run(capsys, "kernels", example, "--range", "sam", "--top", "5")
    assert code == 0
    rows = [line for line in out.splitlines()[2:] if line.strip()]
    # sam: 6 nvjet GEMMs and 6 GELU kernels (nvtx_kern_sum rows of dsocr:sam).
    assert len(rows) == 2 and rows[0].startswith("nvjet_sm90") and " gemm " in rows[0]
    assert rows[0].split()[-4] == "6"
    # two ATen elementwise kernels that differ only in their functor get two labels
    code, out, _ = run(capsys, "kernels", example, "--json", "--top", "50")
    rows = json.loads(out)
    labels = {r["label"] for r in rows if r["label"].startswith("vectorized_elementwise_kernel")}
    assert labels == {"vectorized_elementwise_kernel [GeluCUDAKernelImpl]",
                      "vectorized_elementwise_kernel [bfloat16_copy_kernel_cuda]",
                      "vectorized_elementwise_kernel [FillFunctor<long>]",
                      "vectorized_elementwise_kernel [FillFunctor<BFloat16>]"}
    code, out, _ = run(capsys, "kernels", example, "--json", "--top", "1")
    top = json.loads(out)[0]
    # cuda_gpu_kern_sum.csv: nvjet 44 instances, 242 346 ns in total.
    assert (top["instances"], top["total_ns"]) == (44, 242_346)


def test_sql_command_csv_json_and_file(capsys, example, tmp_path):
    code, out, _ = run(capsys, "sql", example, "SELECT count(*) AS n FROM kernels WHERE kind = 'kernel'", "--csv")
    assert (code, out) == (0, "n\n92\n")
    code, out, _ = run(capsys, "sql", example, "SELECT name, depth FROM ranges WHERE name LIKE '%clip_att%'", "--json")
    assert json.loads(out) == [{"name": "dsocr:clip_attention", "depth": 2}]
    query = tmp_path / "q.sql"
    query.write_text("-- instances per range name\nSELECT instances FROM stages WHERE name = 'dsocr:decode_step'\n")
    code, out, _ = run(capsys, "sql", example, "-f", query, "--csv")
    assert (code, out) == (0, "instances\n8\n")


def test_graph_mode_export_warns(capsys, cache_home, shared):
    code, out, err = run(capsys, GRAPH_MODE, "--no-cache")
    assert "--cuda-graph-trace=node" in err and "2 graph launches" in err


def test_manifest_mark_is_exposed(tmp_path):
    # A real export plus one NVTX mark in domain dsocr (domainId 1 there) carrying the manifest JSON.
    path = tmp_path / "with-manifest.sqlite"
    shutil.copy(EXAMPLE, path)
    path.chmod(0o644)
    manifest = {"schema": "dsocr-manifest/1", "workload": {"mode": "gundam", "prompt_tokens": 913}}
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid, domainId) "
                   "VALUES (1000, NULL, 34, ?, 281482492903872, 1)", [json.dumps(manifest)])
    trace = open_trace(path, cache=False)
    assert trace.manifest == manifest and trace.manifest_source == "embedded"


# --- bad input: one line, exit 3 (2 for usage) -----------------------------------------------------

def _one_error_line(capsys, *args, status=3) -> str:
    code, out, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == status and len(lines) == 1 and lines[0].startswith("Error: "), (code, err)
    assert "Traceback" not in err
    return lines[0]


def test_missing_path(capsys, tmp_path):
    assert "no such file" in _one_error_line(capsys, tmp_path / "nope.sqlite")


def test_directory(capsys, tmp_path):
    assert "folder without nsys tables" in _one_error_line(capsys, tmp_path)


def test_empty_file(capsys, tmp_path):
    (tmp_path / "empty.sqlite").write_bytes(b"")
    assert "is empty" in _one_error_line(capsys, tmp_path / "empty.sqlite")


def test_random_bytes(capsys, tmp_path):
    (tmp_path / "noise.sqlite").write_bytes(bytes(range(256)) * 64)
    assert "neither an SQLite database nor a JSON trace" in _one_error_line(capsys, tmp_path / "noise.sqlite")


def test_truncated_sqlite(capsys, tmp_path, shared):
    (tmp_path / "cut.sqlite").write_bytes(TINY.read_bytes()[:200_000])
    assert "truncated or corrupt" in _one_error_line(capsys, tmp_path / "cut.sqlite", "--no-cache")


def test_sqlite_damaged_inside_a_table(capsys, tmp_path, shared):
    # The catalogue and NVTX read fine; the kernel table's leaf pages do not (the sweep's readers hit them).
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gen_synthetic

    path = tmp_path / "damaged.sqlite"
    gen_synthetic.generate(2000, path, seed=0)
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'CUPTI_ACTIVITY_KIND_KERNEL' "
                                          "AND pagetype = 'leaf'")]
    data = bytearray(path.read_bytes())
    for page in pages:
        data[(page - 1) * page_size: page * page_size] = b"\xff" * page_size
    path.write_bytes(bytes(data))
    for args in ((path, "--no-cache"), (path,), ("sql", path, "select count(*) from kernels")):
        assert "truncated or corrupt" in _one_error_line(capsys, *args)


def test_sqlite_that_is_not_an_nsys_export(capsys, tmp_path):
    with sqlite3.connect(tmp_path / "other.sqlite") as db:
        db.execute("CREATE TABLE people (name TEXT)")
    assert "not an Nsight Systems export" in _one_error_line(capsys, tmp_path / "other.sqlite", "--no-cache")


def test_export_without_kernels(capsys, cache_home, shared):
    assert "no GPU kernels" in _one_error_line(capsys, NO_KERNELS)


def test_export_without_nvtx_still_shows_kernels(capsys, cache_home, shared):
    code, out, err = run(capsys, NO_NVTX, "--no-cache")
    assert code == 0 and "no NVTX ranges" in err
    # cuda_gpu_kern_sum.csv of that export: one CUTLASS kernel name.
    assert "cutlass" in out.lower() and "GPU kernel time" in out


def test_malformed_json(capsys, tmp_path):
    (tmp_path / "bad.json").write_text('{"traceEvents": [{"ph": "X", "name": ')
    line = _one_error_line(capsys, tmp_path / "bad.json", "--no-cache")
    assert "JSON" in line


def test_sql_error_is_one_line(capsys, example):
    assert "SQL:" in _one_error_line(capsys, "sql", example, "SELECT nope FROM kernels")


def test_unknown_range_for_kernels(capsys, example):
    assert "no range named" in _one_error_line(capsys, "kernels", example, "--range", "nope", status=2)


def test_a_column_changing_type_mid_table_is_read_again_with_casts(tmp_path, shared):
    # Columns declared INTEGER are read without CAST (faster); a REAL value after the first 64k-row
    # batch makes the reader fail on the type change: the table is then read again with CASTs.
    path = tmp_path / "mixed.sqlite"
    shutil.copy(TINY, path)
    path.chmod(0o644)
    with sqlite3.connect(path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(CUPTI_ACTIVITY_KIND_RUNTIME)")]
        row = list(db.execute("SELECT * FROM CUPTI_ACTIVITY_KIND_RUNTIME LIMIT 1").fetchone())
        at = columns.index("correlationId")
        rows = [row[:at] + [10_000_000 + i] + row[at + 1:] for i in range(70_000)]
        rows[-1][at] = 12345.5
        db.executemany(f"INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES ({', '.join('?' * len(columns))})", rows)
    trace = open_trace(path, cache=False)
    # tiny-2025.3.reports: prefill 5 kernels, 1 708 541 ns; 984 API rows + the 70 000 added.
    assert trace.con.execute("SELECT kernels, inclusive_ns FROM stages WHERE name = 'prefill'").fetchone() == (5, 1_708_541)
    assert trace.con.execute("SELECT count(*) FROM launches").fetchone()[0] == 984 + 70_000


def test_roofline_files_beside_the_stage_table(capsys, tmp_path):
    example = REPO / "traces/examples/h100-gundam.sqlite.gz"
    stem = tmp_path / "roofline"
    code, out, err = run(capsys, example, "--roofline", stem)
    assert code == 0, err
    assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG" and "<svg" in stem.with_suffix(".svg").read_text()
    assert "wrote" in err and "sam" in out
    before = stem.with_suffix(".png").stat().st_mtime_ns
    code, _, err = run(capsys, example, "--roofline", stem)
    assert code == 4 and "exists: pass --force" in err and stem.with_suffix(".png").stat().st_mtime_ns == before
    assert run(capsys, example, "--roofline", stem, "--force")[0] == 0


def test_a_failing_command_removes_output_temporaries_whose_finally_never_ran(tmp_path, capsys):
    """A signal inside contextlib's own frames can leave atomic_path's generator suspended (its finally
    unrun); the CLI's one failure exit removes what is left."""
    from dsocr_perf.analyze import cli, paths

    suspended = paths.atomic_path(tmp_path / "out.json")
    tmp = suspended.__enter__()                   # never exited, as when the interrupt lands in __exit__
    assert tmp.exists() and tmp.name.startswith(".out.json.")
    with pytest.raises(SystemExit) as stop:
        cli._fail("interrupted; nothing was written", 130)
    assert stop.value.code == 130 and sorted(tmp_path.iterdir()) == []
    assert capsys.readouterr().err == "Error: interrupted; nothing was written\n"
