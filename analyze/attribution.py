"""From the base tables to the canonical views: who launched each GPU op, which ranges contain it.

Semantics (NVIDIA's, ../shared/docs/nsys-sqlite-schema.md §5.1): a GPU operation belongs to the API
call with the same correlation id in the same process; a range contains the operation when that
call lies inside the range on the same thread (range.start <= call.start and call.end <= range.end).
When the kernel runs does not matter. Start/end ranges ended on another thread are listed but
contain nothing. A range never closed ends at the last NVTX timestamp (the loaders do that).

Algorithm (sorts and as-of joins, no range join over the big tables; every pass over the GPU ops
counts at 1e7 kernels):
1. Push/pop ranges nest per thread. Their start/end events sorted per thread give each range its
   depth (running count of open ranges) and its parent (the last range one level up that started
   before it: an ASOF join).
2. The same events give, per thread, a step function "innermost open range at time t" (at a start:
   the range; at an end: its parent). One pass over the ops joins each op to its launch call
   (hash join on process + correlation) and the call to that step function (ASOF join on one small
   thread key, then time): the op's innermost push/pop range. Every enclosing push/pop range is that
   range or one of its ancestors, so per-range totals are the per-innermost-range totals rolled up
   the tree.
3. Start/end ranges on one thread (few, but one may span the whole trace, like a `request`): the
   push/pop ranges lying inside one bring their rolled-up totals; only the ops outside those
   (launched outside any push/pop range, or in one that straddles the start/end range) are matched
   one by one with a range join, its thread equality written `a - b = 0` so that DuckDB keeps an
   inequality join instead of hashing on the thread.
4. Busy time (union of the kernel intervals of a range): kernels of one CUDA stream run one after
   another, so for a range whose kernels all ran on one (device, stream) busy = the sum of their
   durations (0 same-stream overlaps in the 12 real exports of ../shared). Ranges whose kernels ran
   on several streams get the exact union: a window pass over their (range, kernel) pairs.
If push/pop ranges of one thread do not nest (ranges of different NVTX domains may interleave), the
stack model fails; that is detected and containment is then computed with a plain range join.
"""
from __future__ import annotations

KIND_NAMES = "CASE o.kind WHEN 0 THEN 'kernel' WHEN 1 THEN 'memcpy' ELSE 'memset' END"
KINDS = ("kernel", "memcpy", "memset")

METRICS = ("instances", "inclusive_ns", "exclusive_ns", "busy_ns", "span_ns", "cpu_ns", "kernels", "gpu_ops",
           "launches")


def _script(db, text: str) -> None:
    """Run SQL statements one by one (each ends with ';' at the end of a line)."""
    for statement in text.split(";\n"):
        if any(line.strip() and not line.strip().startswith("--") for line in statement.splitlines()):
            db.execute(statement)


def derive(db) -> list[str]:
    """Create the derived tables and canonical views from the base_* tables in `db`. Returns warnings."""
    warnings: list[str] = []
    db.execute("SET merge_join_threshold = 0")
    if not db.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = '_ranges'").fetchone()[0]:
        derive_ranges(db)
    nested = _nested(db)
    if not nested:
        warnings.append("push/pop ranges of some thread do not nest (ranges of different NVTX domains interleave); "
                        "containment is computed with a slower range join")
    _ops(db, nested)
    _range_stats(db)
    _views(db)
    return warnings


