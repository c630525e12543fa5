"""NVTX events of an nsys export -> the `ranges` and `marks` base tables, as Arrow, without DuckDB.

Both engines use this reader: the DuckDB engine stores the tables, the NumPy sweep (analyze.sweep)
also takes the range columns it needs as arrays (`Nvtx.name_id`, `.thread`, ...), so it starts
attributing without a single SQL statement.

Naming, as NVIDIA's reports do it: a range's text is its registered string (textId -> StringIds)
or its inline text; its domain is the domain-create event (eventType 75) with the same domainId in
the same process; the name is 'domain:text', or the bare text in the default domain. A range never
closed ends at the last NVTX timestamp. `range_id` numbers the ranges by start, then globalTid, then
end descending with never-closed ranges first (so a parent comes before the children it encloses).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RANGE_TYPES = (59, 60, 70, 71)   # PushPop, StartEnd, NVTXT PushPop, NVTXT StartEnd
PUSHPOP_TYPES = (59, 70)
MARK = 34
DOMAIN_CREATE = 75
PAYLOAD_COLUMNS = ("int64Value", "uint64Value", "int32Value", "uint32Value", "doubleValue", "floatValue", "jsonText")
TID_MASK = (1 << 24) - 1
STRING_ID_LIST_MAX = 20_000  # above this many distinct textIds, StringIds is read whole


@dataclass
class Nvtx:
    ranges: pa.Table        # base_ranges columns, in range_id order
    marks: pa.Table         # base_marks columns, in event order
    names: list[str]        # the distinct range names, sorted
    name_id: np.ndarray     # per range: index into names
    thread: np.ndarray      # per range: globalTid (-1 where the export has none)
    pushpop: np.ndarray     # per range: bool, push/pop (nested per thread) rather than start/end
    same_thread: np.ndarray  # per range: bool, no ending thread recorded (NVIDIA attributes only these)


def read_nvtx(sq, payloads: bool = True) -> Nvtx:
    """`sq`: an analyze.nsys._Sqlite. payloads=False leaves `payload` NULL (the stage table does
    not show it; reading it costs ~30% more)."""
    from dsocr_perf.analyze.nsys import _col, read_arrow

    table = sq.table("NVTX_EVENTS")
    if table is None:
        return _build(_empty_events(), {})

    def query():
        c = sq.columns(table)
        present = [f'"{c[n.lower()].name}"' for n in PAYLOAD_COLUMNS if n.lower() in c]
        payload = f"CAST(coalesce({', '.join(present)}) AS TEXT)" if present and payloads else "CAST(NULL AS TEXT)"
        kinds = ", ".join(map(str, RANGE_TYPES + (MARK, DOMAIN_CREATE)))
        return (f"SELECT {_col(c, 'start')}, {_col(c, 'end')}, {_col(c, 'eventType')}, {_col(c, 'globalTid')}, "
                f"{_col(c, 'endGlobalTid')}, {_col(c, 'text', 'TEXT')}, {_col(c, 'textId')}, "
                f"{_col(c, 'domainId', 'INTEGER', '0')}, {payload} AS payload "
                f'FROM "{table}" WHERE eventType IN ({kinds})')

    events = read_arrow(sq, query)
    return _build(events, _registered_strings(sq, events.column("textId")))


def _empty_events() -> pa.Table:
    ints = ("start", "end", "eventType", "globalTid", "endGlobalTid", "textId", "domainId")
    return pa.table({**{n: pa.array([], pa.int64()) for n in ints}, "text": pa.array([], pa.string()),
                     "payload": pa.array([], pa.string())})


def _registered_strings(sq, text_ids: pa.ChunkedArray) -> dict[int, str]:
    """StringIds values of the textIds the events use (usually a handful)."""
    wanted = pc.unique(text_ids.drop_null()).to_pylist()
    if not wanted:
        return {}
    strings = sq.table("StringIds")
    if strings is None:
        return {}
    where = f" WHERE id IN ({', '.join(str(int(i)) for i in wanted)})" if len(wanted) <= STRING_ID_LIST_MAX else ""
    return {int(i): v for i, v in sq.rows(f'SELECT CAST(id AS INTEGER), CAST(value AS TEXT) FROM "{strings}"{where}')
            if v is not None}


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

    # domain name per row: the domain-create event of the same (process, domainId)
    domains = [""]
    domain_code = np.zeros(n, np.int64)
    for i in np.flatnonzero(kind == DOMAIN_CREATE):
        if gtid_null[i] or domain_null[i]:
            continue
        name = pool[text_code[i]]
        same = (gpid == gpid[i]) & (domain_id == domain_id[i]) & ~gtid_null & ~domain_null
        if name not in domains:
            domains.append(name)
        if not (domain_code[same] > 0).any():  # the first domain-create row of a key names it
            domain_code[same] = domains.index(name)

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
    payload = events.column("payload")
    if payload.type != pa.string():
        payload = payload.cast(pa.string())

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
        "payload": payload.take(pa.array(rows)),
    })
    marks_rows = np.flatnonzero(kind == MARK)
    marks = pa.table({
        "ts_ns": start[marks_rows],
        "name": pa.DictionaryArray.from_arrays(name_code[marks_rows], pa.array(names, pa.string())),
        "domain": pa.DictionaryArray.from_arrays(domain_code[marks_rows], domain_text),
        **process_columns(marks_rows),
        "payload": payload.take(pa.array(marks_rows)),
    })
    return Nvtx(ranges=ranges, marks=marks, names=range_name_list, name_id=name_id,
                thread=np.where(gtid_null[rows], -1, gtid[rows]), pushpop=pushpop,
                same_thread=end_gtid_null[rows])


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
