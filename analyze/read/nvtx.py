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
import pyarrow.compute as pc

from dsocr_perf.analyze.errors import TraceError
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


def read_nvtx(source, strings) -> Nvtx:
    """`source`: a table source (analyze.read.sqlite / .parquet); `strings(ids) -> {id: text}`
    resolves registered strings (StringIds). Payloads are read when asked (`Nvtx.payloads`)."""
    table = source.table("NVTX_EVENTS")
    if table is None:
        return _build(_empty_events(), {})
    columns = source.columns(table)
    if not {"start", "eventtype"} <= set(columns):
        raise TraceError(f"{source.name}: NVTX_EVENTS lacks its start or eventType column; re-export the report "
                         "with `nsys export --type sqlite`")
    kinds = (columns["eventtype"], RANGE_TYPES + (MARK, DOMAIN_CREATE))
    present = [columns[n.lower()] for n in EVENT_COLUMNS if n.lower() in columns]
    events = source.select(table, present, where_in=kinds)
    events = events.rename_columns([_canonical(n, EVENT_COLUMNS) for n in events.column_names])
    events, keep, warnings = _plausible(_normalise(events))
    nvtx = _build(events, strings(pc.unique(events.column("textId").drop_null()).to_pylist()))
    nvtx.warnings += warnings
    payload_columns = [columns[n.lower()] for n in PAYLOAD_COLUMNS if n.lower() in columns]

    def payloads(open_source) -> tuple[pa.Array, pa.Array]:
        """Payload text of every range and mark, in their table order (read again, same rows)."""
        if not payload_columns:
            return pa.nulls(nvtx.ranges.num_rows, pa.string()), pa.nulls(nvtx.marks.num_rows, pa.string())
        src = open_source()
        try:
            data = src.select(table, payload_columns, where_in=kinds)
        finally:
            src.close()
        text = pc.coalesce(*[valid_text(c) for c in data.columns])
        if keep is not None:
            text = text.filter(keep)
        return text.take(nvtx.range_rows), text.take(nvtx.mark_rows)

    nvtx.payloads = payloads
    return nvtx


def _plausible(events: pa.Table) -> tuple[pa.Table, pa.Array | None, list[str]]:
    """Leave out events without a start and ranges that end before they start, and say how many."""
    kind = events.column("eventType")
    no_start = pc.is_null(events.column("start"))
    backwards = pc.and_(pc.is_in(kind, pa.array(RANGE_TYPES, pa.int64())),
                        pc.fill_null(pc.less(events.column("end"), events.column("start")), False))
    warnings = []
    for mask, what in ((no_start, "NVTX events without a start time"), (backwards, "NVTX ranges that end before they start")):
        n = pc.sum(mask.cast(pa.int64())).as_py() or 0
        if n:
            warnings.append(f"{n} {what} left out")
    keep = None
    if warnings:
        keep = pc.invert(pc.or_(no_start, backwards))
        events = events.filter(keep)
    return events, keep, warnings


def _canonical(name: str, wanted) -> str:
    return next((w for w in wanted if w.lower() == name.lower()), name)


def _normalise(events: pa.Table) -> pa.Table:
    """The columns _build reads, typed: ints as int64 (NULL kept), text valid UTF-8."""
    n = events.num_rows
    out = {}
    for name in ("start", "end", "eventType", "globalTid", "endGlobalTid", "textId", "domainId"):
        column = events.column(name) if name in events.column_names else pa.nulls(n, pa.int64())
        out[name] = int_column(column)
    text = events.column("text") if "text" in events.column_names else pa.nulls(n, pa.string())
    out["text"] = valid_text(text)
    return pa.table(out)


def _empty_events() -> pa.Table:
    ints = ("start", "end", "eventType", "globalTid", "endGlobalTid", "textId", "domainId")
    return pa.table({**{n: pa.array([], pa.int64()) for n in ints}, "text": pa.array([], pa.string())})


