"""Wall-time accounting on an export whose every interval is known by construction (numbers by hand):

    thread T, range `step` [1000, 2000]:
      1100-1110 cudaLaunchKernel (corr 1)  -> kernel K1 runs 1120-1300
      1310-1500 cudaStreamSynchronize (2)     (NVIDIA's synchronisation record)
      1600-1700 cudaMemcpyAsync (3)        -> device-to-host copy runs 1650-1690
      1800-1820 cudaLaunchKernel (4)       -> kernel K2 runs 1830-1990

wall 1000; busy = K1 + K2 = 180 + 160 = 340; idle = 660.
The GPU runs nothing in [1000,1120], [1300,1650], [1690,1830], [1990,2000]: 620 ns. Meanwhile the thread is
in launch calls 10 + 20 = 30, in the sync 190, in the copy call 50 + 10 = 60; host = 620 - 280 = 340.
The GPU runs the copy (not a kernel of the range) 1650-1690: gpu_other = 40. 30 + 190 + 60 + 340 + 40 = 660.
GPU gaps between ops: [1300,1650] (next op: the copy; sync 190, memcpy 50, host 110 -> cause sync) and
[1690,1830] (next op K2; memcpy 10, launch 20, host 110 -> cause host).
"""
from __future__ import annotations

import sqlite3

import pytest

from dsocr_perf.analyze.trace import open_trace

PID = 7
GPID = (1 << 48) | (PID << 24)
T = GPID | 7
DDL = """
CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL,
    contextId INTEGER, streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER, demangledName INTEGER,
    shortName INTEGER, gridX INTEGER, gridY INTEGER, gridZ INTEGER, blockX INTEGER, blockY INTEGER, blockZ INTEGER,
    registersPerThread INTEGER, staticSharedMemory INTEGER, dynamicSharedMemory INTEGER);
CREATE TABLE CUPTI_ACTIVITY_KIND_MEMCPY (start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL,
    contextId INTEGER, streamId INTEGER NOT NULL, correlationId INTEGER, globalPid INTEGER, bytes INTEGER,
    copyKind INTEGER);
CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME (start INTEGER NOT NULL, end INTEGER NOT NULL, eventClass INTEGER,
    globalTid INTEGER, correlationId INTEGER, nameId INTEGER, returnValue INTEGER, callchainId INTEGER);
CREATE TABLE CUPTI_ACTIVITY_KIND_SYNCHRONIZATION (start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER,
    contextId INTEGER, streamId INTEGER, correlationId INTEGER, globalPid INTEGER, syncType INTEGER, eventId INTEGER);
CREATE TABLE NVTX_EVENTS (start INTEGER NOT NULL, end INTEGER, eventType INTEGER NOT NULL, rangeId INTEGER,
    category INTEGER, color INTEGER, text TEXT, globalTid INTEGER, endGlobalTid INTEGER, textId INTEGER,
    domainId INTEGER, uint64Value INTEGER, int64Value INTEGER, doubleValue REAL, uint32Value INTEGER,
    int32Value INTEGER, floatValue REAL, jsonTextId INTEGER, jsonText TEXT);
"""


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("accounting") / "known.sqlite"
    db = sqlite3.connect(path)
    db.executescript(DDL)
    db.executemany("INSERT INTO StringIds VALUES (?, ?)", [(1, "cudaLaunchKernel_v7000"),
                   (2, "cudaStreamSynchronize_v3020"), (3, "cudaMemcpyAsync_v3020"), (4, "k1"), (5, "k2")])
    db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES (?, ?, 0, ?, ?, ?, 0, NULL)",
                   [(1100, 1110, T, 1, 1), (1310, 1500, T, 2, 2), (1600, 1700, T, 3, 3), (1800, 1820, T, 4, 1)])
    db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, end, deviceId, streamId, correlationId, globalPid, "
                   "demangledName, shortName) VALUES (?, ?, 0, 7, ?, ?, ?, ?)",
                   [(1120, 1300, 1, GPID, 4, 4), (1830, 1990, 4, GPID, 5, 5)])
    db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY (start, end, deviceId, streamId, correlationId, globalPid, "
               "bytes, copyKind) VALUES (1650, 1690, 0, 7, 3, ?, 4096, 2)", [GPID])
    db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_SYNCHRONIZATION VALUES (1310, 1500, 0, 1, 7, 2, ?, 3, NULL)", [GPID])
    db.execute("INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid) VALUES (1000, 2000, 59, 'step', ?)", [T])
    db.commit()
    db.close()
    return open_trace(path, cache=False)