def derive_ranges(db) -> None:
    """The range tree (_ranges, _ancestors) and the innermost-range step function (_top): they need
    only the NVTX tables, so a reader may run this while it still reads the GPU ops."""
    _script(db, """
        -- Start and end events of push/pop ranges per thread, in stack order: at equal times ends come
        -- before starts (siblings touch), starts of longer ranges before shorter ones (parent first),
        -- and a zero-length range ends right after it starts.
        CREATE OR REPLACE TEMP TABLE _ordered AS
        SELECT gpid, tid, t, delta, range_id,
               row_number() OVER w AS seq,
               coalesce(sum(delta) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS open_before
        FROM (
            SELECT gpid, tid, start_ns AS t, 1 AS grp, -end_ns AS sub, range_id, 1 AS delta
            FROM base_ranges WHERE style = 'pushpop'
            UNION ALL
            SELECT gpid, tid, end_ns, CASE WHEN end_ns > start_ns THEN 0 ELSE 2 END, 0, range_id, -1
            FROM base_ranges WHERE style = 'pushpop')
        WINDOW w AS (PARTITION BY gpid, tid ORDER BY t, grp, sub, range_id);

        -- depth = ranges open when this one starts; parent = the last start one level up before it.
        CREATE OR REPLACE TEMP TABLE _starts AS
        SELECT gpid, tid, range_id, seq, CAST(open_before AS INTEGER) AS depth FROM _ordered WHERE delta = 1;

        CREATE OR REPLACE TEMP TABLE _tree AS
        SELECT s.range_id, s.depth, p.range_id AS parent_id
        FROM _starts s ASOF LEFT JOIN _starts p
          ON p.gpid = s.gpid AND p.tid = s.tid AND p.depth = s.depth - 1 AND p.seq < s.seq;

        -- A start/end range started and ended on one thread hangs under the tightest push/pop range
        -- of that thread containing it; other start/end ranges are roots.
        INSERT INTO _tree
        SELECT r.range_id, coalesce(p.depth + 1, 0), p.range_id
        FROM base_ranges r
        LEFT JOIN (
            SELECT r.range_id AS child, arg_max(q.range_id, t.depth) AS range_id, max(t.depth) AS depth
            FROM base_ranges r
            JOIN base_ranges q ON q.gpid = r.gpid AND q.tid - r.tid = 0
                              AND q.start_ns <= r.start_ns AND q.end_ns >= r.end_ns
            JOIN _tree t ON t.range_id = q.range_id
            WHERE r.style = 'startend' AND r.end_tid IS NULL AND q.style = 'pushpop'
            GROUP BY r.range_id
        ) p ON p.child = r.range_id
        WHERE r.style = 'startend';

        -- Every range with its depth, parent and path ('prefill/sam': texts without the domain).
        CREATE OR REPLACE TABLE _ranges AS
        WITH RECURSIVE node AS (
            SELECT r.*, t.depth, t.parent_id,
                   CASE WHEN r.domain = '' THEN r.name ELSE r.name[length(r.domain) + 2:] END AS text
            FROM base_ranges r JOIN _tree t USING (range_id)
        ), walk(range_id, path) AS (
            SELECT range_id, text FROM node WHERE parent_id IS NULL
            UNION ALL
            SELECT c.range_id, w.path || '/' || c.text FROM walk w JOIN node c ON c.parent_id = w.range_id
        )
        SELECT n.range_id, n.name, n.domain, n.start_ns, n.end_ns, n.pid, n.tid, n.depth, n.parent_id,
               w.path, n.style, n.end_tid, n.payload, n.gpid
        FROM node n JOIN walk w USING (range_id);

        -- Ancestors of every range, itself included (hops 0).
        CREATE OR REPLACE TABLE _ancestors AS
        WITH RECURSIVE up(range_id, ancestor_id, hops) AS (
            SELECT range_id, range_id, 0 FROM _ranges
            UNION ALL
            SELECT u.range_id, r.parent_id, u.hops + 1
            FROM up u JOIN _ranges r ON r.range_id = u.ancestor_id
            WHERE r.parent_id IS NOT NULL
        )
        SELECT * FROM up;

        -- Innermost open push/pop range per thread as a step function of time (one row per distinct time).
        -- Threads with push/pop ranges get one small integer key: an ASOF join on one key is ~2x
        -- faster than on (process, thread).
        CREATE OR REPLACE TEMP TABLE _threads AS
        SELECT gpid, tid, CAST(row_number() OVER () AS BIGINT) AS thread_key
        FROM (SELECT DISTINCT gpid, tid FROM base_ranges WHERE style = 'pushpop');

        CREATE OR REPLACE TEMP TABLE _top AS
        SELECT h.thread_key, o.t, CASE WHEN o.delta = 1 THEN o.range_id ELSE t.parent_id END AS range_id
        FROM _ordered o JOIN _tree t USING (range_id) JOIN _threads h ON h.gpid = o.gpid AND h.tid = o.tid
        QUALIFY row_number() OVER (PARTITION BY h.thread_key, o.t ORDER BY o.seq DESC) = 1;

        DROP TABLE _ordered;
        DROP TABLE _starts;
    """)


