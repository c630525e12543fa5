"""Nsight Systems' GPU metrics samples (`nsys profile --gpu-metrics-devices=all`): GPU_METRICS rows
(timestamp, typeId, metricId, value), one per metric per sample, named in TARGET_INFO_GPU_METRICS
(typeId, metricId, metricName, ...). Ids differ by GPU and nsys version, so metrics are matched by name.

The shares read here are percents of the sampled interval: SMs active, tensor pipes active, DRAM read
and write bandwidth (of peak). `GpuMetrics.window_means` averages them over time windows (a range's
wall time) from prefix sums over the sorted samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsocr_perf.analyze.read.raw import valid_text
from dsocr_perf.analyze.read.sqlite import INT_NULL

# our key -> lower-case prefixes of the metric's name (the first that matches wins)
WANTED = {
    "sm_active": ("sms active",),
    "tensor_active": ("tensor active", "tensor pipe active"),
    "dram_read": ("dram read bandwidth", "dram read throughput"),
    "dram_write": ("dram write bandwidth", "dram write throughput"),
}


@dataclass
class GpuMetrics:
    names: dict                 # our key -> the metric's name in the export
    samples: dict               # our key -> (timestamps sorted, values), first GPU that has them
    gpus: int                   # GPU types sampled
    rows: dict                  # all samples of the wanted metrics, for the `gpu_metrics` table

    def window_means(self, start: np.ndarray, end: np.ndarray) -> dict[str, np.ndarray]:
        """Per window [start, end]: the mean of each metric's samples inside it (NaN without one)."""
        out = {}
        for key, (ts, values) in self.samples.items():
            cum = np.r_[0.0, np.cumsum(values, dtype=np.float64)]
            lo = np.searchsorted(ts, start, side="left")
            hi = np.searchsorted(ts, end, side="right")
            n = hi - lo
            with np.errstate(invalid="ignore", divide="ignore"):
                out[key] = np.where(n > 0, (cum[hi] - cum[lo]) / np.maximum(n, 1), np.nan)
        return out


def read_gpu_metrics(src) -> GpuMetrics | None:
    """The wanted metrics of an export, or None when it has no GPU metrics."""
    info, samples = src.table("TARGET_INFO_GPU_METRICS"), src.table("GPU_METRICS")
    if info is None or samples is None:
        return None
    ic, sc = src.columns(info), src.columns(samples)
    if not {"typeid", "metricid", "metricname"} <= set(ic) or not {"timestamp", "typeid", "metricid", "value"} <= set(sc):
        return None
    catalogue = src.select(info, [ic["typeid"], ic["metricid"], ic["metricname"]])
    types = catalogue.column(0).to_pylist()
    ids = catalogue.column(1).to_pylist()
    names = valid_text(catalogue.column(2).cast("string").combine_chunks()).to_pylist()
    chosen: dict[str, tuple[int, int, str]] = {}
    for type_id, metric_id, name in sorted(zip(types, ids, names), key=lambda r: (r[0] is None, r[0] or 0)):
        lower = (name or "").lower()
        for key, prefixes in WANTED.items():
            if key not in chosen and lower.startswith(prefixes):
                chosen[key] = (type_id, metric_id, name)
    if not chosen:
        return None
    data = src.ints(samples, {"ts": sc["timestamp"], "type": sc["typeid"], "metric": sc["metricid"],
                               "value": sc["value"]})
    keep = (data["ts"] != INT_NULL) & (data["value"] != INT_NULL)
    out, rows = {}, {"timestamp_ns": [], "gpu_type": [], "metric": [], "value": []}
    for key, (type_id, metric_id, _) in chosen.items():
        mine = keep & (data["type"] == type_id) & (data["metric"] == metric_id)
        ts, values = data["ts"][mine], data["value"][mine].astype(np.float64)
        order = np.argsort(ts, kind="stable")
        out[key] = (ts[order], values[order])
        rows["timestamp_ns"].append(ts[order])
        rows["gpu_type"].append(np.full(order.size, type_id, np.int64))
        rows["metric"].append(np.full(order.size, key, object))
        rows["value"].append(values[order])
    gpus = len({t for t in types if t is not None})
    return GpuMetrics(names={k: v[2] for k, v in chosen.items()}, samples=out, gpus=gpus,
                      rows={k: np.concatenate(v) for k, v in rows.items()})
