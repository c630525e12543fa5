-- Where each stage's wall time goes: GPU busy, and the idle time split by what happened meanwhile.
--
--   dsocr-analyze sql TRACE -f sql/idle_causes_per_stage.sql
--
-- Per stage (bare range name, summed over its instances; the columns of `stages`):
--   wall_ms  = the ranges' own duration;  busy_ms = union of the kernels they launched
--   idle_ms  = wall - busy, split into: host (the launching thread's CPU work outside CUDA), launch,
--              sync, memcpy, other_api (inside those CUDA calls while the GPU was idle) and gpu_other
--              (the GPU ran work launched before or elsewhere)
--   launches / syncs / dtoh = kernel launch calls, synchronising calls, device-to-host copies
WITH stage_names(stage, stage_order) AS (
    VALUES ('preprocess', 0), ('prefill', 1), ('decode', 2), ('sam', 3), ('clip', 4), ('projector', 5),
           ('llm_prefill', 6)
)
SELECT
    s.stage,
    st.instances,
    round(st.wall_ns / 1e6, 3)                                   AS wall_ms,
    round(st.busy_ns / 1e6, 3)                                   AS busy_ms,
    round(100.0 * st.idle_ns / nullif(st.wall_ns, 0), 1)         AS idle_pct,
    round(st.idle_host_ns / 1e6, 3)                              AS host_ms,
    round(st.idle_launch_ns / 1e6, 3)                            AS launch_ms,
    round(st.idle_sync_ns / 1e6, 3)                              AS sync_ms,
    round(st.idle_memcpy_ns / 1e6, 3)                            AS memcpy_ms,
    round(st.idle_other_api_ns / 1e6, 3)                         AS other_api_ms,
    round(st.idle_gpu_other_ns / 1e6, 3)                         AS gpu_other_ms,
    st.kernel_launches                                           AS launches,
    st.host_syncs                                                AS syncs,
    st.memcpy_DtoH                                               AS dtoh
FROM stages st
JOIN stage_names s ON regexp_replace(st.name, '^.*:', '') = s.stage
ORDER BY s.stage_order;
