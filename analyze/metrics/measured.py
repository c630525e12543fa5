"""Hardware-counted work per stage (Nsight Compute) beside the analytic model: the `measured` block.

Input: the `ncu` tables of one or more runs of the same session (analyze.read.ncu: the ranges run, kernel-replay
runs) and the session's manifest (the sidecar NAME.ncu.json's, else the trace's). Output per stage, BLOCK_KEYS:

    mode                  'app-range' | 'kernel': the run the tensor FLOPs come from
    tensor_flops          sm__ops_path_tensor_src_bf16_dst_fp32.sum: bf16 tensor FLOPs executed, padding included
    simt_flops            2 fma + add + mul of the FP32/FP16 instruction counts (a SIMT run; else null)
    dram_read_bytes, dram_write_bytes   dram__bytes_read/write.sum (caches flushed before each range or kernel)
    l2_bytes              lts__t_bytes.sum (kernel replay)
    kernels, kernel_ns    kernels profiled and the sum of their gpu__time_duration under ncu (kernel replay)
    sampled_steps         the decode steps a kernel-replay run profiled when the others were estimated; else null
    tensor_flops_ratio    tensor_flops / analytic FLOPs;  dram_bytes_ratio: (read + write) / analytic bytes
    mfu_issued_busy_pct   tensor_flops over the trace's busy time and the GPU's peak: issued work, beside the
                          useful-work mfu_busy_pct (null without a trace, or when ncu profiled other pages)
    scaling               how decode steps not profiled were estimated; null when none were

Which run gives what: per key, the first run that has it, the ranges run before kernel runs (it has every decode
step and llm_prefill); keys it lacks (kernels, kernel_ns, l2_bytes, simt_flops) come from the kernel runs.

Decode in kernel replay is sampled. A step's work is the same but for attention, which grows linearly with its KV
length, so a step not profiled gets, key by key, the linear interpolation in KV length between the profiled steps
around it, and the nearest profiled step's value outside them (in step number when no KV lengths are known).
Parents: prefill = sam + clip + projector + llm_prefill, decode = its steps, request = prefill + decode; a key is
null when a child lacks it. In application-range replay gpu__time_duration is a range's span under profiling, not
kernel time, so kernel_ns is null there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dsocr_perf.analyze.metrics.flops import MANIFEST_ERRORS, ManifestWork
from dsocr_perf.analyze.read.ncu import APP_RANGE, KERNEL, NcuCsv, Sidecar
from dsocr_perf.dsocr import flops as model
from dsocr_perf.dsocr import stages as S

FIELDS = ("tensor_flops", "simt_flops", "dram_read_bytes", "dram_write_bytes", "l2_bytes", "kernels", "kernel_ns")
BLOCK_KEYS = ("mode", *FIELDS, "sampled_steps", "tensor_flops_ratio", "dram_bytes_ratio", "mfu_issued_busy_pct",
              "scaling")
LEAVES = (S.SAM, S.CLIP, S.PROJECTOR, S.LLM_PREFILL, S.DECODE_STEP)
PARENTS = ((S.PREFILL, (S.SAM, S.CLIP, S.PROJECTOR, S.LLM_PREFILL)), (S.DECODE, (S.DECODE_STEP,)),
           (S.REQUEST, (S.PREFILL, S.DECODE)))
RUN_ORDER = {APP_RANGE: 0, KERNEL: 1}


@dataclass
class Sums:
    """One stage's measured totals."""
    mode: str
    values: dict                       # FIELDS -> int | None
    ranges: int | None = None          # rows of a ranges run (profiled stage ranges)
    sampled_steps: list | None = None
    scaling: str | None = None


@dataclass
class DecodePlan:
    """Every decode step of each profiled page: its KV length (manifest), else only how many there are."""
    kv: dict                           # request (None: any) -> KV length of each step
    total_steps: int | None            # steps of a page when no KV lengths are known

    def xs(self, request) -> tuple[list[int] | None, str | None]:
        lengths = self.kv.get(request, self.kv.get(None))
        if lengths:
            return lengths, "KV length"
        if self.total_steps:
            return list(range(self.total_steps)), "step number"
        return None, None


