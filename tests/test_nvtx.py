"""analyze.read.nvtx: NVTX events -> ranges and marks, on a hand-written export whose every row is
known, and on the bundled nvtx-features capture."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb

from dsocr_perf.analyze.read.nsys import Strings
from dsocr_perf.analyze.read.nvtx import read_nvtx
from dsocr_perf.analyze.read.sqlite import SqliteFile

REPO = Path(__file__).resolve().parents[1]
P1, P2 = 100 << 24, 200 << 24          # globalPid of two processes (pid 100 and pid 200)
T1, T2 = P1 | 101, P2 | 201            # one thread in each


def _export(path: Path, events: list[tuple]) -> Path:
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE NVTX_EVENTS (start INTEGER NOT NULL, end INTEGER, eventType INTEGER NOT NULL, rangeId INTEGER,
            category INTEGER, color INTEGER, text TEXT, globalTid INTEGER, endGlobalTid INTEGER, textId INTEGER,
            domainId INTEGER, uint64Value INTEGER, int64Value INTEGER, doubleValue REAL, uint32Value INTEGER,
            int32Value INTEGER, floatValue REAL, jsonTextId INTEGER, jsonText TEXT);
        INSERT INTO StringIds VALUES (1, 'dsocr'), (2, 'prefill'), (3, 'decode_step'), (4, 'other_domain');
    """)
    con.executemany("INSERT INTO NVTX_EVENTS (start, end, eventType, text, globalTid, endGlobalTid, textId, domainId, "
                    "int64Value, doubleValue) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
    con.commit()
    con.close()
    return path


class Read:
    """read_nvtx on an export, with the payloads read the way the tables read them (a second pass)."""

    def __init__(self, path: Path, payloads: bool = True):
        src = SqliteFile(path)
        self.nvtx = read_nvtx(src, Strings(src, "StringIds").lookup)
        self.ranges, self.marks = self.nvtx.ranges, self.nvtx.marks
        if payloads and self.nvtx.payloads is not None:
            ranges, marks = self.nvtx.payloads(lambda: SqliteFile(path))
            self.ranges = self.ranges.append_column("payload", ranges)
            self.marks = self.marks.append_column("payload", marks)

    def __getattr__(self, name):
        return getattr(self.nvtx, name)


def _rows(table, order: str):
    db = duckdb.connect()
    db.register("t", table)
    return db.execute(f"SELECT * FROM t ORDER BY {order}").fetchall()


def test_names_domains_order_and_open_ranges(tmp_path):
    events = [  # start, end, eventType, text, globalTid, endGlobalTid, textId, domainId, int64Value, doubleValue
        (0, None, 75, None, T1, None, 1, 7, None, None),                # process 1: domain 7 = 'dsocr' (registered)
        (0, None, 75, "other_inline", T2, None, None, 7, None, None),   # process 2: domain 7 = another name (inline)
        (10, 90, 59, None, T1, None, 2, 7, None, None),                 # dsocr:prefill, registered text
        (10, 50, 59, None, T1, None, 3, 7, 5, None),                    # same start, shorter: after prefill; payload 5
        (10, None, 59, "never_closed", T1, None, None, 0, None, None),  # open: ends at the last NVTX timestamp, first
        (20, 30, 59, "page", T2, None, None, 7, None, 2.5),             # other process: its own domain 7
        (25, 120, 60, "request", T1, T2, None, 0, None, None),          # start/end, ended on another thread
        (40, 45, 59, None, T1, None, 99, 0, None, None),                # textId unknown and no text: ''
        (60, None, 34, "done", T1, None, None, 7, 3, None),             # a mark in dsocr
    ]
    nvtx = Read(_export(tmp_path / "t.sqlite", events))

    assert _rows(nvtx.ranges, "range_id") == [
        # range_id, name, domain, start, end, gpid, pid, tid, style, end_tid, payload
        (0, "never_closed", "", 10, 120, P1, 100, 101, "pushpop", None, None),
        (1, "dsocr:prefill", "dsocr", 10, 90, P1, 100, 101, "pushpop", None, None),
        (2, "dsocr:decode_step", "dsocr", 10, 50, P1, 100, 101, "pushpop", None, "5"),
        (3, "other_inline:page", "other_inline", 20, 30, P2, 200, 201, "pushpop", None, "2.5"),
        (4, "request", "", 25, 120, P1, 100, 101, "startend", 201, None),
        (5, "", "", 40, 45, P1, 100, 101, "pushpop", None, None),
    ]
    assert _rows(nvtx.marks, "ts_ns") == [(60, "dsocr:done", "dsocr", P1, 100, 101, "3")]
    # the engine's arrays say the same
    assert [nvtx.names[i] for i in nvtx.name_id] == [r[1] for r in _rows(nvtx.ranges, "range_id")]
    assert nvtx.thread.tolist() == [T1, T1, T1, T2, T1, T1]
    assert nvtx.pushpop.tolist() == [True, True, True, True, False, True]
    assert nvtx.same_thread.tolist() == [True, True, True, True, False, True]


def test_payloads_are_read_when_asked_and_no_nvtx_table_is_empty(tmp_path):
    path = _export(tmp_path / "t.sqlite", [(1, 2, 59, "a", T1, None, None, 0, 42, None)])
    assert "payload" not in Read(path, payloads=False).ranges.column_names
    assert _rows(Read(path).ranges, "range_id")[0][-1] == "42"
    con = sqlite3.connect(path)
    con.execute("DROP TABLE NVTX_EVENTS")
    con.commit()
    con.close()
    empty = Read(path)
    assert empty.ranges.num_rows == 0 and empty.marks.num_rows == 0 and empty.names == []


def test_bundled_capture():
    """nvtx-features-2025.3 (nsys 2025.3): 20 ranges, the start/end `request` ended on the worker thread."""
    nvtx = Read(REPO / "traces/examples/nvtx-features-2025.3.sqlite")
    rows = _rows(nvtx.ranges, "range_id")
    assert len(rows) == 20
    assert rows[0][1:5] == ("dsocr:request", "dsocr", 12761117, 321890830) and rows[0][8:10] == ("startend", 500)
    assert [r[1] for r in rows if r[2] == ""] == ["default_domain_range"]
    assert [r[10] for r in rows if r[1] == "dsocr:decode_step"] == [str(i) for i in range(8)]
    assert rows[19][1] == "dsocr:worker_thread" and rows[19][7] == 500
    assert [m[1] for m in _rows(nvtx.marks, "ts_ns")] == ["dsocr:workload:begin", "dsocr:workload:end"]
