"""Every sql/*.sql file runs on the bundled example trace (nvtx-features fixture, nsys 2025.3) and gives
numbers a reader can check against NVIDIA's own `nsys stats` reports beside the fixture
(../shared/fixtures/nsys/nvtx-features-2025.3.reports/*.csv) or against the raw SQLite export."""
import csv
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import SHARED

from dsocr_perf.dsocr.stages import REPORTED_STAGES

REPO = Path(__file__).resolve().parents[1]
SQL_DIR = REPO / "sql"
SQL_FILES = sorted(SQL_DIR.glob("*.sql"))
EXAMPLE = REPO / "traces/examples/nvtx-features-2025.3.sqlite"
REPORTS = "fixtures/nsys/nvtx-features-2025.3.reports"
STAGES_IN_FIXTURE = ["prefill", "decode", "sam", "clip", "projector"]  # in file order; no llm_prefill here


@pytest.fixture(scope="module")
def con():
    from dsocr_perf.analyze.trace import open_trace

    path = EXAMPLE if EXAMPLE.exists() else SHARED / "fixtures/nsys/nvtx-features-2025.3.sqlite"
    return open_trace(path, cache=False).con


def run(con, file_name):
    result = con.execute((SQL_DIR / file_name).read_text())
    columns = [d[0] for d in result.description]
    return [dict(zip(columns, row)) for row in result.fetchall()]


