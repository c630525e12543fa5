"""From the base tables to the canonical views: who launched each GPU op, which ranges contain it.

Semantics (NVIDIA's, ../shared/docs/nsys-sqlite-schema.md §5.1): a GPU operation belongs to the API
call with the same correlation id in the same process; a range contains the operation when that
call lies inside the range on the same thread (range.start <= call.start and call.end <= range.end).
When the kernel runs does not matter. Start/end ranges ended on another thread are listed but
contain nothing.

Algorithm (sort-based, no range join over the big tables):
1. Push/pop ranges nest per thread. Their start and end events, sorted per thread, give each range
   its depth (running count of open ranges) and its parent (the last range one level up that started
   before it, an ASOF join).
2. The same events give, per thread, a step function "innermost open range at time t": at a start
   the range itself, at an end its parent. One ASOF join of every launch call on (process, thread,
   time) against that step function gives the call's innermost push/pop range; every enclosing
   push/pop range is that range plus its ancestors (`_ancestors`, n_ranges x depth rows).
3. Start/end ranges (few) are matched with a range join (the thread equality written as `a - b = 0`
   so DuckDB keeps the inequality join instead of a hash join on the thread).
4. Per range instance: sums and min/max aggregate bottom-up through `_ancestors` from the per
   innermost-range aggregates; busy time (union of kernel intervals) needs the ops themselves:
   one window pass over (range, op) pairs sorted by start.
If push/pop ranges of one thread do not nest (possible across NVTX domains), steps 1-2 would be
wrong; that is detected and the containment is then computed with a plain range join instead.
"""
from __future__ import annotations

KIND_NAMES = "CASE kind WHEN 0 THEN 'kernel' WHEN 1 THEN 'memcpy' ELSE 'memset' END"

METRICS = ("instances", "inclusive_ns", "exclusive_ns", "busy_ns", "span_ns", "cpu_ns", "kernels", "gpu_ops",
           "launches")


def derive(db, categorize_sql: str | None = None) -> list[str]:
    """Create the derived tables and canonical views from base_* in `db`. Returns warnings."""
    warnings: list[str] = []
    db.execute("SET merge_join_threshold = 0")
    _ranges(db)
    if not _nested(db):
        warnings.append("push/pop ranges of some thread do not nest (ranges of different NVTX domains interleave); "
                        "attribution uses a slower containment join")
    _ops(db, nested=not warnings)
    _range_stats(db)
    _views(db)
    return warnings