def test_wall_busy_idle_and_causes(trace):
    row = trace.table("range_stats").to_pylist()[0]
    assert (row["wall_ns"], row["busy_ns"], row["idle_ns"], row["gpu_idle_ns"]) == (1000, 340, 660, 620)
    causes = {k: row[f"idle_{k}_ns"] for k in ("gpu_other", "sync", "memcpy", "launch", "other_api", "host")}
    assert causes == {"gpu_other": 40, "sync": 190, "memcpy": 60, "launch": 30, "other_api": 0, "host": 340}
    assert sum(causes.values()) == row["idle_ns"]


def test_call_counts(trace):
    row = trace.table("range_stats").to_pylist()[0]
    assert (row["api_calls"], row["kernel_launches"], row["host_syncs"], row["memcpy_calls"], row["memcpy_DtoH"]) == \
        (4, 2, 1, 1, 1)
    kinds = trace.con.execute("SELECT api_name, kind, gpu_ops, memcpy_direction FROM cuda_api ORDER BY start_ns").fetchall()
    assert kinds == [("cudaLaunchKernel", "launch", 1, None), ("cudaStreamSynchronize", "sync", 0, None),
                     ("cudaMemcpyAsync", "memcpy", 1, "DtoH"), ("cudaLaunchKernel", "launch", 1, None)]


def test_gpu_gaps_and_their_causes(trace):
    gaps = trace.con.execute("""SELECT start_ns, end_ns, cause, sync_ns, memcpy_ns, launch_ns, other_api_ns, host_ns, stage
                                FROM gpu_gaps ORDER BY start_ns""").fetchall()
    assert gaps == [(1300, 1650, "sync", 190, 50, 0, 0, 110, None), (1690, 1830, "host", 0, 10, 20, 0, 110, None)]


def test_the_limiter_is_the_host(trace):
    from dsocr_perf.analyze.out.document import document

    (entry,) = document(trace, "all")["ranges"]
    assert entry["bound"] == "host" and entry["idle_frac"] == pytest.approx(0.66)
    assert entry["idle_causes_ns"]["host"] == 340 and entry["memcpy"]["DtoH"] == 1


def test_h100_steps_equal_a_plain_count_over_cuda_api():
    """On the committed H100 example: per decode step, the launches, syncs and copies of the analysis
    equal a plain SQL count of the CUDA API calls inside the step (sql/decode_step_api_calls.sql), and
    in every range the idle causes add up to the idle time."""
    from pathlib import Path

    from dsocr_perf.analyze.out.document import document

    repo = Path(__file__).resolve().parents[1]
    example = open_trace(repo / "traces/examples/h100-gundam.sqlite.gz", cache=False)
    steps = document(example)["steps"]
    counted = example.con.execute((repo / "sql/decode_step_api_calls.sql").read_text()).fetchall()
    assert len(steps) == len(counted) == 128
    ours = [(s["step"], s["kernel_launches"], s["host_syncs"], sum(s["memcpy"].values()), s["api_calls"]) for s in steps]
    assert ours == [row[:5] for row in counted]
    from collections import Counter

    per_step = Counter((o[1], o[2], o[3]) for o in ours)    # the faithful loop: (almost) every step alike
    assert per_step.most_common(1)[0] == ((1080, 34, 67), 123)
    stats = example.table("range_stats").to_pylist()
    causes = ("gpu_other", "sync", "memcpy", "launch", "other_api", "host")
    assert all(sum(r[f"idle_{c}_ns"] for c in causes) == r["idle_ns"] == max(0, r["wall_ns"] - r["busy_ns"])
               for r in stats)


