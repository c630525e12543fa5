"""Per-stage FLOPs, bytes, TFLOP/s, MFU and MBU: the attributed GPU time joined with the analytic model.

Inputs: the per-range-name rows of the `stages` table (name, instances, busy_ns, cpu_ns, ...),
the dsocr manifest recorded in the trace (workload per request, model config, dtype) and the GPU's
peaks (`analyze.peaks`).

Which time: both. Over `busy_ns`, the union of the intervals in which at least one of the stage's
kernels runs (summed over instances), MFU/MBU say how well the kernels use the hardware while they
run (`mfu_busy_pct`, `mbu_busy_pct`); over the stage's wall time (`cpu_ns`, the ranges' own duration)
they say what the stage achieved end to end (`mfu_wall_pct`, `mbu_wall_pct`). `mfu`/`mbu`/`tflops`/
`gbs` are the busy-time values under their old names (kept; deprecated).

Which work: per range name, the total over all its instances in the trace. The manifest lists one
workload per request (`pages`); when the trace has one `prefill` instance per listed request, each
request's own workload is counted; otherwise every `prefill` instance is counted at the mean cost of
the listed workloads (a warning says so). Range names match with or without the domain prefix
(`dsocr:prefill` from nsys, `prefill` from the PyTorch profiler).

Model level: prefill + decode (vision is nested inside prefill, never added twice).

Units: flops and bytes are counts; *_pct are percent; tflop_per_s = 1e12 FLOP/s; gb_per_s = 1e9 B/s;
intensity is FLOP per byte; roof_busy_pct = achieved FLOP/s / min(peak FLOP/s, bandwidth x intensity),
the share of the roofline reached while busy. The limiter (`bound`) is analyze.metrics.efficiency's.
"""
from __future__ import annotations

from dsocr_perf.analyze.metrics.peaks import PEAK_COLUMN, Peaks, resolve_peaks
from dsocr_perf.dsocr import flops as model
from dsocr_perf.dsocr import stages
from dsocr_perf.dsocr.config import ModelConfig
from dsocr_perf.dsocr.workload import Workload

MODEL_STAGES = (stages.PREFILL, stages.DECODE)     # the model-level sum: disjoint, vision inside prefill


def stage_name(range_name: str) -> str | None:
    """'dsocr:prefill' or 'prefill' -> 'prefill'; anything else -> None."""
    prefix = f"{stages.DOMAIN}:"
    name = range_name[len(prefix):] if range_name.startswith(prefix) else range_name
    return name if name in _MODELLED else None


_MODELLED = (stages.SAM, stages.CLIP, stages.PROJECTOR, stages.LLM_PREFILL, stages.PREFILL, stages.DECODE,
             stages.DECODE_STEP, stages.REQUEST)


RATE_KEYS = ("tflops", "mfu", "gbs", "mbu", "intensity", "tflop_per_s_busy", "gb_per_s_busy", "mfu_busy_pct",
             "mbu_busy_pct", "mfu_wall_pct", "mbu_wall_pct", "intensity_flop_per_byte", "roof_busy_pct")


def rates(flops: float | None, nbytes: float | None, busy_ns: float | None, wall_ns: float | None,
          peaks: Peaks) -> dict:
    """Achieved rates of `flops` and `nbytes` over busy and over wall time, as percent of the peaks."""
    out = dict.fromkeys(RATE_KEYS)
    busy = busy_ns / 1e9 if busy_ns else None
    wall = wall_ns / 1e9 if wall_ns else None
    if flops is not None and busy:
        out["tflop_per_s_busy"] = flops / busy / 1e12
        if peaks.peak_tflops:
            out["mfu_busy_pct"] = 100.0 * out["tflop_per_s_busy"] / peaks.peak_tflops
    if flops is not None and wall and peaks.peak_tflops:
        out["mfu_wall_pct"] = 100.0 * flops / wall / 1e12 / peaks.peak_tflops
    if nbytes is not None and busy:
        out["gb_per_s_busy"] = nbytes / busy / 1e9
        if peaks.peak_gbs:
            out["mbu_busy_pct"] = 100.0 * out["gb_per_s_busy"] / peaks.peak_gbs
    if nbytes is not None and wall and peaks.peak_gbs:
        out["mbu_wall_pct"] = 100.0 * nbytes / wall / 1e9 / peaks.peak_gbs
    if flops is not None and nbytes:
        out["intensity_flop_per_byte"] = flops / nbytes
        if out["tflop_per_s_busy"] is not None and peaks.peak_tflops and peaks.peak_gbs:
            roof = min(peaks.peak_tflops, peaks.peak_gbs * out["intensity_flop_per_byte"] / 1e3)
            out["roof_busy_pct"] = 100.0 * out["tflop_per_s_busy"] / roof
    out.update(tflops=out["tflop_per_s_busy"], mfu=out["mfu_busy_pct"], gbs=out["gb_per_s_busy"],
               mbu=out["mbu_busy_pct"], intensity=out["intensity_flop_per_byte"])
    return out


