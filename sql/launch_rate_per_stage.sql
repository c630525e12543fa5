-- Launch rate and launch-to-start latency per stage: is a stage CPU-launch-bound?
--
--   dsocr-analyze sql TRACE -f sql/launch_rate_per_stage.sql
--
-- launches       = CUDA API calls (runtime or driver) made inside the stage's ranges that put work on
--                  the GPU (a kernel, memcpy or memset has their correlation); a cudaGraphLaunch counts once.
-- cpu_ms         = wall time of the stage's ranges; launches_per_ms = launches / cpu_ms.
-- latency        = GPU op start - start of the API call that launched it (queueing behind earlier work
--                  included); p50/p90/max over the stage's GPU ops, in us. Small latencies with idle
--                  GPU gaps mean the GPU waits for the CPU; large ones mean a deep queue.
-- Inclusive like nsys nvtx_kern_sum: `sam` launches also count for `prefill`.
WITH stage_names(stage, stage_order) AS (
    VALUES ('prefill', 1), ('decode', 2), ('sam', 3), ('clip', 4), ('projector', 5), ('llm_prefill', 6)
),
stage_ranges AS (
    SELECT r.range_id, r.end_ns - r.start_ns AS cpu_ns, s.stage, s.stage_order
    FROM ranges r JOIN stage_names s ON regexp_replace(r.name, '^.*:', '') = s.stage
),
op_latency AS (
    SELECT sr.stage, sr.range_id, l.correlation, k.start_ns - l.start_ns AS latency_ns
    FROM stage_ranges sr
    JOIN kernel_ranges kr ON kr.range_id = sr.range_id
    JOIN kernels k ON k.op_id = kr.op_id
    JOIN launches l ON l.correlation = k.correlation AND l.pid = k.pid AND l.tid = k.tid
),
per_stage AS (
    SELECT stage, any_value(stage_order) AS stage_order, count(*) AS instances, sum(cpu_ns) AS cpu_ns
    FROM stage_ranges GROUP BY stage
),
latency AS (
    SELECT stage,
           count(DISTINCT (range_id, correlation))         AS launches,
           count(*)                                        AS gpu_ops,
           quantile_cont(latency_ns, 0.5)                  AS p50_ns,
           quantile_cont(latency_ns, 0.9)                  AS p90_ns,
           max(latency_ns)                                 AS max_ns
    FROM op_latency GROUP BY stage
)
SELECT
    p.stage,
    p.instances,
    coalesce(l.launches, 0)                                      AS launches,
    coalesce(l.gpu_ops, 0)                                       AS gpu_ops,
    round(p.cpu_ns / 1e6, 3)                                     AS cpu_ms,
    round(coalesce(l.launches, 0) / nullif(p.cpu_ns / 1e6, 0), 2) AS launches_per_ms,
    round(l.p50_ns / 1e3, 1)                                     AS latency_p50_us,
    round(l.p90_ns / 1e3, 1)                                     AS latency_p90_us,
    round(l.max_ns / 1e3, 1)                                     AS latency_max_us
FROM per_stage p LEFT JOIN latency l USING (stage)
ORDER BY p.stage_order;
