"""NVTX events of an nsys export -> the `ranges` and `marks` tables (Arrow) and the range columns
the engine needs as NumPy arrays (`Nvtx.name_id`, `.thread`, ...).

Naming, as NVIDIA's reports do it: a range's text is its registered string (textId -> StringIds)
or its inline text; its domain is the domain-create event (eventType 75) with the same domainId in
the same process; the name is 'domain:text', or the bare text in the default domain. A range never
closed ends at the last NVTX timestamp. `range_id` numbers the ranges by start, then globalTid, then
end descending with never-closed ranges first (so a parent comes before the children it encloses).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from dsocr_perf.analyze.columns import filled
from dsocr_perf.analyze.errors import TraceError
from dsocr_perf.analyze.keys import dense_index
from dsocr_perf.analyze.read.raw import int_column, valid_text

RANGE_TYPES = (59, 60, 70, 71)   # PushPop, StartEnd, NVTXT PushPop, NVTXT StartEnd
PUSHPOP_TYPES = (59, 70)
MARK = 34
DOMAIN_CREATE = 75
PAYLOAD_COLUMNS = ("int64Value", "uint64Value", "int32Value", "uint32Value", "doubleValue", "floatValue", "jsonText")
TID_MASK = (1 << 24) - 1


@dataclass
class Nvtx:
    ranges: pa.Table        # ranges columns (payload left out), in range_id order
    marks: pa.Table         # marks columns (payload left out), in event order
    range_rows: pa.Array    # per range / mark: its row among the events read (for the payloads)
    mark_rows: pa.Array
    names: list[str]        # the distinct range names, sorted
    name_id: np.ndarray     # per range: index into names
    thread: np.ndarray      # per range: globalTid (-1 where the export has none)
    pushpop: np.ndarray     # per range: bool, push/pop (nested per thread) rather than start/end
    same_thread: np.ndarray  # per range: bool, no ending thread recorded (NVIDIA attributes only these)
    domain_id: np.ndarray    # per range: dense domain index (0: the default domain)
    process: np.ndarray      # per range: the process key ops and calls use (-1 unknown)
    warnings: list[str] = field(default_factory=list)
    payloads: object = None  # payloads(open_source) -> (range payloads, mark payloads), text


EVENT_COLUMNS = ("start", "end", "eventType", "globalTid", "endGlobalTid", "text", "textId", "domainId")
EVENT_KINDS = RANGE_TYPES + (MARK, DOMAIN_CREATE)


def read_nvtx(source, strings) -> Nvtx:
    """`source`: a table source (analyze.read.sqlite / .parquet); `strings(ids) -> {id: text}`
    resolves registered strings (StringIds). Payloads are read when asked (`Nvtx.payloads`)."""
    table = source.table("NVTX_EVENTS")
    if table is None:
        return _build(Events.empty(), {})
    columns = source.columns(table)
    if not {"start", "eventtype"} <= set(columns):
        raise TraceError(f"{source.name}: NVTX_EVENTS lacks its start or eventType column; re-export the report "
                         "with `nsys export --type sqlite`")
    kinds = (columns["eventtype"], EVENT_KINDS)
    present = [columns[n.lower()] for n in EVENT_COLUMNS if n.lower() in columns]
    events = Events.of(source.select(table, present, where_in=kinds))
    keep, warnings = events.plausible()
    events = events.rows(keep)
    nvtx = _build(events, strings(np.unique(events.text_id[~events.text_id_null]).tolist()))
    nvtx.warnings += warnings
    payload_columns = [columns[n.lower()] for n in PAYLOAD_COLUMNS if n.lower() in columns]

    def payloads(open_source) -> tuple[pa.Array, pa.Array]:
        """Payload text of every range and mark, in their table order (read again, same rows)."""
        import pyarrow.compute as pc

        if not payload_columns:
            return pa.nulls(nvtx.ranges.num_rows, pa.string()), pa.nulls(nvtx.marks.num_rows, pa.string())
        src = open_source()
        try:
            data = src.select(table, payload_columns + [columns["eventtype"]], where_in=kinds)
        finally:
            src.close()
        wanted = np.isin(filled(data.column(data.num_columns - 1), -1), EVENT_KINDS)
        text = pc.coalesce(*[valid_text(c) for c in data.columns[:-1]])
        text = text.filter(pa.array(wanted if keep is None else _subset(wanted, keep)))
        return text.take(nvtx.range_rows), text.take(nvtx.mark_rows)

    nvtx.payloads = payloads
    return nvtx


def _subset(wanted: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`wanted` with the rows of it that `keep` (a mask over the wanted rows) drops switched off."""
    out = wanted.copy()
    out[np.flatnonzero(wanted)[~keep]] = False
    return out