@dataclass
class Analytic:
    """The model's FLOPs and bytes for the pages ncu profiled (dsocr.flops)."""
    work: ManifestWork
    costs: dict                        # stage -> model.Cost
    attention: dict                    # stage -> attention-core FLOPs inside it

    def step(self, kv: int) -> model.Cost:
        return model.decode_step_cost(self.work.config.decoder, kv, policy=self.work.policy, nbytes=self.work.nbytes)

    def step_attention(self, kv: int) -> int:
        c = self.work.config.decoder
        return c.num_hidden_layers * model.attention_core_flops(c, 1, kv, self.work.policy)


@dataclass
class Measured:
    runs: list                         # NcuCsv, ranges run first
    sidecar: Sidecar | None
    manifest: dict | None              # the workload ncu profiled: the sidecar's manifest, else the trace's
    manifest_source: str | None        # where it came from
    plan: DecodePlan
    stages: dict                       # stage -> Sums (leaves and parents)
    steps: list                        # one dict per profiled decode step (STEP_KEYS), from the run with the most
    requests: list                     # request payloads profiled
    analytic: Analytic | None
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def block(self, stage: str | None, busy_ns: int | None = None, peak_tflops: float | None = None) -> dict | None:
        """The `measured` block of one stage; None where ncu measured nothing for it."""
        sums = self.stages.get(stage)
        if sums is None:
            return None
        v = sums.values
        cost = self.analytic.costs.get(stage) if self.analytic else None
        dram = sum_or_none(v["dram_read_bytes"], v["dram_write_bytes"])
        issued = None
        if v["tensor_flops"] is not None and busy_ns and peak_tflops:
            issued = 100.0 * v["tensor_flops"] / (busy_ns / 1e9) / (peak_tflops * 1e12)
        return {"mode": sums.mode, **v, "sampled_steps": sums.sampled_steps,
                "tensor_flops_ratio": ratio(v["tensor_flops"], cost.flops if cost else None),
                "dram_bytes_ratio": ratio(dram, cost.bytes if cost else None),
                "mfu_issued_busy_pct": issued, "scaling": sums.scaling}


def ratio(measured, analytic) -> float | None:
    return measured / analytic if measured is not None and analytic else None


def sum_or_none(*values) -> int | None:
    return None if any(v is None for v in values) else sum(values)


# ------------------------------------------------------------------------------------------------ measure

def measure(runs: list[NcuCsv], sidecar: Sidecar | None = None, manifest: dict | None = None,
            total_steps: int | None = None, policy=None) -> Measured:
    """Per-stage sums of the runs, decode scaled to every step, and the analytic work of the pages profiled.
    `manifest`: the trace's, used when the sidecar has none; `total_steps`: decode steps of the page when no
    manifest says (the trace's decode_step count)."""
    runs = sorted(runs, key=lambda r: RUN_ORDER[r.mode])
    notes, warnings = [], [w for r in runs for w in r.warnings] + (sidecar.warnings if sidecar else [])
    source = None
    if sidecar is not None and sidecar.manifest is not None:
        manifest, source = sidecar.manifest, sidecar.path.name
    elif manifest is not None:
        source = "the trace's manifest"
    plan = DecodePlan(kv_lengths(manifest), total_steps or (sidecar.total_steps if sidecar else None))
    per_run = [run_sums(r, plan) for r in runs]
    stages = with_parents(merge(per_run))
    requests = sorted({q for r in runs for q in r.table.column("request").to_pylist() if q is not None})
    analytic = None
    if manifest is not None:
        analytic, problem = analytic_work(manifest, policy, max(len(requests), 1))
        if problem:
            notes.append(problem)
    else:
        notes.append("no manifest (NAME.ncu.json beside the CSV, or a trace's): measured numbers only, no analytic "
                     "ones to compare with")
    measured = Measured(runs, sidecar, manifest, source, plan, stages, [], requests, analytic, notes, warnings)
    measured.steps = step_rows(measured)
    measured.notes.insert(0, sources_note(measured))
    return measured


def kv_lengths(manifest: dict | None) -> dict:
    """request index (None: any) -> decode KV lengths, from the manifest's pages and workload."""
    out: dict = {}
    if not isinstance(manifest, dict):
        return out
    workload = manifest.get("workload")
    if isinstance(workload, dict) and _ints(workload.get("decode_kv_lengths")):
        out[None] = _ints(workload["decode_kv_lengths"])
    pages = manifest.get("pages") if isinstance(manifest.get("pages"), list) else []
    for page in pages:
        if isinstance(page, dict) and isinstance(page.get("request"), int) and isinstance(page.get("workload"), dict):
            lengths = _ints(page["workload"].get("decode_kv_lengths"))
            if lengths:
                out[page["request"]] = lengths
    return out


