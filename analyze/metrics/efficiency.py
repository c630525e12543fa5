"""What limits each stage, and how far it is from the hardware: the honest `bound`.

The roofline alone cannot say it: DeepSeek-OCR's stages all sit left of the ridge (intensity below
~295 FLOP/B on an H100) yet none reaches 28 % of HBM bandwidth while its kernels run, and decode's
GPU is idle 90 % of its wall time. So the limiter is decided in this order (thresholds below):

  host     the GPU is idle for at least IDLE_SHARE of the stage's wall time and the launching thread
           spent that idle time mostly outside launch calls (its own CPU work, synchronising calls,
           copies, other CUDA calls): faster kernels cannot help; less host work per kernel can.
  launch   idle as above, but the launch calls themselves are the largest cause: the kernels are too
           short for the rate at which they can be launched (CUDA graphs, fusion help).
  compute  the GPU is busy most of the wall time and the kernels reach at least ROOF_SHARE of the
  memory   roofline at their intensity (achieved FLOP/s / min(peak FLOP/s, bandwidth x intensity)),
           on the compute or the bandwidth side of the ridge.
  latency  busy most of the wall time but below ROOF_SHARE of the roof: small or dependent kernels
           that neither roof explains (occupancy, launch latency between kernels, synchronisation).
  null     not enough to say: no kernels, or no FLOP model for a stage that is busy.

IDLE_SHARE = 0.5: the majority of the wall time decides whether the host or the GPU is the
bottleneck; ROOF_SHARE = 0.5: a stage at half its roof or above is limited by that roof (the next
2x is hard), below it the roof is not what holds it back.
"""
from __future__ import annotations

IDLE_SHARE = 0.5
ROOF_SHARE = 0.5
HOST_CAUSES = ("host", "sync", "memcpy", "other_api")
BOUNDS = ("compute", "memory", "latency", "launch", "host")


def limiter(row: dict, ridge: float | None) -> str | None:
    """`row`: wall_ns, idle_causes_ns, kernels, roof_busy_pct, intensity_flop_per_byte."""
    wall = row.get("wall_ns") or 0
    if not wall or not row.get("kernels"):
        return None
    causes = row.get("idle_causes_ns") or {}
    gpu_idle = sum(v for k, v in causes.items() if k != "gpu_other")
    if gpu_idle >= IDLE_SHARE * wall:
        launch = causes.get("launch", 0)
        return "launch" if launch >= sum(causes.get(k, 0) for k in HOST_CAUSES) else "host"
    roof = row.get("roof_busy_pct")
    if roof is None:
        return None
    if roof >= 100 * ROOF_SHARE:
        intensity = row.get("intensity_flop_per_byte")
        return "compute" if ridge is not None and intensity is not None and intensity >= ridge else "memory"
    return "latency"
