-- Kernel category mix per stage: what kind of GPU work each stage is made of (gemm, attention,
-- moe, elementwise, reduction, memory, communication, other; see analyze/categories.py).
--
--   dsocr-analyze sql TRACE -f sql/category_mix_per_stage.sql
--
-- One row per (stage, category), inclusive like nsys nvtx_kern_sum (a `sam` kernel also counts for
-- `prefill`); memcpy/memset are category 'memory'. pct_of_stage = share of the stage's GPU-op time.
WITH stage_names(stage, stage_order) AS (
    VALUES ('prefill', 1), ('decode', 2), ('sam', 3), ('clip', 4), ('projector', 5), ('llm_prefill', 6)
),
stage_ops AS (
    SELECT s.stage, s.stage_order, k.category, k.dur_ns
    FROM ranges r
    JOIN stage_names s ON regexp_replace(r.name, '^.*:', '') = s.stage
    JOIN kernel_ranges kr ON kr.range_id = r.range_id
    JOIN kernels k ON k.op_id = kr.op_id
)
SELECT
    stage,
    category,
    count(*)                                                            AS ops,
    sum(dur_ns)                                                         AS total_ns,
    round(sum(dur_ns) / 1e6, 3)                                         AS total_ms,
    round(100.0 * sum(dur_ns) / sum(sum(dur_ns)) OVER (PARTITION BY stage), 1) AS pct_of_stage
FROM stage_ops
GROUP BY stage, stage_order, category
ORDER BY stage_order, total_ns DESC, category;
