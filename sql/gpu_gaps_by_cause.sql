-- GPU gaps by cause and stage: every interval in which the GPU ran nothing of its process (`gpu_gaps`,
-- the intervals NVIDIA's `nsys analyze` gpu_gaps rule scans), grouped by the stage in which the host
-- launched the operation that ended the gap and by what that thread was doing meanwhile.
--
--   dsocr-analyze sql TRACE -f sql/gpu_gaps_by_cause.sql
--
-- cause = the largest of host (CPU work outside CUDA), launch, sync, memcpy, other_api during the gap.
SELECT
    coalesce(stage, '(no stage)')              AS stage,
    cause,
    count(*)                                   AS gaps,
    round(sum(dur_ns) / 1e6, 3)                AS idle_ms,
    round(median(dur_ns) / 1e3, 1)             AS median_gap_us,
    round(max(dur_ns) / 1e3, 1)                AS longest_gap_us,
    round(sum(host_ns) / 1e6, 3)               AS host_ms,
    round(sum(launch_ns) / 1e6, 3)             AS launch_ms,
    round(sum(sync_ns) / 1e6, 3)               AS sync_ms,
    round(sum(memcpy_ns) / 1e6, 3)             AS memcpy_ms
FROM gpu_gaps
GROUP BY 1, 2
ORDER BY idle_ms DESC;