def _ints(column: pa.ChunkedArray, fill: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(values as int64 with NULLs replaced by `fill`, NULL mask)."""
    column = column.cast(pa.int64()) if column.type != pa.int64() else column
    null = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else np.zeros(len(column), bool)
    return np.asarray(column.fill_null(fill).to_numpy(), dtype=np.int64), null


def _build(events: pa.Table, registered: dict[int, str]) -> Nvtx:
    n = events.num_rows
    kind, _ = _ints(events.column("eventType"))
    start, _ = _ints(events.column("start"))
    end, end_null = _ints(events.column("end"))
    gtid, gtid_null = _ints(events.column("globalTid"))
    end_gtid, end_gtid_null = _ints(events.column("endGlobalTid"))
    domain_id, domain_null = _ints(events.column("domainId"), fill=0)
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
        pairs, inverse = np.unique(np.stack([gpid[rows], domain_id[rows]], axis=1), axis=0, return_inverse=True)
        codes = np.array([code_of_key.get((a, b), 0) for a, b in pairs.tolist()], np.int64)
        domain_code[rows] = codes[inverse.reshape(-1)]

    # qualified name per row, computed once per distinct (domain, text) pair
    pair, pair_of_row = _unique(domain_code * (len(pool) + 1) + text_code)
    qualified = [_qualify(domains[p // (len(pool) + 1)], pool[p % (len(pool) + 1)]) for p in pair.tolist()]
    names = sorted(set(qualified))
    index = {name: i for i, name in enumerate(names)}
    name_code = np.array([index[q] for q in qualified], np.int64)[pair_of_row.reshape(-1)]
    domain_text = pa.array(domains, pa.string())

    is_range = np.isin(kind, RANGE_TYPES)
    last = max(int(start.max()) if n else 0, int(end[~end_null].max()) if (~end_null).any() else -(1 << 62))
    rows = np.flatnonzero(is_range)
    big = np.iinfo(np.int64).max
    order = np.lexsort((np.where(end_null[rows], np.iinfo(np.int64).min, -end[rows]),
                        np.where(gtid_null[rows], big, gtid[rows]), start[rows]))
    rows = rows[order]
    used, name_id = _unique(name_code[rows])
    range_name_list = [names[i] for i in used.tolist()]
    pushpop = np.isin(kind[rows], PUSHPOP_TYPES)

    def process_columns(r):
        g, nul = gtid[r], gtid_null[r]
        return {"gpid": pa.array(g & ~TID_MASK, mask=nul), "pid": pa.array((g >> 24) & TID_MASK, mask=nul),
                "tid": pa.array(g & TID_MASK, mask=nul)}

    ranges = pa.table({
        "range_id": np.arange(rows.size, dtype=np.int64),
        "name": pa.DictionaryArray.from_arrays(name_id, pa.array(range_name_list, pa.string())),
        "domain": pa.DictionaryArray.from_arrays(domain_code[rows], domain_text),
        "start_ns": start[rows], "end_ns": np.where(end_null[rows], last, end[rows]),
        **process_columns(rows),
        "style": pa.DictionaryArray.from_arrays(pushpop.astype(np.int8), pa.array(["startend", "pushpop"])),
        "end_tid": pa.array(end_gtid[rows] & TID_MASK, mask=end_gtid_null[rows]),
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
                same_thread=end_gtid_null[rows], domain_id=domain_code[rows],
                process=np.where(gtid_null[rows], -1, gtid[rows] >> 24))


def _texts(events: pa.Table, registered: dict[int, str]) -> tuple[list[str], np.ndarray]:
    """Each row's text as a code into a pool of strings: the registered string of its textId, else
    its inline text, else ''."""
    text_id, no_id = _ints(events.column("textId"))
    encoded = pc.dictionary_encode(events.column("text").combine_chunks())
    inline = encoded.dictionary.to_pylist()
    ids = sorted(registered)
    pool = [""] + [registered[i] for i in ids] + inline
    code = np.zeros(events.num_rows, np.int64)
    has_inline = ~encoded.indices.is_null().to_numpy(zero_copy_only=False)
    code[has_inline] = encoded.indices.to_numpy(zero_copy_only=False)[has_inline].astype(np.int64) + 1 + len(ids)
    if ids:
        id_array = np.array(ids, np.int64)
        pos = np.minimum(np.searchsorted(id_array, text_id), len(ids) - 1)
        found = ~no_id & (id_array[pos] == text_id)
        code[found] = pos[found] + 1
    return pool, code


def _unique(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(codes, return_inverse=True) for non-negative codes; without sorting when their
    range is small (names are a few distinct values over ~10^5 rows)."""
    if codes.size and codes.max() < 4 * codes.size + 1024:
        present = np.bincount(codes) > 0
        values = np.flatnonzero(present)
        rank = np.cumsum(present) - 1
        return values, rank[codes]
    values, inverse = np.unique(codes, return_inverse=True)
    return values, inverse.reshape(-1)


def _qualify(domain: str, text: str) -> str:
    return f"{domain}:{text}" if domain else text


def nvtx_from_ranges(ranges: pa.Table, marks: pa.Table, thread: np.ndarray) -> Nvtx:
    """Ranges from another source (the profiler's record_function intervals, analyze.read.schema
    columns) in the shape the engine reads; `thread` is the thread key of each range."""
    n = ranges.num_rows
    start = np.asarray(ranges.column("start_ns").to_numpy(), np.int64)
    end = ranges.column("end_ns")
    last = int(max(start.max(initial=0), pc.max(end).as_py() or 0)) if n else 0
    end = np.asarray(end.fill_null(last).to_numpy(), np.int64)
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