def _ranges(db) -> None:
    db.execute("""
        -- Start and end events of push/pop ranges per thread, in stack order: at equal times ends come
        -- before starts (siblings touch), starts of longer ranges before shorter ones (parent first),
        -- and a zero-length range ends right after it starts.
        CREATE OR REPLACE TEMP TABLE _events AS
        SELECT gpid, tid, start_ns AS t, 1 AS grp, -end_ns AS sub, range_id, 1 AS delta
        FROM base_ranges WHERE style = 'pushpop'
        UNION ALL
        SELECT gpid, tid, end_ns, CASE WHEN end_ns > start_ns THEN 0 ELSE 2 END, 0, range_id, -1
        FROM base_ranges WHERE style = 'pushpop';

        CREATE OR REPLACE TEMP TABLE _ordered AS
        SELECT *, row_number() OVER (ORDER BY gpid, tid, t, grp, sub, range_id) AS seq,
               sum(delta) OVER (PARTITION BY gpid, tid ORDER BY t, grp, sub, range_id
                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS open_before
        FROM _events;

        -- depth = ranges open when this one starts; parent = last start one level up before it.
        CREATE OR REPLACE TEMP TABLE _starts AS
        SELECT gpid, tid, range_id, seq, CAST(coalesce(open_before, 0) AS INTEGER) AS depth
        FROM _ordered WHERE delta = 1;

        CREATE OR REPLACE TEMP TABLE _tree AS
        SELECT s.range_id, s.depth, p.range_id AS parent_id
        FROM _starts s ASOF LEFT JOIN _starts p
          ON p.gpid = s.gpid AND p.tid = s.tid AND p.depth = s.depth - 1 AND p.seq < s.seq;

        -- Start/end ranges on one thread hang under the tightest push/pop range that contains them.
        INSERT INTO _tree
        SELECT r.range_id,
               CASE WHEN p.range_id IS NULL THEN 0 ELSE p.depth + 1 END,
               p.range_id
        FROM base_ranges r
        LEFT JOIN (
            SELECT r.range_id AS child, q.range_id, t.depth,
                   row_number() OVER (PARTITION BY r.range_id ORDER BY q.start_ns DESC, q.end_ns, t.depth DESC) AS k
            FROM base_ranges r
            JOIN base_ranges q ON q.gpid = r.gpid AND q.tid - r.tid = 0 AND q.style = 'pushpop'
                               AND q.start_ns <= r.start_ns AND q.end_ns >= r.end_ns
            JOIN _tree t ON t.range_id = q.range_id
            WHERE r.style = 'startend' AND r.end_tid IS NULL
        ) p ON p.child = r.range_id AND p.k = 1
        WHERE r.style = 'startend';

        -- Ancestors of every range, itself included (depth 0 = itself).
        CREATE OR REPLACE TABLE _ancestors AS
        WITH RECURSIVE up(range_id, ancestor_id, hops) AS (
            SELECT range_id, range_id, 0 FROM _tree
            UNION ALL
            SELECT up.range_id, t.parent_id, up.hops + 1
            FROM up JOIN _tree t ON t.range_id = up.ancestor_id
            WHERE t.parent_id IS NOT NULL
        )
        SELECT range_id, ancestor_id, hops FROM up;

        -- The text of a range without its domain, for paths like 'prefill/sam'.
        CREATE OR REPLACE TABLE _ranges AS
        SELECT r.range_id, r.name, r.domain, r.start_ns, r.end_ns, r.pid, r.tid, t.depth, t.parent_id,
               p.path, r.style, r.end_tid, r.payload, r.gpid
        FROM base_ranges r
        JOIN _tree t USING (range_id)
        JOIN (
            SELECT a.range_id,
                   string_agg(CASE WHEN b.domain = '' THEN b.name ELSE b.name[length(b.domain) + 2:] END, '/'
                              ORDER BY a.hops DESC) AS path
            FROM _ancestors a JOIN base_ranges b ON b.range_id = a.ancestor_id
            GROUP BY a.range_id
        ) p USING (range_id);

        -- Innermost open push/pop range per thread as a step function of time (one row per distinct time).
        CREATE OR REPLACE TABLE _top AS
        SELECT o.gpid, o.tid, o.t,
               CASE WHEN o.delta = 1 THEN o.range_id ELSE t.parent_id END AS range_id
        FROM _ordered o JOIN _tree t USING (range_id)
        QUALIFY row_number() OVER (PARTITION BY o.gpid, o.tid, o.t ORDER BY o.seq DESC) = 1;

        DROP TABLE _events; DROP TABLE _ordered; DROP TABLE _starts;
    """)


def _nested(db) -> bool:
    """True when every push/pop range lies inside its parent (the stack model holds)."""
    bad = db.execute("""
        SELECT count(*) FROM _ranges c JOIN _ranges p ON p.range_id = c.parent_id
        WHERE c.style = 'pushpop' AND (c.start_ns < p.start_ns OR c.end_ns > p.end_ns)
    """).fetchone()[0]
    return bad == 0


def _ops(db, nested: bool) -> None:
    """_ops: base_ops + the launching call (tid, call interval) + innermost push/pop range (pp_range)."""
    db.execute("""
        CREATE OR REPLACE TEMP TABLE _launched AS
        SELECT o.*, l.tid, l.start_ns AS call_start, l.end_ns AS call_end
        FROM base_ops o LEFT JOIN base_launches l ON l.gpid = o.gpid AND l.correlation = o.correlation;
    """)
    if nested:
        db.execute("""
            CREATE OR REPLACE TABLE _ops AS
            SELECT o.*, s.range_id AS pp_range
            FROM _launched o
            ASOF LEFT JOIN _top s ON s.gpid = o.gpid AND s.tid = o.tid AND s.t <= o.call_start;
        """)
        # A call that outlives its innermost range (it cannot on one thread, but clocks tie) climbs up.
        for _ in range(64):
            n = db.execute("""
                UPDATE _ops SET pp_range = r.parent_id
                FROM _ranges r
                WHERE r.range_id = _ops.pp_range AND r.end_ns < _ops.call_end
            """).fetchone()[0]
            if not n:
                break
    else:
        db.execute("""
            CREATE OR REPLACE TABLE _ops AS
            SELECT o.*, (
                SELECT r.range_id FROM _ranges r
                WHERE r.style = 'pushpop' AND r.gpid = o.gpid AND r.tid = o.tid
                  AND r.start_ns <= o.call_start AND r.end_ns >= o.call_end
                ORDER BY r.depth DESC, r.start_ns DESC LIMIT 1) AS pp_range
            FROM _launched o;
        """)
    db.execute("""
        DROP TABLE _launched;
        -- Start/end ranges that start and end on one thread contain the calls inside them on that thread.
        CREATE OR REPLACE TABLE _op_startend AS
        SELECT o.op_id, r.range_id
        FROM _ops o JOIN _ranges r
          ON r.gpid = o.gpid AND o.tid - r.tid = 0
         AND r.start_ns <= o.call_start AND r.end_ns >= o.call_end
        WHERE r.style = 'startend' AND r.end_tid IS NULL;

        -- Innermost range of each op: the tightest enclosing one (latest start) among both styles.
        ALTER TABLE _ops ADD COLUMN range_id BIGINT;
        UPDATE _ops SET range_id = pp_range;
        UPDATE _ops SET range_id = best.range_id
        FROM (
            SELECT op_id, range_id FROM (
                SELECT c.op_id, c.range_id, row_number() OVER (PARTITION BY c.op_id ORDER BY r.start_ns DESC,
                       r.end_ns, r.depth DESC) AS k
                FROM (SELECT op_id, range_id FROM _op_startend
                      UNION ALL SELECT op_id, pp_range FROM _ops
                      WHERE pp_range IS NOT NULL AND op_id IN (SELECT op_id FROM _op_startend)) c
                JOIN _ranges r USING (range_id))
            WHERE k = 1) best
        WHERE best.op_id = _ops.op_id;
    """)