def report(shared, name):
    with open(shared / REPORTS / f"{name}.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_at_least_six_files_each_with_a_header():
    assert len(SQL_FILES) >= 6
    for path in SQL_FILES:
        text = path.read_text()
        header = text.split("\n", 1)[0]
        assert header.startswith("-- ") and len(header) > 20, path.name
        assert f"dsocr-analyze sql TRACE -f sql/{path.name}" in text, path.name
        stages = re.search(r"stage_names\(stage, stage_order\) AS \(\s*VALUES (.*)$", text, re.M)
        if stages:  # the single source of stage names is dsocr.stages: every reported stage is listed
            listed = re.findall(r"\('(\w+)', \d+\)", stages.group(1))
            assert set(REPORTED_STAGES) <= set(listed), path.name


@pytest.mark.parametrize("path", SQL_FILES, ids=lambda p: p.name)
def test_every_file_runs(con, path):
    result = con.execute(path.read_text())
    assert result.description and result.fetchall()


def _kern_sum_by_range(shared):
    """nvtx_kern_sum summed over kernel names: range -> (kernel instances, total ns)."""
    totals = {}
    for row in report(shared, "nvtx_kern_sum"):
        if row["NVTX Range"]:
            n, t = totals.get(row["NVTX Range"], (0, 0))
            totals[row["NVTX Range"]] = (n + int(row["Kern Inst"]), t + int(row["Total Time (ns)"]))
    return totals


def test_kernels_per_stage(con, shared):
    rows = run(con, "kernels_per_stage.sql")
    assert [r["stage"] for r in rows] == STAGES_IN_FIXTURE
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["prefill"]["kernels"] == 25          # schema doc §5.2: sam + clip + clip_attention + projector
    kern_sum = _kern_sum_by_range(shared)
    proj_sum = {r["Range"]: r for r in report(shared, "nvtx_gpu_proj_sum")}
    for stage, row in by_stage.items():
        assert (row["kernels"], row["kernel_ns"]) == kern_sum[f"dsocr:{stage}"]
        assert row["gpu_ops"] == int(proj_sum[f"dsocr:{stage}"]["Total GPU Ops"])
        assert row["instances"] == int(proj_sum[f"dsocr:{stage}"]["Range Instances"])
    # decode: 33 kernels + 1 memcpy; prefill 107459 ns = 66626 + 25696 + 8640 + 4033 + 2464 (nvtx_kern_sum)
    assert (by_stage["decode"]["kernels"], by_stage["decode"]["gpu_ops"]) == (33, 34)
    assert by_stage["prefill"]["kernel_ns"] == 66626 + 25696 + 8640 + 4033 + 2464


def test_top_kernels_per_stage(con, shared):
    rows = run(con, "top_kernels_per_stage.sql")
    reference = {}
    for r in report(shared, "nvtx_kern_sum"):
        reference.setdefault(r["NVTX Range"], []).append(
            (int(r["Total Time (ns)"]), r["Kernel Name"], int(r["Kern Inst"])))
    for stage in STAGES_IN_FIXTURE:
        ours = [(r["total_ns"], r["kernel"], r["calls"]) for r in rows if r["stage"] == stage]
        expected = sorted(reference[f"dsocr:{stage}"], key=lambda t: (-t[0], t[1]))[:5]
        assert ours == [(t, name[:70], n) for t, name, n in expected]
        assert [r["rank"] for r in rows if r["stage"] == stage] == list(range(1, len(ours) + 1))
    first = rows[0]
    assert (first["stage"], first["short_name"], first["category"], first["calls"], first["total_ns"]) == (
        "prefill", "nvjet_sm90_tst_128x64_64x8_1x2_h_bz_NNT", "gemm", 12, 66626)
    assert first["pct_of_stage"] == round(100 * 66626 / 107459, 1) == 62.0


def test_decode_step_timeline(con, shared):
    rows = run(con, "decode_step_timeline.sql")
    projected = [r for r in report(shared, "nvtx_gpu_proj_trace") if r["Name"] == "dsocr:decode_step"]
    assert [r["step"] for r in rows] == list(range(8)) and {r["decode"] for r in rows} == {1}
    assert [r["first_op_ns"] for r in rows] == [int(p["Projected Start (ns)"]) for p in projected]
    assert [r["last_op_ns"] - r["first_op_ns"] for r in rows] == [int(p["Projected Duration (ns)"]) for p in projected]
    assert [r["kernels"] for r in rows] == [int(p["NumGPUOps"]) for p in projected] == [4] * 8
    assert [r["cpu_us"] for r in rows] == [round(int(p["Orig Duration (ns)"]) / 1e3, 1) for p in projected]
    # gap before step 1: step 1's first op 285650567 - step 0's last op (285337537 + 235620) = 77410 ns
    assert rows[0]["gpu_gap_us"] is None and rows[1]["gpu_gap_us"] == 77.4


def test_gpu_idle_gaps(con, shared):
    rows = {r["stage"]: r for r in run(con, "gpu_idle_gaps.sql")}
    proj_sum = {r["Range"]: int(r["Total Proj Time (ns)"]) for r in report(shared, "nvtx_gpu_proj_sum")}
    # analyze.attribution's busy_ns is the union of KERNEL intervals; the gaps query counts every GPU op
    # (a memcpy keeps the GPU busy), so they differ by decode's one memcpy (62562 ns, not overlapping)
    busy = dict(con.execute("SELECT name, busy_ns FROM stages").fetchall())
    memcpy = {"decode": 62562}
    for stage, row in rows.items():
        assert row["span_ns"] == proj_sum[f"dsocr:{stage}"]
        assert row["busy_ns"] == busy[f"dsocr:{stage}"] + memcpy.get(stage, 0)
        assert row["idle_ns"] == row["span_ns"] - row["busy_ns"]
    # projector: one kernel, so no gap and no idle time
    assert (rows["projector"]["gaps"], rows["projector"]["idle_ns"], rows["projector"]["busy_ns"]) == (0, 0, 5568)
    # sam: 12 kernels run back to back in launch order on one stream -> 11 gaps between them
    assert rows["sam"]["gaps"] == 11


def test_category_mix_per_stage(con, shared):
    rows = run(con, "category_mix_per_stage.sql")
    mix = {(r["stage"], r["category"]): (r["ops"], r["total_ns"]) for r in rows}
    # prefill's 25 kernels (nvtx_kern_sum): 12 nvjet GEMMs 66626 ns; softmax 8640 ns; gelu 25696 +
    # direct copy 4033 + bf16 copy 2464 = 32193 ns elementwise
    assert mix[("prefill", "gemm")] == (12, 66626)
    assert mix[("prefill", "reduction")] == (1, 8640)
    assert mix[("prefill", "elementwise")] == (12, 25696 + 4033 + 2464)
    # decode holds the one memcpy of the trace: its duration straight from the export
    raw = sqlite3.connect(f"file:{shared / 'fixtures/nsys/nvtx-features-2025.3.sqlite'}?mode=ro", uri=True)
    (memcpy_ns,) = raw.execute('SELECT "end" - start FROM CUPTI_ACTIVITY_KIND_MEMCPY').fetchone()
    assert mix[("decode", "memory")] == (1, memcpy_ns)
    for stage in STAGES_IN_FIXTURE:
        assert sum(r["pct_of_stage"] for r in rows if r["stage"] == stage) == pytest.approx(100, abs=0.3)


def test_launch_rate_per_stage(con, shared):
    rows = {r["stage"]: r for r in run(con, "launch_rate_per_stage.sql")}
    nvtx_sum = {r["Range"]: int(r["Total Time (ns)"]) for r in report(shared, "nvtx_sum")}
    launches = dict(con.execute("SELECT name, launches FROM stages").fetchall())
    for stage, row in rows.items():
        assert row["cpu_ms"] == round(nvtx_sum[f"dsocr:{stage}"] / 1e6, 3)
        assert row["launches"] == launches[f"dsocr:{stage}"] == row["gpu_ops"]   # one op per launch here
    # projector: 1 launch in a 37483 ns range (nvtx_sum) -> 26.68 launches per ms
    assert rows["projector"]["launches_per_ms"] == round(1 / 0.037483, 2) == 26.68
    # its only kernel starts 262270442 (nvtx_gpu_proj_trace); the latency is from its launching call's start
    raw = sqlite3.connect(f"file:{shared / 'fixtures/nsys/nvtx-features-2025.3.sqlite'}?mode=ro", uri=True)
    (latency_ns,) = raw.execute("""SELECT k.start - r.start FROM CUPTI_ACTIVITY_KIND_KERNEL k
        JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = k.correlationId
        WHERE k.start = 262270442""").fetchone()
    assert rows["projector"]["latency_p50_us"] == rows["projector"]["latency_max_us"] == round(latency_ns / 1e3, 1)


def test_top_kernels(con, shared):
    rows = run(con, "top_kernels.sql")
    reference = report(shared, "cuda_gpu_kern_sum")
    assert [(r["kernel"], r["calls"], r["total_ns"], r["min_ns"], r["max_ns"]) for r in rows] == [
        (r["Name"][:70], int(r["Instances"]), int(r["Total Time (ns)"]), int(r["Min (ns)"]), int(r["Max (ns)"]))
        for r in reference]
    assert [r["pct"] for r in rows] == [float(r["Time (%)"]) for r in reference]


def test_cli_runs_a_file(capsys):
    """The way the header says to run them: dsocr-analyze sql TRACE -f sql/FILE.sql --csv."""
    from dsocr_perf.analyze.cli import main

    path = EXAMPLE if EXAMPLE.exists() else SHARED / "fixtures/nsys/nvtx-features-2025.3.sqlite"
    main(["sql", str(path), "-f", str(SQL_DIR / "kernels_per_stage.sql"), "--csv", "--no-cache"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "stage,instances,kernels,gpu_ops,kernel_ns,kernel_ms,kernels_per_instance"
    assert lines[1] == "prefill,1,25,25,107459,0.107,25.0"
