"""The wall-time views against NVIDIA's own `nsys analyze` rules (tests/data/nsys_analyze/README.md):

- gpu_gaps (gap=0): every interval in which a process's GPU device runs none of its operations, between
  its first and last operation there = our `gpu_gaps` view, row for row;
- gpu_time_util (chunks=1): per process and device, "In-Use" = the summed durations of its GPU operations
  over [first op start, last op end], overlapping operations each counted (read from the DLProf export:
  7.48 % there, where the union of the intervals, 1 - our gaps / span, is 7.36 %); nsys rounds to 0.1 %.
  Our own utilisation (`totals.gpu_busy_ns`, the gaps) is the union;
- cuda_api_sync: every cudaDeviceSynchronize / cudaStreamSynchronize call = those rows of `cuda_api`
  (duration, start, pid, tid).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path

import pytest
from conftest import SHARED

from dsocr_perf.analyze.trace import open_trace

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests/data/nsys_analyze"
TRACES = sorted((SHARED / "traces/nsys-sqlite").glob("*.sqlite")) + sorted((SHARED / "fixtures/nsys").glob("*.sqlite")) \
    if SHARED.is_dir() else []
EXAMPLE = REPO / "traces/examples/h100-gundam.sqlite.gz"


def _reference(name: str, rule: str) -> list[dict]:
    with gzip.open(DATA / f"{name}.{rule}.csv.gz", "rt", newline="") as f:
        return list(csv.DictReader(f))


def _stem(path: Path) -> str:
    return path.name.split(".sqlite")[0]


@pytest.fixture(scope="module")
def opened():
    cache = {}

    def get(path):
        if path not in cache:
            cache[path] = open_trace(path, cache=False).con
        return cache[path]
    return get


@pytest.mark.parametrize("path", TRACES, ids=[_stem(p) for p in TRACES])
def test_gpu_gaps_equal_nsys_analyze(path, opened):
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside the repository")
    ours = sorted(opened(path).execute("SELECT pid, device, start_ns, dur_ns FROM gpu_gaps").fetchall())
    ref = sorted((int(r["PID"]), int(r["Device ID"]), int(r["Start (ns)"]), int(r["Duration (ns)"]))
                 for r in _reference(_stem(path), "gpu_gaps"))
    assert ours == ref


@pytest.mark.parametrize("path", TRACES + [EXAMPLE], ids=[_stem(p) for p in TRACES + [EXAMPLE]])
def test_gpu_time_util_equals_nsys_analyze(path, opened):
    if path != EXAMPLE and not SHARED.is_dir():
        pytest.skip("../shared is not beside the repository")
    con = opened(path)
    for row in _reference(_stem(path), "gpu_time_util"):
        pid, device, start, span = int(row["PID"]), int(row["Device ID"]), int(row["Start (ns)"]), int(row["Duration (ns)"])
        first, last, summed = con.execute("""SELECT min(start_ns), max(end_ns), sum(dur_ns) FROM kernels
                                             WHERE pid = ? AND device = ?""", [pid, device]).fetchall()[0]
        gaps = con.execute("SELECT coalesce(sum(dur_ns), 0) FROM gpu_gaps WHERE pid = ? AND device = ?",
                           [pid, device]).fetchall()[0][0]
        assert (first, last - first) == (start, span)
        assert round(100 * summed / span, 1) == float(row["In-Use (%)"])
        assert span - gaps <= summed          # the union never exceeds the sum


@pytest.mark.parametrize("path", TRACES + [EXAMPLE], ids=[_stem(p) for p in TRACES + [EXAMPLE]])
def test_sync_calls_equal_nsys_analyze(path, opened):
    if path != EXAMPLE and not SHARED.is_dir():
        pytest.skip("../shared is not beside the repository")
    ours = sorted(opened(path).execute("""
        SELECT dur_ns, start_ns, pid, tid, api_name FROM cuda_api
        WHERE api_name IN ('cudaDeviceSynchronize', 'cudaStreamSynchronize')""").fetchall())
    ref = sorted((int(r["Duration (ns)"]), int(r["Start (ns)"]), int(r["PID"]), int(r["TID"]),
                  r["API Name"].rsplit("_v", 1)[0]) for r in _reference(_stem(path), "cuda_api_sync"))
    assert ours == ref


def test_the_h100_example_gaps_equal_nsys_analyze(opened):
    """151,483 gaps: compared through NVIDIA's row count, total, first and last rows and a hash of all rows."""
    summary = json.loads((DATA / "h100-gundam.gpu_gaps.summary.json").read_text())
    rows = sorted(opened(EXAMPLE).execute("SELECT pid, device, start_ns, dur_ns FROM gpu_gaps").fetchall())
    assert len(rows) == summary["rows"] == 151_483
    assert sum(r[3] for r in rows) == summary["total_duration_ns"]
    assert list(rows[0]) == summary["first"] and list(rows[-1]) == summary["last"]
    text = "\n".join(f"{p},{d},{s},{u}" for p, d, s, u in rows)
    assert hashlib.sha256(text.encode()).hexdigest() == summary["sha256_of_sorted_rows"]