def _range_stats(db) -> None:
    """range_stats: one row per range instance with every metric."""
    db.execute("""
        -- Every (range, op) pair: the op's push/pop ranges (innermost + ancestors) and its start/end ranges.
        CREATE OR REPLACE VIEW kernel_ranges AS
        SELECT o.op_id, a.ancestor_id AS range_id, a.ancestor_id = o.range_id AS innermost
        FROM _ops o JOIN _ancestors a ON a.range_id = o.pp_range
        UNION ALL
        SELECT s.op_id, s.range_id, s.range_id = o.range_id
        FROM _op_startend s JOIN _ops o USING (op_id);

        -- Per innermost push/pop range, then rolled up to every ancestor (sums and min/max compose).
        CREATE OR REPLACE TEMP TABLE _by_pp AS
        SELECT pp_range AS range_id,
               sum(end_ns - start_ns) FILTER (WHERE kind = 0) AS kernel_ns,
               count(*) FILTER (WHERE kind = 0) AS kernels,
               count(*) AS gpu_ops,
               count(DISTINCT correlation) AS launches,
               min(start_ns) AS first_ns, max(end_ns) AS last_ns
        FROM _ops WHERE pp_range IS NOT NULL GROUP BY pp_range;

        CREATE OR REPLACE TEMP TABLE _inclusive AS
        SELECT a.ancestor_id AS range_id, sum(b.kernel_ns) AS inclusive_ns, sum(b.kernels) AS kernels,
               sum(b.gpu_ops) AS gpu_ops, sum(b.launches) AS launches,
               min(b.first_ns) AS first_ns, max(b.last_ns) AS last_ns
        FROM _by_pp b JOIN _ancestors a ON a.range_id = b.range_id
        GROUP BY a.ancestor_id
        UNION ALL
        SELECT s.range_id, sum(o.end_ns - o.start_ns) FILTER (WHERE o.kind = 0), count(*) FILTER (WHERE o.kind = 0),
               count(*), count(DISTINCT o.correlation), min(o.start_ns), max(o.end_ns)
        FROM _op_startend s JOIN _ops o USING (op_id) GROUP BY s.range_id;

        CREATE OR REPLACE TEMP TABLE _exclusive AS
        SELECT range_id, sum(end_ns - start_ns) AS exclusive_ns
        FROM _ops WHERE range_id IS NOT NULL AND kind = 0 GROUP BY range_id;

        -- Busy = length of the union of the kernel intervals of the range: with intervals sorted by
        -- start, each adds what reaches past the furthest end seen before it.
        CREATE OR REPLACE TEMP TABLE _busy AS
        SELECT range_id, sum(greatest(0, end_ns - greatest(start_ns, coalesce(reach, start_ns)))) AS busy_ns
        FROM (
            SELECT k.range_id, o.start_ns, o.end_ns,
                   max(o.end_ns) OVER (PARTITION BY k.range_id ORDER BY o.start_ns, o.end_ns
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
            FROM kernel_ranges k JOIN _ops o USING (op_id)
            WHERE o.kind = 0)
        GROUP BY range_id;

        -- Instances nested inside an instance of the same name (recursion, e.g. aten::clamp_min in
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
               coalesce(b.busy_ns, 0)::BIGINT AS busy_ns,
               coalesce(i.last_ns - i.first_ns, 0)::BIGINT AS span_ns,
               i.first_ns AS gpu_start_ns, i.last_ns AS gpu_end_ns,
               coalesce(i.kernels, 0)::BIGINT AS kernels, coalesce(i.gpu_ops, 0)::BIGINT AS gpu_ops,
               coalesce(i.launches, 0)::BIGINT AS launches
        FROM _ranges r
        LEFT JOIN _inclusive i USING (range_id)
        LEFT JOIN _exclusive e USING (range_id)
        LEFT JOIN _busy b USING (range_id);

        DROP TABLE _by_pp; DROP TABLE _inclusive; DROP TABLE _exclusive; DROP TABLE _busy; DROP TABLE _self_nested;
    """)