class Events:
    """NVTX_EVENTS rows as NumPy columns: integers with a NULL mask each, the inline text as codes."""
    INTS = ("start", "end", "eventType", "globalTid", "endGlobalTid", "textId", "domainId")

    def __init__(self, ints: dict, nulls: dict, text_code: np.ndarray, texts: list[str]):
        self.start, self.end, self.kind = ints["start"], ints["end"], ints["eventType"]
        self.gtid, self.end_gtid = ints["globalTid"], ints["endGlobalTid"]
        self.text_id, self.domain_id = ints["textId"], ints["domainId"]
        self.start_null, self.end_null = nulls["start"], nulls["end"]
        self.gtid_null, self.end_gtid_null = nulls["globalTid"], nulls["endGlobalTid"]
        self.text_id_null, self.domain_null = nulls["textId"], nulls["domainId"]
        self.text_code, self.texts = text_code, texts
        self._ints, self._nulls = ints, nulls

    @classmethod
    def of(cls, table: pa.Table) -> "Events":
        by_name = {_canonical(n, EVENT_COLUMNS): n for n in table.column_names}
        n = table.num_rows
        ints, nulls = {}, {}
        for name in cls.INTS:
            if name in by_name:
                ints[name], nulls[name] = int_values(table.column(by_name[name]))
            else:
                ints[name], nulls[name] = np.zeros(n, np.int64), np.ones(n, bool)
        codes, texts = text_codes(table.column(by_name["text"])) if "text" in by_name else \
            (np.full(n, -1, np.int64), [])
        kept = np.isin(ints["eventType"], EVENT_KINDS) & ~nulls["eventType"]   # a Parquet source filters nothing
        events = cls(ints, nulls, codes, texts)
        return events if kept.all() else events.rows(kept)

    @classmethod
    def empty(cls) -> "Events":
        return cls({k: np.zeros(0, np.int64) for k in cls.INTS}, {k: np.zeros(0, bool) for k in cls.INTS},
                   np.zeros(0, np.int64), [])

    def rows(self, keep: np.ndarray | None) -> "Events":
        if keep is None:
            return self
        return Events({k: v[keep] for k, v in self._ints.items()}, {k: v[keep] for k, v in self._nulls.items()},
                      self.text_code[keep], self.texts)

    def plausible(self) -> tuple[np.ndarray | None, list[str]]:
        """Rows to keep (None: all) and warnings: events without a start, ranges that end before they start."""
        backwards = np.isin(self.kind, RANGE_TYPES) & ~self.end_null & (self.end < self.start) & ~self.start_null
        warnings = []
        for mask, what in ((self.start_null, "NVTX events without a start time"),
                           (backwards, "NVTX ranges that end before they start")):
            n = int(np.count_nonzero(mask))
            if n:
                warnings.append(f"{n} {what} left out")
        return (~(self.start_null | backwards) if warnings else None), warnings


def _canonical(name: str, wanted) -> str:
    return next((w for w in wanted if w.lower() == name.lower()), name)