def _ints(value) -> list[int]:
    return list(value) if isinstance(value, list) and value and all(type(v) is int for v in value) else []


def analytic_work(manifest: dict, policy, pages: int) -> tuple[Analytic | None, str | None]:
    try:
        work = ManifestWork(manifest, policy=policy)
        costs = work.totals(pages)
        attention: dict = {}
        for w, kv in work.workloads:
            for stage, flops in model.attention_flops(work.config, w, kv, policy=work.policy).items():
                attention[stage] = attention.get(stage, 0) + flops
        if len(work.workloads) != pages:
            attention = {s: round(f * pages / len(work.workloads)) for s, f in attention.items()}
    except MANIFEST_ERRORS as e:
        return None, f"no analytic numbers: the manifest's workload or model is not usable ({e})"
    problem = None
    if work.warnings:
        problem = (f"ncu profiled {pages} page(s) but the manifest lists {len(work.workloads)} workloads: each page "
                   "is compared with the mean listed workload")
    return Analytic(work, costs, attention), problem


# ------------------------------------------------------------------------------------------- one run's sums

def run_fields(run: NcuCsv) -> set:
    """The FIELDS a run measures."""
    out = set(run.metrics) & set(FIELDS)
    if run.mode == KERNEL:
        out.add("kernels")
        if "gpu_time_ns" in run.metrics:
            out.add("kernel_ns")
    return out


def row_values(row: dict, fields: set) -> dict:
    return {f: 1 if f == "kernels" else row["gpu_time_ns"] if f == "kernel_ns" else row[f] for f in fields}


def accumulate(total: dict, values: dict) -> None:
    for f, v in values.items():
        if v is not None:
            total[f] = total.get(f, 0) + v


def run_sums(run: NcuCsv, plan: DecodePlan) -> dict[str, Sums]:
    """stage -> Sums of one run; decode steps scaled to every step of the page when only some were profiled."""
    fields = run_fields(run)
    totals: dict = {}
    counts: dict = {}
    steps: dict = {}
    for row in run.table.to_pylist():
        stage = row["stage"]
        if stage is None:
            continue
        values = row_values(row, fields)
        if stage == S.DECODE_STEP:
            accumulate(steps.setdefault((row["request"], row["step"]), dict.fromkeys(fields, 0)), values)
        else:
            accumulate(totals.setdefault(stage, dict.fromkeys(fields, 0)), values)
        counts[stage] = counts.get(stage, 0) + 1
    ranges = run.mode == APP_RANGE
    out = {stage: Sums(run.mode, _all_fields(t), counts[stage] if ranges else None) for stage, t in totals.items()}
    if steps:
        decode, sampled, scaling = scale_steps(steps, fields, plan)
        out[S.DECODE_STEP] = Sums(run.mode, _all_fields(decode), counts[S.DECODE_STEP] if ranges else None,
                                  sampled, scaling)
    return out


def _all_fields(values: dict) -> dict:
    return {f: values.get(f) for f in FIELDS}


def scale_steps(steps: dict, fields: set, plan: DecodePlan) -> tuple[dict, list | None, str | None]:
    """Decode totals over every step of each page from the profiled steps ((request, step) -> values)."""
    total = dict.fromkeys(fields, 0)
    by_request: dict = {}
    for request, step in steps:
        by_request.setdefault(request, []).append(step)
    scaled, axis_used = False, None
    for request, profiled in by_request.items():
        xs, axis = plan.xs(request)
        if xs is None or None in profiled or max(profiled) >= len(xs) or len(profiled) >= len(xs):
            for step in profiled:
                accumulate(total, steps[(request, step)])
            continue
        scaled, axis_used = True, axis
        order = sorted(profiled, key=lambda s: (xs[s], s))
        at = np.array([xs[s] for s in order], np.float64)
        every = np.array(xs, np.float64)
        for f in fields:
            known = np.array([steps[(request, s)][f] for s in order], np.float64)
            total[f] += round(float(np.interp(every, at, known).sum()))
    if not scaled:
        return total, None, None
    sampled = sorted({s for _, s in steps})
    pages = [len(plan.xs(q)[0]) for q in by_request]
    scaling = (f"decode: steps {_list(sampled)} of {sum(pages):,} profiled (kernel replay); every other step "
               f"interpolated linearly in {axis_used} between the profiled steps around it, the nearest one's value "
               "outside them")
    return total, sampled, scaling