def _nested(db) -> bool:
    """True when every push/pop range lies inside its parent (the stack model holds)."""
    bad = db.execute("""
        SELECT count(*) FROM _ranges c JOIN _ranges p ON p.range_id = c.parent_id
        WHERE c.style = 'pushpop' AND (c.start_ns < p.start_ns OR c.end_ns > p.end_ns)
    """).fetchone()[0]
    return bad == 0


def _ops(db, nested: bool) -> None:
    """_ops: base_ops + launching call (tid, call interval) + innermost push/pop range (pp_range).
    A base_ops without op_id (the nsys reader) gets DuckDB's rowid as op_id."""
    have = {r[0] for r in db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'base_ops'").fetchall()}
    op_id = "" if "op_id" in have else "o.rowid AS op_id, "
    if nested:
        _script(db, f"""
            CREATE OR REPLACE TABLE _ops AS
            SELECT {op_id}o.*, l.tid, l.start_ns AS call_start, l.end_ns AS call_end, s.range_id AS pp_range
            FROM base_ops o
            LEFT JOIN base_launches l ON l.gpid = o.gpid AND l.correlation = o.correlation
            LEFT JOIN _threads h ON h.gpid = l.gpid AND h.tid = l.tid
            ASOF LEFT JOIN _top s ON s.thread_key = h.thread_key AND s.t <= l.start_ns;
        """)
        # A call that outlives its innermost range climbs to the enclosing one (cannot happen on one
        # thread, but equal timestamps can make it look so).
        for _ in range(256):
            n = db.execute("""
                UPDATE _ops SET pp_range = r.parent_id FROM _ranges r
                WHERE r.range_id = _ops.pp_range AND r.end_ns < _ops.call_end
            """).fetchone()[0]
            if not n:
                break
    else:
        _script(db, f"""
            CREATE OR REPLACE TABLE _ops AS
            SELECT {op_id}o.*, l.tid, l.start_ns AS call_start, l.end_ns AS call_end
            FROM base_ops o
            LEFT JOIN base_launches l ON l.gpid = o.gpid AND l.correlation = o.correlation;

            ALTER TABLE _ops ADD COLUMN pp_range BIGINT;

            UPDATE _ops SET pp_range = best.range_id FROM (
                SELECT o.op_id, arg_max(r.range_id, r.start_ns) AS range_id
                FROM _ops o JOIN _ranges r
                  ON r.gpid = o.gpid AND o.tid - r.tid = 0
                 AND r.start_ns <= o.call_start AND r.end_ns >= o.call_end
                WHERE r.style = 'pushpop'
                GROUP BY o.op_id) best
            WHERE best.op_id = _ops.op_id;
        """)
    db.execute("DROP TABLE base_ops")  # all of it is in _ops now; at 1e7 ops every copy counts
    _script(db, """
        -- Start/end ranges started and ended on one thread: they contain the calls inside them on that
        -- thread. Their ops are not listed one by one: a push/pop range lying inside one (`inside`)
        -- brings all its ops at once; only the other ops (`_se_direct`) are matched individually.
        CREATE OR REPLACE TABLE _se_pp AS
        SELECT s.range_id AS se, r.range_id AS pp, r.parent_id,
               r.start_ns >= s.start_ns AND r.end_ns <= s.end_ns AS inside
        FROM (SELECT * FROM _ranges WHERE style = 'startend' AND end_tid IS NULL) s
        JOIN (SELECT * FROM _ranges WHERE style = 'pushpop') r
          ON r.gpid = s.gpid AND r.tid - s.tid = 0 AND r.start_ns <= s.end_ns AND r.end_ns >= s.start_ns;

        -- The outermost push/pop ranges inside each start/end range.
        CREATE OR REPLACE TABLE _se_maximal AS
        SELECT c.se, c.pp FROM _se_pp c
        LEFT JOIN _se_pp p ON p.se = c.se AND p.pp = c.parent_id
        WHERE c.inside AND NOT coalesce(p.inside, false);

        CREATE OR REPLACE TABLE _se_direct AS
        SELECT s.range_id, o.op_id, s.start_ns AS range_start
        FROM (SELECT op_id, gpid, tid, call_start, call_end, pp_range FROM _ops
              WHERE tid IS NOT NULL AND (pp_range IS NULL OR pp_range IN (SELECT pp FROM _se_pp WHERE NOT inside))) o
        JOIN (SELECT * FROM _ranges WHERE style = 'startend' AND end_tid IS NULL) s
          ON s.gpid = o.gpid AND o.tid - s.tid = 0 AND s.start_ns <= o.call_start AND s.end_ns >= o.call_end
        LEFT JOIN _se_pp x ON x.se = s.range_id AND x.pp = o.pp_range
        WHERE o.pp_range IS NULL OR NOT x.inside;

        -- Ops whose tightest enclosing range (latest start) is a start/end range, not a push/pop one.
        CREATE OR REPLACE TABLE _startend_innermost AS
        SELECT d.op_id, d.range_id, o.pp_range
        FROM (SELECT op_id, arg_max(range_id, range_start) AS range_id, max(range_start) AS range_start
              FROM _se_direct GROUP BY op_id) d
        JOIN _ops o USING (op_id)
        LEFT JOIN _ranges p ON p.range_id = o.pp_range
        WHERE p.range_id IS NULL OR d.range_start > p.start_ns;

        -- Every (op, range) pair: the op's push/pop ranges (innermost and its ancestors) and its
        -- start/end ranges; innermost = the op's tightest enclosing range.
        CREATE OR REPLACE VIEW kernel_ranges AS
        SELECT o.op_id, a.ancestor_id AS range_id,
               a.ancestor_id = coalesce(x.range_id, o.pp_range) AS innermost
        FROM _ops o JOIN _ancestors a ON a.range_id = o.pp_range
        LEFT JOIN _startend_innermost x ON x.op_id = o.op_id
        UNION ALL
        SELECT o.op_id, m.se, false
        FROM _se_maximal m JOIN _ancestors a ON a.ancestor_id = m.pp JOIN _ops o ON o.pp_range = a.range_id
        UNION ALL
        SELECT d.op_id, d.range_id, d.range_id IS NOT DISTINCT FROM x.range_id
        FROM _se_direct d LEFT JOIN _startend_innermost x ON x.op_id = d.op_id;
    """)


def _range_stats(db) -> None:
    """range_stats: one row per range instance with every metric."""
    # A launch call makes one op, except a CUDA graph launch in node mode: one op per graph node.
    graphs = db.execute("SELECT count(graph_node) FROM _ops").fetchone()[0] > 0
    launches = ("count(*) FILTER (WHERE graph_node IS NULL) + count(DISTINCT correlation) FILTER (WHERE graph_node IS NOT NULL)"
                if graphs else "count(*)")
    _script(db, f"""
        -- Per innermost push/pop range: kernel time and counts, first/last op, streams used.
        -- (Grouped by kind first with plain aggregates: FILTER clauses over 1e6+ rows cost 5x more.)
        CREATE OR REPLACE TEMP TABLE _by_pp AS
        SELECT range_id,
               sum(ns) FILTER (WHERE kind = 0) AS kernel_ns,
               coalesce(sum(n) FILTER (WHERE kind = 0), 0) AS kernels,
               sum(n) AS gpu_ops, sum(launches) AS launches,
               min(first_ns) AS first_ns, max(last_ns) AS last_ns,
               min(dev_lo) FILTER (WHERE kind = 0) AS dev_lo, max(dev_hi) FILTER (WHERE kind = 0) AS dev_hi,
               min(str_lo) FILTER (WHERE kind = 0) AS str_lo, max(str_hi) FILTER (WHERE kind = 0) AS str_hi
        FROM (
            SELECT pp_range AS range_id, kind, sum(end_ns - start_ns) AS ns, count(*) AS n,
                   {launches} AS launches, min(start_ns) AS first_ns, max(end_ns) AS last_ns,
                   min(device) AS dev_lo, max(device) AS dev_hi, min(stream) AS str_lo, max(stream) AS str_hi
            FROM _ops WHERE pp_range IS NOT NULL GROUP BY pp_range, kind)
        GROUP BY range_id;

        -- Rolled up to every enclosing push/pop range.
        CREATE OR REPLACE TEMP TABLE _pp_inclusive AS
        SELECT a.ancestor_id AS range_id, sum(b.kernel_ns) AS kernel_ns, sum(b.kernels) AS kernels,
               sum(b.gpu_ops) AS gpu_ops, sum(b.launches) AS launches,
               min(b.first_ns) AS first_ns, max(b.last_ns) AS last_ns,
               min(dev_lo) AS dev_lo, max(dev_hi) AS dev_hi, min(str_lo) AS str_lo, max(str_hi) AS str_hi
        FROM _by_pp b JOIN _ancestors a ON a.range_id = b.range_id
        GROUP BY a.ancestor_id;

        -- Start/end ranges: their outermost push/pop ranges inside plus their direct ops.
        CREATE OR REPLACE TEMP TABLE _inclusive AS
        SELECT range_id, kernel_ns AS inclusive_ns, kernels, gpu_ops, launches, first_ns, last_ns,
               dev_lo, dev_hi, str_lo, str_hi
        FROM _pp_inclusive
        UNION ALL
        SELECT se, sum(kernel_ns), sum(kernels), sum(gpu_ops), sum(launches), min(first_ns), max(last_ns),
               min(dev_lo), max(dev_hi), min(str_lo), max(str_hi)
        FROM (
            SELECT m.se, i.kernel_ns, i.kernels, i.gpu_ops, i.launches, i.first_ns, i.last_ns,
                   i.dev_lo, i.dev_hi, i.str_lo, i.str_hi
            FROM _se_maximal m JOIN _pp_inclusive i ON i.range_id = m.pp
            UNION ALL
            SELECT d.range_id, sum(o.end_ns - o.start_ns) FILTER (WHERE o.kind = 0), count(*) FILTER (WHERE o.kind = 0),
                   count(*), {launches.replace("correlation", "o.correlation").replace("graph_node", "o.graph_node")},
                   min(o.start_ns), max(o.end_ns),
                   min(o.device) FILTER (WHERE o.kind = 0), max(o.device) FILTER (WHERE o.kind = 0),
                   min(o.stream) FILTER (WHERE o.kind = 0), max(o.stream) FILTER (WHERE o.kind = 0)
            FROM _se_direct d JOIN _ops o USING (op_id) GROUP BY d.range_id)
        GROUP BY se;

        -- Exclusive: kernel time of the ops whose innermost range it is.
        CREATE OR REPLACE TEMP TABLE _exclusive AS
        SELECT range_id, sum(ns) AS exclusive_ns FROM (
            SELECT range_id, kernel_ns AS ns FROM _by_pp
            UNION ALL
            SELECT x.pp_range, -(o.end_ns - o.start_ns) FROM _startend_innermost x JOIN _ops o USING (op_id)
            WHERE o.kind = 0 AND x.pp_range IS NOT NULL
            UNION ALL
            SELECT x.range_id, o.end_ns - o.start_ns FROM _startend_innermost x JOIN _ops o USING (op_id)
            WHERE o.kind = 0)
        GROUP BY range_id;

        -- Ranges whose kernels ran on more than one (device, stream): their kernels may overlap.
        CREATE OR REPLACE TEMP TABLE _multi_stream AS
        SELECT range_id FROM _inclusive WHERE dev_lo < dev_hi OR str_lo < str_hi;

        -- Busy of those ranges = length of the union of their kernel intervals: sorted by start, each
        -- kernel adds what reaches past the furthest end seen before it in the range.
        CREATE OR REPLACE TEMP TABLE _busy AS
        SELECT range_id, sum(greatest(0, end_ns - greatest(start_ns, coalesce(reach, start_ns)))) AS busy_ns
        FROM (
            SELECT p.range_id, o.start_ns, o.end_ns,
                   max(o.end_ns) OVER (PARTITION BY p.range_id ORDER BY o.start_ns, o.end_ns
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
            FROM (SELECT range_id, op_id FROM kernel_ranges
                  WHERE range_id IN (SELECT range_id FROM _multi_stream)) p
            JOIN _ops o USING (op_id)
            WHERE o.kind = 0)
        GROUP BY range_id;

        -- Instances nested in an instance of the same name (recursion, e.g. aten::clamp_min in
        -- aten::clamp_min): their kernels are already counted by the outer one.
        CREATE OR REPLACE TEMP TABLE _self_nested AS
        SELECT DISTINCT a.range_id
        FROM _ancestors a JOIN _ranges r ON r.range_id = a.range_id JOIN _ranges p ON p.range_id = a.ancestor_id
        WHERE a.hops > 0 AND p.name = r.name;

        CREATE OR REPLACE TABLE range_stats AS
        SELECT r.range_id, r.name, r.depth, r.path,
               r.range_id NOT IN (SELECT range_id FROM _self_nested) AS outermost_of_name,
               r.end_ns - r.start_ns AS cpu_ns,
               coalesce(i.inclusive_ns, 0)::BIGINT AS inclusive_ns,
               coalesce(e.exclusive_ns, 0)::BIGINT AS exclusive_ns,
               coalesce(b.busy_ns, i.inclusive_ns, 0)::BIGINT AS busy_ns,
               coalesce(i.last_ns - i.first_ns, 0)::BIGINT AS span_ns,
               i.first_ns AS gpu_start_ns, i.last_ns AS gpu_end_ns,
               coalesce(i.kernels, 0)::BIGINT AS kernels, coalesce(i.gpu_ops, 0)::BIGINT AS gpu_ops,
               coalesce(i.launches, 0)::BIGINT AS launches
        FROM _ranges r
        LEFT JOIN _inclusive i USING (range_id)
        LEFT JOIN _exclusive e USING (range_id)
        LEFT JOIN _busy b USING (range_id);

        DROP TABLE _by_pp;
        DROP TABLE _pp_inclusive;
        DROP TABLE _inclusive;
        DROP TABLE _exclusive;
        DROP TABLE _multi_stream;
        DROP TABLE _busy;
        DROP TABLE _self_nested;
    """)


def _views(db) -> None:
    have = {r[0] for r in db.execute("SELECT column_name FROM information_schema.columns WHERE table_name = '_ops'").fetchall()}

    def col(name: str) -> str:  # a lean load has no names / geometry: NULL columns, same view
        return f"o.{name}" if name in have else f"NULL AS {name}"

    detail = ", ".join(col(c) for c in ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "registers",
                                         "shared_mem", "bytes"))
    name_id = "o.name_id" if "name_id" in have else "NULL"
    short_name_id = "o.short_name_id" if "short_name_id" in have else "NULL"
    _script(db, f"""
        CREATE OR REPLACE VIEW kernels AS
        SELECT o.op_id, {KIND_NAMES} AS kind, o.start_ns, o.end_ns, o.end_ns - o.start_ns AS dur_ns,
               o.device, o.stream, o.pid, o.tid, o.correlation, n.value AS name, s.value AS short_name,
               {detail}, o.graph_node, coalesce(c.category, 'other') AS category
        FROM _ops o
        LEFT JOIN strings n ON n.id = {name_id}
        LEFT JOIN strings s ON s.id = {short_name_id}
        LEFT JOIN name_categories c ON c.name_id = {name_id} AND c.kind = o.kind;

        CREATE OR REPLACE VIEW launches AS
        SELECT l.correlation, l.pid, l.tid, l.start_ns, l.end_ns, a.api_name
        FROM base_launches l LEFT JOIN api_names a ON a.id = l.api_id;

        CREATE OR REPLACE VIEW ranges AS
        SELECT range_id, name, domain, start_ns, end_ns, pid, tid, depth, parent_id, path, style, end_tid, payload
        FROM _ranges;

        CREATE OR REPLACE VIEW marks AS
        SELECT ts_ns, name, domain, pid, tid, payload FROM base_marks;

        -- Per range name, totals over its instances, summed as nsys does: an instance nested in an
        -- instance of the same name adds its time again (nvtx_kern_sum "Total Time", nvtx_gpu_proj_sum),
        -- while `kernels` counts each kernel once per name (nvtx_kern_sum "Kern Inst").
        CREATE OR REPLACE VIEW stages AS
        SELECT name, count(*) AS instances, sum(inclusive_ns)::BIGINT AS inclusive_ns,
               sum(exclusive_ns)::BIGINT AS exclusive_ns, sum(busy_ns)::BIGINT AS busy_ns,
               sum(span_ns)::BIGINT AS span_ns, sum(cpu_ns)::BIGINT AS cpu_ns,
               coalesce(sum(kernels) FILTER (WHERE outermost_of_name), 0)::BIGINT AS kernels,
               sum(gpu_ops)::BIGINT AS gpu_ops, sum(launches)::BIGINT AS launches,
               min(depth) AS depth, min(range_id) AS first_range_id
        FROM range_stats GROUP BY name;
    """)