def int_values(column) -> tuple[np.ndarray, np.ndarray]:
    """(values as int64, NULL -> 0; NULL mask) of any column: what is not an integer (text, a
    fractional REAL, a number beyond int64) counts as NULL (analyze.read.raw.int_column)."""
    column = int_column(column)
    return filled(column, 0).astype(np.int64, copy=False), _nulls(column)


def text_codes(column) -> tuple[np.ndarray, list[str]]:
    """A string column as codes into its distinct values (first appearance order), -1 for NULL; valid
    UTF-8 guaranteed (analyze.read.raw.valid_text). The values are compared as fixed-width byte
    strings (length first, then the bytes) by NumPy: no Python string per row (texts of more than
    256 bytes: a dictionary in Python)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    column = valid_text(column)
    n = len(column)
    codes = np.full(n, -1, np.int64)
    rows = np.flatnonzero(~_nulls(column))
    if not rows.size:
        return codes, []
    width_type = np.int64 if pa.types.is_large_string(column.type) else np.int32
    offsets = np.frombuffer(column.buffers()[1], width_type)[column.offset:column.offset + n + 1].astype(np.int64)
    data = np.frombuffer(column.buffers()[2], np.uint8) if column.buffers()[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[rows], np.diff(offsets)[rows]
    width = int(lengths.max())
    if width > 256:                                    # long texts: a key per row would be large
        index: dict[str, int] = {}
        codes[rows] = [index.setdefault(v, len(index)) for v in column.take(pa.array(rows)).to_pylist()]
        return codes, list(index)
    key = np.zeros((rows.size, 4 + width), np.uint8)
    key[:, :4] = lengths.astype(">u4").view(np.uint8).reshape(-1, 4)
    for j in range(width):
        longer = np.flatnonzero(lengths > j)
        key[longer, 4 + j] = data[starts[longer] + j]
    distinct, first, inverse = np.unique(key.view(f"S{4 + width}").reshape(-1), return_index=True,
                                         return_inverse=True)
    by_appearance = np.argsort(first, kind="stable")
    rank = np.empty(distinct.size, np.int64)
    rank[by_appearance] = np.arange(distinct.size)
    codes[rows] = rank[inverse.reshape(-1)]
    texts = [column[int(rows[first[i]])].as_py() for i in by_appearance.tolist()]
    return codes, texts


def _nulls(column: pa.Array) -> np.ndarray:
    """The NULL mask of an Arrow array."""
    n = len(column)
    if not column.null_count:
        return np.zeros(n, bool)
    bits = np.unpackbits(np.frombuffer(column.buffers()[0], np.uint8), count=column.offset + n, bitorder="little")
    return ~bits[column.offset:].astype(bool)


def _build(events: Events, registered: dict[int, str]) -> Nvtx:
    n = events.start.size
    kind, start, end, end_null = events.kind, events.start, events.end, events.end_null
    gtid, gtid_null, domain_id, domain_null = events.gtid, events.gtid_null, events.domain_id, events.domain_null
    pool, text_code = _texts(events, registered)
    gpid = gtid & ~TID_MASK

    # domain name per row: the domain-create event of the same (process, domainId); the first
    # domain-create row of a key with a name names it (a dict pass: a pass over every row per create
    # was quadratic in a hostile export's domain creates)
    domains = [""]
    index_of = {"": 0}
    domain_code = np.zeros(n, np.int64)
    keyed = ~gtid_null & ~domain_null
    code_of_key: dict[tuple[int, int], int] = {}
    for i in np.flatnonzero((kind == DOMAIN_CREATE) & keyed).tolist():
        name = pool[text_code[i]]
        if name not in index_of:
            index_of[name] = len(domains)
            domains.append(name)
        if index_of[name]:
            code_of_key.setdefault((int(gpid[i]), int(domain_id[i])), index_of[name])
    if code_of_key:
        rows = np.flatnonzero(keyed)
        # one dense key per (process, domainId) pair (np.unique over row pairs sorts them as bytes: slow)
        procs, proc = dense_index(gpid[rows])
        ids, dom = dense_index(domain_id[rows])
        pairs, inverse = dense_index(proc * ids.size + dom)
        codes = np.array([code_of_key.get((int(procs[k // ids.size]), int(ids[k % ids.size])), 0)
                          for k in pairs.tolist()], np.int64)
        domain_code[rows] = codes[inverse]

    # qualified name per row, computed once per distinct (domain, text) pair
    pair, pair_of_row = dense_index(domain_code * (len(pool) + 1) + text_code)
    qualified = [_qualify(domains[p // (len(pool) + 1)], pool[p % (len(pool) + 1)]) for p in pair.tolist()]
    names = sorted(set(qualified))
    index = {name: i for i, name in enumerate(names)}
    name_code = np.array([index[q] for q in qualified], np.int64)[pair_of_row.reshape(-1)]
    domain_text = pa.array(domains, pa.string())

    last = max(int(start.max()) if n else 0, int(end[~end_null].max()) if (~end_null).any() else -(1 << 62))
    rows = _range_order(events)
    used, name_id = dense_index(name_code[rows])
    range_name_list = [names[i] for i in used.tolist()]
    pushpop = np.isin(kind[rows], PUSHPOP_TYPES)

    def process_columns(r):
        g, nul = gtid[r], gtid_null[r]
        return {"gpid": pa.array(g & ~TID_MASK, mask=nul), "pid": pa.array((g >> 24) & TID_MASK, mask=nul),
                "tid": pa.array(g & TID_MASK, mask=nul)}

    end_gtid_null = events.end_gtid_null[rows]
    ranges = pa.table({
        "range_id": np.arange(rows.size, dtype=np.int64),
        "name": pa.DictionaryArray.from_arrays(name_id, pa.array(range_name_list, pa.string())),
        "domain": pa.DictionaryArray.from_arrays(domain_code[rows], domain_text),
        "start_ns": start[rows], "end_ns": np.where(end_null[rows], last, end[rows]),
        **process_columns(rows),
        "style": pa.DictionaryArray.from_arrays(pushpop.astype(np.int8), pa.array(["startend", "pushpop"])),
        "end_tid": pa.array(events.end_gtid[rows] & TID_MASK, mask=end_gtid_null),
    })
    marks_rows = np.flatnonzero(kind == MARK)
    marks = pa.table({
        "ts_ns": start[marks_rows],
        "name": pa.DictionaryArray.from_arrays(name_code[marks_rows], pa.array(names, pa.string())),
        "domain": pa.DictionaryArray.from_arrays(domain_code[marks_rows], domain_text),
        **process_columns(marks_rows),
    })
    return Nvtx(ranges=ranges, marks=marks, range_rows=pa.array(rows), mark_rows=pa.array(marks_rows),
                names=range_name_list, name_id=name_id,
                thread=np.where(gtid_null[rows], -1, gtid[rows]), pushpop=pushpop,
                same_thread=end_gtid_null, domain_id=domain_code[rows],
                process=np.where(gtid_null[rows], -1, gtid[rows] >> 24))


def _range_order(events: Events) -> np.ndarray:
    """The range rows by start, then globalTid (none last), then end descending (never closed first):
    a parent before the children it encloses. Exports list events by start: only ties are sorted."""
    rows = np.flatnonzero(np.isin(events.kind, RANGE_TYPES))
    start = events.start[rows]
    if (start[1:] >= start[:-1]).all():
        tie = np.flatnonzero(start[1:] == start[:-1])
        if not tie.size:
            return rows
        rows = rows.copy()
        rows[np.union1d(tie, tie + 1)] = _by_range_order(events, rows[np.union1d(tie, tie + 1)])
        return rows
    return _by_range_order(events, rows)


def _by_range_order(events: Events, rows: np.ndarray) -> np.ndarray:
    end_key = np.where(events.end_null[rows], np.iinfo(np.int64).min, -events.end[rows])
    thread_key = np.where(events.gtid_null[rows], np.iinfo(np.int64).max, events.gtid[rows])
    return rows[np.lexsort((end_key, thread_key, events.start[rows]))]


def _texts(events: Events, registered: dict[int, str]) -> tuple[list[str], np.ndarray]:
    """Each row's text as a code into a pool of strings: the registered string of its textId, else
    its inline text, else ''."""
    ids = sorted(registered)
    pool = [""] + [registered[i] for i in ids] + events.texts
    code = np.where(events.text_code >= 0, events.text_code + 1 + len(ids), 0)
    if ids:
        id_array = np.array(ids, np.int64)
        pos = np.minimum(np.searchsorted(id_array, events.text_id), len(ids) - 1)
        found = ~events.text_id_null & (id_array[pos] == events.text_id)
        code[found] = pos[found] + 1
    return pool, code


def _qualify(domain: str, text: str) -> str:
    return f"{domain}:{text}" if domain else text


def nvtx_from_ranges(ranges: pa.Table, marks: pa.Table, thread: np.ndarray) -> Nvtx:
    """Ranges from another source (the profiler's record_function intervals, analyze.read.schema
    columns) in the shape the engine reads; `thread` is the thread key of each range."""
    n = ranges.num_rows
    start = np.asarray(ranges.column("start_ns").to_numpy(), np.int64)
    end, no_end = int_values(ranges.column("end_ns"))
    last = int(max(start.max(initial=0), end[~no_end].max(initial=0))) if n else 0
    end = np.where(no_end, last, end)
    order = np.lexsort((-end, thread, start))
    names_of_row = ranges.column("name").to_pylist()
    names = sorted(set(names_of_row))
    index = {name: i for i, name in enumerate(names)}
    name_id = np.array([index[names_of_row[i]] for i in order], np.int64)
    pushpop = np.array([s == "pushpop" for s in ranges.column("style").to_pylist()], bool)[order]
    end_tid = ranges.column("end_tid")
    same_thread = np.asarray(end_tid.is_null().to_numpy(zero_copy_only=False), bool)[order]
    domains = sorted(set(ranges.column("domain").to_pylist()) | {""})
    domain_index = {d: i for i, d in enumerate(domains)}
    domain_id = np.array([domain_index[d] for d in ranges.column("domain").to_pylist()], np.int64)[order]
    take = pa.array(order)
    table = pa.table({
        "range_id": np.arange(n, dtype=np.int64),
        "name": pa.DictionaryArray.from_arrays(pa.array(name_id, pa.int32()), pa.array(names, pa.string())),
        "domain": pa.DictionaryArray.from_arrays(pa.array(domain_id, pa.int32()), pa.array(domains, pa.string())),
        "start_ns": start[order], "end_ns": end[order],
        "gpid": ranges.column("gpid").take(take), "pid": ranges.column("pid").take(take),
        "tid": ranges.column("tid").take(take),
        "style": pa.DictionaryArray.from_arrays(pa.array(pushpop.astype(np.int8)), pa.array(["startend", "pushpop"])),
        "end_tid": end_tid.take(take),
    })
    payload = ranges.column("payload").take(take) if "payload" in ranges.column_names else pa.nulls(n, pa.string())
    mark_payload = marks.column("payload") if "payload" in marks.column_names else pa.nulls(marks.num_rows, pa.string())
    nvtx = Nvtx(ranges=table, marks=marks.drop_columns([c for c in ("payload",) if c in marks.column_names]),
                range_rows=take, mark_rows=pa.array(np.arange(marks.num_rows)), names=names, name_id=name_id,
                thread=thread[order], pushpop=pushpop, same_thread=same_thread, domain_id=domain_id,
                process=np.asarray(ranges.column("gpid").take(take).fill_null(-1).to_numpy(), np.int64))
    nvtx.payloads = lambda open_source=None: (payload, mark_payload)
    return nvtx
