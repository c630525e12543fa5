"""The stage table's second half: work done and how close it came to the GPU's limits.

Joins the attributed GPU time of the stage rows with the analytic FLOPs and bytes of the workload
recorded in the trace's manifest (`analyze.metrics`), and renders it for the terminal. Without a
manifest there is no workload to count, and the table says so instead of guessing.
"""
from __future__ import annotations


def gpu_facts(trace) -> tuple[str | None, float | None, int | None]:
    """Name, memory bandwidth (B/s) and total memory of the trace's first GPU, when it names one."""
    named = [(name, bandwidth, memory) for _, name, bandwidth, memory in trace.stage_facts().gpus if name is not None]
    return named[0] if named else (None, None, None)


def stage_efficiency(trace, rows: list[dict], *, peak_tflops=None, peak_gbs=None, policy=None):
    """(metric rows in the order of `rows`, extras) from `analyze.metrics.stage_metrics`."""
    from dsocr_perf.analyze.metrics import stage_metrics

    name, bandwidth, memory = gpu_facts(trace)
    return stage_metrics(rows, trace.manifest, name, peak_tflops=peak_tflops, peak_gbs=peak_gbs,
                         trace_bandwidth_Bps=bandwidth, total_memory_bytes=memory, policy=policy)


def efficiency_table(metric_rows: list[dict], extras: dict) -> str:
    from dsocr_perf.analyze.table import render

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    gpu = extras["gpu"]
    modelled = [r for r in metric_rows if r["flops"] is not None or r["bytes"] is not None]
    lines = []
    if modelled:
        cells = [[r["name"], num(r["busy_ns"] / 1e6 if r["busy_ns"] else None, ",.3f"),
                  num(r["flops"] / 1e9 if r["flops"] is not None else None, ",.1f"), num(r["tflops"], ",.1f"),
                  num(r["mfu"], ".1f"), num(r["bytes"] / 1e9 if r["bytes"] is not None else None, ",.2f"),
                  num(r["gbs"], ",.0f"), num(r["mbu"], ".1f"), num(r["intensity"], ",.1f"), r["bound"] or "-"]
                 for r in modelled]
        lines.append(render(["stage", "busy ms", "GFLOP", "TFLOP/s", "MFU %", "GB", "GB/s", "MBU %", "FLOP/B",
                             "bound"], cells, "l" + "r" * 8 + "l"))
        peak = (f"{gpu.get('name') or 'unknown GPU'}: peak {num(gpu.get('peak_tflops'), ',.1f')} TFLOP/s "
                f"({gpu.get('dtype') or 'bf16'} dense), {num(gpu.get('peak_gbs'), ',.0f')} GB/s")
        lines.append(f"\n{peak}; FLOPs/bytes from the manifest's workload (attention counted: "
                     f"{extras['attention_policy']}); rates over busy time.")
        model = extras.get("model")
        if model:
            lines.append(f"model (prefill + decode): {model['flops'] / 1e9:,.1f} GFLOP in "
                         f"{model['busy_ns'] / 1e6:,.3f} ms busy = {num(model['tflops'], ',.1f')} TFLOP/s, "
                         f"MFU {num(model['mfu'], '.1f')} %, MBU {num(model['mbu'], '.1f')} %")
    for message in extras.get("messages", []):
        lines.append(f"note: {message}")
    return "\n".join(lines)