def test_gpu_metrics_averaged_over_each_range(tmp_path, trace):
    """Nsight Systems' sampled GPU metrics (matched by name, ids made up): samples every 100 ns from 0 to
    3000, SMs active = 10 % before 1500 and 50 % from then on; the range [1000, 2000] holds the samples at
    1000..2000: 5 at 10 % and 6 at 50 % -> mean (50 + 300) / 11; DRAM read constant 7 %."""
    import shutil

    path = tmp_path / "metrics.sqlite"
    shutil.copy(trace.path, path)
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE TARGET_INFO_GPU_METRICS (typeId INTEGER, sourceId INTEGER, typeName TEXT, metricId INTEGER,
                                              metricName TEXT);
        CREATE TABLE GPU_METRICS (rawTimestamp INTEGER, timestamp INTEGER, typeId INTEGER, metricId INTEGER,
                                  value INTEGER);
        INSERT INTO TARGET_INFO_GPU_METRICS VALUES (3, 0, 'GH100', 11, 'SMs Active [Throughput %]'),
            (3, 0, 'GH100', 12, 'DRAM Read Bandwidth [Throughput %]'), (3, 0, 'GH100', 13, 'GPC Clock Frequency [MHz]');
    """)
    rows = [(t, t, 3, 11, 10 if t < 1500 else 50) for t in range(0, 3001, 100)]
    rows += [(t, t, 3, 12, 7) for t in range(0, 3001, 100)] + [(t, t, 3, 13, 1980) for t in range(0, 3001, 100)]
    db.executemany("INSERT INTO GPU_METRICS VALUES (?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    opened = open_trace(path, cache=False)
    row = opened.table("range_stats").to_pylist()[0]
    assert row["sm_active_wall_pct"] == pytest.approx((5 * 10 + 6 * 50) / 11)
    assert row["dram_read_wall_pct"] == 7 and row["tensor_active_wall_pct"] is None
    assert opened.con.execute("SELECT metric, count(*) FROM gpu_metrics GROUP BY 1 ORDER BY 1").fetchall() == \
        [("dram_read", 31), ("sm_active", 31)]
    from dsocr_perf.analyze.out.document import document

    (entry,) = document(opened, "all")["ranges"]
    assert entry["sm_active_wall_pct"] == pytest.approx(31.818, abs=1e-3) and entry["dram_write_wall_pct"] is None


@pytest.fixture(scope="module")
def operators_trace(tmp_path_factory):
    """The export above with the range in domain dsocr (`decode_step`) and PyTorch operator ranges inside it,
    in the default domain, as `--torch-ops-nvtx` records them: inside the session's own profiler label, the
    stage's twin `decode_step, op_id = 1` [1001, 1780] (not an operator), or directly in the stage:
        aten::mm, seq = 1         [1050, 1330]   gaps inside: [1300, 1330] = 30
        aten::item, op_id = 2     [1335, 1720]   gaps inside: [1335, 1650] = 315, [1690, 1720] = 30
        aten::mm, seq = 3         [1790, 2000]   gaps inside: [1790, 1830] = 40   (parent: the stage itself)
    GPU gaps [1300, 1650] (350) and [1690, 1830] (140): 490 in all, 75 of it between operators."""
    path = tmp_path_factory.mktemp("operators") / "ops.sqlite"
    db = sqlite3.connect(path)
    db.executescript(DDL)
    db.executemany("INSERT INTO StringIds VALUES (?, ?)", [(1, "cudaLaunchKernel_v7000"),
                   (2, "cudaStreamSynchronize_v3020"), (3, "cudaMemcpyAsync_v3020"), (4, "k1"), (5, "k2")])
    db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES (?, ?, 0, ?, ?, ?, 0, NULL)",
                   [(1100, 1110, T, 1, 1), (1310, 1500, T, 2, 2), (1600, 1700, T, 3, 3), (1800, 1820, T, 4, 1)])
    db.executemany("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, end, deviceId, streamId, correlationId, globalPid, "
                   "demangledName, shortName) VALUES (?, ?, 0, 7, ?, ?, ?, ?)",
                   [(1120, 1300, 1, GPID, 4, 4), (1830, 1990, 4, GPID, 5, 5)])
    db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY (start, end, deviceId, streamId, correlationId, globalPid, "
               "bytes, copyKind) VALUES (1650, 1690, 0, 7, 3, ?, 4096, 2)", [GPID])
    db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_SYNCHRONIZATION VALUES (1310, 1500, 0, 1, 7, 2, ?, 3, NULL)", [GPID])
    db.execute("INSERT INTO NVTX_EVENTS (start, eventType, text, globalTid, domainId) VALUES (0, 75, 'dsocr', ?, 1)", [T])
    db.execute("INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid, domainId) "
               "VALUES (1000, 2000, 59, 'decode_step', ?, 1)", [T])
    db.executemany("INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid) VALUES (?, ?, 59, ?, ?)",
                   [(1001, 1780, "decode_step, op_id = 1", T), (1050, 1330, "aten::mm, seq = 1", T),
                    (1335, 1720, "aten::item, op_id = 2", T), (1790, 2000, "aten::mm, seq = 3", T)])
    db.commit()
    db.close()
    return open_trace(path, cache=False)


def test_host_operators_per_stage_query(operators_trace):
    from pathlib import Path

    query = (Path(__file__).resolve().parents[1] / "sql/host_operators_per_stage.sql").read_text()
    con = operators_trace.sandbox(query)
    rows = con.execute(query).fetchall()
    got = [(stage, op, calls, gap_ns) for stage, op, calls, _, _, gap_ns, _ in rows]
    assert got == [("decode_step", "aten::item", 1, 345), ("decode_step", "(between operators)", None, 75),
                   ("decode_step", "aten::mm", 2, 70)]
    assert [r[3] for r in rows] == [0.0, None, 0.0] and [r[6] for r in rows] == [70.4, 15.3, 14.3]
    assert sum(gap for *_, gap in got) == 350 + 140
