-- Which host operators run while the GPU waits, per stage: for traces with PyTorch operator ranges
-- (`dsocr-trace --torch-ops-nvtx`, written as NAME.ops-nvtx.sqlite), whose ranges (`aten::mm, op_id = 12`,
-- ...) nest in the stage ranges in the default NVTX domain. The session's own profiler labels come out as
-- ranges there too, a stage's twin inside it (`decode_step, op_id = 7` inside dsocr:decode_step): they hold
-- the stage's operators and are not operators themselves.
--
--   dsocr-analyze sql TRACE -f sql/host_operators_per_stage.sql        (TRACE: traces/NAME.ops-nvtx.sqlite)
--
-- Per stage (the innermost dsocr range around the operator) and operator (its name up to the first comma):
--   calls, wall_ms  = the outermost operator ranges' count and own duration
--   gap_ms / gap_ns = how much of the GPU's idle gaps (the gpu_gaps view: between consecutive GPU ops) falls
--                     inside them, on the same thread
--   gap_pct         = share of all gap time inside that stage's operators and the time between them
-- The row `(between operators)` is gap time inside the stage's own ranges (not in a child stage) but in no
-- operator: the host's Python between operators.
WITH stage_ranges AS (
    SELECT range_id, parent_id, tid, start_ns, end_ns, regexp_replace(name, '^.*:', '') AS stage
    FROM ranges
    WHERE domain = 'dsocr'
),
labelled AS (    -- default-domain ranges, named up to the first comma (the profiler appends ", op_id = N")
    SELECT range_id, parent_id, tid, start_ns, end_ns, regexp_replace(name, ',.*$', '') AS label
    FROM ranges
    WHERE coalesce(domain, '') = ''
),
stage_twins AS (  -- a stage's profiler label inside it: `decode_step, op_id = 7` in dsocr:decode_step
    SELECT l.range_id, s.stage
    FROM labelled l
    JOIN stage_ranges s ON l.parent_id = s.range_id AND l.label = s.stage
),
operators AS (    -- outermost operator ranges: their parent is a stage range or its twin
    SELECT o.range_id, o.tid, o.start_ns, o.end_ns, coalesce(s.stage, t.stage) AS stage, o.label AS operator
    FROM labelled o
    LEFT JOIN stage_ranges s ON o.parent_id = s.range_id
    LEFT JOIN stage_twins t ON o.parent_id = t.range_id
    WHERE coalesce(s.stage, t.stage) IS NOT NULL
      AND o.range_id NOT IN (SELECT range_id FROM stage_twins)
),
operator_gaps AS (
    SELECT o.stage, o.operator, o.range_id,
           least(o.end_ns, g.end_ns) - greatest(o.start_ns, g.start_ns) AS gap_ns
    FROM operators o
    JOIN gpu_gaps g ON g.tid = o.tid AND g.start_ns < o.end_ns AND o.start_ns < g.end_ns
),
stage_overlaps AS (   -- gap time inside each stage range
    SELECT s.range_id, s.parent_id, s.stage,
           sum(least(s.end_ns, g.end_ns) - greatest(s.start_ns, g.start_ns)) AS gap_ns
    FROM stage_ranges s
    JOIN gpu_gaps g ON g.tid = s.tid AND g.start_ns < s.end_ns AND s.start_ns < g.end_ns
    GROUP BY ALL
),
stage_gaps AS (   -- ... less the part inside its child stage ranges (sam inside prefill)
    SELECT o.stage, sum(o.gap_ns - coalesce(c.gap_ns, 0)) AS gap_ns
    FROM stage_overlaps o
    LEFT JOIN (SELECT parent_id, sum(gap_ns) AS gap_ns FROM stage_overlaps GROUP BY parent_id) c
        ON c.parent_id = o.range_id
    GROUP BY o.stage
),
per_operator AS (
    SELECT o.stage, o.operator, count(*) AS calls, sum(o.end_ns - o.start_ns) AS wall_ns,
           coalesce(sum(og.gap_ns), 0) AS gap_ns
    FROM operators o
    LEFT JOIN (SELECT range_id, sum(gap_ns) AS gap_ns FROM operator_gaps GROUP BY range_id) og USING (range_id)
    GROUP BY o.stage, o.operator
),
between_operators AS (
    SELECT sg.stage, '(between operators)' AS operator, NULL::BIGINT AS calls, NULL::BIGINT AS wall_ns,
           sg.gap_ns - coalesce((SELECT sum(p.gap_ns) FROM per_operator p WHERE p.stage = sg.stage), 0) AS gap_ns
    FROM stage_gaps sg
)
SELECT
    r.stage,
    r.operator,
    r.calls,
    round(r.wall_ns / 1e6, 3)                                        AS wall_ms,
    round(r.gap_ns / 1e6, 3)                                         AS gap_ms,
    r.gap_ns,
    round(100.0 * r.gap_ns / nullif(sg.gap_ns, 0), 1)                AS gap_pct
FROM (SELECT * FROM per_operator UNION ALL SELECT * FROM between_operators) r
JOIN stage_gaps sg USING (stage)
ORDER BY r.stage, r.gap_ns DESC, r.operator;
