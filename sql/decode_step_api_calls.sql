-- Host-side work of every decode step: the CUDA API calls its thread made, by kind, counted straight
-- from `cuda_api` (one row per runtime/driver call, with its innermost range).
--
--   dsocr-analyze sql TRACE -f sql/decode_step_api_calls.sql
--
-- step      = position of the step in its decode range (0, 1, ...)
-- launches  = kernel launch calls (a CUDA-graph launch counts once); syncs = synchronising calls;
-- memcpy    = memory copy calls (a blocking device-to-host copy counts here, not as a sync);
-- api_ms    = time inside CUDA calls; wall_ms = the step's duration; busy_ms = its kernels' union.
WITH steps AS (
    SELECT r.range_id, r.start_ns, r.end_ns,
           row_number() OVER (PARTITION BY r.parent_id ORDER BY r.start_ns, r.range_id) - 1 AS step
    FROM ranges r
    WHERE regexp_replace(r.name, '^.*:', '') = 'decode_step'
),
calls AS (
    SELECT s.range_id, c.kind, c.dur_ns
    FROM steps s
    JOIN cuda_api c ON c.start_ns >= s.start_ns AND c.end_ns <= s.end_ns
    JOIN ranges r ON r.range_id = s.range_id AND r.pid = c.pid AND r.tid = c.tid
)
SELECT
    s.step,
    count(c.kind) FILTER (WHERE c.kind = 'launch')                    AS launches,
    count(c.kind) FILTER (WHERE c.kind = 'sync')                      AS syncs,
    count(c.kind) FILTER (WHERE c.kind = 'memcpy')                    AS memcpy,
    count(c.kind)                                                     AS api_calls,
    round(coalesce(sum(c.dur_ns), 0) / 1e6, 3)                        AS api_ms,
    round((s.end_ns - s.start_ns) / 1e6, 3)                           AS wall_ms,
    round(any_value(rs.busy_ns) / 1e6, 3)                             AS busy_ms
FROM steps s
LEFT JOIN calls c USING (range_id)
JOIN range_stats rs USING (range_id)
GROUP BY s.range_id, s.step, s.start_ns, s.end_ns
ORDER BY s.start_ns;
