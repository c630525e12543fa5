-- Top kernels over the whole trace, with their category: where does the GPU time go, whatever
-- the ranges? The same totals as nsys `cuda_gpu_kern_sum` (grouped by full kernel name).
--
--   dsocr-analyze sql TRACE -f sql/top_kernels.sql
--
-- pct = share of all kernel time; first 20 rows (change the LIMIT for more).
SELECT
    short_name,
    category,
    count(*)                                              AS calls,
    sum(dur_ns)                                           AS total_ns,
    round(avg(dur_ns) / 1e3, 2)                           AS avg_us,
    min(dur_ns)                                           AS min_ns,
    max(dur_ns)                                           AS max_ns,
    round(100.0 * sum(dur_ns) / sum(sum(dur_ns)) OVER (), 1) AS pct,
    left(name, 70)                                        AS kernel
FROM kernels
WHERE kind = 'kernel'
GROUP BY name, short_name, category
ORDER BY total_ns DESC, name
LIMIT 20;
