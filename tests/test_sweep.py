"""The cold stage table's NumPy sweep (analyze.sweep) gives exactly the DuckDB engine's `stages` rows,
on every real nsys export in ../shared, the bundled DeepSeek-OCR capture and a synthetic export (whose
totals are also checked against the generator's ground truth)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dsocr_perf.analyze.load import _open_swept, open_trace, sniff

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EXPORTS = sorted(SHARED.glob("traces/nsys-sqlite/*.sqlite")) + sorted(SHARED.glob("fixtures/nsys/*.sqlite")) \
    + sorted((REPO / "traces/examples").glob("*.sqlite.gz"))
COLUMNS = ("name, instances, inclusive_ns, exclusive_ns, busy_ns, span_ns, cpu_ns, kernels, gpu_ops, launches, "
           "depth, first_range_id")
# The sweep hands these to the DuckDB engine (it raises Unsupported): no NVTX ranges (the CLI then
# shows kernels and reads the trace in full anyway), or CUDA graph nodes (nvtx-features).
NOT_SWEPT = {"nsys-2021.2.1_mordred_report1", "nsys-2021.3.2_dynamicvit_empty_nsys_profile",
             "nsys-2023.2.3_cutlass_benchmark_report1", "nsys-2023.3.1_sc23_openmp_offload_report3",
             "nsys-2024.5.1_knn_benchmark_profile_report", "nsys-2025.5.2_flameox_graph_trace_fixture",
             "nvtx-features-2025.3"}


def _rows(trace):
    return trace.con.execute(f"SELECT {COLUMNS} FROM stages ORDER BY first_range_id").fetchall()


def _both(path: Path):
    swept = _open_swept(path, sniff(path))
    duck = open_trace(path, cache=False, lean=True, engine="duckdb")
    return swept, duck


@pytest.mark.parametrize("path", EXPORTS, ids=[p.name.split(".sqlite")[0] for p in EXPORTS])
def test_sweep_equals_duckdb(path: Path):
    swept, duck = _both(path)
    name = path.name.split(".sqlite")[0]
    if swept is None:
        assert name in NOT_SWEPT, f"{name}: the sweep fell back to DuckDB"
        return
    assert name not in NOT_SWEPT
    assert swept.stage_facts() == duck.stage_facts()  # what the stage table prints, computed without SQL
    assert "duckdb" not in str(type(swept.connection))   # ... and DuckDB not touched for it
    assert _rows(swept) == _rows(duck)
    assert swept.warnings == duck.warnings
    assert swept.manifest == duck.manifest and swept.meta == duck.meta
    for sql in ("SELECT count(*), count(tid), sum(end_ns - start_ns) FROM _ops",
                "SELECT count(*) FROM _ops WHERE pp_range IS NOT NULL OR op_id IN (SELECT op_id FROM _se_direct)",
                "SELECT * FROM gpus ORDER BY device"):
        assert swept.con.execute(sql).fetchall() == duck.con.execute(sql).fetchall(), sql


def test_sweep_on_synthetic_equals_duckdb_and_truth(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gen_synthetic

    path = tmp_path / "syn2k.sqlite"
    truth = gen_synthetic.generate(2000, path, seed=0)
    swept, duck = _both(path)
    assert swept is not None
    assert _rows(swept) == _rows(duck)
    got = {r[0]: r for r in _rows(swept)}
    assert set(got) == set(truth["ranges"])
    for name, t in truth["ranges"].items():
        _, instances, inclusive, exclusive, busy, span, cpu, kernels, gpu_ops, launches, _, _ = got[name]
        assert (instances, inclusive, exclusive, busy, cpu, kernels) == (
            t["instances"], t["inclusive_ns"], t["exclusive_ns"], t["busy_ns"], t["cpu_ns"], t["kernels"]), name
        assert (span, gpu_ops, launches) == (t["span_ns"], t["gpu_ops"], t["launches"]), name
