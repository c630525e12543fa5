"""The synthetic nsys export (benchmarks/gen_synthetic.py): its structure, its ground truth against
NVIDIA's attribution rule written as plain SQLite SQL, and the analysis against the ground truth."""
from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gen_synthetic  # noqa: E402

KERNELS = 2000


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, shared):
    out = tmp_path_factory.mktemp("syn") / "syn2k.sqlite"
    truth = gen_synthetic.generate(KERNELS, out, seed=0)
    return out, truth


def query(path, sql, *args):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


# NVIDIA's launch-time rule (schema doc §5.1) as one plain statement: a GPU op belongs to every
# push/pop or start/end range on its launching thread whose interval encloses the launch API call.
ATTRIBUTION_SQL = """
WITH domains AS (
    SELECT domainId, globalTid >> 24 AS proc, text AS domain FROM NVTX_EVENTS WHERE eventType = 75),
ranges AS (
    SELECT r.rowid AS range_id, r.start, r.end, r.globalTid,
           coalesce(d.domain || ':', '') || coalesce(s.value, r.text) AS name
    FROM NVTX_EVENTS AS r
    LEFT JOIN domains AS d ON d.domainId = r.domainId AND d.proc = r.globalTid >> 24
    LEFT JOIN StringIds AS s ON s.id = r.textId
    WHERE r.eventType IN (59, 60) AND r.endGlobalTid IS NULL),
ops AS (
    SELECT start, end, correlationId, globalPid, 1 AS is_kernel FROM CUPTI_ACTIVITY_KIND_KERNEL
    UNION ALL SELECT start, end, correlationId, globalPid, 0 FROM CUPTI_ACTIVITY_KIND_MEMCPY
    UNION ALL SELECT start, end, correlationId, globalPid, 0 FROM CUPTI_ACTIVITY_KIND_MEMSET),
attributed AS (
    SELECT g.name, g.range_id, o.start, o.end, o.is_kernel
    FROM ops AS o
    JOIN CUPTI_ACTIVITY_KIND_RUNTIME AS api
      ON api.correlationId = o.correlationId AND (api.globalTid & ~0xFFFFFF) = o.globalPid
    JOIN ranges AS g ON g.globalTid = api.globalTid AND g.start <= api.start AND g.end >= api.end),
per_instance AS (
    SELECT name, range_id,
           sum(is_kernel) AS kernels, sum(CASE WHEN is_kernel THEN end - start ELSE 0 END) AS kernel_ns,
           count(*) AS ops, max(end) - min(start) AS span
    FROM attributed GROUP BY name, range_id)
SELECT name, sum(kernels), sum(kernel_ns), sum(ops), sum(span) FROM per_instance GROUP BY name
"""