def _views(db) -> None:
    db.execute(f"""
        CREATE OR REPLACE VIEW kernels AS
        SELECT o.op_id, {KIND_NAMES} AS kind, o.start_ns, o.end_ns, o.end_ns - o.start_ns AS dur_ns,
               o.device, o.stream, o.pid, o.tid, o.correlation, n.value AS name, s.value AS short_name,
               o.grid_x, o.grid_y, o.grid_z, o.block_x, o.block_y, o.block_z, o.registers, o.shared_mem,
               o.bytes, o.graph_node, coalesce(c.category, 'other') AS category
        FROM _ops o
        LEFT JOIN strings n ON n.id = o.name_id
        LEFT JOIN strings s ON s.id = o.short_name_id
        LEFT JOIN name_categories c ON c.name_id = o.name_id;

        CREATE OR REPLACE VIEW launches AS
        SELECT l.correlation, l.pid, l.tid, l.start_ns, l.end_ns, a.api_name
        FROM base_launches l LEFT JOIN api_names a ON a.id = l.api_id;

        CREATE OR REPLACE VIEW ranges AS
        SELECT range_id, name, domain, start_ns, end_ns, pid, tid, depth, parent_id, path, style, end_tid, payload
        FROM _ranges;

        CREATE OR REPLACE VIEW marks AS
        SELECT ts_ns, name, domain, pid, tid, payload FROM base_marks;

        -- Per range name, totals over its instances, as nsys sums them: an instance nested in an
        -- instance of the same name adds its time again (nvtx_kern_sum "Total Time", nvtx_gpu_proj_sum),
        -- but `kernels` counts each kernel once per name (nvtx_kern_sum "Kern Inst").
        CREATE OR REPLACE VIEW stages AS
        SELECT name, count(*) AS instances, sum(inclusive_ns)::BIGINT AS inclusive_ns,
               sum(exclusive_ns)::BIGINT AS exclusive_ns, sum(busy_ns)::BIGINT AS busy_ns,
               sum(span_ns)::BIGINT AS span_ns, sum(cpu_ns)::BIGINT AS cpu_ns,
               coalesce(sum(kernels) FILTER (WHERE outermost_of_name), 0)::BIGINT AS kernels,
               sum(gpu_ops)::BIGINT AS gpu_ops, sum(launches)::BIGINT AS launches,
               min(depth) AS depth, min(range_id) AS first_range_id
        FROM range_stats GROUP BY name;
    """)


def name_tables(db) -> None:
    """api_names (API names without the `_vNNNN` suffix) and name_categories (kernel category per name id)."""
    db.execute(r"""
        CREATE OR REPLACE TABLE api_names AS
        SELECT s.id, regexp_replace(s.value, '_v\d+$', '') AS api_name
        FROM strings s WHERE s.id IN (SELECT DISTINCT api_id FROM base_launches);
    """)
    names = db.execute("""SELECT DISTINCT o.name_id, s.value, o.kind FROM base_ops o
                          JOIN strings s ON s.id = o.name_id""").fetchall()
    categorize = _categorizer()
    kinds = ("kernel", "memcpy", "memset")
    rows = [(i, categorize(name, kinds[kind])) for i, name, kind in names]
    db.execute("CREATE OR REPLACE TABLE name_categories (name_id BIGINT, category VARCHAR)")
    if rows:
        db.executemany("INSERT INTO name_categories VALUES (?, ?)", rows)


def _categorizer():
    try:
        from analyze.categories import categorize
    except ImportError:  # analyze.categories missing: every kernel is 'other'
        return lambda name, kind="kernel": "other"
    return categorize


def range_table(trace, names=None):
    """Per range name (totals over instances) -> polars.DataFrame with the METRICS columns."""
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
