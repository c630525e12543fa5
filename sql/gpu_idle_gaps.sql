-- GPU idle gaps inside a range: while a stage's GPU work is in flight (its span: first op start ->
-- last op end), how long was the GPU doing none of it, in how many gaps, and where was the largest.
--
--   dsocr-analyze sql TRACE -f sql/gpu_idle_gaps.sql
--
-- Per stage (bare range name, 'dsocr:decode' -> 'decode'), summed over its instances:
--   span_ns  = sum over instances of (last op end - first op start)   (nsys nvtx_gpu_proj_sum)
--   busy_ns  = union of the intervals of the instance's GPU ops (overlaps counted once)
--   idle_ns  = span_ns - busy_ns = the sum of the gaps; gaps = how many; largest_gap_us and where it
--              starts, in us after the start of the range instance that holds it.
-- Ops are those launched inside the range (inclusive, kernel_ranges), all devices and streams
-- together. A gap is the time from the latest end among earlier-starting ops to the next op start.
-- To look at other ranges, edit stage_names (or replace the join with a WHERE on r.name).
WITH stage_names(stage, stage_order) AS (
    VALUES ('prefill', 1), ('decode', 2), ('sam', 3), ('clip', 4), ('projector', 5), ('llm_prefill', 6)
),
ops AS (
    SELECT s.stage, s.stage_order, r.range_id, r.start_ns AS range_start_ns, k.start_ns, k.end_ns,
           max(k.end_ns) OVER (PARTITION BY r.range_id ORDER BY k.start_ns, k.end_ns, k.op_id
                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS covered_until
    FROM ranges r
    JOIN stage_names s ON regexp_replace(r.name, '^.*:', '') = s.stage
    JOIN kernel_ranges kr ON kr.range_id = r.range_id
    JOIN kernels k ON k.op_id = kr.op_id
),
gaps AS (
    SELECT stage, range_id, range_start_ns, covered_until AS gap_start_ns, start_ns - covered_until AS gap_ns
    FROM ops WHERE start_ns > covered_until
),
spans AS (
    SELECT stage, stage_order, range_id, max(end_ns) - min(start_ns) AS span_ns
    FROM ops GROUP BY stage, stage_order, range_id
),
per_stage AS (
    SELECT stage, any_value(stage_order) AS stage_order, count(*) AS instances, sum(span_ns) AS span_ns
    FROM spans GROUP BY stage
),
gap_stats AS (
    SELECT stage, count(*) AS gaps, sum(gap_ns) AS idle_ns,
           arg_max(gap_ns, gap_ns) AS largest_gap_ns,
           arg_max(gap_start_ns - range_start_ns, gap_ns) AS largest_gap_at_ns
    FROM gaps GROUP BY stage
)
SELECT
    p.stage,
    p.instances,
    p.span_ns,
    p.span_ns - coalesce(g.idle_ns, 0)                        AS busy_ns,
    coalesce(g.idle_ns, 0)                                    AS idle_ns,
    round(100.0 * coalesce(g.idle_ns, 0) / nullif(p.span_ns, 0), 1) AS idle_pct,
    coalesce(g.gaps, 0)                                       AS gaps,
    round(g.largest_gap_ns / 1e3, 1)                          AS largest_gap_us,
    round(g.largest_gap_at_ns / 1e3, 1)                       AS largest_gap_at_us
FROM per_stage p LEFT JOIN gap_stats g USING (stage)
ORDER BY p.stage_order;
