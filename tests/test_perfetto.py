"""export-perfetto: Chrome-trace JSON whose events are exactly the trace's kernels and ranges, with
times that round-trip to the nanosecond."""
import gzip
import json

import pytest
from cli_helper import run_analyze as run

from dsocr_perf.analyze.out.perfetto import GPU_PID_BASE, write_chrome_trace
from dsocr_perf.analyze.trace import open_trace


@pytest.fixture(scope="module")
def features(shared):
    return open_trace(shared / "fixtures/nsys/nvtx-features-2025.3.sqlite", cache=False)


@pytest.fixture(scope="module")
def exported(features, tmp_path_factory):
    out = tmp_path_factory.mktemp("perfetto") / "features.perfetto.json"
    count = write_chrome_trace(features, out)
    return count, json.loads(out.read_text())


def test_one_event_per_kernel_and_range(features, exported):
    count, doc = exported
    events = doc["traceEvents"]
    assert count == len(events)
    kernels = features.con.execute("SELECT count(*) FROM kernels").fetchone()[0]
    ranges = features.con.execute("SELECT count(*) FROM ranges").fetchone()[0]
    # the fixture: 92 kernels + 1 memcpy (cuda_gpu_kern_sum: 44+42+... = 92 kernels), 20 range instances
    assert (kernels, ranges) == (93, 20)
    gpu_ops = [e for e in events if e["ph"] == "X" and e["pid"] >= GPU_PID_BASE]
    cpu_ranges = [e for e in events if e["ph"] in ("X", "b") and e["pid"] < GPU_PID_BASE]
    assert len(gpu_ops) == kernels
    assert len(cpu_ranges) == ranges
    # the start/end 'request' range (ended on another thread) is one async b/e pair
    begins = [e for e in events if e["ph"] == "b"]
    ends = [e for e in events if e["ph"] == "e"]
    assert [e["name"] for e in begins] == ["dsocr:request"] and len(ends) == 1
    assert begins[0]["id"] == ends[0]["id"]


def test_kernel_times_round_trip_to_the_ns(features, exported):
    _, doc = exported
    origin = doc["otherData"]["dsocr_origin_ns"]
    truth = {op: (start, dur) for op, start, dur in
             features.con.execute("SELECT op_id, start_ns, dur_ns FROM kernels").fetchall()}
    seen = 0
    for e in doc["traceEvents"]:
        if e["ph"] == "X" and e["pid"] >= GPU_PID_BASE:
            start, dur = truth[e["args"]["op_id"]]
            assert round(e["ts"] * 1000) + origin == start
            assert round(e["dur"] * 1000) == dur
            seen += 1
    assert seen == len(truth)
    # the sam range: 167,623,716 ns of wall time in nvtx_sum.csv
    sam = next(e for e in doc["traceEvents"] if e.get("name") == "dsocr:sam")
    assert round(sam["dur"] * 1000) == 167_623_716


def test_tracks_are_named(exported):
    _, doc = exported
    meta = [e for e in doc["traceEvents"] if e["ph"] == "M"]
    gpu = [e for e in meta if e["name"] == "process_name" and e["pid"] == GPU_PID_BASE]
    assert gpu[0]["args"]["name"] == "GPU 0 NVIDIA H100 80GB HBM3"
    streams = {e["tid"] for e in meta if e["name"] == "thread_name" and e["pid"] == GPU_PID_BASE}
    kernel_streams = {e["tid"] for e in doc["traceEvents"] if e["ph"] == "X" and e["pid"] == GPU_PID_BASE}
    assert streams == kernel_streams and len(streams) >= 2  # the fixture uses two streams and a graph stream
    cpu_threads = {(e["pid"], e["tid"]) for e in meta if e["name"] == "thread_name" and e["pid"] < GPU_PID_BASE}
    assert cpu_threads == {(448, 448), (448, 500)}  # main thread and the worker thread


def test_cli_gzip_and_no_overwrite(shared, tmp_path, capsys):
    trace = shared / "fixtures/nsys/tiny-2025.3.sqlite"
    out = tmp_path / "tiny.json.gz"
    code, stdout, _ = run(capsys, "export-perfetto", str(trace), "-o", str(out), "--no-cache")
    assert code == 0 and stdout.startswith(f"wrote {out}")
    doc = json.loads(gzip.open(out).read())
    assert any(e.get("name") == "prefill" for e in doc["traceEvents"])
    code, _, err = run(capsys, "export-perfetto", str(trace), "-o", str(out), "--no-cache")
    assert code == 4
    assert err.splitlines() == [f"Error: {out} exists: pass --force to overwrite it, or -o another file"]
    assert run(capsys, "export-perfetto", str(trace), "-o", str(out), "--force", "--no-cache")[0] == 0


def test_cli_missing_trace(tmp_path, capsys):
    code, stdout, err = run(capsys, "export-perfetto", str(tmp_path / "missing.sqlite"))
    assert code == 3 and stdout == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "no such file" in lines[0]