def name_tables(db, categories: bool = True) -> None:
    """api_names (API names without the `_vNNNN` suffix) and name_categories (category per kernel name
    id and kind, from dsocr_perf.analyze.categories over the distinct names)."""
    _script(db, r"""
        CREATE OR REPLACE TABLE api_names AS
        SELECT s.id, regexp_replace(s.value, '_v\d+$', '') AS api_name
        FROM strings s WHERE s.id IN (SELECT DISTINCT api_id FROM base_launches);
    """)
    db.execute("CREATE OR REPLACE TABLE name_categories (name_id BIGINT, kind UTINYINT, category VARCHAR)")
    if not categories:
        return
    names = db.execute("""SELECT DISTINCT o.name_id, o.kind, s.value FROM base_ops o
                          JOIN strings s ON s.id = o.name_id""").fetchall()
    categorize = _categorizer()
    rows = [(i, kind, categorize(name, KINDS[kind])) for i, kind, name in names]
    if rows:
        db.executemany("INSERT INTO name_categories VALUES (?, ?, ?)", rows)


def _categorizer():
    try:
        from dsocr_perf.analyze.categories import categorize
    except ImportError:  # analyze.categories missing: every kernel is 'other'
        return lambda name, kind="kernel": "other"
    return categorize


def range_table(trace, names=None):
    """Per range name (totals over instances) -> polars.DataFrame with name + the METRICS columns,
    in order of first appearance."""
    import polars as pl

    where, params = "", []
    if names is not None:
        names = list(names)
        if not names:
            return pl.DataFrame(schema={"name": pl.Utf8, **{m: pl.Int64 for m in METRICS}})
        where = f"WHERE name IN ({', '.join('?' for _ in names)})"
        params = names
    sql = f"SELECT name, {', '.join(METRICS)} FROM stages {where} ORDER BY first_range_id"
    return trace.con.sql(sql, params=params).pl()
