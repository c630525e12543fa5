-- Decode step timeline: one row per generated token (`decode_step` range instance): when it
-- started, how long the CPU spent in it, and what its GPU work looked like.
--
--   dsocr-analyze sql TRACE -f sql/decode_step_timeline.sql
--
-- decode     = which `decode` range (page / repeat) the step belongs to, 1, 2, ... in time order.
-- step       = the range payload (the session passes the step index) or else its order in its decode.
-- start_ms   = range start, relative to the start of its decode range (or of the first step).
-- cpu_us     = range wall time on the CPU; kernels/gpu_ops launched inside it (same thread).
-- kernel_us  = sum of its kernel durations; span_us = first op start -> last op end (as nsys
--              nvtx_gpu_proj_trace "Projected Duration"); gpu_gap_us = GPU time between the previous
--              step's last op and this step's first op (NULL for the first step of a decode).
WITH steps AS (
    SELECT r.range_id, r.start_ns, r.end_ns,
           dense_rank() OVER (ORDER BY p.start_ns, p.range_id)                    AS decode,
           coalesce(try_cast(r.payload AS BIGINT),
                    row_number() OVER (PARTITION BY r.parent_id ORDER BY r.start_ns, r.range_id) - 1) AS step,
           coalesce(p.start_ns, min(r.start_ns) OVER ())                          AS origin_ns
    FROM ranges r LEFT JOIN ranges p ON p.range_id = r.parent_id
    WHERE regexp_replace(r.name, '^.*:', '') = 'decode_step'
),
step_ops AS (
    SELECT s.range_id,
           count(k.op_id) FILTER (WHERE k.kind = 'kernel')             AS kernels,
           count(k.op_id)                                              AS gpu_ops,
           coalesce(sum(k.dur_ns) FILTER (WHERE k.kind = 'kernel'), 0) AS kernel_ns,
           min(k.start_ns)                                             AS first_op_ns,
           max(k.end_ns)                                               AS last_op_ns
    FROM steps s
    LEFT JOIN kernel_ranges kr ON kr.range_id = s.range_id
    LEFT JOIN kernels k ON k.op_id = kr.op_id
    GROUP BY s.range_id
)
SELECT
    s.decode,
    s.step,
    round((s.start_ns - s.origin_ns) / 1e6, 3)                                   AS start_ms,
    round((s.end_ns - s.start_ns) / 1e3, 1)                                      AS cpu_us,
    o.kernels,
    o.gpu_ops,
    round(o.kernel_ns / 1e3, 1)                                                  AS kernel_us,
    round((o.last_op_ns - o.first_op_ns) / 1e3, 1)                               AS span_us,
    round((o.first_op_ns - lag(o.last_op_ns) OVER (PARTITION BY s.decode ORDER BY s.start_ns)) / 1e3, 1) AS gpu_gap_us,
    s.start_ns,
    o.first_op_ns,
    o.last_op_ns
FROM steps s JOIN step_ops o USING (range_id)
ORDER BY s.decode, s.start_ns;
