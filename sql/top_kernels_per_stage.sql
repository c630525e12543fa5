-- Top kernels per stage: the 5 kernels that took the most GPU time inside each stage.
--
--   dsocr-analyze sql TRACE -f sql/top_kernels_per_stage.sql
--
-- Stages are matched on the bare range name ('dsocr:sam' -> 'sam'); inclusive like nsys
-- `nvtx_kern_sum` (a kernel in `sam` also counts for `prefill`). Kernels are grouped by full name;
-- `kernel` shows its first 70 characters. pct_of_stage = share of the stage's kernel time.
-- Change the 5 in the last line for a longer list.
WITH stage_names(stage, stage_order) AS (
    VALUES ('prefill', 1), ('decode', 2), ('sam', 3), ('clip', 4), ('projector', 5), ('llm_prefill', 6)
),
stage_kernels AS (
    SELECT s.stage, s.stage_order, k.name, k.short_name, k.category, k.dur_ns
    FROM ranges r
    JOIN stage_names s ON regexp_replace(r.name, '^.*:', '') = s.stage
    JOIN kernel_ranges kr ON kr.range_id = r.range_id
    JOIN kernels k ON k.op_id = kr.op_id
    WHERE k.kind = 'kernel'
),
per_kernel AS (
    SELECT stage, stage_order, name, any_value(short_name) AS short_name, any_value(category) AS category,
           count(*) AS calls, sum(dur_ns) AS total_ns
    FROM stage_kernels
    GROUP BY stage, stage_order, name
)
SELECT
    stage,
    row_number() OVER (PARTITION BY stage ORDER BY total_ns DESC, name) AS rank,
    short_name,
    category,
    calls,
    total_ns,
    round(total_ns / calls / 1e3, 2)                                        AS avg_us,
    round(100.0 * total_ns / sum(total_ns) OVER (PARTITION BY stage), 1)    AS pct_of_stage,
    left(name, 70)                                                          AS kernel
FROM per_kernel
QUALIFY rank <= 5
ORDER BY stage_order, rank;