def _list(steps: list) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 8 else f"{', '.join(map(str, steps[:8]))}, ..."


# ----------------------------------------------------------------------------------- merged, with parents

def merge(per_run: list[dict]) -> dict[str, Sums]:
    """Per stage and key, the first run that has it (runs in RUN_ORDER)."""
    out = {}
    for stage in LEAVES:
        have = [sums[stage] for sums in per_run if stage in sums]
        if not have:
            continue
        values, used = {}, []
        for f in FIELDS:
            source = next((s for s in have if s.values[f] is not None), None)
            values[f] = source.values[f] if source else None
            if source is not None and source not in used:
                used.append(source)
        primary = next((s for s in have if s.values["tensor_flops"] is not None), used[0] if used else have[0])
        sampled = sorted({x for s in used for x in s.sampled_steps or []}) or None
        scaling = "; ".join(dict.fromkeys(s.scaling for s in used if s.scaling)) or None
        ranges = next((s.ranges for s in have if s.ranges is not None), None)
        out[stage] = Sums(primary.mode, values, ranges, sampled, scaling)
    return out


def with_parents(leaves: dict[str, Sums]) -> dict[str, Sums]:
    out = dict(leaves)
    for parent, children in PARENTS:
        if not all(c in out for c in children):
            continue
        kids = [out[c] for c in children]
        values = {f: sum_or_none(*(k.values[f] for k in kids)) for f in FIELDS}
        sampled = sorted({x for k in kids for x in k.sampled_steps or []}) or None
        scaling = "; ".join(dict.fromkeys(k.scaling for k in kids if k.scaling)) or None
        ranges = sum_or_none(*(k.ranges for k in kids))
        out[parent] = Sums(kids[-1].mode if parent == S.DECODE else kids[0].mode, values, ranges, sampled, scaling)
    return out


# ------------------------------------------------------------------------------------------ per decode step

STEP_KEYS = ("request", "step", "kv_length", "mode", *FIELDS, "flops", "bytes", "tensor_flops_ratio",
             "dram_bytes_ratio")


def step_rows(m: Measured) -> list[dict]:
    """Every profiled decode step of the run that profiled the most (the ranges run on a tie), measured beside its
    analytic FLOPs and bytes."""
    best, best_count = None, 0
    for run in m.runs:
        count = sum(1 for s in run.table.column("stage").to_pylist() if s == S.DECODE_STEP)
        if count > best_count:
            best, best_count = run, count
    if best is None:
        return []
    fields = run_fields(best)
    steps: dict = {}
    for row in best.table.to_pylist():
        if row["stage"] == S.DECODE_STEP:
            accumulate(steps.setdefault((row["request"], row["step"]), dict.fromkeys(fields, 0)), row_values(row, fields))
    out = []
    for (request, step), values in sorted(steps.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1] or 0)):
        lengths, axis = m.plan.xs(request)
        kv = lengths[step] if axis == "KV length" and step is not None and step < len(lengths) else None
        cost = m.analytic.step(kv) if m.analytic and kv is not None else None
        v = _all_fields(values)
        out.append({"request": request, "step": step, "kv_length": kv, "mode": best.mode, **v,
                    "flops": cost.flops if cost else None, "bytes": cost.bytes if cost else None,
                    "tensor_flops_ratio": ratio(v["tensor_flops"], cost.flops if cost else None),
                    "dram_bytes_ratio": ratio(sum_or_none(v["dram_read_bytes"], v["dram_write_bytes"]),
                                              cost.bytes if cost else None)})
    return out


def sources_note(m: Measured) -> str:
    parts = []
    for run in m.runs:
        what = f"{run.rows:,} ranges" if run.mode == APP_RANGE else f"{run.rows:,} kernels"
        parts.append(f"{run.path.name} ({run.mode} replay, {what})")
    where = f"; analytic work from {m.manifest_source}" if m.manifest_source and m.analytic else ""
    return "measured by Nsight Compute: " + ", ".join(parts) + where