class ManifestWork:
    """The analytic cost per stage name of everything a trace's manifest says was run."""

    def __init__(self, manifest: dict, *, policy=None, logits_positions: int = 1):
        self.warnings: list[str] = []
        self.policy = model.AttentionPolicy(policy or model.DEFAULT_ATTENTION_POLICY)
        m = manifest.get("model") or {}
        try:
            self.config = ModelConfig.from_dict(m["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the manifest's model.config is not a DeepSeek-OCR config ({_why(e)})") from None
        self.dtype = m.get("dtype") or "bfloat16"
        self.nbytes = model.dtype_bytes(self.dtype)
        self.workloads = _request_workloads(manifest)
        self.first = self.workloads[0]
        self.per_request = [model.page_costs(self.config, w, kv, policy=self.policy,
                                             logits_positions=logits_positions, nbytes=self.nbytes)
                            for w, kv in self.workloads]

    def totals(self, requests_in_trace: int | None) -> dict[str, model.Cost]:
        """Cost per stage name summed over the `requests_in_trace` prefill instances of the trace."""
        n = len(self.per_request)
        names = set.intersection(*(set(c) for c in self.per_request))
        if requests_in_trace == n or requests_in_trace is None:
            return {s: sum((c[s] for c in self.per_request), model.Cost()) for s in names}
        self.warnings.append(f"the trace has {requests_in_trace} prefill ranges but the manifest lists {n} "
                             f"request workloads: every prefill is counted at the mean listed workload")
        return {s: _scaled_mean([c[s] for c in self.per_request], requests_in_trace) for s in names}


def _request_workloads(manifest: dict) -> list[tuple[Workload, list[int] | None]]:
    """One (workload, decode KV lengths) per listed request; the top-level workload if the list is incomplete."""
    listed = [p.get("workload") for p in manifest.get("pages") or []]
    if listed:
        try:
            return [_workload(w or {}) for w in listed]
        except ValueError:
            pass
    if not manifest.get("workload"):
        raise ValueError("the manifest records no workload")
    return [_workload(manifest["workload"])]


def _workload(d: dict) -> tuple[Workload, list[int] | None]:
    try:
        w = Workload.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"a manifest workload is incomplete ({_why(e)})") from None
    kv = d.get("decode_kv_lengths")
    return w, [int(k) for k in kv] if kv is not None else None


# A manifest of the right schema can still hold values of the wrong type or size.
MANIFEST_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, ArithmeticError, RecursionError)


def _why(error: Exception) -> str:
    return f"no {error.args[0]!r} key" if isinstance(error, KeyError) else str(error)


def _scaled_mean(costs: list[model.Cost], k: int) -> model.Cost:
    total = sum(costs, model.Cost())
    return model.Cost(*(round(getattr(total, f) * k / len(costs))
                        for f in ("flops", "weight_bytes", "activation_bytes", "kv_read_bytes", "kv_write_bytes")))


def workload_summary(manifest: dict | None) -> dict | None:
    """The `workload` object of `--json`: the first measured request, as the manifest records it."""
    w = (manifest or {}).get("workload")
    if not isinstance(w, dict) or not w:
        return None
    grid = w.get("tile_grid")
    return {"mode": w.get("mode"), "tile_grid": list(grid) if isinstance(grid, (list, tuple)) else None,
            "views": w.get("views"), "image_tokens": w.get("image_tokens"),
            "prompt_tokens": w.get("prompt_tokens"), "generated_tokens": w.get("generated_tokens")}