def test_structure(synthetic):
    path, truth = synthetic
    assert query(path, "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL")[0][0] == truth["kernels"]
    assert KERNELS <= truth["kernels"] < KERNELS * 1.3
    # Real nsys table definitions, read from the real export, not written here.
    real = dict(query(gen_synthetic.SCHEMA_SOURCE, "SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    ours = dict(query(path, "SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    for table in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS", "StringIds"):
        assert ours[table] == real[table]
    # Runtime and driver launches.
    apis = dict(query(path, "SELECT s.value, r.eventClass FROM CUPTI_ACTIVITY_KIND_RUNTIME AS r "
                            "JOIN StringIds AS s ON s.id = r.nameId GROUP BY 1"))
    assert apis["cuLaunchKernelEx"] == 1 and apis["cudaLaunchKernel_v7000"] == 0
    # Two processes with a domain-create row each, and correlation ids used by both.
    assert query(path, "SELECT count(*), group_concat(DISTINCT text) FROM NVTX_EVENTS WHERE eventType = 75") == \
        [(2, "dsocr")]
    shared_ids = query(path, """SELECT count(*) FROM (SELECT correlationId FROM CUPTI_ACTIVITY_KIND_KERNEL
                                GROUP BY correlationId HAVING count(DISTINCT globalPid) = 2)""")[0][0]
    assert shared_ids > 100
    # Names inline and through StringIds, in both domains.
    forms = query(path, """SELECT domainId, text IS NOT NULL, textId IS NOT NULL, count(*) FROM NVTX_EVENTS
                           WHERE eventType IN (59, 60) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""")
    assert [f[:3] for f in forms] == [(0, 1, 0), (1, 0, 1), (1, 1, 0)]
    # The worker thread's ranges overlap the main thread's in time.
    overlap = query(path, """SELECT count(*) FROM NVTX_EVENTS AS w JOIN NVTX_EVENTS AS m
                             ON (w.globalTid >> 24) = (m.globalTid >> 24) AND w.globalTid != m.globalTid
                                AND w.start < m.end AND m.start < w.end
                             WHERE w.eventType = 59 AND m.eventType = 59""")[0][0]
    assert overlap > 0
    # Kernels run after the range around their launch popped (asynchronous execution).
    late = query(path, """SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL AS k
                          JOIN CUPTI_ACTIVITY_KIND_RUNTIME AS api ON api.correlationId = k.correlationId
                               AND (api.globalTid & ~0xFFFFFF) = k.globalPid
                          JOIN NVTX_EVENTS AS r ON r.globalTid = api.globalTid AND r.eventType = 59
                               AND r.text = 'attention' AND r.start <= api.start AND r.end >= api.end
                          WHERE k.end > r.end""")[0][0]
    assert late > 0


def test_truth_matches_nvidia_rule_in_sql(synthetic):
    path, truth = synthetic
    rows = {name: (k, ns, ops, span) for name, k, ns, ops, span in query(path, ATTRIBUTION_SQL)}
    expected = {name: (t["kernels"], t["inclusive_ns"], t["gpu_ops"], t["span_ns"])
                for name, t in truth["ranges"].items() if t["gpu_ops"]}
    assert rows == expected
    assert set(rows) >= {"dsocr:sam", "dsocr:clip", "dsocr:projector", "dsocr:llm_prefill", "dsocr:decode_step",
                         "dsocr:layer", "dsocr:sampler", "attention", "page", "prefetch", "dsocr:detokenize"}
    # Instances and CPU time straight from NVTX_EVENTS.
    cpu = dict(((t, d), (n, ns)) for t, d, n, ns in query(
        path, "SELECT coalesce(text, (SELECT value FROM StringIds WHERE id = textId)), domainId, count(*), "
              "sum(end - start) FROM NVTX_EVENTS WHERE eventType IN (59, 60) GROUP BY 1, 2"))
    for name, t in truth["ranges"].items():
        text = name.split(":", 1)[-1]
        assert cpu[(text, 1 if name.startswith("dsocr:") else 0)] == (t["instances"], t["cpu_ns"])
    # Everything attributed to the outermost ranges plus the warm-up launches = every kernel.
    top = truth["ranges"]["dsocr:request"]["kernels"] + truth["ranges"]["prefetch"]["kernels"] + \
        truth["ranges"]["dsocr:detokenize"]["kernels"]
    assert top + truth["unattributed_kernels"] == truth["kernels"]
    assert truth["unattributed_kernels"] == 10      # 5 warm-up launches in each of the two processes
    # Kernels overlap only in `prefetch` (a second stream): there busy < kernel time; elsewhere they are equal.
    overlapping = {n for n, t in truth["ranges"].items() if t["busy_ns"] != t["inclusive_ns"]}
    assert overlapping == {"prefetch"}
    assert truth["ranges"]["prefetch"]["busy_ns"] < truth["ranges"]["prefetch"]["inclusive_ns"]
    streams = query(path, "SELECT count(DISTINCT streamId) FROM CUPTI_ACTIVITY_KIND_KERNEL")[0][0]
    assert streams == 3                              # main thread 7, worker 13 and 14


def test_exclusive_is_innermost(synthetic):
    path, truth = synthetic
    innermost = query(path, ATTRIBUTION_SQL.replace(
        "JOIN ranges AS g ON g.globalTid = api.globalTid AND g.start <= api.start AND g.end >= api.end)",
        """JOIN ranges AS g ON g.range_id = (SELECT i.range_id FROM ranges AS i WHERE i.globalTid = api.globalTid
               AND i.start <= api.start AND i.end >= api.end ORDER BY i.start DESC LIMIT 1))"""))
    exclusive = {name: ns for name, _, ns, _, _ in innermost}
    assert exclusive == {n: t["exclusive_ns"] for n, t in truth["ranges"].items() if t["exclusive_ns"]}
    # Ranges with only child ranges inside have no exclusive time.
    assert truth["ranges"]["dsocr:decode"]["exclusive_ns"] == 0 and truth["ranges"]["page"]["exclusive_ns"] == 0


def test_deterministic_and_no_overwrite(synthetic, tmp_path):
    path, truth = synthetic
    again = gen_synthetic.generate(KERNELS, tmp_path / "again.sqlite", seed=0)
    assert again["ranges"] == truth["ranges"]
    assert json.loads(Path(str(path) + ".truth.json").read_text())["ranges"] == truth["ranges"]
    with pytest.raises(gen_synthetic.GeneratorError, match="--force"):
        gen_synthetic.generate(KERNELS, tmp_path / "again.sqlite", seed=0)


def test_analysis_matches_truth(synthetic):
    from dsocr_perf.analyze.trace import open_trace

    path, truth = synthetic
    table = (open_trace(path, cache=False)).polars("stages")
    got = {row["name"]: row for row in table.iter_rows(named=True)}
    for name, t in truth["ranges"].items():
        for key in ("instances", "kernels", "inclusive_ns", "exclusive_ns", "busy_ns", "span_ns", "cpu_ns", "gpu_ops",
                    "launches"):
            assert got[name][key] == t[key], (name, key)


def test_cli_json_matches_truth(synthetic):
    """The command the benchmark times, parsed the way the benchmark parses it."""
    import subprocess

    import bench_analyze

    path, truth = synthetic
    proc = subprocess.run([sys.executable, "-c", "import sys; from dsocr_perf.analyze.cli import main; sys.exit(main())",
                           str(path), "--json", "--ranges", "all", "--no-cache"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    rows = bench_analyze.range_rows(json.loads(proc.stdout))      # stdout is exactly one JSON document
    got = {r["name"]: (r["inclusive_ns"], r["kernels"], r["instances"]) for r in rows}
    assert got == {n: (t["inclusive_ns"], t["kernels"], t["instances"]) for n, t in truth["ranges"].items()}
