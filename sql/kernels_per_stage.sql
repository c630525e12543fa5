-- Kernels per stage: how many GPU kernels (and memcpy/memset) each DeepSeek-OCR stage launched,
-- and how much kernel time they took.
--
--   dsocr-analyze sql TRACE -f sql/kernels_per_stage.sql
--
-- A stage is every range whose bare name (domain prefix dropped: 'dsocr:prefill' -> 'prefill') is in
-- the list below (dsocr.stages.REPORTED_STAGES plus llm_prefill); add names to the list to see more.
-- Counts are inclusive, like nsys `nvtx_kern_sum`: a kernel launched inside `sam` counts for `sam`
-- AND for the enclosing `prefill`. An op belongs to a range when its launching call lies inside it
-- on the same thread (kernel_ranges). kernel_ns sums kernel durations only (memcpy/memset excluded).
WITH stage_names(stage, stage_order) AS (
    VALUES ('prefill', 1), ('decode', 2), ('sam', 3), ('clip', 4), ('projector', 5), ('llm_prefill', 6)
),
stage_ranges AS (
    SELECT r.range_id, s.stage, s.stage_order
    FROM ranges r JOIN stage_names s ON regexp_replace(r.name, '^.*:', '') = s.stage
)
SELECT
    sr.stage,
    count(DISTINCT sr.range_id)                               AS instances,
    count(k.op_id) FILTER (WHERE k.kind = 'kernel')           AS kernels,
    count(k.op_id)                                            AS gpu_ops,
    coalesce(sum(k.dur_ns) FILTER (WHERE k.kind = 'kernel'), 0) AS kernel_ns,
    round(coalesce(sum(k.dur_ns) FILTER (WHERE k.kind = 'kernel'), 0) / 1e6, 3) AS kernel_ms,
    round(count(k.op_id) FILTER (WHERE k.kind = 'kernel') / count(DISTINCT sr.range_id), 1) AS kernels_per_instance
FROM stage_ranges sr
LEFT JOIN kernel_ranges kr ON kr.range_id = sr.range_id
LEFT JOIN kernels k ON k.op_id = kr.op_id
GROUP BY sr.stage, sr.stage_order
ORDER BY sr.stage_order;