def stage_metrics(ranges_df, manifest: dict | None, gpu_name: str | None = None, peak_tflops: float | None = None,
                  peak_gbs: float | None = None, *, trace_bandwidth_Bps: float | None = None,
                  total_memory_bytes: int | None = None, policy=None,
                  logits_positions: int = 1) -> tuple[list[dict], dict]:
    """Per range name: flops, bytes, tflops, mfu, gbs, mbu, intensity, bound (None where no model applies).

    `ranges_df`: polars DataFrame (or list of dicts) with at least name, instances, busy_ns.
    `gpu_name`: TARGET_INFO_GPU.name; falls back to the manifest's environment.gpu_name.
    `trace_bandwidth_Bps`, `total_memory_bytes`: TARGET_INFO_GPU.memoryBandwidth / totalMemory (the `gpus`
    view's memory_bandwidth_Bps / total_memory), used only for GPUs the peaks table cannot place alone.
    Returns (rows in the order of `ranges_df`, extras) where extras holds `workload`, `gpu`, `model`
    (model-level totals and MFU), `attention_policy`, `messages` (things the user should read).
    Raises ValueError with one line when the overrides are not positive numbers.
    """
    table = ranges_df.to_dicts() if hasattr(ranges_df, "to_dicts") else list(ranges_df)
    env = _dict((manifest or {}).get("environment"))
    gpu_name = gpu_name or (env.get("gpu_name") if isinstance(env.get("gpu_name"), str) else None)
    dtype = _dict((manifest or {}).get("model")).get("dtype")
    dtype = dtype if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in PEAK_COLUMN else "bfloat16"
    peaks = resolve_peaks(gpu_name, dtype, peak_tflops=peak_tflops, peak_gbs=peak_gbs,
                          trace_bandwidth_Bps=trace_bandwidth_Bps, total_memory_bytes=total_memory_bytes)
    messages = [peaks.message] if peaks.message else []

    busy, wall, instances = {}, {}, {}
    for r in table:
        s = stage_name(r["name"])
        if s is not None:
            busy[s] = busy.get(s, 0) + (r.get("busy_ns") or 0)
            wall[s] = wall.get(s, 0) + (r.get("cpu_ns") or 0)
            instances[s] = instances.get(s, 0) + (r.get("instances") or 0)

    costs: dict[str, model.Cost] = {}
    work = None
    if manifest is None:
        messages.append("the trace carries no dsocr manifest: FLOPs, bytes, MFU and MBU are left empty")
    else:
        try:
            work = ManifestWork(manifest, policy=policy, logits_positions=logits_positions)
            costs = work.totals(instances.get(stages.PREFILL))
            messages += work.warnings
            if any(kv is None for _, kv in work.workloads):
                messages.append("the manifest records no decode_kv_lengths: decode FLOPs and bytes are left empty")
            _check_instances(work, instances, messages)
        except MANIFEST_ERRORS as e:
            work, costs = None, {}
            messages.append(f"no model metrics: the manifest's workload or model is not usable ({_why(e)})")

    rows = []
    for r in table:
        s = stage_name(r["name"])
        cost = costs.get(s) if s else None
        f, b = (cost.flops, cost.bytes) if cost else (None, None)
        rows.append({"name": r["name"], "stage": s, "instances": r.get("instances"), "busy_ns": r.get("busy_ns"),
                     "flops": f, "bytes": b} | rates(f, b, r.get("busy_ns"), r.get("cpu_ns"), peaks))

    model_level = None
    if all(s in costs and busy.get(s) for s in MODEL_STAGES):
        f = sum(costs[s].flops for s in MODEL_STAGES)
        b = sum(costs[s].bytes for s in MODEL_STAGES)
        t = sum(busy[s] for s in MODEL_STAGES)
        w = sum(wall.get(s, 0) for s in MODEL_STAGES)
        model_level = {"stages": list(MODEL_STAGES), "flops": f, "bytes": b, "busy_ns": t, "wall_ns": w} | \
            rates(f, b, t, w, peaks)
    extras = {"workload": workload_summary(manifest), "gpu": peaks.to_dict(), "model": model_level,
              "attention_policy": (work.policy if work else model.AttentionPolicy(policy or
                                   model.DEFAULT_ATTENTION_POLICY)).value,
              "logits_positions": logits_positions, "messages": messages}
    return rows, extras


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _check_instances(work: ManifestWork, instances: dict, messages: list[str]) -> None:
    """Say so when the trace's step or view-batch counts disagree with the manifest."""
    steps = sum(len(kv) for _, kv in work.workloads if kv is not None)
    prefills = instances.get(stages.PREFILL)
    if prefills == len(work.workloads) and stages.DECODE_STEP in instances and instances[stages.DECODE_STEP] != steps:
        messages.append(f"the trace has {instances[stages.DECODE_STEP]} decode_step ranges but the manifest "
                        f"records {steps} decode steps")
    batches = sum(len(w.views) for w, _ in work.workloads)
    if prefills == len(work.workloads) and stages.SAM in instances and instances[stages.SAM] != batches:
        messages.append(f"the trace has {instances[stages.SAM]} sam ranges but the manifest records "
                        f"{batches} view batches")


def decode_model_rows(manifest: dict, *, policy=None) -> list[dict]:
    """The `decode_model` view: per decode step and decoder layer of the first request (see dsocr.flops)."""
    work = ManifestWork(manifest, policy=policy)
    _, kv = work.workloads[0]
    return model.decode_layer_rows(work.config, kv or [], policy=work.policy, nbytes=work.nbytes)


DECODE_MODEL_SCHEMA = [(n, "string" if n == "block" else "int64") for n in model.DECODE_MODEL_COLUMNS]
